"""Ticks: the deciding lease, the cadence bound, the daily bound, and each tick's private context."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from overseer_dagster.store.tables import decisions, leases, ticks

DECIDING_LEASE = "overseer_tick"


def acquire_lease(conn: Connection, holder: str, now: datetime, ttl_s: float) -> bool:
    """Take the named lease if free or expired. Idempotent for the same holder."""
    expires = now + timedelta(seconds=ttl_s)
    return bool(conn.execute(
        update(leases)
        .where(leases.c.name == DECIDING_LEASE)
        .where(or_(leases.c.holder.is_(None), leases.c.expires_at <= now, leases.c.holder == holder))
        .values(holder=holder, expires_at=expires)
    ).rowcount)


def release_lease(conn: Connection, holder: str) -> None:
    conn.execute(
        update(leases)
        .where(leases.c.name == DECIDING_LEASE, leases.c.holder == holder)
        .values(holder=None, expires_at=None)
    )


def last_deciding_start(conn: Connection) -> datetime | None:
    """Only ticks past the lease and the cadence check get a `ticks` row: each one is a deciding tick."""
    return conn.execute(select(func.max(ticks.c.started_at))).scalar()


def autonomous_queued_since(conn: Connection, since: datetime) -> int:
    return conn.execute(
        select(func.count())
        .select_from(decisions)
        .where(
            decisions.c.phase == "decision",
            decisions.c.state.in_(("queued", "advisory")),
            decisions.c.authority == "autonomous",
            decisions.c.created_at >= since,
        )
    ).scalar_one()


def record_tick(conn: Connection, **values) -> None:  # noqa: ANN003 - column values of `ticks`
    conn.execute(insert(ticks).values(**values))


def last_tick(engine: Engine) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(ticks).order_by(ticks.c.started_at.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def contexts_since(engine: Engine, since: datetime) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ticks).where(ticks.c.started_at >= since, ticks.c.context_json.is_not(None))
            .order_by(ticks.c.started_at)
        ).mappings().all()
    return [dict(r) for r in rows]


def iter_contexts_since(engine: Engine, since: datetime) -> Iterator[dict]:
    """`contexts_since`, one tick at a time: a large fleet's context is megabytes, and a day holds 1,440 ticks."""
    with engine.connect() as conn:
        ids = conn.execute(
            select(ticks.c.tick_id).where(ticks.c.started_at >= since, ticks.c.context_json.is_not(None))
            .order_by(ticks.c.started_at)
        ).scalars().all()
    for tick_id in ids:
        with engine.connect() as conn:
            row = conn.execute(select(ticks).where(ticks.c.tick_id == tick_id)).mappings().first()
        if row is not None:
            yield dict(row)
