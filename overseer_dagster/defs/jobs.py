"""The tick job and its schedule. The schedule's toggle in the UI is the enable flag."""

import dagster as dg

from overseer_dagster.defs.assets import TICK_GROUP

overseer_tick = dg.define_asset_job(
    "overseer_tick",
    selection=dg.AssetSelection.groups(TICK_GROUP),
    description="Watch the fleet and demand, decide, record. One run per minute when its schedule is on.",
    # The steps form a chain: a process per step buys no parallelism, only seconds of CPU that the
    # dispatch runs (decision to action in seconds) compete for.
    executor_def=dg.in_process_executor,
)

overseer_tick_schedule = dg.ScheduleDefinition(
    name="overseer_tick_schedule",
    job=overseer_tick,
    cron_schedule="* * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Turning this schedule on is the overseer's enable flag.",
)
