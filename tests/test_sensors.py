"""The `autonomous_dispatch` sensor, evaluated with Dagster's test helpers against a real instance:
one run request per queued action, nothing while the tick schedule is stopped or the kill switch is off,
and an action whose run ended before claiming it failed (`run_never_started`), not stranded `queued`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dispatch_fixtures import outcomes, queue, run_for

from overseer_dagster import dispatch
from overseer_dagster.defs.resources import FleetResource, StoreResource
from overseer_dagster.defs.sensors import DISPATCH_INTERVAL_S, autonomous_dispatch
from overseer_dagster.store import actions, journal, write_tx


@contextlib.contextmanager
def schedule_state(instance: dg.DagsterInstance, *, running: bool) -> Iterator[None]:
    """Toggle `overseer_tick_schedule` in `instance` the way the UI does (the instance's scheduler)."""
    target = LoadableTargetOrigin(module_name="overseer_dagster.definitions")
    with in_process_test_workspace(instance, target) as workspace:
        [location] = workspace.code_locations
        schedule = location.get_repository("__repository__").get_schedule("overseer_tick_schedule")
        state = instance.start_schedule(schedule)
        if not running:
            instance.stop_schedule(state.instigator_origin_id, state.selector_id, schedule)
        yield


def evaluate(instance: dg.DagsterInstance, resources: dict) -> dg.SensorResult:
    from overseer_dagster.definitions import defs

    with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources) as context:
        return autonomous_dispatch.evaluate_tick(context)


@pytest.fixture
def resources(store_url: str) -> dict:
    return {"store": StoreResource(database_url=store_url), "fleet": FleetResource(source="sample")}


def _now() -> datetime:
    return datetime.now(UTC)


def test_the_sensor_is_cheap_and_on_by_default() -> None:
    assert autonomous_dispatch.minimum_interval_seconds == DISPATCH_INTERVAL_S <= 10
    assert autonomous_dispatch.default_status is dg.DefaultSensorStatus.RUNNING
    assert autonomous_dispatch.job_name == "dispatch_action"


def test_one_run_request_per_queued_action_keyed_by_action_id(engine, resources) -> None:
    ids = [queue(engine, {"kind": "stop_stress"}, now=_now()),
           queue(engine, {"kind": "readmit_replica", "replica_id": "vllm-2"}, now=_now())]
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        requests = evaluate(instance, resources).run_requests
    assert [r.run_key for r in requests] == [f"dispatch:{i}" for i in ids]
    assert [{k: v for k, v in r.tags.items() if k.startswith("overseer/")} for r in requests] == [
        {"overseer/action_id": ids[0], "overseer/kind": "stop_stress"},
        {"overseer/action_id": ids[1], "overseer/kind": "readmit_replica"},
    ]
    assert requests[0].run_config["ops"] == {"execute_action": {"config": {"action_id": ids[0]}}}


def test_nothing_is_dispatched_while_the_tick_schedule_is_stopped(engine, resources) -> None:
    queue(engine, {"kind": "stop_stress"}, now=_now())
    with dg.instance_for_test() as instance:
        # Never toggled: the schedule's default (STOPPED) holds.
        result = evaluate(instance, resources)
        assert not result.run_requests
        assert "overseer_tick_schedule is stopped" in result.skip_message
        with schedule_state(instance, running=False):
            assert "overseer_tick_schedule is stopped" in evaluate(instance, resources).skip_message
        with schedule_state(instance, running=True):
            assert len(evaluate(instance, resources).run_requests) == 1


def test_nothing_is_dispatched_while_the_kill_switch_is_off(engine, resources, monkeypatch) -> None:
    queue(engine, {"kind": "stop_stress"}, now=_now())
    monkeypatch.setenv("OVERSEER_ENABLED", "off")
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        result = evaluate(instance, resources)
    assert not result.run_requests and "OVERSEER_ENABLED is off" in result.skip_message


def test_no_queued_actions_is_a_skip(engine, resources) -> None:
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        assert evaluate(instance, resources).skip_message == "no queued actions"


def test_stale_decisions_are_retired_not_launched(engine, resources) -> None:
    old = queue(engine, {"kind": "start_stress", "concurrency": 4, "duration_s": 60}, now=_now() - timedelta(hours=1))
    fresh = queue(engine, {"kind": "stop_stress"}, now=_now())
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        requests = evaluate(instance, resources).run_requests
    assert [r.tags["overseer/action_id"] for r in requests] == [fresh]
    assert (actions.get(engine, old)["status"], actions.get(engine, old)["outcome_reason"]) == (
        "precondition_failed", "decision_stale")


def test_an_expired_claim_with_an_unreadable_fleet_never_crashes_the_sensor(engine, store_url) -> None:
    stuck = queue(engine, {"kind": "readmit_replica", "replica_id": "vllm-2"}, now=_now())
    with write_tx(engine) as conn:
        actions.claim(conn, stuck, run_id="dead-run", now=_now() - timedelta(seconds=dispatch.DISPATCH_LEASE_S + 5),
                      lease_s=dispatch.DISPATCH_LEASE_S)
    fresh = queue(engine, {"kind": "stop_stress"}, now=_now())
    broken = {"store": StoreResource(database_url=store_url),
              "fleet": FleetResource(source="snapshot:http://127.0.0.1:9/fleet/state")}
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        requests = evaluate(instance, broken).run_requests
    assert [r.tags["overseer/action_id"] for r in requests] == [fresh]
    row = actions.get(engine, stuck)
    assert (row["status"], row["outcome_reason"]) == ("failed", "lease_expired")


@pytest.mark.parametrize("ended", ["failed", "canceled"])
def test_an_action_whose_run_ended_before_claiming_it_fails_and_is_not_launched_again(engine, resources,
                                                                                      ended) -> None:
    stranded = queue(engine, {"kind": "stop_stress"}, now=_now() - timedelta(seconds=40))
    on_its_way = queue(engine, {"kind": "stop_stress"}, now=_now() - timedelta(seconds=30))
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        first = {r.tags["overseer/action_id"]: r for r in evaluate(instance, resources).run_requests}
        # The daemon creates both runs; one ends before it ever ran (its run worker never launched).
        assert run_for(instance, first[stranded], ended=ended).status in (dg.DagsterRunStatus.FAILURE,
                                                                          dg.DagsterRunStatus.CANCELED)
        run_for(instance, first[on_its_way], ended=None)
        fresh = queue(engine, {"kind": "stop_stress"}, now=_now())
        requests = evaluate(instance, resources).run_requests
        # Not asked again under its spent run key (Dagster would skip it): failed, once, for good.
        assert [r.tags["overseer/action_id"] for r in requests] == [on_its_way, fresh]
        assert not any(r.tags["overseer/action_id"] == stranded for r in evaluate(instance, resources).run_requests)
    row = actions.get(engine, stranded)
    assert (row["status"], row["outcome_reason"]) == ("failed", "run_never_started")
    assert outcomes(engine, stranded) == [("failed", "run_never_started")]
    assert actions.get(engine, on_its_way)["status"] == "queued"
    assert journal.verify(engine).ok


def test_dagsters_runs_are_read_only_for_actions_queued_a_while_ago(engine, resources, monkeypatch) -> None:
    queue(engine, {"kind": "stop_stress"}, now=_now())
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        reads: list = []
        get_runs = instance.get_runs
        monkeypatch.setattr(instance, "get_runs", lambda *a, **k: reads.append(k) or get_runs(*a, **k))
        assert len(evaluate(instance, resources).run_requests) == 1
        assert reads == []
        queue(engine, {"kind": "stop_stress"},
              now=_now() - timedelta(seconds=dispatch.RUN_CHECK_AFTER_S + 1))
        assert len(evaluate(instance, resources).run_requests) == 2
        assert len(reads) == 1
