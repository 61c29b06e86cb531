"""Running the code location's jobs in-process, as the CLI and benchmarks do."""

from __future__ import annotations

import os

import dagster as dg


def instance() -> dg.DagsterInstance:
    """The DAGSTER_HOME instance when one is configured, else an ephemeral one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def run_tick_once() -> tuple[list[dict], bool]:
    """One tick through the real `overseer_tick` job; returns its journal rows, projected (core.projection)."""
    from overseer_dagster.core import projection
    from overseer_dagster.definitions import defs
    from overseer_dagster.store import connect, journal

    with instance() as inst:
        result = defs.resolve_job_def("overseer_tick").execute_in_process(instance=inst, raise_on_error=False)
    tick_id = None
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        if "tick_id" in meta:
            tick_id = meta["tick_id"].value
    rows = journal.for_tick(connect(), tick_id) if tick_id else []
    # Free text (`detail`) stays in the store: the output is the `tick_rows` projection of typed fields.
    public = projection.TICK_ROW.fields
    shown = projection.surface("tick_rows", {"rows": [{k: r[k] for k in public} for r in rows]})
    return shown.value["rows"], result.success
