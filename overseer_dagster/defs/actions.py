"""The `dispatch_action` job: one queued action, claimed, re-checked, executed and recorded, once."""

from datetime import UTC, datetime

import dagster as dg

from overseer_dagster import dispatch, gated, settings
from overseer_dagster.defs import public
from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, StoreResource
from overseer_dagster.receipts import load_registry

# The reports `emit_report` actions write; each dispatch that stores one records a materialization.
fleet_reports = dg.AssetSpec(
    "fleet_reports",
    group_name="overseer_reports",
    description="Public-safe reports the overseer emits (topic and summary in each materialization).",
)


class ActionConfig(dg.Config):
    action_id: str


def _now() -> datetime:
    return datetime.now(UTC)


@dg.op(out=dg.Out(dg.Nothing), description="Claim the action, re-check its precondition, act, record the outcome.")
def execute_action(
    context: dg.OpExecutionContext,
    config: ActionConfig,
    store: StoreResource,
    fleet: FleetResource,
    actuators: ActuatorsResource,
):
    engine = store.engine()
    cadence_s = settings.TickSettings.from_env().cadence_s
    if gated.is_gated(engine, config.action_id):  # only through its gate's effective approval (gated.py)
        result = gated.dispatch_gated(
            engine, config.action_id, run_id=context.run_id, clock=_now, enabled=settings.enabled(),
            mode=settings.mode(), fleet=fleet, registry=load_registry(),
            actuators=gated.actuators_from_settings(actuators.build(engine, cadence_s=cadence_s).router),
        )
    else:
        result = dispatch.dispatch_action(
            engine,
            config.action_id,
            run_id=context.run_id,
            clock=_now,
            enabled=settings.enabled(),
            mode=settings.mode(),
            cadence_s=cadence_s,
            fleet=fleet,
            actuators=actuators.build(engine, cadence_s=cadence_s),
        )
    # Typed fields only (core.projection): the free-text detail stays in the journal.
    public.log(context, "info", "{kind} {action_id}: {outcome} {reason}", kind=result.kind,
               action_id=result.action_id, outcome=result.outcome, reason=result.reason)
    if result.report is not None:
        context.log_event(dg.AssetMaterialization(
            asset_key=fleet_reports.key,
            metadata={"topic": result.report["topic"], "summary": dg.MetadataValue.md(result.report["summary"]),
                      "action_id": result.action_id},
        ))
    yield dg.Output(None, metadata=public.metadata("dispatch", {
        "action_id": result.action_id, "kind": result.kind, "outcome": result.outcome,
        "reason": result.reason, "recorded": result.recorded,
    }))


# One op: run it in the run worker itself, not in a second step process (seconds saved per action).
@dg.job(
    description="Execute one queued autonomous action exactly once (launched by `autonomous_dispatch`).",
    executor_def=dg.in_process_executor,
)
def dispatch_action():
    execute_action()
