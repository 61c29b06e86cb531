"""Dispatch against the store, on SQLite and PostgreSQL: exactly once, every refusal a recorded outcome,
crashes reconciled from the world, never by acting again."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from overseer_dagster import dispatch
from overseer_dagster.adapters.actuators import ActuatorError
from overseer_dagster.store import actions, journal, reports, targets
from overseer_dagster.store.tables import actions as actions_table
from dispatch_fixtures import NOW, Clock, StaticFleet, outcomes, queue, replica, snapshot, store_actuators

FLEET = snapshot(replica("r-0"), replica("r-1", routing_state="draining"), replica("r-2", warm=False))


class CountingRouter:
    """Counts admits; optionally fails or 'crashes' (a BaseException nothing catches) after acting."""

    def __init__(self, *, error: ActuatorError | None = None, crash: bool = False, pause: float = 0.0) -> None:
        self.admits: list[str] = []
        self.error = error
        self.crash = crash
        self.pause = pause
        self._lock = threading.Lock()

    def admit(self, replica_id: str):  # noqa: ANN201
        if self.error:
            raise self.error
        with self._lock:
            self.admits.append(replica_id)
        if self.pause:
            threading.Event().wait(self.pause)
        if self.crash:
            raise SystemExit("the run worker died")
        return snapshot(replica(replica_id)).replicas[0]

    drain = quarantine = admit


class Crash(BaseException):
    pass


def run(engine, action_id, *, clock=None, mode="autonomous", enabled=True, fleet=None, router=None, warm=None,  # noqa: ANN001, ANN201
        run_id="run-1"):
    return dispatch.dispatch_action(
        engine, action_id, run_id=run_id, clock=clock or Clock(), enabled=enabled, mode=mode, cadence_s=60.0,
        fleet=fleet or StaticFleet(FLEET), actuators=store_actuators(engine, router=router, warm=warm),
    )


# --- exactly once ----------------------------------------------------------------------------------


def test_two_concurrent_runs_of_one_action_act_once(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    router = CountingRouter(pause=0.2)
    results: list[dispatch.Dispatched] = []
    barrier = threading.Barrier(2)

    def worker(n: int) -> None:
        barrier.wait()
        results.append(run(engine, action_id, router=router, run_id=f"run-{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert router.admits == ["r-1"]
    assert sorted(r.outcome for r in results) == sorted(["succeeded", dispatch.NOT_QUEUED])
    assert outcomes(engine, action_id) == [("dispatching", None), ("succeeded", None)]
    assert journal.verify(engine).ok


def test_a_finished_action_is_not_acted_on_again(engine) -> None:
    action_id = queue(engine, {"kind": "stop_stress"})
    assert run(engine, action_id).outcome == "succeeded"
    again = run(engine, action_id, run_id="run-2")
    assert (again.outcome, again.recorded) == (dispatch.NOT_QUEUED, False)
    with engine.connect() as conn:
        assert targets.written_by(conn, action_id) == 1


def test_a_failed_action_stays_failed(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    router = CountingRouter(error=ActuatorError("router_error", "the gateway answered 503"))
    assert run(engine, action_id, router=router).outcome == "failed"
    assert run(engine, action_id, router=CountingRouter(), run_id="run-2").outcome == dispatch.NOT_QUEUED
    assert actions.get(engine, action_id)["status"] == "failed"


# --- refusals -----------------------------------------------------------------------------------------


def test_advisory_mode_executes_nothing_even_for_actions_queued_before_the_switch(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    router = CountingRouter()
    result = run(engine, action_id, mode="advisory", router=router)
    assert (result.outcome, result.reason) == ("advisory", "advisory_mode")
    assert router.admits == []
    assert outcomes(engine, action_id) == [("advisory", "advisory_mode")]


def test_kill_switch_at_dispatch_time_refuses_the_action(engine) -> None:
    action_id = queue(engine, {"kind": "stop_stress"})
    assert (run(engine, action_id, enabled=False).outcome, actions.get(engine, action_id)["outcome_reason"]) == (
        "blocked", "kill_switch")
    with engine.connect() as conn:
        assert targets.written_by(conn, action_id) == 0


@pytest.mark.parametrize("stored", [
    '{"kind":"start_stress","concurrency":"8","duration_s":60}',  # a string where an int belongs
    '{"kind":"start_stress","concurrency":8,"duration_s":60,"approved":true}',  # a smuggled key
    '{"kind":"stop_stress"',  # not JSON
    '{"kind":"readmit_replica","replica_id":"r-1"}',  # a different kind than the row says
])
def test_a_queued_action_whose_json_no_longer_validates_is_blocked(engine, stored: str) -> None:
    action_id = queue(engine, {"kind": "start_stress", "concurrency": 8, "duration_s": 60})
    with engine.begin() as conn:
        conn.execute(update(actions_table).where(actions_table.c.action_id == action_id).values(action_json=stored))
    router = CountingRouter()
    result = run(engine, action_id, router=router)
    assert (result.outcome, result.reason) == ("blocked", "stored_action_invalid")
    assert router.admits == []
    with engine.connect() as conn:
        assert targets.written_by(conn, action_id) == 0
    assert outcomes(engine, action_id) == [("blocked", "stored_action_invalid")]


def test_a_gated_kind_set_to_queued_by_hand_is_blocked(engine) -> None:
    quarantine = {"kind": "quarantine_replica", "replica_id": "r-0", "reason_code": "error_rate",
                  "rollback": {"action": "readmit_replica", "replica_id": "r-0"}}
    action_id = queue(engine, quarantine, authority="autonomous")  # the row lies about its authority
    router = CountingRouter()
    assert (run(engine, action_id, router=router).reason, router.admits) == ("not_autonomous", [])


def test_a_stale_decision_is_not_acted_on(engine) -> None:
    action_id = queue(engine, {"kind": "start_stress", "concurrency": 4, "duration_s": 60})
    clock = Clock(NOW + timedelta(minutes=10))
    result = run(engine, action_id, clock=clock, fleet=StaticFleet(snapshot(replica("r-0", now=clock.now), now=clock.now)))
    assert (result.outcome, result.reason) == ("precondition_failed", "decision_stale")


@pytest.mark.parametrize("action,fleet,reason", [
    ({"kind": "readmit_replica", "replica_id": "r-1"}, snapshot(replica("r-1", routing_state="quarantined")),
     "replica_quarantined"),
    ({"kind": "readmit_replica", "replica_id": "r-1"}, snapshot(replica("r-1", routing_state="draining",
                                                                        health="unhealthy")), "replica_unhealthy"),
    ({"kind": "readmit_replica", "replica_id": "r-1"}, snapshot(replica("r-1")), "replica_not_draining"),
    ({"kind": "readmit_replica", "replica_id": "r-9"}, FLEET, "replica_unknown"),
    ({"kind": "warm_replica", "replica_id": "r-1", "requests": 2}, FLEET, "replica_not_ready"),
    ({"kind": "start_stress", "concurrency": 4, "duration_s": 60},
     snapshot(replica("r-0"), now=NOW - timedelta(minutes=5)), "fleet_stale"),
    ({"kind": "scale_stress", "concurrency": 4, "replica_id": "r-1"}, FLEET, "replica_not_ready"),
    ({"kind": "start_stress", "concurrency": 4, "duration_s": 60}, None, "fleet_unavailable"),
])
def test_preconditions_are_rechecked_on_a_fresh_read_of_the_fleet(engine, action, fleet, reason) -> None:  # noqa: ANN001
    action_id = queue(engine, action)
    router = CountingRouter()
    result = run(engine, action_id, fleet=StaticFleet(fleet), router=router, warm=router)
    assert (result.outcome, result.reason) == ("precondition_failed", reason)
    assert router.admits == []
    assert outcomes(engine, action_id) == [("dispatching", None), ("precondition_failed", reason)]


def test_stopping_stress_needs_no_fleet_view(engine) -> None:
    action_id = queue(engine, {"kind": "stop_stress"})
    fleet = StaticFleet(None)
    assert run(engine, action_id, fleet=fleet).outcome == "succeeded"
    assert fleet.reads == 0


def test_an_unexpected_actuator_exception_is_recorded_then_raised(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})

    class Broken(CountingRouter):
        def admit(self, replica_id):  # noqa: ANN001, ANN201
            raise KeyError("bug")

    with pytest.raises(KeyError):
        run(engine, action_id, router=Broken())
    assert outcomes(engine, action_id)[-1] == ("failed", "actuator_error")


# --- crashes: claim, act, no record --------------------------------------------------------------------


def test_a_crash_after_acting_is_reconciled_as_succeeded_from_the_fleet(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    router = CountingRouter(crash=True)
    with pytest.raises(SystemExit):
        run(engine, action_id, router=router)
    assert actions.get(engine, action_id)["status"] == "dispatching"
    # Within the lease nothing is reconciled; past it, the fleet shows r-1 admitted.
    now_fleet = StaticFleet(snapshot(replica("r-0"), replica("r-1")))
    assert dispatch.due_actions(engine, now=NOW + timedelta(seconds=60), cadence_s=60, fleet=now_fleet).settled == []
    later = NOW + timedelta(seconds=dispatch.DISPATCH_LEASE_S + 1)
    due = dispatch.due_actions(engine, now=later, cadence_s=60, fleet=now_fleet)
    assert [(s.outcome, s.reason) for s in due.settled] == [("succeeded", "reconciled")]
    assert router.admits == ["r-1"]  # reconciled by reading, never by acting again
    assert outcomes(engine, action_id)[-1] == ("succeeded", "reconciled")


def test_a_crash_before_the_effect_is_reconciled_as_failed(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    router = CountingRouter(error=None)
    router.admit = lambda rid: (_ for _ in ()).throw(Crash())  # dies before the gateway saw anything
    with pytest.raises(Crash):
        run(engine, action_id, router=router)
    later = NOW + timedelta(seconds=dispatch.DISPATCH_LEASE_S + 1)
    due = dispatch.due_actions(engine, now=later, cadence_s=60, fleet=StaticFleet(FLEET))  # r-1 still draining
    assert [(s.outcome, s.reason) for s in due.settled] == [("failed", "lease_expired")]


def test_a_crash_after_writing_stress_targets_is_reconciled_from_the_store(engine) -> None:
    action_id = queue(engine, {"kind": "stop_stress"})

    class CrashAfterWrite:
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def stop(self, **kw):  # noqa: ANN003, ANN201
            self.inner.stop(**kw)
            raise Crash()

    act = store_actuators(engine)
    act = type(act)(stress=CrashAfterWrite(act.stress), router=act.router, warm=act.warm, reports=act.reports)
    with pytest.raises(Crash):
        dispatch.dispatch_action(engine, action_id, run_id="r", clock=Clock(), enabled=True, mode="autonomous",
                                 cadence_s=60, fleet=StaticFleet(FLEET), actuators=act)
    fleet = StaticFleet(None)  # the fleet is not needed to see a stress effect
    later = NOW + timedelta(seconds=dispatch.DISPATCH_LEASE_S + 1)
    assert [s.outcome for s in dispatch.due_actions(engine, now=later, cadence_s=60, fleet=fleet).settled] == [
        "succeeded"]
    assert fleet.reads == 0


def test_a_slow_run_that_loses_its_claim_records_nothing(engine) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"})
    clock = Clock()

    class SlowRouter(CountingRouter):
        def admit(self, replica_id):  # noqa: ANN001, ANN201
            # While this run "hangs", the lease expires and the sweep settles the action.
            later = NOW + timedelta(seconds=dispatch.DISPATCH_LEASE_S + 1)
            dispatch.due_actions(engine, now=later, cadence_s=60, fleet=StaticFleet(FLEET))
            return super().admit(replica_id)

    result = run(engine, action_id, clock=clock, router=SlowRouter())
    assert result.recorded is False
    assert [s for s, _ in outcomes(engine, action_id)] == ["dispatching", "failed"]


# --- the actuators' effects --------------------------------------------------------------------------


def _targets(engine, now=NOW):  # noqa: ANN001, ANN202
    return {k: (t.concurrency, t.expires_at) for k, t in targets.active(engine, now).items()}


def test_stress_actions_write_their_targets(engine) -> None:
    clock = Clock()
    run(engine, queue(engine, {"kind": "start_stress", "concurrency": 8, "duration_s": 600}), clock=clock)
    run(engine, queue(engine, {"kind": "start_stress", "concurrency": 4, "duration_s": 600, "replica_id": "r-0"}),
        clock=clock)
    assert _targets(engine) == {None: (8, NOW + timedelta(seconds=600)), "r-0": (4, NOW + timedelta(seconds=600))}

    clock.advance(10)
    run(engine, queue(engine, {"kind": "scale_stress", "concurrency": 12}, now=clock.now), clock=clock)
    assert _targets(engine, clock.now)[None] == (12, NOW + timedelta(seconds=600))  # keeps the expiry

    clock.advance(10)
    run(engine, queue(engine, {"kind": "back_off_stress", "factor": 0.3}, now=clock.now), clock=clock)
    # Pool-wide back-off covers the per-replica target too; floored.
    assert {k: c for k, (c, _) in _targets(engine, clock.now).items()} == {None: 3, "r-0": 1}

    clock.advance(10)
    run(engine, queue(engine, {"kind": "stop_stress"}, now=clock.now), clock=clock)
    assert {k: c for k, (c, _) in _targets(engine, clock.now).items()} == {None: 0, "r-0": 0}
    # The stop outlives the targets it replaced: none of them comes back.
    assert _targets(engine, NOW + timedelta(seconds=599)) == _targets(engine, clock.now)


def test_scale_without_a_target_holds_for_three_cadences(engine) -> None:
    run(engine, queue(engine, {"kind": "scale_stress", "concurrency": 5}))
    assert _targets(engine) == {None: (5, NOW + timedelta(seconds=180))}


def test_a_report_publishes_the_verified_health_report_not_the_minds_summary(engine, store_url, monkeypatch) -> None:
    import dagster as dg

    from overseer_dagster.definitions import defs
    from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, StoreResource

    action_id = queue(engine, {"kind": "emit_report", "topic": "capacity", "summary": "3 of 4 replicas ready."},
                      now=dispatch_now())
    job = defs.resolve_job_def("dispatch_action")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"execute_action": {"config": {"action_id": action_id}}}}, instance=instance,
            resources={"store": StoreResource(database_url=store_url), "fleet": FleetResource(),
                       "actuators": ActuatorsResource()},
        )
    assert result.success
    [mat] = result.asset_materializations_for_node("execute_action")
    assert mat.asset_key == dg.AssetKey("fleet_reports")
    # What is published is the health report the store can vouch for, never the mind's own prose: with no
    # tick recorded, every figure is unverified.
    published = mat.metadata["summary"].value
    assert published.startswith("Report topic: capacity") and "unverified" in published
    assert "3 of 4 replicas ready." not in published
    assert reports.for_action(engine, action_id)["summary"] == published
    assert actions.get(engine, action_id)["status"] == "succeeded"


def dispatch_now():  # noqa: ANN201
    from datetime import UTC, datetime

    return datetime.now(UTC)
