"""Health signals and the claims they allow: a figure is stated only while every signal it rests on is fresh."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from overseer_dagster import settings
from overseer_dagster.adapters.mind import MindAnswer, RuleMind
from overseer_dagster.core import health
from overseer_dagster.core.context import StressStatus
from overseer_dagster.core.demand import UsageRecord
from overseer_dagster.core.health import CLAIMS, ClaimName, SignalKind, SignalState, Thresholds
from overseer_dagster.store import actions, ledger, targets, write_tx
from overseer_dagster.store import health as store_health
from overseer_dagster.settings import TickSettings
from overseer_dagster.store.tables import gates
from overseer_dagster.tick import run_tick

from health_fixtures import FRESH_LOOP, NOW, OLD, T, demand, fleet, inputs, snapshot


def test_all_fresh_states_every_figure_and_blocks_nothing() -> None:
    snap = snapshot()
    assert [s.state for s in snap.signals] == [SignalState.fresh] * len(SignalKind)
    assert not snap.overclaim_blocked
    claims = {c.name: c for c in snap.claims}
    assert all(c.stated and not c.reasons for c in claims.values())
    assert claims[ClaimName.ready_replicas].value == 3
    assert claims[ClaimName.external_demand].value == 9000.0  # tokens/min over a 60 s window
    assert claims[ClaimName.throughput].value == 160.0  # all kinds, tokens/s
    assert claims[ClaimName.goodput].value == 90.0
    assert claims[ClaimName.utilisation].value == 0.25


def test_there_is_one_signal_per_kind_in_a_fixed_order() -> None:
    assert [s.kind for s in snapshot().signals] == list(SignalKind)


# Each way a signal stops being fresh, as the inputs that cause it.
STALE = {
    SignalKind.fleet: {"fleet": fleet(r_2={"health": "unknown", "unknown_reason": "metrics_stale"})},
    SignalKind.demand: {"demand": demand(last_row=OLD)},
    SignalKind.throughput: {"fleet": fleet(r_0={"itl_p90_s": 0.5})},  # ITL SLO missed: degraded
    SignalKind.stress: {"stress": StressStatus(pool_concurrency=2, last_refreshed_at=NOW - timedelta(seconds=121))},
    SignalKind.overseer_loop: {"store": health.StoreReadings(
        loop=health.LoopReading(last_row_at=OLD, last_tick_at=NOW, last_tick_outcome="decided"), goodput_tokens_per_s=90.0)},
    SignalKind.mind: {"store": health.StoreReadings(loop=health.LoopReading(
        last_row_at=NOW, last_tick_at=NOW, last_tick_outcome="blocked", last_tick_reason="schema_invalid"),
        goodput_tokens_per_s=90.0)},
    SignalKind.dispatch: {"store": health.StoreReadings(
        loop=FRESH_LOOP, dispatch=health.DispatchReading(failed=1), goodput_tokens_per_s=90.0)},
    SignalKind.gates: {"store": health.StoreReadings(
        loop=FRESH_LOOP, gates=health.GateReading(pending=1, pending_overdue=1), goodput_tokens_per_s=90.0)},
}
DEPENDENT = {kind: {name for name, kinds in CLAIMS.items() if kind in kinds} for kind in SignalKind}


@pytest.mark.parametrize("kind", list(SignalKind))
def test_a_signal_that_is_not_fresh_blocks_exactly_the_claims_that_depend_on_it(kind: SignalKind) -> None:
    snap = snapshot(**STALE[kind])
    assert [s.kind for s in snap.signals if not s.fresh] == [kind]
    assert snap.overclaim_blocked
    unverified = {c.name for c in snap.claims if not c.stated}
    assert unverified == DEPENDENT[kind]
    for claim in snap.claims:
        if claim.name in DEPENDENT[kind]:
            assert claim.value is None
            assert f"{kind.value}:{snap.signal(kind).state.value}" in claim.reasons
            assert set(snap.signal(kind).reasons) <= set(claim.reasons)
        else:
            assert claim.value is not None


def test_a_stale_fleet_reading_also_makes_its_telemetry_stale_and_blocks_both_claim_sets() -> None:
    snap = snapshot(fleet=fleet(observed=OLD))
    assert {s.kind for s in snap.signals if not s.fresh} == {SignalKind.fleet, SignalKind.throughput}
    assert snap.signal(SignalKind.fleet).reasons[0] == "fleet_stale"
    assert {c.name for c in snap.claims if not c.stated} == DEPENDENT[SignalKind.fleet] | DEPENDENT[SignalKind.throughput]


def test_a_reading_the_source_could_not_renew_is_stale_at_once_and_fleet_stale_once_past_the_window() -> None:
    from overseer_dagster.core import projection

    problem = "fleet_unreachable: the fleet state endpoint is unreachable (ConnectError)"
    recent = snapshot(fleet=fleet(observed=NOW - timedelta(seconds=50)), fleet_problem=problem)
    sig = recent.signal(SignalKind.fleet)
    assert sig.state is SignalState.stale and sig.reasons == ("fleet_unreachable",)
    assert sig.observed_at == NOW - timedelta(seconds=50) and sig.values["age_s"] == 50  # how old the view is
    assert recent.signal(SignalKind.throughput).state is SignalState.stale  # its telemetry came with it
    # The ledger cannot be shown whole either while the router that records external requests is unreachable:
    # "no demand" and "demand nobody could record" look the same.
    demand = recent.signal(SignalKind.demand)
    assert demand.state is SignalState.degraded and demand.reasons == ("fleet_unreachable", "demand_incomplete")
    unverified = {c.name for c in recent.claims if not c.stated}
    assert unverified == set(ClaimName)
    markdown, doc = projection.public_report(recent)
    assert "| Ready replicas | unverified | fleet:stale, fleet_unreachable |" in markdown
    assert "| Throughput | unverified |" in markdown and "Replica list withheld" in markdown
    assert doc["status"] == "unverified" and doc["replicas"] == []

    old = snapshot(fleet=fleet(observed=OLD), fleet_problem=problem).signal(SignalKind.fleet)
    assert old.state is SignalState.stale and old.reasons[:2] == ("fleet_stale", "fleet_unreachable")
    # With no reading on record it stays unavailable, as before.
    none = snapshot(fleet=None, fleet_problem=problem).signal(SignalKind.fleet)
    assert none.state is SignalState.unavailable and none.reasons == ("fleet_unreachable",)


def test_the_claims_table_is_the_documented_one() -> None:
    assert CLAIMS == {
        ClaimName.ready_replicas: (SignalKind.fleet,),
        ClaimName.external_demand: (SignalKind.demand,),
        ClaimName.throughput: (SignalKind.demand, SignalKind.throughput),
        ClaimName.goodput: (SignalKind.demand, SignalKind.throughput),
        ClaimName.utilisation: (SignalKind.fleet, SignalKind.stress),
    }


@pytest.mark.parametrize("overrides,kind,state,reason", [
    ({"fleet": None, "fleet_problem": "fleet_snapshot_invalid: replicas.0.replica_id: bad"},
     SignalKind.fleet, SignalState.unavailable, "fleet_snapshot_invalid"),
    ({"fleet": None, "fleet_problem": "connect to 10.20.30.40:8000 failed"},
     SignalKind.fleet, SignalState.unavailable, "fleet_unavailable"),
    ({"fleet": fleet(r_1={"health": "unknown", "unknown_reason": "metrics_stale"})},
     SignalKind.fleet, SignalState.degraded, "unknown_replicas"),
    ({"fleet": fleet(r_0={"routing_state": "draining"}, r_1={"routing_state": "draining"},
                     r_2={"routing_state": "quarantined"})},
     SignalKind.fleet, SignalState.degraded, "no_ready_replicas"),
    ({"demand": None}, SignalKind.demand, SignalState.unavailable, "demand_unavailable"),
    ({"demand": demand(last_row=None)}, SignalKind.demand, SignalState.unavailable, "ledger_empty"),
    ({"demand": demand(observed=OLD)}, SignalKind.demand, SignalState.stale, "demand_stale"),
    ({"demand": demand(failures=10)}, SignalKind.demand, SignalState.degraded, "external_failures"),
    ({"fleet": fleet(r_0={"itl_p90_s": None})}, SignalKind.throughput, SignalState.degraded, "telemetry_partial"),
    ({"fleet": fleet(r_0={"itl_p90_s": None}, r_1={"itl_p90_s": None}, r_2={"itl_p90_s": None})},
     SignalKind.throughput, SignalState.unavailable, "telemetry_missing"),
    ({"stress": StressStatus(pool_concurrency=2, last_refreshed_at=None)},
     SignalKind.stress, SignalState.stale, "stress_target_stale"),
    ({"store": health.StoreReadings()}, SignalKind.overseer_loop, SignalState.unavailable, "no_tick"),
    ({"store": health.StoreReadings(loop=health.LoopReading(last_row_at=NOW, last_row_state="disabled"))},
     SignalKind.overseer_loop, SignalState.degraded, "kill_switch"),
    ({"store": health.StoreReadings(loop=health.LoopReading(last_row_at=NOW, last_row_state="skipped",
                                                            last_tick_at=OLD, last_tick_outcome="decided"))},
     SignalKind.overseer_loop, SignalState.degraded, "not_deciding"),
    ({"store": health.StoreReadings(loop=health.LoopReading(last_row_at=NOW, last_tick_at=NOW,
                                                            last_tick_outcome="mind_unavailable"))},
     SignalKind.mind, SignalState.unavailable, "mind_unavailable"),
    ({"store": health.StoreReadings(loop=health.LoopReading(last_row_at=NOW, last_tick_at=NOW,
                                                            last_tick_outcome="skipped"))},
     SignalKind.mind, SignalState.unavailable, "mind_not_asked"),
    ({"store": health.StoreReadings(loop=health.LoopReading(last_row_at=NOW, last_tick_at=NOW,
                                                            last_tick_outcome="Bearer x 10.20.30.40"))},
     SignalKind.mind, SignalState.unavailable, "proposal_unknown"),
    ({"store": health.StoreReadings(loop=FRESH_LOOP, dispatch=health.DispatchReading(
        queued=1, oldest_queued_at=OLD))}, SignalKind.dispatch, SignalState.stale, "dispatch_backlog"),
    ({"store": health.StoreReadings(loop=FRESH_LOOP, dispatch=health.DispatchReading(expired_leases=1))},
     SignalKind.dispatch, SignalState.degraded, "dispatch_lease_expired"),
    ({"store": health.StoreReadings(loop=FRESH_LOOP, gates=health.GateReading(expired_recent=2))},
     SignalKind.gates, SignalState.degraded, "gates_expired"),
])
def test_signal_states_and_reason_codes(overrides, kind: SignalKind, state: SignalState, reason: str) -> None:  # noqa: ANN001
    sig = snapshot(**overrides).signal(kind)
    assert sig.state is state
    assert reason in sig.reasons


def test_idle_stress_with_old_targets_is_fresh() -> None:
    """No target in force: nothing for the dead-man to guard."""
    snap = snapshot(stress=StressStatus(last_refreshed_at=NOW - timedelta(hours=5)))
    assert snap.signal(SignalKind.stress).fresh


def test_pending_gates_alone_are_fresh() -> None:
    snap = snapshot(store=health.StoreReadings(loop=FRESH_LOOP, gates=health.GateReading(pending=2, oldest_pending_at=NOW)))
    assert snap.signal(SignalKind.gates).fresh
    assert snap.signal(SignalKind.gates).values["pending"] == 2


def test_signal_values_never_carry_the_figures() -> None:
    """A stale reading must not reach a reader through its signal's diagnostics."""
    figure_names = {c.value for c in ClaimName}
    for sig in snapshot().signals:
        assert not figure_names & set(sig.values)


def test_unparseable_replica_reasons_become_codes_and_the_text_stays_in_private_notes() -> None:
    leaky = "connect to 10.20.30.40:8000 failed"
    snap = snapshot(fleet=fleet(r_2={"health": "unknown", "unknown_reason": leaky}))
    line = next(r for r in snap.replicas if r.replica_id == "r-2")
    assert line.unknown_reason == "unknown_reason_unparsed"
    assert leaky in snap.notes.values()


def test_freshness_threshold_is_configurable_in_cadences() -> None:
    t = settings.health_thresholds({"OVERSEER_CADENCE_S": "30", "OVERSEER_HEALTH_FRESH_CADENCES": "5"})
    assert (t.cadence_s, t.fresh_s, t.dead_man_s) == (30.0, 150.0, 60.0)
    assert settings.health_thresholds({}).fresh_s == 180.0
    at_four_minutes = health.build(inputs(fleet=fleet(observed=NOW - timedelta(minutes=4))), now=NOW,
                                   thresholds=Thresholds(fresh_cadences=5))
    assert at_four_minutes.signal(SignalKind.fleet).fresh
    with pytest.raises(settings.ConfigError, match="OVERSEER_HEALTH_FRESH_CADENCES"):
        settings.health_thresholds({"OVERSEER_HEALTH_FRESH_CADENCES": "soon"})


def test_a_projection_blocker_blocks_overclaiming() -> None:
    snap = snapshot().with_blockers(health.PROJECTION)
    assert snap.overclaim_blocked and snap.blockers == ("projection",)


# --- store reads, on every backend -----------------------------------------------------------------


def _action(conn, status: str, at: datetime, **extra) -> None:  # noqa: ANN001
    action_id = str(uuid.uuid4())
    actions.enqueue(conn, action_id=action_id, tick_id=None, kind="stop_stress", authority="autonomous",
                    action_json="{}", now=at)
    if status != "queued":
        conn.execute(actions.actions.update().where(actions.actions.c.action_id == action_id)
                     .values(status=status, updated_at=at, **extra))


def _gate(conn, state: str, created: datetime, expires: datetime) -> None:  # noqa: ANN001
    conn.execute(gates.insert().values(
        gate_id=str(uuid.uuid4()), action_id=str(uuid.uuid4()), kind="quarantine_replica",
        risky_kind="fleet_mutation", action_hash=uuid.uuid4().hex, action_json="{}", precondition_json="{}",
        state=state, created_at=created, expires_at=expires,
    ))


def _tick(engine, mind, *, fleet_snapshot=None, demand_summary=None) -> None:  # noqa: ANN001
    run_tick(engine, now=NOW, settings=TickSettings(), enabled=True, mode="autonomous",
             fleet=fleet_snapshot or fleet(), fleet_problem=None, demand=demand_summary, stress=StressStatus(), mind=mind)


class _Garbage:
    name = "script"

    def propose(self, ctx) -> MindAnswer:  # noqa: ANN001
        return MindAnswer(raw="not json")


def test_store_reads_dispatch_gates_goodput_and_loop(engine) -> None:  # noqa: ANN001
    window = T.window_s
    with write_tx(engine) as conn:
        _action(conn, "failed", NOW - timedelta(seconds=30))
        _action(conn, "failed", NOW - timedelta(seconds=window + 60))  # outside the window
        _action(conn, "precondition_failed", NOW - timedelta(seconds=30))
        _action(conn, "queued", NOW - timedelta(seconds=400))
        _action(conn, "dispatching", NOW - timedelta(seconds=10), lease_until=NOW - timedelta(seconds=1))
        _gate(conn, "pending", NOW - timedelta(minutes=5), NOW + timedelta(hours=1))
        _gate(conn, "pending", NOW - timedelta(hours=2), NOW - timedelta(minutes=1))  # overdue
        _gate(conn, "expired", NOW - timedelta(hours=2), NOW - timedelta(minutes=2))
        _gate(conn, "approved", NOW - timedelta(minutes=1), NOW + timedelta(hours=1))
    ledger.record_usage(engine, [
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="external", prompt_tokens=100, completion_tokens=50,
                    itl_s=0.02),
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="unlabeled", completion_tokens=10, itl_s=0.05),
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="external", completion_tokens=1000, itl_s=0.5),
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="external", completion_tokens=1000),  # no ITL
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="external", completion_tokens=1000, itl_s=0.01,
                    outcome="failed"),
        UsageRecord(ts=NOW - timedelta(seconds=5), demand_kind="internal_stress", completion_tokens=1000, itl_s=0.01),
        UsageRecord(ts=NOW - timedelta(seconds=120), demand_kind="external", completion_tokens=1000, itl_s=0.01),
    ])
    _tick(engine, _Garbage())

    got = store_health.readings(engine, NOW, T, demand_until=NOW, demand_window_s=60)
    assert got.dispatch == health.DispatchReading(failed=1, precondition_failed=1, queued=1,
                                                  oldest_queued_at=NOW - timedelta(seconds=400), expired_leases=1)
    assert got.gates == health.GateReading(pending=2, approved=1, pending_overdue=1, expired_recent=1,
                                           oldest_pending_at=NOW - timedelta(hours=2))
    assert got.goodput_tokens_per_s == pytest.approx((150 + 10 + 1000) / 60)  # no ITL: one token, counts
    assert (got.loop.last_row_at, got.loop.last_row_state) == (NOW, "blocked")
    assert (got.loop.last_tick_at, got.loop.last_tick_outcome, got.loop.last_tick_reason) == (
        NOW, "blocked", "schema_invalid")


def test_snapshot_from_store_reads_the_last_tick_and_goes_stale_when_the_loop_stops(engine) -> None:  # noqa: ANN001
    _tick(engine, RuleMind(), demand_summary=demand())
    with write_tx(engine) as conn:
        targets.set_target(conn, replica_id=None, concurrency=2, now=NOW, expires_at=NOW + timedelta(hours=1))
    ledger.record_usage(engine, [UsageRecord(ts=NOW, demand_kind="external", completion_tokens=60, itl_s=0.02)])

    soon = store_health.snapshot_from_store(engine, NOW + timedelta(seconds=5), T)
    assert soon.signal(SignalKind.fleet).fresh and soon.signal(SignalKind.overseer_loop).fresh
    assert soon.figures[ClaimName.ready_replicas] == 3

    later = store_health.snapshot_from_store(engine, NOW + timedelta(minutes=10), T)
    not_fresh = {s.kind for s in later.signals if not s.fresh}
    assert {SignalKind.fleet, SignalKind.demand, SignalKind.overseer_loop, SignalKind.mind,
            SignalKind.stress} <= not_fresh
    assert not any(c.stated for c in later.claims)


def test_when_the_source_fails_the_store_gives_the_last_fleet_a_tick_read_to_age(engine) -> None:  # noqa: ANN001
    first = fleet(observed=NOW - timedelta(seconds=20))
    _tick(engine, RuleMind(), fleet_snapshot=first)
    for minutes in (1, 2):  # two ticks that found the source down
        run_tick(engine, now=NOW + timedelta(minutes=minutes), settings=TickSettings(), enabled=True,
                 mode="autonomous", fleet=None, fleet_problem="fleet_unreachable: no answer", demand=None,
                 stress=StressStatus(), mind=RuleMind())
    assert store_health.last_fleet_reading(engine) == first

    snap = store_health.snapshot_from_store(engine, NOW + timedelta(minutes=2, seconds=5), T)  # `overseer health`
    sig = snap.signal(SignalKind.fleet)
    assert sig.state is SignalState.stale and sig.reasons == ("fleet_unreachable",)
    assert sig.observed_at == first.observed_at
    later = store_health.snapshot_from_store(engine, NOW + timedelta(minutes=4), T)
    assert later.signal(SignalKind.fleet).reasons[:2] == ("fleet_stale", "fleet_unreachable")
    assert not any(c.stated for c in later.claims if c.name is ClaimName.ready_replicas)


def test_snapshot_from_an_empty_store_is_all_unverified(engine) -> None:  # noqa: ANN001
    snap = store_health.snapshot_from_store(engine, NOW, T)
    assert snap.overclaim_blocked
    assert snap.signal(SignalKind.overseer_loop).reasons == ("no_tick",)
    assert not any(c.stated for c in snap.claims)
