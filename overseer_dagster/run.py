"""Running the code location's jobs in-process, as the CLI and benchmarks do."""

from __future__ import annotations

import os

import dagster as dg


def instance() -> dg.DagsterInstance:
    """The DAGSTER_HOME instance when one is configured, else an ephemeral one."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def run_tick_once() -> tuple[list[dict], bool]:
    """One tick through the real `overseer_tick` job; returns its journal rows (public-safe fields)."""
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
    public = ("seq", "created_at", "state", "reason", "detail", "kind", "authority", "gate_id", "action_id")
    return [{k: (r[k].isoformat() if k == "created_at" else r[k]) for k in public} for r in rows], result.success
