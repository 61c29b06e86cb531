"""Operator decisions on gates: verify a signed approval (or rejection, or rollback go-ahead), then record
it with its receipt, or refuse it.

`decide` is what the `approve_action` job calls. It checks, in order: the decision is one it takes, the
gate exists, the operator is registered, the signature is the operator's over this gate's CURRENT
action hash, `issued_at` is recent, the receipt was never seen, and the gate is still pending and
unexpired. Then, in one transaction: the gate's compare-and-set (pending -> approved | rejected: of two
concurrent approvals exactly one wins), the receipt row and a journal `decision` row. A refusal is an
`approval_refused` journal row naming the cause, the gate untouched, and `Refused` raised.

Nothing here executes anything: approved gates become dispatch runs through `gated`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from overseer_dagster.core import approval
from overseer_dagster.core.approval import Decision, Refusal, Refused
from overseer_dagster.core import projection
from overseer_dagster.core.projection import UUID
from overseer_dagster.core.redact import findings as redact_findings
from overseer_dagster.core.redact import redact
from overseer_dagster.receipts import OperatorRegistry
from overseer_dagster.store import actions, gates, journal, receipts, write_tx

NOTE_CHARS = 500


@dataclass(frozen=True, slots=True)
class SignedDecision:
    """What an operator submits (the `approve_action` / `rollback_action` run config)."""

    gate_id: str
    operator: str
    decision: str
    issued_at: str
    signature: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A decision the overseer recorded: public-safe fields for logs and the `approval_receipts` asset."""

    gate_id: str
    action_id: str
    kind: str
    risky_kind: str
    operator: str
    decision: str
    receipt_id: str
    action_hash: str


def _uuid_or_none(value: str) -> str | None:
    try:
        return UUID.project(value)
    except Exception:  # noqa: BLE001 - not a UUID: not worth naming
        return None


def verify(engine: Engine, gate: dict | None, signed: SignedDecision, registry: OperatorRegistry, *,
           now: datetime, accept: tuple[Decision, ...]) -> dict:
    """The receipt row a valid signed decision becomes; raises Refused naming the first check that fails.

    Checks everything but the gate's state, which each caller checks under its own lock."""
    if signed.decision not in accept:
        raise Refused(Refusal.bad_decision, f"decision must be one of {', '.join(accept)}")
    if gate is None:
        shown = _uuid_or_none(signed.gate_id)
        raise Refused(Refusal.unknown_gate, f"no gate {shown}" if shown else "no such gate (not a gate id)")
    if not approval.is_operator_name(signed.operator) or signed.operator not in registry:
        who = signed.operator if approval.is_operator_name(signed.operator) else "that name"
        raise Refused(Refusal.unregistered_operator, f"operator {who} is not in the operator registry")
    message = approval.signed_message(gate_id=gate["gate_id"], action_hash=gate["action_hash"],
                                      decision=signed.decision, operator=signed.operator, issued_at=signed.issued_at)
    try:
        signature = approval.signature_bytes(signed.signature)
    except ValueError as exc:
        raise Refused(Refusal.bad_signature, f"bad signature: {exc}") from None
    if not registry.verify(signed.operator, message, signature):
        raise Refused(Refusal.bad_signature, f"the signature is not {signed.operator}'s over this gate's current "
                      "action (wrong key, another gate or action, or an edited field)")
    try:
        issued = approval.parse_issued_at(signed.issued_at)
    except ValueError as exc:
        raise Refused(Refusal.bad_issued_at, str(exc)) from None
    stale = approval.freshness_problem(issued, now)
    if stale is not None:
        raise Refused(Refusal.stale_issued_at, f"stale approval: {stale}")
    rid = approval.receipt_id(message, signature)
    if receipts.get(engine, rid) is not None:
        raise Refused(Refusal.replayed, f"receipt {rid[:approval.HASH_PREFIX]} was already used: a signed "
                      "decision counts once")
    return {
        "receipt_id": rid, "gate_id": gate["gate_id"], "action_hash": gate["action_hash"],
        "operator": signed.operator, "decision": signed.decision, "issued_at": signed.issued_at,
        "signature": base64.b64encode(signature).decode(), "note": redact(signed.note)[:NOTE_CHARS] or None,
    }


def load_gate(engine: Engine, gate_id: str) -> dict | None:
    return gates.get(engine, gate_id) if isinstance(gate_id, str) and len(gate_id) <= 64 else None


def state_refusal(gate: dict, now: datetime) -> Refused | None:
    """Why a gate in this state cannot take a decision now (pending and unexpired can)."""
    if gate["state"] == "expired" or (gate["state"] == "pending" and gate["expires_at"] <= now):
        return Refused(Refusal.expired, f"gate {gate['gate_id']} expired at "
                       f"{gate['expires_at'].isoformat(timespec='seconds')}")
    if gate["state"] != "pending":
        return Refused(Refusal.already_decided, f"gate {gate['gate_id']} is already {gate['state']}")
    return None


def decide(engine: Engine, registry: OperatorRegistry, signed: SignedDecision, *, now: datetime,
           run_id: str | None = None) -> Recorded:
    """Record an approval or a rejection; raises Refused (after journaling it) when any check fails."""
    gate = load_gate(engine, signed.gate_id)
    try:
        receipt = verify(engine, gate, signed, registry, now=now, accept=(Decision.approve, Decision.reject))
        assert gate is not None
        refused = state_refusal(gate, now)
        if refused is not None:
            raise refused
        receipt["run_id"] = run_id
        try:
            with write_tx(engine) as conn:
                if not receipts.record_decision(conn, receipt, now=now):
                    raise Lost
                entries = [entry(gate, "decision", "approved" if signed.decision == Decision.approve else "rejected",
                                  None, said(signed, receipt), now)]
                if signed.decision == Decision.reject:
                    entries += settle_waiting(conn, gate, "gate_rejected", "an operator rejected the gate", now)
                journal.append(conn, entries)
        except Lost:
            raise state_refusal(load_gate(engine, gate["gate_id"]) or gate, now) or Refused(
                Refusal.already_decided, f"gate {gate['gate_id']} was decided by another run") from None
        except IntegrityError:
            raise Refused(Refusal.replayed, "this decision's receipt was recorded by another run") from None
    except Refused as exc:
        refuse(engine, gate, exc, now=now, state="approval_refused")
        raise
    return Recorded(gate_id=gate["gate_id"], action_id=gate["action_id"], kind=gate["kind"],
                    risky_kind=gate["risky_kind"], operator=signed.operator, decision=signed.decision,
                    receipt_id=receipt["receipt_id"], action_hash=gate["action_hash"])


class Lost(Exception):
    """A compare-and-set did not hold: roll the transaction back."""


def said(signed: SignedDecision, receipt: dict) -> str:
    text = f"{signed.decision} by {signed.operator}, receipt {receipt['receipt_id'][:approval.HASH_PREFIX]}"
    return f"{text}: {receipt['note']}" if receipt.get("note") else text


def refuse(engine: Engine, gate: dict | None, refused: Refused, *, now: datetime, state: str) -> None:
    """The journal row of a refused decision; the gate is not touched."""
    row = journal.Entry(
        phase="decision", state=state, created_at=now, reason=refused.reason.value, detail=redact(str(refused)),
        kind=gate["kind"] if gate else None, authority="gated" if gate else None,
        action_id=gate["action_id"] if gate else None, gate_id=gate["gate_id"] if gate else None,
    )
    with write_tx(engine) as conn:
        journal.append(conn, [row])


def settle_waiting(conn: Connection, gate: dict, reason: str, detail: str, now: datetime) -> list[journal.Entry]:
    """Every action still waiting on `gate` becomes `blocked` with `reason`; their journal rows."""
    entries = []
    for row in receipts.gated_actions(conn, gate["gate_id"]):
        if actions.finish(conn, row["action_id"], status="blocked", reason=reason, now=now, expected="gated"):
            entries.append(journal.Entry(
                phase="outcome", state="blocked", created_at=now, tick_id=row["tick_id"], reason=reason,
                detail=detail, kind=row["kind"], authority=row["authority"], action_id=row["action_id"],
                gate_id=gate["gate_id"],
            ))
    return entries


def entry(gate: dict, phase: str, state: str, reason: str | None, detail: str | None, now: datetime) -> journal.Entry:
    return journal.Entry(
        phase=phase, state=state, created_at=now, reason=reason, detail=redact(detail) if detail else None,
        kind=gate["kind"], authority="gated", action_id=gate["action_id"], gate_id=gate["gate_id"],
    )


# --- the operator's view ---------------------------------------------------------------------------


def _view(gate: dict, now: datetime) -> dict:
    try:
        fields = json.loads(gate["action_json"])
    except ValueError:
        fields = {}
    return approval.gate_view(gate, fields if isinstance(fields, dict) else {}, now=now)


def gate_view(gate: dict, now: datetime) -> dict:
    """One gate (in any state) as the operator's view shows it: projected, typed fields only."""
    return projection.project(projection.GATE, _view(gate, now)).value


def open_gates_view(engine: Engine, now: datetime) -> projection.Projection:
    """The open gates, projected onto the `approval_gates` surface (typed fields only, scrubbed)."""
    rows = gates.open_gates(engine)
    views = [_view(gate, now) for gate in rows]
    states = [g["state"] for g in rows]
    return projection.surface("approval_gates", {
        "open_gates": len(rows), "pending": states.count("pending"), "approved": states.count("approved"),
        "gates": views,
    })


def gates_markdown(view: projection.Projection) -> str:
    """The projected gates as a Markdown table; withheld whole if the table itself trips the scrubber."""
    text = approval.gates_markdown(view.value.get("gates") or [])
    return projection.MARKER if redact_findings(text) else text
