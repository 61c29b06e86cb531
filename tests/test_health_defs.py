"""The health wiring as the Dagster UI shows it: the tick runs fleet_health; a stalled loop turns red."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from overseer_dagster.core.health import SignalKind, SignalState
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


@pytest.mark.lab
def test_a_gateway_outage_turns_the_fleet_signal_stale_and_the_report_unverified_until_it_is_restored(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real tick job against the lab's gateway (`snapshot:` source), two-second cadence: fresh within 6 s
    (room for an in-process tick run several times slower than on a quiet machine)."""
    import asyncio
    import time

    import httpx

    from overseer_dagster.defs.resources import FleetResource
    from overseer_dagster.lab.ledger import store_sink
    from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config
    from overseer_dagster.settings import health_thresholds
    from overseer_dagster.store.health import snapshot_from_store

    cadence_s = 2
    fresh_s = 3 * cadence_s  # OVERSEER_HEALTH_FRESH_CADENCES' default
    monkeypatch.setenv("OVERSEER_CADENCE_S", str(cadence_s))
    background = BackgroundLab(fast_lab_config(2, slots=4), ledger_sink=store_sink(store_url))
    with background as lab, dg.instance_for_test() as instance:
        resources = {"store": StoreResource(database_url=store_url),
                     "fleet": FleetResource(source=f"snapshot:{lab.gateway_url}/fleet/state")}

        def traffic() -> None:
            """External streams through the gateway, at once so both replicas serve some: ledger rows, and ITL
            telemetry from every ready replica."""
            async def burst() -> None:
                async with httpx.AsyncClient(timeout=10) as client:
                    await asyncio.gather(*(client.post(
                        lab.gateway_url + "/v1/chat/completions", headers={"X-Demand-Kind": "external"},
                        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True})
                        for _ in range(6)))

            asyncio.run(burst())
            time.sleep(0.1)  # the lab's ledger flushes every 50 ms

        def tick() -> tuple[dict, str]:
            result = defs.resolve_job_def("overseer_tick").execute_in_process(instance=instance, resources=resources)
            [event] = [e for e in result.get_asset_materialization_events()
                       if e.asset_key == dg.AssetKey("fleet_health")]
            metadata = event.materialization.metadata
            return metadata["document"].value, metadata["report"].value

        def signal(doc: dict, kind: str) -> dict:
            return next(s for s in doc["signals"] if s["kind"] == kind)

        def claim(doc: dict, name: str) -> dict:
            return next(c for c in doc["claims"] if c["name"] == name)

        traffic()
        doc, report = tick()
        assert signal(doc, "fleet")["state"] == "fresh" and signal(doc, "throughput")["state"] == "fresh"
        assert (claim(doc, "ready_replicas")["stated"], claim(doc, "ready_replicas")["value"]) == (True, 2)
        assert claim(doc, "throughput")["stated"], claim(doc, "throughput")
        last_seen = signal(doc, "fleet")["observed_at"]

        background.call(lab.gateway_outage(60))
        doc, report = tick()
        fleet = signal(doc, "fleet")
        assert fleet["state"] == "stale" and "fleet_unreachable" in fleet["reasons"]
        assert fleet["observed_at"] == last_seen  # the last reading, aged: not forgotten, not renewed
        age = fleet["values"]["age_s"]
        if abs(age - fresh_s) > 0.01:  # `fleet_stale` only once the reading is over three cadences old
            assert ("fleet_stale" in fleet["reasons"]) == (age > fresh_s)
        assert doc["status"] == "unverified" and doc["overclaim_blocked"]
        for name in ("ready_replicas", "throughput"):
            assert not claim(doc, name)["stated"] and claim(doc, name)["value"] is None
        assert "throughput:stale" in claim(doc, "throughput")["reasons"]
        assert "| Ready replicas | unverified | fleet:stale" in report and "| Throughput | unverified |" in report

        # The report states times to the whole second, so the reading itself is up to 1 s later than `last_seen`.
        deadline = datetime.fromisoformat(str(last_seen)) + timedelta(seconds=1 + fresh_s + 0.2)
        time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()))
        doc, report = tick()
        fleet = signal(doc, "fleet")
        assert fleet["state"] == "stale" and fleet["values"]["age_s"] > fresh_s
        assert {"fleet_stale", "fleet_unreachable"} <= set(fleet["reasons"])
        assert "| Ready replicas | unverified |" in report
        # `overseer health` reads the same from the store alone.
        from_store = snapshot_from_store(connect(store_url), datetime.now(UTC), health_thresholds())
        assert from_store.signal(SignalKind.fleet).state is SignalState.stale

        background.call(lab.restore_gateway())
        traffic()
        doc, report = tick()
        assert signal(doc, "fleet")["state"] == "fresh" and signal(doc, "fleet")["observed_at"] != last_seen
        assert claim(doc, "ready_replicas")["stated"] and claim(doc, "ready_replicas")["value"] == 2
        assert claim(doc, "throughput")["stated"]
        assert "| Ready replicas | 2 replicas | verified |" in report
