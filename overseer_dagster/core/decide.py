"""Decide: from a tick's verdict to the rows it records. Pure: time and counts are passed in.

Every outcome of a tick is a row: `disabled`, `skipped`, `blocked`, and for a valid proposal one
row per action: `queued` (autonomous), `pending_approval` (gated, with its gate), `no_action`
(noop), or `advisory` (autonomous, but the overseer only advises).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from overseer_dagster.core.authority import AUTHORITY, Effect, effect_of
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.gates import GATE_TTL_S, action_hash, action_json, precondition_for
from overseer_dagster.core.proposal import Verdict
from overseer_dagster.core.redact import redact
from overseer_dagster.core.vocabulary import Action

EXCERPT_CHARS = 1000
Mode = Literal["autonomous", "advisory"]


@dataclass(frozen=True, slots=True)
class GateRequest:
    kind: str
    risky_kind: str
    action_hash: str
    precondition: dict[str, Any]
    rollback: dict[str, Any] | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Row:
    """One journal row a tick records (before it has ids and hashes)."""

    state: str
    reason: str | None = None
    detail: str | None = None
    kind: str | None = None
    authority: str | None = None
    action_json: str | None = None
    raw_digest: str | None = None
    raw_excerpt: str | None = None
    gate: GateRequest | None = None


def tick_row(state: str, reason: str | None, detail: str | None = None) -> Row:
    return Row(state=state, reason=reason, detail=redact(detail) if detail else None)


def blocked(raw: str | bytes | None, verdict: Verdict) -> Row:
    """A blocked proposal keeps a digest and a scrubbed excerpt of the raw text, never the raw text."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else (raw or b"")
    text = data.decode("utf-8", "replace")
    return Row(
        state="blocked",
        reason=verdict.reason,
        detail=redact(verdict.detail or "")[:EXCERPT_CHARS] or None,
        raw_digest=hashlib.sha256(data).hexdigest(),
        raw_excerpt=redact(text[:EXCERPT_CHARS * 4])[:EXCERPT_CHARS],
    )


def rows_for(
    verdict: Verdict,
    fleet: FleetSnapshot | None,
    *,
    now: datetime,
    mode: Mode,
    autonomous_today: int,
    daily_bound: int,
    raw: str | bytes | None = None,
) -> list[Row]:
    if verdict.verdict != "valid":
        return [blocked(raw, verdict)]
    rows: list[Row] = []
    budget = daily_bound - autonomous_today
    for action in verdict.actions:
        rows.append(_row_for(action, fleet, now=now, mode=mode, over_budget=budget <= 0))
        if rows[-1].state in ("queued", "advisory"):
            budget -= 1
    return rows


def _row_for(action: Action, fleet: FleetSnapshot | None, *, now: datetime, mode: Mode, over_budget: bool) -> Row:
    authority = AUTHORITY[action.kind]
    common = {"kind": action.kind, "action_json": action_json(action),
              "authority": "autonomous" if authority.autonomous else "gated"}
    effect = effect_of(action.kind)
    if effect is Effect.none:
        return Row(state="no_action", **common)
    if effect is Effect.execute:
        if over_budget:
            return Row(state="skipped", reason="daily_bound", **common)
        return Row(state="advisory" if mode == "advisory" else "queued", **common)
    precondition = precondition_for(action, fleet)
    rollback = getattr(action, "rollback", None)
    gate = GateRequest(
        kind=action.kind,
        risky_kind=authority.risky_kind.value if authority.risky_kind else "",
        action_hash=action_hash(action, precondition),
        precondition=precondition,
        rollback=rollback.model_dump(mode="json") if rollback is not None else None,
        expires_at=now + timedelta(seconds=GATE_TTL_S),
    )
    return Row(state="pending_approval", gate=gate, **common)
