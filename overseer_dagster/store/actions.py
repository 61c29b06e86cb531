"""Dispatch state of queued actions: compare-and-set transitions behind exactly-once execution.

queued -> dispatching -> succeeded | failed | precondition_failed | blocked
A transition happens only from the state the caller saw; a lost race changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, insert, select, update

from overseer_dagster.store.tables import actions

TERMINAL = ("succeeded", "failed", "precondition_failed", "blocked", "advisory")


def enqueue(conn: Connection, *, action_id: str, tick_id: str | None, kind: str, authority: str,
            action_json: str, now: datetime, status: str = "queued", gate_id: str | None = None) -> None:
    conn.execute(
        insert(actions).values(
            action_id=action_id, tick_id=tick_id, kind=kind, authority=authority, action_json=action_json,
            gate_id=gate_id, status=status, created_at=now, updated_at=now,
        )
    )


def queued(engine: Engine, limit: int = 100) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(actions).where(actions.c.status == "queued").order_by(actions.c.created_at).limit(limit)
        ).mappings().all()
    return [dict(r) for r in rows]


def get(engine: Engine, action_id: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(actions).where(actions.c.action_id == action_id)).mappings().first()
    return dict(row) if row else None


def claim(conn: Connection, action_id: str, *, run_id: str, now: datetime, lease_s: float) -> bool:
    """queued -> dispatching, once. False when someone else already claimed it."""
    return bool(
        conn.execute(
            update(actions)
            .where(actions.c.action_id == action_id, actions.c.status == "queued")
            .values(status="dispatching", run_id=run_id, updated_at=now,
                    lease_until=now + timedelta(seconds=lease_s))
        ).rowcount
    )


def finish(conn: Connection, action_id: str, *, status: str, reason: str | None, now: datetime,
           expected: str = "dispatching") -> bool:
    if status not in TERMINAL:
        raise ValueError(f"not a terminal status: {status}")
    return bool(
        conn.execute(
            update(actions)
            .where(actions.c.action_id == action_id, actions.c.status == expected)
            .values(status=status, outcome_reason=reason, updated_at=now, lease_until=None)
        ).rowcount
    )


def expired_leases(engine: Engine, now: datetime, *, authority: str = "autonomous") -> list[dict]:
    """Claims of `authority` actions whose lease expired (gated claims are settled by `gated.sweep`)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(actions).where(actions.c.status == "dispatching", actions.c.lease_until < now,
                                  actions.c.authority == authority)
        ).mappings().all()
    return [dict(r) for r in rows]
