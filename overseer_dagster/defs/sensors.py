"""The `autonomous_dispatch` sensor: queued actions become `dispatch_action` runs, within seconds.

Cheap by design: it reads the store (and the fleet only to reconcile an expired claim, which is
rare), never the mind. It is RUNNING by default because it is not the switch: the tick schedule's
toggle is the one enable flag of the autonomous loop, so while `overseer_tick_schedule` is stopped
(or OVERSEER_ENABLED is off) it dispatches nothing.
"""

from datetime import UTC, datetime

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

from overseer_dagster import dispatch, settings
from overseer_dagster.defs.actions import dispatch_action
from overseer_dagster.defs.jobs import overseer_tick_schedule
from overseer_dagster.defs.resources import FleetResource, StoreResource

# 4, not 5: the sensor daemon loops every 5 s, and a 5 s minimum measured from the last tick's start
# is missed by a hair on every other loop, so "5" evaluates every 10 s. 4 evaluates on every loop.
DISPATCH_INTERVAL_S = 4


def tick_schedule_running(context: dg.SensorEvaluationContext, schedule: dg.ScheduleDefinition) -> bool:
    """Whether `schedule` is on in this instance, as the UI's toggle set it.

    Dagster has no public API for an instigator's state; the instance's schedule storage is the
    source the daemon itself reads. States are matched by name, repository and code location.
    """
    location = context.code_location_origin.location_name if context.code_location_origin else None
    repository = context.repository_name or (context.repository_def.name if context.repository_def else None)
    for state in context.instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE):
        origin = state.origin
        if state.name != schedule.name or (repository and origin.repository_origin.repository_name != repository):
            continue
        if location and origin.location_name != location:
            continue
        if state.status is InstigatorStatus.RUNNING:
            return True
        if state.status is InstigatorStatus.STOPPED:
            return False
    # No toggle recorded (or DECLARED_IN_CODE): the schedule's default decides.
    return schedule.default_status is dg.DefaultScheduleStatus.RUNNING


@dg.sensor(
    job=dispatch_action,
    minimum_interval_seconds=DISPATCH_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launch one dispatch_action run per queued autonomous action (run key = action id).",
)
def autonomous_dispatch(context: dg.SensorEvaluationContext, store: StoreResource, fleet: FleetResource):
    if not settings.enabled():
        return dg.SkipReason("OVERSEER_ENABLED is off: dispatching nothing")
    if not tick_schedule_running(context, overseer_tick_schedule):
        return dg.SkipReason(f"{overseer_tick_schedule.name} is stopped (the autonomous loop's switch): dispatching nothing")
    due = dispatch.due_actions(store.engine(), now=datetime.now(UTC),
                               cadence_s=settings.TickSettings.from_env().cadence_s, fleet=fleet)
    for s in due.settled:
        context.log.info(f"{s.kind} {s.action_id}: {s.outcome} ({s.reason})")
    if not due.actions:
        return dg.SkipReason("no queued actions")
    return [
        dg.RunRequest(
            run_key=f"dispatch:{a['action_id']}",
            run_config=dg.RunConfig(ops={"execute_action": {"config": {"action_id": a["action_id"]}}}),
            tags={"overseer/action_id": a["action_id"], "overseer/kind": a["kind"]},
        )
        for a in due.actions
    ]
