"""Store reads behind the health signals: the loop, the mind's last verdict, dispatch, gates, goodput.

Each is one small query; `readings` gathers them for one snapshot. `snapshot_from_store` builds a
whole snapshot from the store alone (the last tick's context for the fleet and demand), for the
CLI and anyone else outside a tick run. `last_fleet_reading` is the newest fleet a tick saw: when
the source fails, health ages that reading (stale) rather than forget it. `save_report` keeps the
latest public report as a file.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from overseer_dagster.core import health
from overseer_dagster.core.context import TickContext
from overseer_dagster.core.demand import USER_DEMAND
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.files import write_text_atomically
from overseer_dagster.store import ledger, targets
from overseer_dagster.store.db import overseer_home
from overseer_dagster.store.tables import actions, decisions, gates, ticks

REPORTS_DIR = "reports"


def loop_reading(engine: Engine) -> health.LoopReading:
    with engine.connect() as conn:
        row = conn.execute(
            select(decisions.c.created_at, decisions.c.state, decisions.c.reason)
            .where(decisions.c.phase == "decision")
            .order_by(decisions.c.seq.desc())
            .limit(1)
        ).first()
        tick = conn.execute(
            select(ticks.c.tick_id, ticks.c.started_at, ticks.c.outcome).order_by(ticks.c.started_at.desc()).limit(1)
        ).first()
        blocked_reason = None
        if tick is not None and tick.outcome == "blocked":
            blocked_reason = conn.execute(
                select(decisions.c.reason)
                .where(decisions.c.tick_id == tick.tick_id, decisions.c.state == "blocked")
                .limit(1)
            ).scalar()
    return health.LoopReading(
        last_row_at=row.created_at if row else None,
        last_row_state=row.state if row else None,
        last_row_reason=row.reason if row else None,
        last_tick_at=tick.started_at if tick else None,
        last_tick_outcome=tick.outcome if tick else None,
        last_tick_reason=blocked_reason,
    )


def dispatch_reading(engine: Engine, now: datetime, window_s: float) -> health.DispatchReading:
    recent = actions.c.updated_at >= now - timedelta(seconds=window_s)
    queued = actions.c.status == "queued"
    with engine.connect() as conn:
        row = conn.execute(
            select(
                func.count().filter(actions.c.status == "failed", recent).label("failed"),
                func.count().filter(actions.c.status == "precondition_failed", recent).label("precondition_failed"),
                func.count().filter(queued).label("queued"),
                func.min(actions.c.created_at).filter(queued).label("oldest_queued_at"),
                func.count().filter(actions.c.status == "dispatching", actions.c.lease_until < now)
                .label("expired_leases"),
            )
        ).one()
    return health.DispatchReading(
        failed=row.failed, precondition_failed=row.precondition_failed, queued=row.queued,
        oldest_queued_at=row.oldest_queued_at, expired_leases=row.expired_leases,
    )


def gate_reading(engine: Engine, now: datetime, window_s: float) -> health.GateReading:
    since = now - timedelta(seconds=window_s)
    pending = gates.c.state == "pending"
    with engine.connect() as conn:
        row = conn.execute(
            select(
                func.count().filter(pending).label("pending"),
                func.count().filter(gates.c.state == "approved").label("approved"),
                func.count().filter(pending, gates.c.expires_at <= now).label("pending_overdue"),
                func.count().filter(gates.c.state == "expired", gates.c.expires_at >= since).label("expired_recent"),
                func.min(gates.c.created_at).filter(pending).label("oldest_pending_at"),
            )
        ).one()
    return health.GateReading(
        pending=row.pending, approved=row.approved, pending_overdue=row.pending_overdue,
        expired_recent=row.expired_recent, oldest_pending_at=row.oldest_pending_at,
    )


def readings(engine: Engine, now: datetime, thresholds: health.Thresholds, *,
             demand_until: datetime | None = None, demand_window_s: float | None = None,
             goodput_tokens_per_s: float | None = None) -> health.StoreReadings:
    """Everything the store knows for one snapshot; goodput over the demand reading's window (read here unless
    the caller already holds it: on a large ledger it is the costliest read)."""
    if goodput_tokens_per_s is None and demand_until is not None and demand_window_s is not None:
        goodput_tokens_per_s = _user_goodput(engine, demand_until, demand_window_s, thresholds.itl_slo_s)
    return health.StoreReadings(
        loop=loop_reading(engine),
        dispatch=dispatch_reading(engine, now, thresholds.window_s),
        gates=gate_reading(engine, now, thresholds.window_s),
        goodput_tokens_per_s=goodput_tokens_per_s,
    )


def _user_goodput(engine: Engine, until: datetime, window_s: float, itl_slo_s: float) -> float:
    """User demand's goodput, as `ledger.goodput` defines it."""
    by_kind = ledger.goodput(engine, until, window_s, itl_slo_s)
    return sum(by_kind.get(k.value, 0.0) for k in USER_DEMAND)


def last_context(engine: Engine) -> TickContext | None:
    """The newest deciding tick's context (private: fleet, demand and stress as that tick saw them)."""
    with engine.connect() as conn:
        raw = conn.execute(
            select(ticks.c.context_json).where(ticks.c.context_json.is_not(None))
            .order_by(ticks.c.started_at.desc()).limit(1)
        ).scalar()
    return None if raw is None else TickContext.model_validate_json(raw)


# A tick context's canonical JSON (sorted keys, no spaces) holds `"fleet":{` when that tick read a fleet and
# `"fleet":null` when its source failed; inside a string the quotes would be escaped.
_HAS_FLEET = '%"fleet":{%'


def last_fleet_reading(engine: Engine) -> FleetSnapshot | None:
    """The newest fleet snapshot a tick read (private): what health ages while the source fails."""
    with engine.connect() as conn:
        raw = conn.execute(
            select(ticks.c.context_json).where(ticks.c.context_json.like(_HAS_FLEET))
            .order_by(ticks.c.started_at.desc()).limit(1)
        ).scalar()
    return None if raw is None else TickContext.model_validate_json(raw).fleet


def snapshot_from_store(engine: Engine, now: datetime, thresholds: health.Thresholds) -> health.HealthSnapshot:
    """The snapshot as the store alone can vouch for it: the fleet and demand as the last tick saw them (and,
    when its fleet source failed, the fleet of the last tick that read one, aged)."""
    ctx = last_context(engine)
    demand = ctx.demand if ctx else None
    fleet = ctx.fleet if ctx else None
    if ctx is not None and fleet is None and ctx.fleet_problem:
        fleet = last_fleet_reading(engine)
    inputs = health.HealthInputs(
        fleet=fleet,
        fleet_problem=(ctx.fleet_problem if ctx else None) or (None if ctx else "no_tick"),
        demand=demand,
        stress=targets.status(engine, now),
        store=readings(engine, now, thresholds, demand_until=demand.observed_at if demand else None,
                       demand_window_s=demand.window_s if demand else None),
    )
    return health.build(inputs, now=now, thresholds=thresholds)


def save_report(document: dict[str, Any], home: Path | None = None) -> None:
    """Write the public report document to OVERSEER_HOME/reports/latest.json, atomically."""
    write_text_atomically((home or overseer_home()) / REPORTS_DIR / "latest.json",
                          json.dumps(document, indent=2, sort_keys=True) + "\n")
