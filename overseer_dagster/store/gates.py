"""Approval gates: one open gate per action hash; a repeated proposal points at the open one."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from sqlalchemy import Connection, Engine, select, update

from overseer_dagster.core.decide import GateRequest
from overseer_dagster.store.tables import gates

OPEN = ("pending", "approved")


def open_gate(conn: Connection, request: GateRequest, *, action_id: str, action_json: str,
              now: datetime) -> tuple[str, bool]:
    """(gate_id, created). An identical open gate (same action hash) is reused, not duplicated."""
    existing = conn.execute(
        select(gates.c.gate_id).where(gates.c.action_hash == request.action_hash, gates.c.state.in_(OPEN))
    ).scalar()
    if existing is not None:
        return existing, False
    gate_id = str(uuid.uuid4())
    conn.execute(
        gates.insert().values(
            gate_id=gate_id, action_id=action_id, kind=request.kind, risky_kind=request.risky_kind,
            action_hash=request.action_hash, action_json=action_json,
            precondition_json=json.dumps(request.precondition, sort_keys=True),
            rollback_json=json.dumps(request.rollback, sort_keys=True) if request.rollback else None,
            state="pending", created_at=now, expires_at=request.expires_at,
        )
    )
    return gate_id, True


def expire_due(conn: Connection, now: datetime) -> list[dict]:
    """pending -> expired for every gate past its expiry; the gates this call expired."""
    due = conn.execute(select(gates).where(gates.c.state == "pending", gates.c.expires_at <= now)).mappings().all()
    expired = []
    for gate in due:
        if conn.execute(update(gates).where(gates.c.gate_id == gate["gate_id"], gates.c.state == "pending")
                        .values(state="expired")).rowcount:
            expired.append({**gate, "state": "expired"})
    return expired


def open_gates(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(gates).where(gates.c.state.in_(OPEN)).order_by(gates.c.created_at)).mappings()
        return [dict(r) for r in rows]


def get(engine: Engine, gate_id: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(gates).where(gates.c.gate_id == gate_id)).mappings().first()
    return dict(row) if row else None
