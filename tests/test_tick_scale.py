"""A tick at fleet and ledger scale: what `overseer bench tick` measures must also simply work.

Timing figures live in BENCHMARKS.md; these tests hold the behaviour the benchmark found or relies on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
from sqlalchemy import event

from overseer_dagster.bench import tick as bench_tick
from overseer_dagster.core import projection
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.definitions import defs
from overseer_dagster.store import db, ledger

from overseer_dagster.core import health
from health_fixtures import NOW, inputs


def test_a_fleet_larger_than_the_reports_replica_list_still_gets_a_report() -> None:
    """Past the report's 1,000-replica list the list is withheld (and says so); the report itself is made."""
    big = FleetSnapshot.model_validate(bench_tick.fleet_snapshot(1001, NOW))
    snapshot = health.build(inputs(fleet=big), now=NOW, thresholds=health.Thresholds())
    markdown, document = projection.public_report(snapshot)
    assert markdown.startswith("# Fleet health: unverified")
    assert "Replica list withheld" in markdown and "| r-0 |" not in markdown
    assert document["replicas"] == projection.MARKER and "projection" in document["blockers"]


def test_the_benchmarks_floor_is_the_tick_job_with_no_op_bodies() -> None:
    """Same asset names, dependencies, checks and job: the floor differs from the real tick only in the work."""
    def shape(definitions: dg.Definitions) -> tuple:
        job = definitions.resolve_job_def("overseer_tick")
        graph = definitions.resolve_asset_graph()
        keys = sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
        deps = {k: sorted(p.to_user_string() for p in graph.get(dg.AssetKey.from_user_string(k)).parent_keys)
                for k in keys}
        checks = sorted(c.to_user_string() for c in job.asset_layer.asset_graph.asset_check_keys)
        return keys, deps, checks

    assert shape(bench_tick.floor_definitions()) == shape(defs)


def test_the_ledger_window_is_read_from_its_covering_index(engine) -> None:  # noqa: ANN001
    """One range per demand kind of `ix_ledger_kind_ts_usage`, already grouped: no table rows, no sort."""
    if engine.dialect.name != "sqlite":
        return
    statements: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        ledger.window_by_kind(engine, NOW, 60.0)
        ledger.goodput(engine, NOW, 60.0, 0.1)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    grouped = [(s, p) for s, p in statements if "GROUP BY" in s]
    assert len(grouped) == 2
    with engine.connect() as conn:
        for statement, parameters in grouped:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
            assert "COVERING INDEX ix_ledger_kind_ts_usage" in plan and "TEMP B-TREE" not in plan, plan


def test_the_bench_store_holds_its_rows_inside_the_window(tmp_path) -> None:  # noqa: ANN001
    now = datetime.now(UTC)
    store = bench_tick.build_store(tmp_path / "home", 2000, now)
    assert store == tmp_path / "home" / "overseer.db"  # where a child with OVERSEER_HOME on a copy looks
    engine = db.connect(f"sqlite:///{store}")
    try:
        by_kind = ledger.window_by_kind(engine, now + timedelta(seconds=1), bench_tick.CADENCE_S)
    finally:
        db._engines.pop(f"sqlite:///{store}", None)
        engine.dispose()
    assert sum(r["requests"] for r in by_kind) == 2000
    assert json.dumps(bench_tick.fleet_snapshot(3, now))  # the snapshot is plain JSON


def test_the_benchmark_runs_a_real_tick_and_its_floor_in_fresh_processes() -> None:
    result = bench_tick.run("5", "100", repeats=1)
    [cell] = result["cells"]
    assert cell["outcome"] == "decided"  # the real tick decided on the snapshot file's fleet
    assert cell["tick_s"] > 0 and cell["floor_tick_s"] > 0 and cell["peak_rss_mib"] > cell["floor_peak_rss_mib"] / 2
    assert set(cell["steps_s"]) == {"fleet_state", "external_demand", "fleet_throughput", "overseer_decision",
                                    "fleet_health", "overseer_decision_loop_fresh"}
    assert "replicas" in bench_tick.render(result)
