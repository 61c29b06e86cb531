"""The `autonomous_dispatch` sensor, evaluated with Dagster's test helpers against a real instance:
one run request per queued action, nothing while the tick schedule is stopped or the kill switch is off."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dispatch_fixtures import queue

from overseer_dagster import dispatch
from overseer_dagster.defs.resources import FleetResource, StoreResource
from overseer_dagster.defs.sensors import DISPATCH_INTERVAL_S, autonomous_dispatch
from overseer_dagster.store import actions, write_tx


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
