"""The fast loop's arithmetic: how many stress requests each replica may hold now, and which to cancel.

Pure: live load, targets and `now` (seconds on any monotonic clock) in; allowances out. The harness calls
`Allowances.update` at least every interval (250 ms) and on every fresh load reading.

Per replica:

    ceiling   = min(target, max_inflight - reserve - external)    (0 when the reading is stale, missing or not ready)
    allowance = ceiling                  when the ceiling falls   (at once: external demand needs the slot)
              = min(ceiling, prev + step) when it rises           (at most `step` per `ramp_interval_s`,
                                                                   and only while external < `grow_below`
                                                                   x (max_inflight - reserve))
              = min(ceiling, prev // 2)   when external is at or above that mark and rose since the last
                                          reading

`external` counts external requests running on the replica *and* those queued for it (a queued external
request needs a slot too). `reserve` (>= 1) slots stay free for external arrivals between two readings.
Where external demand holds half the usable slots or more, stress does not grow (a dip there is usually the
gap between one external request and the next; a stress request started in it would be cancelled again and
could make the next external request wait), and each rise of external demand halves it: the rise is the part
of a surge the source can see, and more may be queued where it cannot.
When the allowance falls below what the harness holds in flight there, the excess is cancelled at once,
newest first (the least work lost), and counted as preempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STALE_AFTER_S = 1.0
# Stress grows on a replica only while external demand there holds less than this share of its usable slots.
GROW_BELOW = 0.5
# Additive increase: slots per replica per ramp interval.
RAMP_STEP = 2


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica's live load, as last read."""

    max_inflight: int
    # External (and unlabeled) requests running on the replica plus those queued for it.
    external_inflight: int
    # When it was observed, on the harness's monotonic clock.
    observed_at: float
    # Healthy and in rotation; a replica that is not gets no stress.
    ready: bool = True


def ceiling(load: ReplicaLoad | None, target: int, *, reserve: int, now: float,
            stale_after_s: float = STALE_AFTER_S) -> int:
    """The most stress `load` leaves room for under `target`: 0 when the reading is missing, stale or not ready."""
    if load is None or not load.ready or now - load.observed_at > stale_after_s:
        return 0
    return max(0, min(target, load.max_inflight - reserve - load.external_inflight))


class Allowances:
    """Per-replica allowances: they fall at once and climb back by `step` slots per `ramp_interval_s`."""

    def __init__(self, *, reserve: int = 1, stale_after_s: float = STALE_AFTER_S, step: int = RAMP_STEP,
                 ramp_interval_s: float = 0.25, grow_below: float = GROW_BELOW) -> None:
        if reserve < 1:
            raise ValueError("reserve must keep at least one slot free for external arrivals")
        if step < 1 or ramp_interval_s <= 0 or stale_after_s <= 0:
            raise ValueError("step, ramp_interval_s and stale_after_s must be positive")
        self.reserve = reserve
        self.stale_after_s = stale_after_s
        self.step = step
        self.ramp_interval_s = ramp_interval_s
        self.grow_below = grow_below
        self._current: dict[str, int] = {}
        self._raised_at: dict[str, float] = {}
        # The last reading seen per replica: (observed_at, external).
        self._seen: dict[str, tuple[float, int]] = {}

    def current(self, replica_id: str) -> int:
        return self._current.get(replica_id, 0)

    def update(self, now: float, loads: Mapping[str, ReplicaLoad | None], targets: Mapping[str, int],
               replica_ids: Iterable[str] | None = None) -> dict[str, int]:
        """The allowance of every replica in `replica_ids` (default: those with a load, a target or an allowance)."""
        ids = set(replica_ids) if replica_ids is not None else {*loads, *targets, *self._current}
        out: dict[str, int] = {}
        for rid in sorted(ids):
            cap = ceiling(loads.get(rid), targets.get(rid, 0), reserve=self.reserve, now=now,
                          stale_after_s=self.stale_after_s)
            prev = self._current.get(rid, 0)
            load = loads.get(rid)
            busy = rising = False
            if load is not None:
                busy = load.external_inflight >= self.grow_below * (load.max_inflight - self.reserve)
                seen = self._seen.get(rid)
                if seen is None or seen[0] != load.observed_at:
                    rising = seen is not None and load.external_inflight > seen[1]
                    self._seen[rid] = (load.observed_at, load.external_inflight)
            if busy and rising:
                new = min(cap, prev // 2)
            elif cap <= prev or busy:
                new = min(cap, prev)
            elif now - self._raised_at.get(rid, float("-inf")) >= self.ramp_interval_s:
                new = min(cap, prev + self.step)
                self._raised_at[rid] = now
            else:
                new = prev
            self._current[rid] = out[rid] = new
        for rid in set(self._current) - ids:
            del self._current[rid]
            self._raised_at.pop(rid, None)
            self._seen.pop(rid, None)
        return out


def to_cancel(started_at: Mapping[str, float], allowance: int) -> list[str]:
    """Which in-flight requests to cancel so at most `allowance` remain: the newest first."""
    excess = len(started_at) - max(0, allowance)
    if excess <= 0:
        return []
    newest_first = sorted(started_at, key=lambda k: (started_at[k], k), reverse=True)
    return newest_first[:excess]


def to_launch(allowance: int, inflight: int, cap: int | None = None) -> int:
    """How many new requests to start: up to the allowance, and within `cap` in flight (a backoff's limit)."""
    room = allowance - inflight
    if cap is not None:
        room = min(room, cap - inflight)
    return max(0, room)
