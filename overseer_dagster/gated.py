"""Gated actions: an effective gate becomes exactly one execution, and an executed gate's rollback runs.

A gate is *effective* when it is approved by a registered operator whose signature over the gate's
action hash still verifies against the operator registry, unexpired, not superseded, and its approval
receipt is unused. Nothing else makes a gated kind execute.

`dispatch_gated` is one `dispatch_action` run for a gated action:
1. refuse while `OVERSEER_ENABLED` is off or in advisory mode (the approval stays unused, the gate
   approved: it runs once the switch is back, if still unexpired);
2. find the effective approval (the signature re-verified now) or do nothing;
3. claim: `gated` -> `dispatching` and the receipt consumed, in one transaction (single use);
4. recompute the action hash from the gate's stored action and a fresh read of the fleet: a change
   is `precondition_failed: action_changed` and the gate `superseded`;
5. call the actuator (router quarantine, provider, wallet); record the outcome, the gate `executed`
   and its rollback, in one transaction.

`sweep` is the `approved_dispatch` sensor's: expire due gates (their waiting actions `blocked:
gate_expired`), settle gated claims whose lease expired by reading the world (never acting again),
and list the effective gates to launch. `run_rollback` is one `rollback_action` run; a `scale_in` drains
the allocation's replicas at the router and releases them only once no external request is in flight there.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine

from overseer_dagster import approvals
from overseer_dagster.adapters.actuators import ActuatorError, RouterAdmin
from overseer_dagster.adapters.fleet_source import FleetSource, FleetSourceError
from overseer_dagster.adapters.spend import SPEND_TIMEOUT_S, Allocation, Provider, Wallet
from overseer_dagster.approvals import SignedDecision
from overseer_dagster.core import approval
from overseer_dagster.core.approval import Decision, Refusal, Refused
from overseer_dagster.core.authority import AUTHORITY
from overseer_dagster.core.fleet import REPLICA_ID_PATTERN, FleetSnapshot, RoutingState
from overseer_dagster.core.gates import action_hash, precondition_for
from overseer_dagster.core.redact import redact
from overseer_dagster.core.vocabulary import Action, ActionKind, QuarantineReplica, RequestScaleOut, WalletSpend
from overseer_dagster.dispatch import ACT_BUDGET_S, DISPATCH_LEASE_S, NOT_QUEUED, Dispatched
from overseer_dagster.receipts import OperatorRegistry
from overseer_dagster.store import actions, gates, journal, receipts, write_tx

_ACTION: TypeAdapter[Action] = TypeAdapter(Action)
# A run that found its gate not effective (not approved, used, expired, ...): recorded nowhere.
NOT_EFFECTIVE = "not_effective"
ROLLBACK_LEASE_S = 120.0
# A gate's run that ended without claiming its action (its run worker never launched, it was canceled, or it
# refused while the kill switch was off) left the operator's approval unused: the sensor launches another,
# under a new run key, up to this many runs in all. Past that the approval stays unused (the gate expires as
# usual, or an operator launches `dispatch_action` for the action by hand): a fault that stops every run is
# not one more retry would cure, and the action never ran, so no outcome is invented for it.
GATED_RUNS = 3
# One run per gate and attempt (`run_key`): a fleet that does not answer gets a few tries first.
FLEET_READS = 3
FLEET_RETRY_S = 1.0
# An automatic rollback that failed is tried again after this long (doubling, up to the cap).
ROLLBACK_RETRY_S = 30.0
ROLLBACK_RETRY_CAP_S = 900.0
# A scale-in drains its replicas, then waits at most this long (reading the fleet every DRAIN_POLL_S) for
# the external requests in flight there to finish before it releases them, as a Kubernetes scale-down
# waits out a pod's grace period.
DRAIN_WAIT_S = 60.0
DRAIN_POLL_S = 1.0
# The release must still fit in the rollback's lease after the drain wait: the provider's timeout, and as
# much again for the outcome's transaction. A run past its lease would race the relaunched rollback.
RELEASE_BUDGET_S = 2 * SPEND_TIMEOUT_S

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class GatedActuators:
    router: RouterAdmin
    provider: Provider
    wallet: Wallet


@dataclass(frozen=True, slots=True)
class Launch:
    """An effective gate the sensor turns into a `dispatch_action` run."""

    gate_id: str
    action_id: str
    kind: str
    approved_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    launch: list[Launch]
    settled: list[Dispatched] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RolledBack:
    gate_id: str
    rollback_id: str
    plan: str
    outcome: str  # rolled_back | rollback_failed
    reason: str | None = None
    detail: str | None = None
    operator: str | None = None
    receipt_id: str | None = None


# --- effective ------------------------------------------------------------------------------------


def signature_ok(registry: OperatorRegistry, receipt: dict[str, Any]) -> bool:
    """Whether a stored receipt still verifies: its operator registered now, its signature theirs over
    the message it records, and its id that message's. A row written by hand fails here."""
    message = approval.signed_message(gate_id=receipt["gate_id"], action_hash=receipt["action_hash"],
                                      decision=receipt["decision"], operator=receipt["operator"],
                                      issued_at=receipt["issued_at"])
    try:
        signature = approval.signature_bytes(receipt["signature"])
    except ValueError:
        return False
    return (approval.receipt_id(message, signature) == receipt["receipt_id"]
            and registry.verify(receipt["operator"], message, signature))


def effective_problem(gate: dict[str, Any] | None, receipt: dict[str, Any] | None, registry: OperatorRegistry,
                      now: datetime) -> str | None:
    """None when `gate` is effective through `receipt` at `now`; else why not."""
    if gate is None:
        return "no such gate"
    return approval.ineffective(gate, receipt, now=now,
                                signature_ok=receipt is not None and signature_ok(registry, receipt))


def run_key(gate_id: str, ended: int) -> str | None:
    """The run key of a gate's next run when `ended` runs for it ended without claiming its action:
    `gated:<gate_id>`, then `gated:<gate_id>:2`, ...; None once GATED_RUNS have."""
    if ended >= GATED_RUNS:
        return None
    return f"gated:{gate_id}" if ended == 0 else f"gated:{gate_id}:{ended + 1}"


def is_gated(engine: Engine, action_id: str) -> bool:
    """Whether the action waits on a gate (status `gated`): only `dispatch_gated` may take it further."""
    row = actions.get(engine, action_id)
    return row is not None and row["status"] == "gated"


# --- one gated action ------------------------------------------------------------------------------


def dispatch_gated(
    engine: Engine,
    action_id: str,
    *,
    run_id: str,
    clock: Clock,
    enabled: bool,
    mode: str,
    fleet: FleetSource,
    actuators: GatedActuators,
    registry: OperatorRegistry,
) -> Dispatched:
    row = actions.get(engine, action_id)
    if row is None or row["status"] != "gated":
        status = row["status"] if row else "unknown"
        return Dispatched(action_id, NOT_QUEUED, detail=f"the action is {status}, not gated: nothing to do",
                          kind=row["kind"] if row else None)
    kind = row["kind"]
    if not enabled:
        return Dispatched(action_id, "blocked", "kill_switch", "OVERSEER_ENABLED is off: the approved action waits",
                          kind=kind)
    if mode == "advisory":
        return Dispatched(action_id, "advisory", "advisory_mode", "OVERSEER_MODE is advisory: executing nothing",
                          kind=kind)
    gate = gates.get(engine, row["gate_id"]) if row["gate_id"] else None
    receipt = receipts.approval_for(engine, gate["gate_id"]) if gate else None
    problem = effective_problem(gate, receipt, registry, clock())
    if problem is None and gate is not None and gate["action_id"] != action_id:
        problem = "the gate's approval is for another action row"
    if problem is not None:
        # A concurrent run may have claimed the action (and used the receipt) since the first read: that
        # run owns it, and this one merely lost the race.
        now_row = actions.get(engine, action_id)
        if now_row is not None and now_row["status"] != "gated":
            return Dispatched(action_id, NOT_QUEUED, detail=f"the action is {now_row['status']}, not gated: "
                              "nothing to do", kind=kind)
        return Dispatched(action_id, NOT_EFFECTIVE, "not_effective", problem, kind=kind)
    assert gate is not None and receipt is not None
    action = _gate_action(gate, row)
    needs_fleet = action is not None and action.action_kind in approval.NEEDS_FLEET

    now = clock()
    try:
        with write_tx(engine) as conn:
            receipts.claim_gated(conn, action_id=action_id, gate_id=gate["gate_id"], receipt_id=receipt["receipt_id"],
                                 run_id=run_id, now=now, lease_s=DISPATCH_LEASE_S)
            journal.append(conn, [_entry(row, "dispatching", None, f"claimed by run {run_id} with receipt "
                                         f"{receipt['receipt_id'][:approval.HASH_PREFIX]} of {receipt['operator']}",
                                         now)])
    except receipts.ClaimLost as lost:
        return Dispatched(action_id, NOT_QUEUED, detail=f"{lost}: nothing to do", kind=kind)
    lease_until = now + timedelta(seconds=DISPATCH_LEASE_S)

    if action is None:
        return _record(engine, row, gate, "blocked", ("stored_action_invalid", "the gate's stored action no longer "
                       "validates or differs from the action row"), now=clock(), gate_state="superseded")
    snapshot, problem = _read(fleet, clock(), attempts=FLEET_READS) if needs_fleet else (None, None)
    if problem is not None:
        return _record(engine, row, gate, "precondition_failed", ("fleet_unavailable", problem), now=clock(),
                       gate_state="superseded")
    current = action_hash(action, precondition_for(action, snapshot))
    if current != gate["action_hash"] or current != receipt["action_hash"]:
        return _record(engine, row, gate, "precondition_failed", (
            "action_changed", f"the action or its fleet precondition changed since approval (hash "
            f"{current[:approval.HASH_PREFIX]}, approved {gate['action_hash'][:approval.HASH_PREFIX]})"),
            now=clock(), gate_state="superseded")
    if clock() + timedelta(seconds=ACT_BUDGET_S) > lease_until:
        return _record(engine, row, gate, "failed", ("lease_expired", "too little lease left to act safely"),
                       now=clock(), gate_state="executed")
    try:
        detail, rollback = _act(action, action_id, actuators)
    except ActuatorError as exc:
        return _record(engine, row, gate, "failed", (exc.reason, str(exc)), now=clock(), gate_state="executed")
    except Exception as exc:  # a bug, not a typed failure: record it, then fail the run loudly
        _record(engine, row, gate, "failed", ("actuator_error", type(exc).__name__), now=clock(), gate_state="executed")
        raise
    return _record(engine, row, gate, "succeeded", (None, detail), now=clock(), gate_state="executed",
                   rollback=rollback)


def _gate_action(gate: dict[str, Any], row: dict[str, Any]) -> Action | None:
    """The approved action as the gate stored it, re-validated; None if it no longer validates, is not
    gated, or differs from the action row."""
    try:
        action = _ACTION.validate_json(gate["action_json"])
    except ValidationError:
        return None
    if (action.kind != gate["kind"] or action.kind != row["kind"] or gate["action_json"] != row["action_json"]
            or AUTHORITY[action.action_kind].autonomous):
        return None
    return action


def _read(fleet: FleetSource, now: datetime, *, attempts: int = 1) -> tuple[FleetSnapshot | None, str | None]:
    problem = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(FLEET_RETRY_S)
        try:
            return fleet.snapshot(now), None
        except FleetSourceError as exc:
            problem = f"{exc.reason}: {exc}"
    return None, problem


def _act(action: Action, action_id: str, act: GatedActuators) -> tuple[str, dict[str, Any] | None]:
    """Call the actuator; a public-safe detail and the rollback to schedule (plan, launch, after_s, ...)."""
    match action:
        case QuarantineReplica():
            state = act.router.quarantine(action.replica_id)
            return (f"{state.replica_id} is {state.routing_state.value}",
                    {"plan": "readmit_replica", "launch": "operator", "replica_id": action.replica_id})
        case RequestScaleOut():
            a = act.provider.scale_out(gpu_class=action.gpu_class, count=action.count,
                                       max_hourly_usd=action.max_hourly_usd, idempotency_key=action_id)
            return (f"allocation {a.allocation_id}: {a.count} x {a.gpu_class} at {a.hourly_usd} USD/h, {a.state}",
                    _scale_in_plan(a, action))
        case WalletSpend():
            p = act.wallet.pay(payee_ref=action.payee_ref, amount_sats=action.amount_sats, purpose=action.purpose,
                               idempotency_key=action_id)
            return f"payment {p.payment_id}: {p.amount_sats} sats to {p.payee_ref}, {p.state}", None
    raise ActuatorError("not_gated", f"{action.kind} is not a gated kind")


def _scale_in_plan(allocation: Allocation, action: RequestScaleOut) -> dict[str, Any]:
    """The rollback of a scale-out: release the allocation, after draining the replicas it names."""
    return {"plan": "scale_in", "launch": "automatic", "allocation_id": allocation.allocation_id,
            "replica_ids": list(allocation.replica_ids), "after_s": action.rollback.after_s}


def _entry(row: dict, state: str, reason: str | None, detail: str | None, now: datetime) -> journal.Entry:
    return journal.Entry(
        phase="outcome", state=state, created_at=now, tick_id=row["tick_id"], reason=reason,
        detail=redact(detail) if detail else None, kind=row["kind"], authority=row["authority"],
        action_id=row["action_id"], gate_id=row["gate_id"],
    )


def _record(engine: Engine, row: dict, gate: dict, outcome: str, why: tuple[str | None, str | None], *,
            now: datetime, gate_state: str, rollback: dict[str, Any] | None = None) -> Dispatched:
    """The outcome, the gate's final state, its rollback and the journal rows, in one transaction, if the
    compare-and-set on the action holds."""
    reason, detail = why
    with write_tx(engine) as conn:
        won = actions.finish(conn, row["action_id"], status=outcome, reason=reason, now=now)
        if won:
            entries = [_entry(row, outcome, reason, detail, now)]
            receipts.settle_gate(conn, gate["gate_id"], gate_state)
            entries += approvals.settle_waiting(conn, gate, f"gate_{gate_state}", f"the gate is {gate_state}", now)
            if rollback is not None:
                _schedule(conn, gate, row, rollback, now)
            journal.append(conn, entries)
    return Dispatched(row["action_id"], outcome, reason, redact(detail) if detail else None, row["kind"],
                      recorded=won)


def _schedule(conn, gate: dict, row: dict, rollback: dict[str, Any], now: datetime) -> None:  # noqa: ANN001
    plan = {k: v for k, v in rollback.items() if k != "launch"}
    due = now + timedelta(seconds=rollback["after_s"]) if rollback["launch"] == "automatic" else None
    receipts.schedule_rollback(conn, gate_id=gate["gate_id"], action_id=row["action_id"], plan=plan["plan"],
                               plan_json=json.dumps(plan, sort_keys=True), launch=rollback["launch"], due_at=due,
                               now=now)


# --- the sensor's sweep ------------------------------------------------------------------------------


def sweep(engine: Engine, *, now: datetime, registry: OperatorRegistry, fleet: FleetSource,
          actuators: GatedActuators | None = None) -> Sweep:
    """Expire due gates, settle expired gated claims, and list the effective gates to launch.

    Reads only the store (and verifies signatures), except to settle a claim whose lease expired
    (rare): then it reads the fleet, the provider or the wallet for that action's effect.
    """
    expired = expire(engine, now)
    settled: list[Dispatched] = []
    stuck = actions.expired_leases(engine, now, authority="gated")
    if stuck and actuators is not None:
        settled = reconcile(engine, stuck, now=now, fleet=fleet, actuators=actuators)
    launch = []
    for gate, receipt in receipts.effective_candidates(engine, now):
        if effective_problem(gate, receipt, registry, now) is None:
            row = actions.get(engine, gate["action_id"])
            if row is not None and row["status"] == "gated":
                launch.append(Launch(gate["gate_id"], gate["action_id"], gate["kind"], gate["decided_at"]))
    return Sweep(launch, [s for s in settled if s.recorded], expired)


def expire(engine: Engine, now: datetime) -> list[str]:
    """Gates past their expiry (pending, or approved but never used) become `expired`; their waiting
    actions `blocked: gate_expired`."""
    if not receipts.any_gate_due(engine, now):  # the usual case: no write transaction at all
        return []
    with write_tx(engine) as conn:
        expired = gates.expire_due(conn, now) + receipts.expire_approved_unused(conn, now)
        entries = []
        for gate in expired:
            entries += approvals.settle_waiting(conn, gate, "gate_expired", "the gate expired undecided or unused",
                                                now)
        journal.append(conn, entries)
    return [g["gate_id"] for g in expired]


def reconcile(engine: Engine, rows: list[dict], *, now: datetime, fleet: FleetSource,
              actuators: GatedActuators) -> list[Dispatched]:
    """Settle gated claims whose lease expired from the world: `succeeded: reconciled` when the effect is
    visible (the replica quarantined, the allocation or payment found by its idempotency key), else
    `failed: lease_expired`. When the world cannot be read, the claim waits for the next sweep."""
    snapshot, _ = (_read(fleet, now) if any(r["kind"] == ActionKind.quarantine_replica for r in rows)
                   else (None, None))
    out = []
    for row in rows:
        gate = gates.get(engine, row["gate_id"]) if row["gate_id"] else None
        action = _gate_action(gate, row) if gate else None
        if gate is None or action is None:
            continue
        try:
            visible, rollback = _effect(action, row["action_id"], snapshot, actuators)
        except ActuatorError:
            continue
        if visible is None:
            continue
        if visible:
            why = ("reconciled", "the claim's lease expired; its effect is visible")
            out.append(_record(engine, row, gate, "succeeded", why, now=now, gate_state="executed", rollback=rollback))
        else:
            why = ("lease_expired", "the claim's lease expired and its effect is not visible")
            out.append(_record(engine, row, gate, "failed", why, now=now, gate_state="executed"))
    return out


def _effect(action: Action, action_id: str, fleet: FleetSnapshot | None,
            act: GatedActuators) -> tuple[bool | None, dict[str, Any] | None]:
    """(visible, rollback): None when it cannot be told."""
    match action:
        case QuarantineReplica():
            if fleet is None:
                return None, None
            replica = fleet.replica(action.replica_id)
            seen = replica is not None and replica.routing_state is RoutingState.quarantined
            return seen, ({"plan": "readmit_replica", "launch": "operator", "replica_id": action.replica_id}
                          if seen else None)
        case RequestScaleOut():
            a = act.provider.find(action_id)
            if a is None:
                return False, None
            return True, _scale_in_plan(a, action)
        case WalletSpend():
            return act.wallet.find(action_id) is not None, None
    return False, None


# --- rollbacks ---------------------------------------------------------------------------------------


def due_rollbacks(engine: Engine, now: datetime) -> list[dict[str, Any]]:
    """Automatic rollbacks to launch now (a dead rollback run's claim is released first)."""
    if receipts.any_rollback_lease_expired(engine, now):
        with write_tx(engine) as conn:
            receipts.release_expired_rollback_leases(conn, now)
    return receipts.due_rollbacks(engine, now)


def run_rollback(engine: Engine, gate_id: str, signed: SignedDecision | None, *, run_id: str, clock: Clock,
                 enabled: bool, registry: OperatorRegistry, actuators: GatedActuators,
                 fleet: FleetSource) -> RolledBack:
    """One rollback, once: an operator's signed go-ahead (any plan), or due and automatic (`scale_in`).

    `fleet` is read fresh while a `scale_in` waits for its drained replicas to go idle.
    Raises Refused (after an `rollback_refused` journal row) when it may not run."""
    now = clock()
    # The lease below starts at `now`: its end in monotonic time bounds a scale-in's drain wait.
    lease_end = time.monotonic() + ROLLBACK_LEASE_S
    gate = approvals.load_gate(engine, gate_id)
    receipt = None
    try:
        if not enabled:
            raise Refused(Refusal.kill_switch, "OVERSEER_ENABLED is off: no rollback runs")
        if signed is not None:
            receipt = approvals.verify(engine, gate, signed, registry, now=now, accept=(Decision.rollback,))
            receipt["run_id"] = run_id
        elif gate is None:
            raise Refused(Refusal.unknown_gate, "no such gate")
        assert gate is not None
        if gate["state"] != "executed":
            raise Refused(Refusal.not_executed, f"gate {gate['gate_id']} is {gate['state']}, not executed")
        rollback = receipts.rollback_for(engine, gate["gate_id"])
        if rollback is None or rollback["state"] != "pending":
            state = rollback["state"] if rollback else "none"
            raise Refused(Refusal.no_rollback, f"gate {gate['gate_id']} has no rollback waiting (rollback: {state})")
        if signed is None and (rollback["launch"] != "automatic" or rollback["due_at"] > now):
            raise Refused(Refusal.no_rollback, f"the {rollback['plan']} rollback needs an operator's signed go-ahead"
                          if rollback["launch"] != "automatic" else f"the {rollback['plan']} rollback is not due yet")
        try:
            with write_tx(engine) as conn:
                if not receipts.start_rollback(conn, rollback["rollback_id"], run_id=run_id, now=now,
                                               lease_s=ROLLBACK_LEASE_S,
                                               receipt_id=receipt["receipt_id"] if receipt else None):
                    raise approvals.Lost
                entries = []
                if receipt is not None:
                    receipts.record_consumed(conn, receipt, consumed_by=rollback["rollback_id"], now=now)
                    entries.append(approvals.entry(gate, "decision", "rollback_approved", None,
                                                    approvals.said(signed, receipt), now))
                journal.append(conn, entries)
        except approvals.Lost:
            raise Refused(Refusal.no_rollback, "another run started this rollback") from None
    except Refused as exc:
        approvals.refuse(engine, gate, exc, now=now, state="rollback_refused")
        raise

    plan = json.loads(rollback["plan_json"])
    try:
        detail = _undo(plan, actuators, action_id=rollback["action_id"], fleet=fleet, clock=clock,
                       lease_end=lease_end)
        outcome, reason = "rolled_back", None
    except ActuatorError as exc:
        outcome, reason, detail = "rollback_failed", exc.reason, str(exc)
    done = outcome == "rolled_back"
    end = clock()
    retry_at = None
    if not done and rollback["launch"] == "automatic":
        retry_at = end + timedelta(seconds=min(ROLLBACK_RETRY_CAP_S, ROLLBACK_RETRY_S * 2 ** rollback["attempts"]))
    with write_tx(engine) as conn:
        if receipts.finish_rollback(conn, rollback["rollback_id"], run_id=run_id, done=done, reason=reason, now=end,
                                    retry_at=retry_at):
            journal.append(conn, [approvals.entry(gate, "outcome", outcome, reason, detail, end)])
    return RolledBack(gate["gate_id"], rollback["rollback_id"], rollback["plan"], outcome, reason,
                      redact(detail) if detail else None, operator=signed.operator if signed else None,
                      receipt_id=receipt["receipt_id"] if receipt else None)


def _undo(plan: dict[str, Any], act: GatedActuators, *, action_id: str, fleet: FleetSource, clock: Clock,
          lease_end: float) -> str:
    if plan["plan"] == "readmit_replica":
        state = act.router.admit(plan["replica_id"])
        return f"{state.replica_id} is {state.routing_state.value}"
    if plan["plan"] == "scale_in":
        return _scale_in(plan, act, action_id=action_id, fleet=fleet, clock=clock, lease_end=lease_end)
    raise ActuatorError("unknown_rollback", f"no rollback called {plan['plan']}")


def _scale_in(plan: dict[str, Any], act: GatedActuators, *, action_id: str, fleet: FleetSource, clock: Clock,
              lease_end: float) -> str:
    """Release a scale-out's allocation gracefully: drain its replicas at the router, wait until the fleet
    shows no external request in flight on them, then release. Releasing first would stop replicas that
    are still streaming users' answers.

    When the wait runs out the allocation is NOT released: the rollback fails `drain_timeout` and the
    automatic retry (30 s, doubling) drains again and waits again. Releasing anyway would cut the very
    requests the drain exists to protect, while waiting costs only spend (bounded by the retry, and the
    replicas, drained, take no new traffic meanwhile); a replica that never goes idle shows as repeated
    `rollback_failed: drain_timeout` rows, for an operator to look at."""
    replica_ids = _allocation_replicas(plan, act.provider, action_id)
    drained = _drain(replica_ids, act.router)
    _await_idle(drained, fleet, clock, until=min(time.monotonic() + DRAIN_WAIT_S, lease_end - RELEASE_BUDGET_S))
    a = act.provider.release(plan["allocation_id"])
    return f"allocation {a.allocation_id} is {a.state}"


def _allocation_replicas(plan: dict[str, Any], provider: Provider, action_id: str) -> list[str]:
    """The allocation's replica ids: those its scale-out answer listed, and those the provider lists now (found
    by the scale-out's idempotency key: a provider may name replicas only once they are provisioned).

    Only ids of the fleet's pattern: the routing-state oracle can list no other, so no other can carry
    routed traffic, and a provider's answer is never put in a router URL unchecked."""
    ids = list(plan.get("replica_ids") or [])
    current = provider.find(action_id)
    if current is not None and current.allocation_id == plan["allocation_id"]:
        ids += [rid for rid in current.replica_ids if rid not in ids]
    return [rid for rid in ids if re.fullmatch(REPLICA_ID_PATTERN, rid)]


def _drain(replica_ids: list[str], router: RouterAdmin) -> list[str]:
    """Take each replica out of new routing (idempotent); the ids the router knows. A replica it does not know
    is already gone: nothing to drain and nothing in flight there."""
    known = []
    for replica_id in replica_ids:
        try:
            router.drain(replica_id)
        except ActuatorError as exc:
            if exc.reason != "unknown_replica":
                raise
            continue
        known.append(replica_id)
    return known


def _await_idle(replica_ids: list[str], fleet: FleetSource, clock: Clock, *, until: float) -> None:
    """Return once a fresh read of the fleet shows no external request in flight on `replica_ids` (one the fleet
    no longer lists is gone; stress is preemptible and does not count); polls until `until` (monotonic).

    Raises ActuatorError `drain_timeout` (`fleet_unavailable` if the fleet could not be read) when time is up."""
    wanted = set(replica_ids)
    started = time.monotonic()
    while wanted:
        snapshot, problem = _read(fleet, clock())
        busy = {} if snapshot is None else {r.replica_id: r.external_inflight for r in snapshot.replicas
                                            if r.replica_id in wanted and r.external_inflight > 0}
        if snapshot is not None and not busy:
            return
        if time.monotonic() + DRAIN_POLL_S > until:
            waited = time.monotonic() - started
            if snapshot is None:
                raise ActuatorError("fleet_unavailable", f"the drained replicas' in-flight requests could not be "
                                    f"read for {waited:.0f} s ({problem}): not released")
            raise ActuatorError("drain_timeout", f"{sum(busy.values())} external request(s) still in flight on "
                                f"{', '.join(sorted(busy))} after {waited:.0f} s of draining: not released")
        time.sleep(DRAIN_POLL_S)


def actuators_from_settings(router: RouterAdmin) -> GatedActuators:
    """The production hands for gated kinds: the router (as autonomous dispatch builds it), and the
    provider and wallet at OVERSEER_PROVIDER_URL and OVERSEER_WALLET_URL (unset: `*_unconfigured`)."""
    from overseer_dagster import settings
    from overseer_dagster.adapters.spend import provider_from, wallet_from

    return GatedActuators(router=router, provider=provider_from(settings.provider_url()),
                          wallet=wallet_from(settings.wallet_url()))
