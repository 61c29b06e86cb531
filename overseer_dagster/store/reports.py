"""Reports: the public-safe summaries `emit_report` actions write, at most one per action."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select

from overseer_dagster.store.tables import reports


def write(conn: Connection, *, topic: str, summary: str, now: datetime, action_id: str | None) -> bool:
    """Insert the action's report; False (and no change) when this action already wrote one."""
    if action_id is not None and conn.execute(
        select(reports.c.report_id).where(reports.c.action_id == action_id)
    ).first():
        return False
    conn.execute(insert(reports).values(topic=topic, summary=summary, created_at=now, action_id=action_id))
    return True


def for_action(engine: Engine, action_id: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(reports).where(reports.c.action_id == action_id)).mappings().first()
    return dict(row) if row else None


def recent(engine: Engine, limit: int = 20) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(reports).order_by(reports.c.report_id.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in reversed(rows)]
