"""The code location: thin wiring of assets, jobs, schedules, sensors and resources."""

import os

import dagster as dg

from overseer_dagster.defs import assets
from overseer_dagster.defs.jobs import overseer_tick, overseer_tick_schedule
from overseer_dagster.defs.resources import FleetResource, MindResource, StoreResource

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    jobs=[overseer_tick],
    schedules=[overseer_tick_schedule],
    resources={
        "store": StoreResource(database_url=os.environ.get("OVERSEER_DATABASE_URL", "")),
        "fleet": FleetResource(source=os.environ.get("OVERSEER_FLEET_SOURCE", "sample")),
        "mind": MindResource(mind=os.environ.get("OVERSEER_MIND", "rule")),
    },
)
