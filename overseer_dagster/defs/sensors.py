"""The `autonomous_dispatch` sensor: queued actions become `dispatch_action` runs, within seconds.

Cheap by design: it reads the store (the fleet only to reconcile an expired claim, and Dagster's runs
only for an action still queued seconds after its run was requested: both rare), never the mind. It
is RUNNING by default because it is not the switch: the tick schedule's toggle is the one enable flag
of the autonomous loop, so while `overseer_tick_schedule` is stopped (or OVERSEER_ENABLED is off) it
dispatches nothing.
"""

from collections.abc import Callable
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
# The tags every dispatch run carries (set on the run requests): the action, and the gate of a gated one.
ACTION_TAG = "overseer/action_id"
GATE_TAG = "overseer/gate_id"
# A run in one of these will never claim anything again.
ENDED = frozenset({dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


def dispatch_runs(instance: dg.DagsterInstance, tag: str,
                  values: list[str]) -> dict[str, list[dg.DagsterRunStatus]]:
    """The statuses of the `dispatch_action` runs tagged `tag` = each of `values`, in one query."""
    out: dict[str, list[dg.DagsterRunStatus]] = {value: [] for value in values}
    if values:
        for run in instance.get_runs(filters=dg.RunsFilter(job_name=dispatch_action.name, tags={tag: values})):
            out.setdefault(run.tags.get(tag, ""), []).append(run.status)
    return out


def all_ended(statuses: list[dg.DagsterRunStatus]) -> bool:
    """Runs were launched and none can claim anything any more (failed or canceled before their claim, or
    finished having refused: the store tells which, as the action is still waiting)."""
    return bool(statuses) and all(status in ENDED for status in statuses)


def ended_runs(instance: dg.DagsterInstance) -> Callable[[list[str]], set[str]]:
    """`dispatch.due_actions`'s question, asked of `instance`: which of these actions' runs have all ended?"""
    def ended(action_ids: list[str]) -> set[str]:
        return {a for a, statuses in dispatch_runs(instance, ACTION_TAG, action_ids).items() if all_ended(statuses)}

    return ended


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
    description="Launch one dispatch_action run per queued autonomous action (run key = action id); an action "
                "whose run ended without claiming it is failed (run_never_started), never relaunched.",
)
def autonomous_dispatch(context: dg.SensorEvaluationContext, store: StoreResource, fleet: FleetResource):
    if not settings.enabled():
        return dg.SkipReason("OVERSEER_ENABLED is off: dispatching nothing")
    if not tick_schedule_running(context, overseer_tick_schedule):
        return dg.SkipReason(f"{overseer_tick_schedule.name} is stopped (the autonomous loop's switch): dispatching nothing")
    due = dispatch.due_actions(store.engine(), now=datetime.now(UTC),
                               cadence_s=settings.TickSettings.from_env().cadence_s, fleet=fleet,
                               ended_runs=ended_runs(context.instance))
    for s in due.settled:
        context.log.info(f"{s.kind} {s.action_id}: {s.outcome} ({s.reason})")
    if not due.actions:
        return dg.SkipReason("no queued actions")
    return [
        dg.RunRequest(
            run_key=f"dispatch:{a['action_id']}",
            run_config=dg.RunConfig(ops={"execute_action": {"config": {"action_id": a["action_id"]}}}),
            tags={ACTION_TAG: a["action_id"], "overseer/kind": a["kind"]},
        )
        for a in due.actions
    ]
