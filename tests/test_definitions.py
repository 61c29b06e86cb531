"""The code location as the Dagster UI shows it."""

import dagster as dg

from overseer_dagster.definitions import defs


def test_tick_job_materializes_the_watch_and_decision_assets() -> None:
    job = defs.resolve_job_def("overseer_tick")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"fleet_state", "external_demand", "fleet_throughput", "overseer_decision"} <= keys


def test_schedule_runs_every_minute_and_is_stopped_by_default() -> None:
    schedule = defs.resolve_schedule_def("overseer_tick_schedule")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.job_name == "overseer_tick"


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
