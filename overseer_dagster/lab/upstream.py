"""The gateway's view of one replica: routing state, health breaker, live in-flight estimate, latency window."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from overseer_dagster.core.fleet import Health, ReplicaState, RoutingState


@dataclass(frozen=True)
class BreakerConfig:
    failures_to_trip: int = 3
    successes_to_heal: int = 2
    # A healed replica the breaker drained goes back into rotation by itself (else it waits for `admit`).
    auto_readmit: bool = False
    trip_window_s: float = 1800.0
    latency_window_s: float = 60.0


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Upstream:
    def __init__(self, replica_id: str, url: str, breaker: BreakerConfig) -> None:
        self.replica_id = replica_id
        self.url = url
        self.breaker = breaker
        self.routing_state = RoutingState.admitted
        self.drained_by: str | None = None  # "breaker" or "operator"
        self.health = Health.unknown
        self.fails = 0
        self.oks = 0
        self.trips: deque[float] = deque()
        self.max_num_seqs = 1
        # Requests the gateway has in flight there now, and what the last /lab/state poll said.
        self.gw_inflight = 0
        self.gw_external = 0
        self.polled = False
        self.polled_running = 0
        self.polled_waiting = 0
        self.polled_external = 0
        self.polled_stress = 0
        self.gw_at_poll = 0
        # Skip it until then (a refused connect, or a 429), without waiting for the breaker.
        self.avoid_until = 0.0
        self.ttft: deque[tuple[float, float]] = deque(maxlen=4096)
        self.itl: deque[tuple[float, float]] = deque(maxlen=4096)

    # -- capacity -------------------------------------------------------------------------------------------

    def occupied(self) -> int:
        """Slots taken: what the replica last reported from others (stress goes straight to it) plus ours now."""
        others = max(0, self.polled_running + self.polled_waiting - self.gw_at_poll)
        return others + self.gw_inflight

    def free(self) -> int:
        return self.max_num_seqs - self.occupied()

    def routable(self, now: float) -> bool:
        return (self.routing_state is RoutingState.admitted and self.health is Health.healthy
                and self.avoid_until <= now)

    def record_poll(self, state: dict) -> None:
        self.max_num_seqs = max(1, int(state["max_num_seqs"]))
        self.polled_running = int(state["running"])
        self.polled_waiting = int(state["waiting"])
        by_kind = state.get("running_by_kind", {})
        self.polled_external = int(by_kind.get("external", 0)) + int(by_kind.get("unlabeled", 0))
        self.polled_stress = int(by_kind.get("internal_stress", 0))
        self.gw_at_poll = self.gw_inflight
        self.polled = True

    # -- breaker --------------------------------------------------------------------------------------------

    def record_probe(self, ok: bool, now: float) -> bool:
        """Feed one probe result; True when health or routing changed."""
        before = (self.health, self.routing_state)
        if ok:
            self.fails = 0
            self.oks += 1
            if self.health is Health.unknown or (
                self.health is Health.unhealthy and self.oks >= self.breaker.successes_to_heal
            ):
                self.health = Health.healthy
                if (self.breaker.auto_readmit and self.routing_state is RoutingState.draining
                        and self.drained_by == "breaker"):
                    self.set_routing(RoutingState.admitted)
        else:
            self.oks = 0
            self.fails += 1
            if self.health is not Health.unhealthy and self.fails >= self.breaker.failures_to_trip:
                self.health = Health.unhealthy
                self.trips.append(now)
                if self.routing_state is RoutingState.admitted:
                    self.routing_state = RoutingState.draining
                    self.drained_by = "breaker"
        return before != (self.health, self.routing_state)

    def set_routing(self, state: RoutingState, *, by: str = "operator") -> None:
        self.routing_state = state
        self.drained_by = None if state is RoutingState.admitted else by

    def trips_in_window(self, now: float) -> int:
        while self.trips and self.trips[0] < now - self.breaker.trip_window_s:
            self.trips.popleft()
        return len(self.trips)

    # -- oracle ---------------------------------------------------------------------------------------------

    def record_latency(self, now: float, ttft: float | None, itl: float | None) -> None:
        if ttft is not None:
            self.ttft.append((now, ttft))
        if itl is not None:
            self.itl.append((now, itl))

    def _recent(self, window: deque[tuple[float, float]], now: float) -> list[float]:
        cutoff = now - self.breaker.latency_window_s
        while window and window[0][0] < cutoff:
            window.popleft()
        return [v for _, v in window]

    def snapshot(self, now: float, observed_at: datetime) -> ReplicaState:
        if self.polled:
            inflight, external = self.polled_running, self.polled_external
            stress, queue = self.polled_stress, self.polled_waiting
        else:  # unreachable: what the gateway itself has there
            inflight, external, stress, queue = self.gw_inflight, self.gw_external, 0, 0
        ttft = self._recent(self.ttft, now)
        itl = self._recent(self.itl, now)
        return ReplicaState(
            replica_id=self.replica_id,
            health=self.health,
            routing_state=self.routing_state,
            warm=True,
            inflight=min(inflight, self.max_num_seqs),
            max_inflight=self.max_num_seqs,
            external_inflight=external,
            stress_inflight=stress,
            queue_depth=queue,
            ttft_p50_s=quantile(ttft, 0.5),
            ttft_p99_s=quantile(ttft, 0.99),
            itl_p50_s=quantile(itl, 0.5),
            itl_p90_s=quantile(itl, 0.9),
            breaker_trips_30m=self.trips_in_window(now),
            unknown_reason="no_probe_yet" if self.health is Health.unknown else None,
            observed_at=observed_at,
        )
