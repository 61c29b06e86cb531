"""Stress targets: what the overseer asks the stress harness to run, pool-wide or per replica."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, select

from overseer_dagster.core.context import StressStatus
from overseer_dagster.store.tables import stress_targets

MAX_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class StressTarget:
    replica_id: str | None  # None: pool-wide
    concurrency: int
    created_at: datetime
    expires_at: datetime


def set_target(conn: Connection, *, replica_id: str | None, concurrency: int, now: datetime,
               expires_at: datetime, action_id: str | None = None) -> None:
    """A new target row; the newest unexpired row per scope wins. Impossible values are refused."""
    if not 0 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"stress concurrency must be within 0..{MAX_CONCURRENCY}, got {concurrency}")
    if expires_at <= now:
        raise ValueError("stress target expires_at must be after its creation")
    conn.execute(
        insert(stress_targets).values(
            replica_id=replica_id, concurrency=concurrency, created_at=now, expires_at=expires_at,
            action_id=action_id,
        )
    )


def active(engine: Engine, now: datetime) -> dict[str | None, StressTarget]:
    """The newest unexpired target per scope (None = pool-wide)."""
    with engine.connect() as conn:
        return active_on(conn, now)


def active_on(conn: Connection, now: datetime) -> dict[str | None, StressTarget]:
    """`active`, inside the caller's transaction (read and write the targets atomically)."""
    newest = (
        select(stress_targets.c.replica_id, func.max(stress_targets.c.target_id).label("target_id"))
        .where(stress_targets.c.expires_at > now, stress_targets.c.created_at <= now)
        .group_by(stress_targets.c.replica_id)
        .subquery()
    )
    query = select(stress_targets).join(newest, stress_targets.c.target_id == newest.c.target_id)
    rows = conn.execute(query).mappings().all()
    return {
        r["replica_id"]: StressTarget(r["replica_id"], r["concurrency"], r["created_at"], r["expires_at"])
        for r in rows
    }


def last_refreshed(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(func.max(stress_targets.c.created_at))).scalar()


def written_by(conn: Connection, action_id: str) -> int:
    """How many target rows this action wrote (0: its effect is not in the store)."""
    return conn.execute(
        select(func.count()).select_from(stress_targets).where(stress_targets.c.action_id == action_id)
    ).scalar_one()


def status(engine: Engine, now: datetime) -> StressStatus:
    """The stress targets in force at `now`, and when they were last refreshed."""
    current = active(engine, now)
    pool = current.get(None)
    return StressStatus(
        pool_concurrency=pool.concurrency if pool else 0,
        per_replica={k: t.concurrency for k, t in current.items() if k is not None},
        last_refreshed_at=last_refreshed(engine),
    )
