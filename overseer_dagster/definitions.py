"""The code location: thin wiring of assets, jobs, schedules, sensors and resources."""

import gc
import os

import dagster as dg

from overseer_dagster.defs import assets
from overseer_dagster.defs.actions import dispatch_action, fleet_reports
from overseer_dagster.defs.approvals import (
    approval_gates,
    approval_receipts,
    approve_action,
    approved_dispatch,
    due_rollbacks,
    rollback_action,
)
from overseer_dagster.defs.health import fleet_health, loop_fresh, overseer_watch, overseer_watch_schedule
from overseer_dagster.defs.io import PrivateValueIOManager
from overseer_dagster.defs.jobs import overseer_tick, overseer_tick_schedule
from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, MindResource, StoreResource
from overseer_dagster.defs.sensors import autonomous_dispatch


def _env_or(name: str, default: str) -> str:
    return dg.EnvVar(name) if os.environ.get(name) else default


defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([assets]), fleet_health, fleet_reports, approval_receipts, approval_gates],
    asset_checks=[loop_fresh],
    jobs=[overseer_tick, dispatch_action, overseer_watch, approve_action, rollback_action],
    schedules=[overseer_tick_schedule, overseer_watch_schedule],
    sensors=[autonomous_dispatch, approved_dispatch, due_rollbacks],
    resources={
        # Resource config is shown in the UI: URLs go in as EnvVar (the UI shows the name) or resolve at runtime.
        "store": StoreResource(),  # empty: OVERSEER_DATABASE_URL, read when the engine is made
        "fleet": FleetResource(source=_env_or("OVERSEER_FLEET_SOURCE", "sample")),
        # OVERSEER_MIND and, for `openai`, OVERSEER_MIND_BASE_URL/_MODEL/_API_KEY/_TIMEOUT_S.
        "mind": MindResource.from_env(),
        # empty: OVERSEER_ROUTER_URL (default: the fleet source's origin) and OVERSEER_WARM_MODEL, read at dispatch
        "actuators": ActuatorsResource(),
        # Asset values between steps, under OVERSEER_HOME; unlike Dagster's default, no `path` metadata.
        "io_manager": PrivateValueIOManager(),
    },
)

# Everything imported so far (Dagster, the code location) lives as long as the process: keep it out of the
# cyclic collector's full passes, which otherwise walk it again and again during a large tick (about a
# third of a 10,000-replica tick's CPU; BENCHMARKS.md, tick).
gc.freeze()
