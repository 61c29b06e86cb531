"""Receipts and rollbacks: signed operator decisions on gates, each approval used at most once, and the
undo of executed gates.

Gate transitions are compare-and-sets: pending -> approved | rejected (one decision per gate),
approved -> executed | superseded | expired. A gated action is claimed (`gated` -> `dispatching`) in
the same transaction that consumes its approval receipt (`consumed_at IS NULL` -> now); either both
happen or neither. The gate row is locked first, so expiry and a claim never interleave.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, select, update

from overseer_dagster.store.tables import actions, gates, receipts, rollbacks

APPROVE = "approve"


class ClaimLost(Exception):
    """The gated claim did not hold (the caller's transaction must roll back); the message says why."""


# --- receipts and gate decisions ----------------------------------------------------------------------


def get(engine: Engine | Connection, receipt_id: str) -> dict[str, Any] | None:
    def read(conn: Connection) -> dict[str, Any] | None:
        row = conn.execute(select(receipts).where(receipts.c.receipt_id == receipt_id)).mappings().first()
        return dict(row) if row else None

    if isinstance(engine, Connection):
        return read(engine)
    with engine.connect() as conn:
        return read(conn)


def for_gate(engine: Engine | Connection, gate_id: str) -> list[dict[str, Any]]:
    def read(conn: Connection) -> list[dict[str, Any]]:
        rows = conn.execute(select(receipts).where(receipts.c.gate_id == gate_id)
                            .order_by(receipts.c.recorded_at)).mappings().all()
        return [dict(r) for r in rows]

    if isinstance(engine, Connection):
        return read(engine)
    with engine.connect() as conn:
        return read(conn)


def approval_for(engine: Engine | Connection, gate_id: str) -> dict[str, Any] | None:
    """The gate's approval receipt (used or not), if it was approved."""
    return next((r for r in for_gate(engine, gate_id) if r["decision"] == APPROVE), None)


def record_decision(conn: Connection, receipt: dict[str, Any], *, now: datetime) -> bool:
    """pending -> approved | rejected and the receipt row, in the caller's transaction.

    False, having written nothing, when the gate is no longer pending or has expired.
    """
    state = "approved" if receipt["decision"] == APPROVE else "rejected"
    won = conn.execute(
        update(gates)
        .where(gates.c.gate_id == receipt["gate_id"], gates.c.state == "pending", gates.c.expires_at > now,
               gates.c.action_hash == receipt["action_hash"])
        .values(state=state, decided_at=now, operator=receipt["operator"])
    ).rowcount
    if not won:
        return False
    conn.execute(receipts.insert().values(**receipt, recorded_at=now))
    return True


def record_consumed(conn: Connection, receipt: dict[str, Any], *, consumed_by: str, now: datetime) -> None:
    """A receipt that is used as it is recorded (a rollback's go-ahead)."""
    conn.execute(receipts.insert().values(**receipt, recorded_at=now, consumed_at=now, consumed_by_action=consumed_by))


def lock_gate(conn: Connection, gate_id: str) -> dict[str, Any] | None:
    """The gate row, locked for this transaction (PostgreSQL; SQLite's write lock is already held)."""
    row = conn.execute(select(gates).where(gates.c.gate_id == gate_id).with_for_update()).mappings().first()
    return dict(row) if row else None


def claim_gated(conn: Connection, *, action_id: str, gate_id: str, receipt_id: str, run_id: str, now: datetime,
                lease_s: float) -> None:
    """`gated` -> `dispatching` for an action whose gate holds an unused approval, and that approval
    consumed, in the caller's transaction. Raises ClaimLost (roll back) when any part does not hold."""
    gate = lock_gate(conn, gate_id)
    if gate is None or gate["state"] != "approved" or gate["expires_at"] <= now:
        raise ClaimLost("the gate is not approved and unexpired")
    unused_approval = exists().where(
        receipts.c.receipt_id == receipt_id, receipts.c.gate_id == gate_id, receipts.c.decision == APPROVE,
        receipts.c.action_hash == gate["action_hash"], receipts.c.consumed_at.is_(None),
    )
    claimed = conn.execute(
        update(actions)
        .where(actions.c.action_id == action_id, actions.c.gate_id == gate_id, actions.c.status == "gated",
               unused_approval)
        .values(status="dispatching", run_id=run_id, updated_at=now, lease_until=now + timedelta(seconds=lease_s))
    ).rowcount
    if claimed != 1:
        raise ClaimLost("the action is not gated, or its approval is already used")
    consumed = conn.execute(
        update(receipts)
        .where(receipts.c.receipt_id == receipt_id, receipts.c.consumed_at.is_(None))
        .values(consumed_at=now, consumed_by_action=action_id)
    ).rowcount
    if consumed != 1:
        raise ClaimLost("the approval was used by another run")


def settle_gate(conn: Connection, gate_id: str, state: str, *, expected: tuple[str, ...] = ("approved",)) -> bool:
    return bool(conn.execute(
        update(gates).where(gates.c.gate_id == gate_id, gates.c.state.in_(expected)).values(state=state)
    ).rowcount)


def gated_actions(conn: Connection, gate_id: str) -> list[dict[str, Any]]:
    """Actions still waiting on this gate (a repeated proposal adds one per tick)."""
    rows = conn.execute(select(actions).where(actions.c.gate_id == gate_id, actions.c.status == "gated")
                        .order_by(actions.c.created_at)).mappings().all()
    return [dict(r) for r in rows]


def expire_approved_unused(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """approved -> expired for gates past their expiry whose approval was never used."""
    out = []
    for gate_id in conn.execute(select(gates.c.gate_id).where(gates.c.state == "approved",
                                                              gates.c.expires_at <= now)).scalars().all():
        gate = lock_gate(conn, gate_id)
        if gate is None or gate["state"] != "approved":
            continue
        used = conn.execute(select(receipts.c.receipt_id).where(
            receipts.c.gate_id == gate_id, receipts.c.consumed_at.is_not(None))).first()
        if used is None and settle_gate(conn, gate_id, "expired"):
            out.append({**gate, "state": "expired"})
    return out


def any_gate_due(engine: Engine, now: datetime) -> bool:
    """Whether any open gate is past its expiry (a read, so the sensor writes only when there is work)."""
    with engine.connect() as conn:
        return conn.execute(select(gates.c.gate_id).where(
            gates.c.state.in_(("pending", "approved")), gates.c.expires_at <= now).limit(1)).first() is not None


def effective_candidates(engine: Engine, now: datetime) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Approved, unexpired gates with an unused approval receipt for their action hash, and that receipt.
    (Whether the signature still verifies is the caller's check, against the operator registry.)"""
    query = (
        select(gates, receipts.c.receipt_id.label("r_receipt_id"))
        .join(receipts, and_(receipts.c.gate_id == gates.c.gate_id, receipts.c.decision == APPROVE,
                             receipts.c.action_hash == gates.c.action_hash, receipts.c.consumed_at.is_(None)))
        .where(gates.c.state == "approved", gates.c.expires_at > now)
        .order_by(gates.c.decided_at)
    )
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings().all()]
        return [({k: v for k, v in r.items() if k != "r_receipt_id"}, get(conn, r["r_receipt_id"])) for r in rows]


# --- rollbacks ---------------------------------------------------------------------------------------


def schedule_rollback(conn: Connection, *, gate_id: str, action_id: str, plan: str, plan_json: str, launch: str,
                      due_at: datetime | None, now: datetime) -> str:
    rollback_id = str(uuid.uuid4())
    conn.execute(rollbacks.insert().values(
        rollback_id=rollback_id, gate_id=gate_id, action_id=action_id, plan=plan, plan_json=plan_json,
        launch=launch, state="pending", due_at=due_at, attempts=0, created_at=now, updated_at=now,
    ))
    return rollback_id


def rollback_for(engine: Engine | Connection, gate_id: str) -> dict[str, Any] | None:
    def read(conn: Connection) -> dict[str, Any] | None:
        row = conn.execute(select(rollbacks).where(rollbacks.c.gate_id == gate_id)).mappings().first()
        return dict(row) if row else None

    if isinstance(engine, Connection):
        return read(engine)
    with engine.connect() as conn:
        return read(conn)


def due_rollbacks(engine: Engine, now: datetime) -> list[dict[str, Any]]:
    """Automatic rollbacks whose time has come."""
    with engine.connect() as conn:
        rows = conn.execute(select(rollbacks).where(
            rollbacks.c.launch == "automatic", rollbacks.c.state == "pending", rollbacks.c.due_at <= now,
        ).order_by(rollbacks.c.due_at)).mappings().all()
    return [dict(r) for r in rows]


def any_rollback_lease_expired(engine: Engine, now: datetime) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(rollbacks.c.rollback_id).where(
            rollbacks.c.state == "running", rollbacks.c.lease_until < now).limit(1)).first() is not None


def release_expired_rollback_leases(conn: Connection, now: datetime) -> int:
    """running -> pending for rollbacks whose run died. Both rollbacks are idempotent, so trying again is safe."""
    return conn.execute(
        update(rollbacks).where(rollbacks.c.state == "running", rollbacks.c.lease_until < now)
        .values(state="pending", lease_until=None, updated_at=now, outcome_reason="lease_expired",
                attempts=rollbacks.c.attempts + 1)  # a new attempt: a new run key for the sensor
    ).rowcount


def start_rollback(conn: Connection, rollback_id: str, *, run_id: str, now: datetime, lease_s: float,
                   receipt_id: str | None = None) -> bool:
    """pending -> running, once."""
    values: dict[str, Any] = {"state": "running", "run_id": run_id, "updated_at": now,
                              "lease_until": now + timedelta(seconds=lease_s)}
    if receipt_id is not None:
        values["receipt_id"] = receipt_id
    return bool(conn.execute(
        update(rollbacks).where(rollbacks.c.rollback_id == rollback_id, rollbacks.c.state == "pending").values(**values)
    ).rowcount)


def finish_rollback(conn: Connection, rollback_id: str, *, run_id: str, done: bool, reason: str | None,
                    now: datetime, retry_at: datetime | None = None) -> bool:
    """running -> done, or back to pending (to be tried again at `retry_at`), by the run that holds it."""
    values: dict[str, Any] = {"state": "done" if done else "pending", "updated_at": now, "lease_until": None,
                              "outcome_reason": reason, "attempts": rollbacks.c.attempts + 1}
    if not done and retry_at is not None:
        values["due_at"] = retry_at
    return bool(conn.execute(
        update(rollbacks).where(rollbacks.c.rollback_id == rollback_id, rollbacks.c.state == "running",
                                rollbacks.c.run_id == run_id).values(**values)
    ).rowcount)


def pending_rollbacks(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(rollbacks).where(rollbacks.c.state != "done")
                            .order_by(rollbacks.c.created_at)).mappings().all()
    return [dict(r) for r in rows]
