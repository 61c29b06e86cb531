"""The real thing: `dagster-daemon run` and a gRPC code server (overseer_dagster.deploy) on SQLite.
While the tick schedule is stopped the sensor skips, naming it; once it is switched on, a queued
action is executed within seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dispatch_fixtures import queue

from overseer_dagster.deploy import Deployment
from overseer_dagster.store import actions, connect

pytestmark = pytest.mark.daemon


def sensor_ticks(deployment: Deployment, since: float) -> list:
    """The dispatch sensor's ticks since `since` that have finished (a tick is stored as STARTED while the
    sensor is still being evaluated, with no skip reason yet)."""
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    with deployment.instance() as instance:
        [state] = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                   if s.name == "autonomous_dispatch"] or [None]
        if state is None:
            return []
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=20)
    return [t for t in ticks if t.timestamp >= since and t.status is not TickStatus.STARTED]


def wait_for(condition, timeout_s: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_the_daemon_dispatches_only_while_the_tick_schedule_is_on(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"OVERSEER_DATABASE_URL": store_url, "OVERSEER_HOME": str(tmp_path / "home"),
           "OVERSEER_FLEET_SOURCE": "sample"}
    engine = connect(store_url)
    with Deployment(tmp_path / "dagster", env=env) as dagster:
        started = list(dagster.services)
        action_id = queue(engine, {"kind": "stop_stress"}, now=datetime.now(UTC))
        since = time.time()
        assert wait_for(lambda: len(sensor_ticks(dagster, since)) >= 2, 60), "the sensor did not tick"
        skipped = sensor_ticks(dagster, since)
        assert all("overseer_tick_schedule is stopped" in (t.skip_reason or "") for t in skipped), [
            (t.status, t.skip_reason, t.error and t.error.message) for t in skipped]
        assert actions.get(engine, action_id)["status"] == "queued"

        dagster.start_schedule("overseer_tick_schedule")
        assert wait_for(lambda: actions.get(engine, action_id)["status"] == "succeeded", 120), (
            actions.get(engine, action_id), [s.log_tail() for s in dagster.services])
    assert started and all(not s.alive() for s in started)  # stopped, each by its own PID
