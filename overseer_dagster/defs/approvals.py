"""Gates in Dagster: the operator's `approve_action` and `rollback_action` jobs, the `approved_dispatch`
and `due_rollbacks` sensors, and the `approval_receipts` (the approval log) and `approval_gates` assets.

Dagster's webserver has no login: launching a run proves nothing about who approved. Each job takes
an operator's signature in its config and `approvals` checks it against the operator registry.
"""

import hashlib
from datetime import UTC, datetime

import dagster as dg

from overseer_dagster import approvals, dispatch, gated, settings
from overseer_dagster.approvals import SignedDecision
from overseer_dagster.core.approval import HASH_PREFIX, Decision, Refused
from overseer_dagster.core.redact import redact
from overseer_dagster.defs import public
from overseer_dagster.defs.actions import dispatch_action
from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, StoreResource
from overseer_dagster.defs.sensors import ACTION_TAG, DISPATCH_INTERVAL_S, GATE_TAG, all_ended, dispatch_runs
from overseer_dagster.receipts import load_registry

APPROVALS_GROUP = "overseer_approvals"

approval_receipts = dg.AssetSpec(
    "approval_receipts",
    group_name=APPROVALS_GROUP,
    description="The approval log: one materialization per signed operator decision the overseer recorded "
                "(approve, reject, rollback), with the gate, the operator and the receipt id's prefix.",
)
approval_gates = dg.AssetSpec(
    "approval_gates",
    group_name=APPROVALS_GROUP,
    description="Open gates (pending or approved, not yet executed) as a table: kind, target, age, expiry, "
                "action hash prefix. Reported by the approved_dispatch sensor whenever the set changes.",
)


def _now() -> datetime:
    return datetime.now(UTC)


def _receipt_metadata(values: dict) -> dict:
    return public.metadata("approval_receipts", values)


def _refused(context: dg.OpExecutionContext, what: str, gate_id: str, exc: Refused) -> dg.Failure:
    public.log(context, "error", what + " refused: {reason}", reason=exc.reason.value)
    return dg.Failure(
        description=f"{what} refused ({exc.reason.value}): {redact(str(exc))}",
        metadata=_receipt_metadata({"gate_id": gate_id, "reason": exc.reason.value}),
    )


# --- approve_action ------------------------------------------------------------------------------------


class ApprovalConfig(dg.Config):
    """A signed decision, as `overseer approve --print-config` writes it."""

    gate_id: str
    operator: str
    decision: str = "approve"
    issued_at: str
    signature: str
    note: str = ""


@dg.op(out=dg.Out(dg.Nothing), description="Verify the operator's signature over the gate's action; record the "
       "decision and its receipt, or refuse it naming the cause.")
def record_approval(context: dg.OpExecutionContext, config: ApprovalConfig, store: StoreResource):
    signed = SignedDecision(gate_id=config.gate_id, operator=config.operator, decision=config.decision,
                            issued_at=config.issued_at, signature=config.signature, note=config.note)
    try:
        rec = approvals.decide(store.engine(), load_registry(), signed, now=_now(), run_id=context.run_id)
    except Refused as exc:
        raise _refused(context, "approval", config.gate_id, exc) from None
    values = {"gate_id": rec.gate_id, "kind": rec.kind, "risky_kind": rec.risky_kind, "operator": rec.operator,
              "decision": rec.decision, "receipt_id_prefix": rec.receipt_id[:HASH_PREFIX],
              "action_hash_prefix": rec.action_hash[:HASH_PREFIX]}
    context.log_event(dg.AssetMaterialization(asset_key=approval_receipts.key, metadata=_receipt_metadata(values)))
    public.log(context, "info", "gate {gate_id}: {decision} by {operator}", gate_id=rec.gate_id,
               decision=rec.decision, operator=rec.operator)
    yield dg.Output(None, metadata=_receipt_metadata(values))


@dg.job(
    description="An operator's signed approval or rejection of one gate (overseer approve / reject, or the "
                "Launchpad with the config `overseer approve --print-config` prints).",
    executor_def=dg.in_process_executor,
)
def approve_action():
    record_approval()


# --- rollback_action -----------------------------------------------------------------------------------


class RollbackConfig(dg.Config):
    """An executed gate's rollback: signed by an operator, or empty fields for a due automatic one."""

    gate_id: str
    operator: str = ""
    issued_at: str = ""
    signature: str = ""
    note: str = ""


@dg.op(out=dg.Out(dg.Nothing), description="Undo an executed gate (re-admit a quarantined replica; drain "
       "scaled-out capacity, then release it), once.")
def run_rollback(context: dg.OpExecutionContext, config: RollbackConfig, store: StoreResource,
                 fleet: FleetResource, actuators: ActuatorsResource):
    engine = store.engine()
    signed = None
    if config.operator or config.signature or config.issued_at:
        signed = SignedDecision(gate_id=config.gate_id, operator=config.operator, decision=Decision.rollback.value,
                                issued_at=config.issued_at, signature=config.signature, note=config.note)
    cadence_s = settings.TickSettings.from_env().cadence_s
    hands = gated.actuators_from_settings(actuators.build(engine, cadence_s=cadence_s).router)
    try:
        done = gated.run_rollback(engine, config.gate_id, signed, run_id=context.run_id, clock=_now,
                                  enabled=settings.enabled(), registry=load_registry(), actuators=hands,
                                  fleet=fleet)
    except Refused as exc:
        raise _refused(context, "rollback", config.gate_id, exc) from None
    values = {"gate_id": done.gate_id, "outcome": done.outcome, "operator": done.operator,
              "decision": Decision.rollback.value if signed else None,
              "receipt_id_prefix": done.receipt_id[:HASH_PREFIX] if done.receipt_id else None}
    if signed is not None:
        context.log_event(dg.AssetMaterialization(asset_key=approval_receipts.key, metadata=_receipt_metadata(values)))
    public.log(context, "info", "gate {gate_id}: {outcome} {reason}", gate_id=done.gate_id, outcome=done.outcome,
               reason=done.reason)
    if done.outcome != "rolled_back":
        raise dg.Failure(description=f"rollback failed ({done.reason}): {done.detail or ''}",
                         metadata=_receipt_metadata(values))
    yield dg.Output(None, metadata=_receipt_metadata(values))


@dg.job(
    description="Roll back one executed gate: a quarantine by an operator's signed go-ahead (overseer rollback), "
                "a scale-out's scale_in automatically when due (launched by due_rollbacks).",
    executor_def=dg.in_process_executor,
)
def rollback_action():
    run_rollback()


# --- sensors -------------------------------------------------------------------------------------------


def _gates_report(engine, now: datetime, cursor: str | None) -> tuple[list, str]:  # noqa: ANN001
    """A materialization of `approval_gates` when the open gates (ids and states) changed since `cursor`."""
    view = approvals.open_gates_view(engine, now)
    gates = view.value.get("gates") or []
    digest = hashlib.sha256("|".join(f"{g.get('gate_id')}:{g.get('state')}" for g in gates).encode()).hexdigest()
    if digest == cursor:
        return [], digest
    metadata = public.metadata("approval_gates", {k: v for k, v in view.value.items() if k != "gates"})
    metadata["gates"] = dg.MetadataValue.md(approvals.gates_markdown(view))
    if view.withheld:
        metadata["projection_withheld"] = len(view.withheld)
    return [dg.AssetMaterialization(asset_key=approval_gates.key, metadata=metadata)], digest


@dg.sensor(
    job=dispatch_action,
    minimum_interval_seconds=DISPATCH_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Expire due gates; launch one dispatch_action run per effective gate (run key gated:<gate_id>; "
                "another, gated:<gate_id>:<n>, when one ended without claiming the action, up to 3 in all). "
                "Runs while the tick schedule is stopped (an operator asked); OVERSEER_ENABLED off stops it.",
)
def approved_dispatch(context: dg.SensorEvaluationContext, store: StoreResource, fleet: FleetResource,
                      actuators: ActuatorsResource):
    engine = store.engine()
    now = _now()
    expired = gated.expire(engine, now)
    for gate_id in expired:
        public.log(context, "info", "gate {gate_id}: expired", gate_id=gate_id)
    events, cursor = _gates_report(engine, now, context.cursor)
    if not settings.enabled():
        return dg.SensorResult(skip_reason="OVERSEER_ENABLED is off: executing no approved gate",
                               asset_events=events, cursor=cursor)
    if settings.mode() == "advisory":
        return dg.SensorResult(skip_reason="OVERSEER_MODE is advisory: executing no approved gate",
                               asset_events=events, cursor=cursor)
    cadence_s = settings.TickSettings.from_env().cadence_s
    hands = gated.actuators_from_settings(actuators.build(engine, cadence_s=cadence_s).router)
    sweep = gated.sweep(engine, now=now, registry=load_registry(), fleet=fleet, actuators=hands)
    for s in sweep.settled:
        public.log(context, "info", "{kind} {action_id}: {outcome} {reason}", kind=s.kind, action_id=s.action_id,
                   outcome=s.outcome, reason=s.reason)
    keys = _run_keys(context.instance, sweep.launch, now)
    for g in sweep.launch:
        if keys[g.gate_id] is None:
            public.log(context, "warning", "gate {gate_id}: {count} runs ended without claiming its action; not "
                       "launched again (the approval stays unused until the gate expires)", gate_id=g.gate_id,
                       count=gated.GATED_RUNS)
    requests = [
        dg.RunRequest(
            run_key=keys[g.gate_id],
            run_config=dg.RunConfig(ops={"execute_action": {"config": {"action_id": g.action_id}}}),
            tags={ACTION_TAG: g.action_id, "overseer/kind": g.kind, GATE_TAG: g.gate_id},
        )
        for g in sweep.launch if keys[g.gate_id]
    ]
    return dg.SensorResult(run_requests=requests, skip_reason=None if requests else "no effective gates to launch",
                           asset_events=events, cursor=cursor)


def _run_keys(instance: dg.DagsterInstance, launch: list[gated.Launch], now: datetime) -> dict[str, str | None]:
    """Each effective gate's next run key: `gated:<gate_id>`, a new one when every earlier run ended without
    claiming its action (Dagster would skip a spent key, leaving the approval unused), None past
    `gated.GATED_RUNS`. Runs are looked up only for gates approved over a few seconds ago: a fresh approval
    has none yet. A run still on its way keeps its key (Dagster skips the repeat)."""
    settled = [g.gate_id for g in launch
               if g.approved_at is None or (now - g.approved_at).total_seconds() >= dispatch.RUN_CHECK_AFTER_S]
    runs = dispatch_runs(instance, GATE_TAG, settled)
    keys: dict[str, str | None] = {}
    for g in launch:
        statuses = runs.get(g.gate_id, [])
        ended = len(statuses) if all_ended(statuses) else max(0, len(statuses) - 1)
        keys[g.gate_id] = gated.run_key(g.gate_id, ended)
    return keys


@dg.sensor(
    job=rollback_action,
    minimum_interval_seconds=DISPATCH_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launch the automatic rollbacks that are due (a scale-out's scale_in). OVERSEER_ENABLED off stops it.",
)
def due_rollbacks(context: dg.SensorEvaluationContext, store: StoreResource):
    if not settings.enabled():
        return dg.SkipReason("OVERSEER_ENABLED is off: launching no rollback")
    due = gated.due_rollbacks(store.engine(), _now())
    if not due:
        return dg.SkipReason("no rollback due")
    return [
        dg.RunRequest(
            run_key=f"rollback:{r['rollback_id']}:{r['attempts']}",
            run_config=dg.RunConfig(ops={"run_rollback": {"config": {"gate_id": r["gate_id"]}}}),
            tags={"overseer/action_id": r["action_id"], "overseer/gate_id": r["gate_id"]},
        )
        for r in due
    ]
