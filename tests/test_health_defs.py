"""The health wiring as the Dagster UI shows it: the tick runs fleet_health; a stalled loop turns red."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from overseer_dagster.definitions import defs
from overseer_dagster.defs.io import PrivateValueIOManager
from overseer_dagster.defs.resources import StoreResource
from overseer_dagster.store import connect, journal, write_tx


def test_fleet_health_runs_in_every_tick_after_the_decision() -> None:
    job = defs.resolve_job_def("overseer_tick")
    assert dg.AssetKey("fleet_health") in job.asset_layer.executable_asset_keys
    graph = defs.resolve_asset_graph()
    parents = graph.get(dg.AssetKey("fleet_health")).parent_keys
    assert {dg.AssetKey(k) for k in ("overseer_decision", "fleet_state", "external_demand", "fleet_throughput")} <= parents
    checks = {k.name for k in job.asset_layer.asset_graph.asset_check_keys}
    assert {"overclaim_blocked", "loop_fresh"} <= checks


def test_the_watch_schedule_evaluates_loop_fresh_between_ticks() -> None:
    schedule = defs.resolve_schedule_def("overseer_watch_schedule")
    assert schedule.job_name == "overseer_watch"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def _watch(store_url: str) -> dg.AssetCheckEvaluation:
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("overseer_watch").execute_in_process(
            instance=instance, raise_on_error=False, resources={"store": StoreResource(database_url=store_url)})
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def _tick_row(engine, at: datetime) -> None:  # noqa: ANN001
    with write_tx(engine) as conn:
        journal.append(conn, [journal.Entry(phase="decision", state="skipped", reason="cadence", created_at=at,
                                            tick_id="t")])


@pytest.mark.parametrize("age_s,passed,state", [
    (None, False, "unavailable"),  # no tick ever
    (30, True, "degraded"),  # ticking (a cadence skip), though not deciding: alive
    (181, False, "stale"),  # nothing for three cadences: stalled
])
def test_loop_fresh_fails_with_error_severity_when_the_loop_stalls(store_url: str, age_s, passed, state) -> None:  # noqa: ANN001
    engine = connect(store_url)
    if age_s is not None:
        _tick_row(engine, datetime.now(UTC) - timedelta(seconds=age_s))
    evaluation = _watch(store_url)
    assert evaluation.check_name == "loop_fresh" and evaluation.passed is passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["overseer_loop_state"].value == state


def test_a_tick_run_writes_the_public_report_and_warns_while_overclaim_is_blocked(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("overseer_tick").execute_in_process(instance=instance)
    [overclaim] = [e for e in result.get_asset_check_evaluations() if e.check_name == "overclaim_blocked"]
    # The sample fleet has no ledger behind it: demand is unavailable, so its figures are unverified.
    assert overclaim.passed is False and overclaim.severity == dg.AssetCheckSeverity.WARN
    [health] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("fleet_health")]
    metadata = health.materialization.metadata
    document = metadata["document"].value
    assert metadata["report"].value.startswith("# Fleet health: unverified")
    assert metadata["demand_state"].value == "unavailable" and metadata["ready_replicas"].value == 3
    assert "external_demand" not in metadata  # an unverified figure is not plotted either
    saved = json.loads((tmp_path / "home" / "reports" / "latest.json").read_text())
    assert saved == json.loads(json.dumps(document))


def test_the_io_manager_round_trips_values_and_says_nothing_about_where(tmp_path: Path) -> None:
    @dg.asset
    def upstream() -> dict:
        return {"a": 1}

    @dg.asset
    def downstream(upstream: dict) -> int:
        return upstream["a"] + 1

    with dg.instance_for_test() as instance:
        result = dg.materialize([upstream, downstream], instance=instance,
                                resources={"io_manager": PrivateValueIOManager(base_dir=str(tmp_path / "values"))})
        text = "\n".join(dg._serdes.serialize_value(e) for e in instance.all_logs(result.run_id))
    assert result.output_for_node("downstream") == 2
    assert (tmp_path / "values" / "upstream.pickle").exists()
    assert str(tmp_path) not in text
    for event in result.get_asset_materialization_events():
        assert dict(event.materialization.metadata) == {}


def test_a_missing_value_fails_without_naming_a_path(tmp_path: Path) -> None:
    @dg.asset
    def upstream() -> int:
        return 1

    @dg.asset
    def downstream(upstream: int) -> int:
        return upstream

    with dg.instance_for_test() as instance:
        result = dg.materialize([upstream, downstream], selection=[downstream], instance=instance, raise_on_error=False,
                                resources={"io_manager": PrivateValueIOManager(base_dir=str(tmp_path / "values"))})
        text = "\n".join(dg._serdes.serialize_value(e) for e in instance.all_logs(result.run_id))
    assert not result.success
    assert "no stored value for upstream" in text
    assert str(tmp_path) not in text
