"""The rule mind's stress decisions on handcrafted contexts: how hard stress runs, and when it backs off."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overseer_dagster.core import policy
from overseer_dagster.core.context import StressStatus, TickContext
from overseer_dagster.core.fleet import FleetSnapshot, Health, ReplicaState, RoutingState
from overseer_dagster.core.limits import Limits
from overseer_dagster.settings import TickSettings
from overseer_dagster.core.proposal import decide_text

NOW = datetime(2026, 1, 5, 12, 3, 30, tzinfo=UTC)  # minute 3: no periodic report in the way
STRESS_KINDS = {"start_stress", "scale_stress", "back_off_stress", "stop_stress"}


def replica(i: int, *, external: int = 0, stress: int = 0, queue: int = 0, slots: int = 8,
            itl_p90: float | None = None, health: Health = Health.healthy,
            routing: RoutingState = RoutingState.admitted) -> ReplicaState:
    return ReplicaState(
        replica_id=f"r-{i}", health=health, routing_state=routing, inflight=min(slots, external + stress),
        max_inflight=slots, external_inflight=external, stress_inflight=stress, queue_depth=queue,
        itl_p90_s=itl_p90, observed_at=NOW,
    )


def ctx(*replicas: ReplicaState, active: int = 0, fleet_age_s: float = 5, slo: float = 0.1) -> TickContext:
    fleet = FleetSnapshot(observed_at=NOW - timedelta(seconds=fleet_age_s), replicas=replicas)
    return TickContext(now=NOW, cadence_s=60, fleet=fleet, stress=StressStatus(pool_concurrency=active),
                       itl_slo_s=slo, stress_reserve_slots=1)


def decide(c: TickContext) -> list[dict]:
    raw = policy.propose(c)
    verdict = decide_text(raw, c.fleet)
    assert verdict.verdict == "valid", verdict.reason  # the rule mind goes through the same validation
    return json.loads(raw)["actions"]


def stress_actions(c: TickContext) -> list[dict]:
    return [a for a in decide(c) if a["kind"] in STRESS_KINDS]


def test_an_idle_fleet_gets_stress_on_every_slot_but_the_reserve() -> None:
    [start] = stress_actions(ctx(*(replica(i) for i in range(4))))
    assert start["kind"] == "start_stress"
    assert start["concurrency"] == 7  # 8 slots - 1 reserve
    assert "replica_id" not in start  # pool-wide


def test_the_target_outlives_the_dead_man_only_if_refreshed_every_tick() -> None:
    [start] = stress_actions(ctx(replica(0, external=2)))
    # Held for three cadences; the harness's dead-man fires after two without a new row.
    assert start["duration_s"] == 180


def test_low_external_demand_keeps_stress_on_at_the_same_target() -> None:
    # The fast loop trims live to the slack; the tick decides how hard, not who wins a slot.
    [start] = stress_actions(ctx(*(replica(i, external=2, stress=5) for i in range(4)), active=7))
    assert (start["kind"], start["concurrency"]) == ("start_stress", 7)


def test_rising_external_demand_backs_stress_off() -> None:
    [back_off] = stress_actions(ctx(*(replica(i, external=5) for i in range(4)), active=7))  # 62.5%
    assert back_off == {"kind": "back_off_stress", "factor": 0.5, "reason": "external demand is rising"}


def test_external_requests_queued_for_a_slot_count_as_external_demand() -> None:
    [back_off] = stress_actions(ctx(*(replica(i, external=3, queue=2) for i in range(4)), active=7))
    assert back_off["kind"] == "back_off_stress"


def test_high_external_demand_without_stress_running_starts_none() -> None:
    assert stress_actions(ctx(*(replica(i, external=6) for i in range(4)))) == []


def test_near_full_fleet_asks_for_capacity_and_backs_stress_off() -> None:
    kinds = [a["kind"] for a in decide(ctx(*(replica(i, external=8) for i in range(2)), active=4))]
    assert kinds == ["request_scale_out", "back_off_stress"]


def test_external_itl_over_its_slo_backs_stress_off() -> None:
    [back_off] = stress_actions(ctx(replica(0, external=2, stress=5, itl_p90=0.12), active=7))
    assert (back_off["kind"], back_off["factor"]) == ("back_off_stress", 0.7)


def test_itl_near_its_slo_moves_stress_toward_the_knee() -> None:
    # Batch 4 at ITL p90 80 ms, SLO 100 ms: knee batch floor(4 * 0.9 * 0.1 / 0.08) = 4; external 1 -> stress 3.
    [start] = stress_actions(ctx(replica(0, external=1, stress=3, itl_p90=0.08), replica(1, external=1, stress=3),
                                 active=7))
    assert (start["kind"], start["concurrency"]) == ("start_stress", 3)


def test_itl_well_under_its_slo_says_nothing_about_the_knee() -> None:
    [start] = stress_actions(ctx(replica(0, external=1, stress=6, itl_p90=0.04), active=7))
    assert start["concurrency"] == 7


def test_no_room_under_the_knee_stops_stress() -> None:
    # Batch 4 at ITL p90 95 ms: knee batch floor(4 * 0.9 * 0.1 / 0.095) = 3, all of it external.
    [stop] = stress_actions(ctx(replica(0, external=3, stress=1, itl_p90=0.095), active=2))
    assert stop["kind"] == "stop_stress"


@pytest.mark.parametrize("active", [0, 4])
def test_a_stale_fleet_view_stops_stress_and_starts_none(active: int) -> None:
    actions = decide(ctx(*(replica(i) for i in range(4)), active=active, fleet_age_s=600))
    assert [a["kind"] for a in actions] == (["stop_stress"] if active else ["noop"])


def test_no_ready_replica_stops_stress() -> None:
    c = ctx(replica(0, health=Health.unhealthy, routing=RoutingState.draining),
            replica(1, routing=RoutingState.quarantined), active=3)
    assert [a["kind"] for a in stress_actions(c)] == ["stop_stress"]


def test_replicas_out_of_rotation_do_not_count_toward_capacity() -> None:
    # Two ready replicas at 5/8 external (62.5%) plus two idle quarantined ones: still backs off.
    c = ctx(replica(0, external=5), replica(1, external=5), replica(2, routing=RoutingState.quarantined),
            replica(3, routing=RoutingState.quarantined), active=7)
    assert [a["kind"] for a in stress_actions(c)] == ["back_off_stress"]


def test_the_smallest_ready_replica_bounds_the_pool_wide_target() -> None:
    [start] = stress_actions(ctx(replica(0, slots=16), replica(1, slots=4)))
    assert start["concurrency"] == 3


def test_decisions_are_deterministic() -> None:
    c = ctx(replica(0, external=1, stress=3, itl_p90=0.08), replica(1, external=2), active=7)
    assert policy.propose(c) == policy.propose(c.model_copy())


# --- the rule mind never proposes what its own verdict blocks ---------------------------------

_REPLICA = st.builds(
    dict,
    health=st.sampled_from(list(Health)),
    routing_state=st.sampled_from(list(RoutingState)),
    warm=st.booleans(),
    max_inflight=st.integers(1, 64),
    external=st.integers(0, 80),
    stress=st.integers(0, 80),
    queue_depth=st.integers(0, 200),
    itl_p90_s=st.one_of(st.none(), st.floats(0, 5)),
    breaker_trips_30m=st.integers(0, 6),
)


@settings(max_examples=300)
@given(
    replicas=st.lists(_REPLICA, min_size=0, max_size=12),
    gpu_classes=st.lists(st.sampled_from(["h100", "h200", "b200"]), unique=True, max_size=3),
    max_scale_out=st.integers(1, 8),
    ceiling=st.floats(0.01, 500),
    reserve=st.integers(1, 4),
    slo=st.floats(0.001, 2),
    active=st.integers(0, 64),
    fleet_age_s=st.floats(0, 600),
    minute=st.integers(0, 59),
    second=st.integers(0, 59),
)
def test_whatever_the_fleet_and_configuration_the_rule_mind_proposes_only_what_its_verdict_accepts(
        replicas: list[dict], gpu_classes: list[str], max_scale_out: int, ceiling: float, reserve: int, slo: float,
        active: int, fleet_age_s: float, minute: int, second: int) -> None:
    now = NOW.replace(minute=minute, second=second)
    states = tuple(
        ReplicaState(replica_id=f"r-{i}", health=r["health"], routing_state=r["routing_state"], warm=r["warm"],
                     inflight=min(r["max_inflight"], r["external"] + r["stress"]), max_inflight=r["max_inflight"],
                     external_inflight=r["external"], stress_inflight=r["stress"], queue_depth=r["queue_depth"],
                     itl_p90_s=r["itl_p90_s"], breaker_trips_30m=r["breaker_trips_30m"], observed_at=now)
        for i, r in enumerate(replicas)
    )
    configured = TickSettings(limits=Limits(gpu_classes=tuple(gpu_classes), max_scale_out_count=max_scale_out),
                              scale_out_max_hourly_usd=ceiling)
    c = TickContext(now=now, cadence_s=60, fleet=FleetSnapshot(observed_at=now - timedelta(seconds=fleet_age_s),
                                                               replicas=states),
                    stress=StressStatus(pool_concurrency=active), itl_slo_s=slo, stress_reserve_slots=reserve,
                    scale_out_gpu_class=configured.scale_out_gpu_class,
                    scale_out_max_hourly_usd=configured.scale_out_max_hourly_usd)
    verdict = decide_text(policy.propose(c), c.fleet, configured.limits)
    assert verdict.verdict == "valid", verdict.reason
