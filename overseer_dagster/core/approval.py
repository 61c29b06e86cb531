"""Approvals, the pure part: what an operator signs, the receipt it becomes, and when a gate may act.

An approval is an operator's Ed25519 signature over the canonical JSON of
`{gate_id, action_hash, decision, operator, issued_at}`. The action hash binds it to the exact
action and the fleet precondition it was decided on (`core.gates.action_hash`); the gate id and a
recent `issued_at` bind it to one gate, now. Its receipt id is the SHA-256 of the signed approval
(the message and the signature's bytes), so replaying the same approval is the same receipt.

Signing and verifying (cryptography) live in `overseer_dagster.receipts`; nothing here reads a
clock, a file or a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from overseer_dagster.core.gates import canonical
from overseer_dagster.core.vocabulary import ActionKind

# An approval is good for this long after it was issued, and may be dated this far in the future
# (the operator's clock may run ahead of the overseer's).
MAX_AGE_S = 600
FUTURE_SKEW_S = 60
# Operator names show on public surfaces (the UI, `overseer gates`): a plain handle, nothing else.
OPERATOR_NAME_PATTERN = r"[a-z][a-z0-9._-]{0,63}"
_OPERATOR_NAME = re.compile(OPERATOR_NAME_PATTERN)
SIGNATURE_BYTES = 64
HASH_PREFIX = 12

# Gate states; the open ones hold the one-open-gate-per-action-hash index.
GATE_STATES = ("pending", "approved", "rejected", "expired", "executed", "superseded")
OPEN_STATES = ("pending", "approved")
# Gated kinds whose precondition is a slice of the fleet: their hash is recomputed on a fresh read.
NEEDS_FLEET = frozenset({ActionKind.quarantine_replica, ActionKind.request_scale_out})


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"
    # An operator's go-ahead for an executed gate's rollback (re-admitting a quarantined replica).
    rollback = "rollback"


class Refusal(StrEnum):
    """Why a signed decision was refused: the reason code of its `approval_refused` journal row."""

    bad_decision = "bad_decision"
    unknown_gate = "unknown_gate"
    unregistered_operator = "unregistered_operator"
    bad_signature = "bad_signature"
    bad_issued_at = "bad_issued_at"
    stale_issued_at = "stale_issued_at"
    replayed = "replayed"
    expired = "expired"
    already_decided = "already_decided"
    # Rollbacks: the gate never executed, or it has no rollback waiting.
    not_executed = "not_executed"
    no_rollback = "no_rollback"
    kill_switch = "kill_switch"


class Refused(Exception):
    """A signed decision the overseer will not record: `reason` is a code, the message says why in words."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_operator_name(name: object) -> bool:
    return isinstance(name, str) and _OPERATOR_NAME.fullmatch(name) is not None


def signed_message(*, gate_id: str, action_hash: str, decision: str, operator: str, issued_at: str) -> bytes:
    """The exact bytes an operator signs."""
    return canonical({"gate_id": gate_id, "action_hash": action_hash, "decision": decision,
                      "operator": operator, "issued_at": issued_at}).encode()


def signature_bytes(signature_b64: str) -> bytes:
    """The raw signature; ValueError unless it is strict base64 of exactly 64 bytes."""
    try:
        raw = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the signature is not base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"the signature is {len(raw)} bytes, not {SIGNATURE_BYTES}")
    return raw


def receipt_id(message: bytes, signature: bytes) -> str:
    """SHA-256 of the signed approval. Over the signature's bytes, so no re-encoding makes a new receipt."""
    return hashlib.sha256(message + b"\n" + base64.b64encode(signature)).hexdigest()


def parse_issued_at(text: str) -> datetime:
    """An RFC 3339 time with its zone; ValueError otherwise."""
    if not isinstance(text, str) or not 20 <= len(text) <= 40 or "T" not in text.upper():
        raise ValueError("issued_at must be an RFC 3339 time such as 2026-01-02T03:04:05Z")
    value = datetime.fromisoformat(text.replace("z", "Z"))
    if value.tzinfo is None:
        raise ValueError("issued_at needs a zone (Z or +hh:mm)")
    return value


def freshness_problem(issued_at: datetime, now: datetime) -> str | None:
    """None when `issued_at` is recent enough to act on at `now`; else why not, in words."""
    age = (now - issued_at).total_seconds()
    if age > MAX_AGE_S:
        return f"issued {int(age)} s ago; an approval is good for {MAX_AGE_S} s"
    if -age > FUTURE_SKEW_S:
        return f"issued {int(-age)} s in the future; clocks may differ by at most {FUTURE_SKEW_S} s"
    return None


def ineffective(gate: Mapping[str, Any], receipt: Mapping[str, Any] | None, *, now: datetime,
                signature_ok: bool) -> str | None:
    """None when `receipt` makes `gate` effective at `now` (approved by a registered operator with a
    valid signature over the gate's action hash, unexpired, not superseded, unused); else why not."""
    if gate["state"] != "approved":
        return f"the gate is {gate['state']}"
    if gate["expires_at"] <= now:
        return "the gate has expired"
    if receipt is None or receipt["decision"] != Decision.approve:
        return "no approval receipt"
    if receipt["gate_id"] != gate["gate_id"] or receipt["action_hash"] != gate["action_hash"]:
        return "the receipt is for another action"
    if receipt["consumed_at"] is not None:
        return "the receipt was already used"
    if not signature_ok:
        return "the receipt's signature does not verify against the operator registry"
    return None


# --- the operator's view (values a projection then checks) ------------------------------------------


def gate_view(gate: Mapping[str, Any], action: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """One gate as `overseer gates` and the `approval_gates` asset show it: typed fields only."""
    view: dict[str, Any] = {
        "gate_id": gate["gate_id"],
        "kind": gate["kind"],
        "risky_kind": gate["risky_kind"],
        "state": gate["state"],
        "created_at": gate["created_at"],
        "expires_at": gate["expires_at"],
        "age_s": max(0, int((now - gate["created_at"]).total_seconds())),
        "expires_in_s": max(0, int((gate["expires_at"] - now).total_seconds())),
        "action_hash_prefix": gate["action_hash"][:HASH_PREFIX],
    }
    for key in ("replica_id", "gpu_class", "count", "max_hourly_usd", "amount_sats", "payee_ref", "purpose"):
        if action.get(key) is not None:
            view[key] = action[key]
    return view


def target_text(view: Mapping[str, Any]) -> str:
    """What a gate would act on, in a few words (from public view fields)."""
    kind = view.get("kind")
    if kind == ActionKind.quarantine_replica:
        return f"{view.get('replica_id')}"
    if kind == ActionKind.request_scale_out:
        return f"{view.get('count')} x {view.get('gpu_class')} (max {view.get('max_hourly_usd')} USD/h)"
    if kind == ActionKind.wallet_spend:
        return f"{view.get('amount_sats')} sats to {view.get('payee_ref')} ({view.get('purpose')})"
    return "-"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int):
        return str(seconds)
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def gates_markdown(views: Iterable[Mapping[str, Any]]) -> str:
    """A Markdown table of (already projected) gate views."""
    rows = list(views)
    if not rows:
        return "No open gates."
    lines = ["| gate | kind | target | state | age | expires in | action hash |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in rows:
        lines.append(f"| `{v.get('gate_id')}` | {v.get('kind')} | {target_text(v)} | {v.get('state')} | "
                     f"{_duration(v.get('age_s'))} | {_duration(v.get('expires_in_s'))} | "
                     f"`{v.get('action_hash_prefix')}` |")
    return "\n".join(lines)
