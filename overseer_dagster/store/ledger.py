"""The token-usage ledger: written by gateways and the stress harness, summarised in the database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, select

from overseer_dagster.core.demand import DemandKind, UsageRecord
from overseer_dagster.store.tables import ledger

# Every kind the table allows (its CHECK constraint): naming them lets the database read the window as one
# range per kind of `ix_ledger_kind_ts_usage`, rows already grouped, instead of sorting the window.
_KINDS = tuple(k.value for k in DemandKind)


def record_usage(engine: Engine, records: Sequence[UsageRecord]) -> None:
    if not records:
        return
    rows = [r.model_dump() for r in records]
    with engine.begin() as conn:
        conn.execute(ledger.insert(), rows)


def window_by_kind(engine: Engine, now: datetime, window_s: float) -> list[dict]:
    """Per demand kind over (now - window, now]: requests, failures, tokens, TTFT/ITL means, last row time.

    One GROUP BY in the database: never row by row in Python.
    """
    since = now - timedelta(seconds=window_s)
    failed = case((ledger.c.outcome == "failed", 1), else_=0)
    preempted = case((ledger.c.outcome == "preempted", 1), else_=0)
    query = (
        select(
            ledger.c.demand_kind,
            func.count().label("requests"),
            func.sum(failed).label("failures"),
            func.sum(preempted).label("preempted"),
            func.coalesce(func.sum(ledger.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(ledger.c.completion_tokens), 0).label("completion_tokens"),
            func.avg(ledger.c.ttft_s).label("ttft_mean_s"),
            func.avg(ledger.c.itl_s).label("itl_mean_s"),
            func.max(ledger.c.ts).label("last_ts"),
        )
        .where(ledger.c.demand_kind.in_(_KINDS), ledger.c.ts > since, ledger.c.ts <= now)
        .group_by(ledger.c.demand_kind)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def last_row_at(engine: Engine) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(func.max(ledger.c.ts))).scalar()


def goodput(engine: Engine, now: datetime, window_s: float, itl_slo_s: float) -> dict[str, float]:
    """Tokens/s per demand kind over (now - window, now] of requests that met the ITL SLO.

    A request counts when it finished `ok` and its mean ITL is within the SLO (or it had no ITL: one
    token). Tokens are prompt + completion, as in `window_by_kind`. One GROUP BY in the database.
    """
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    since = now - timedelta(seconds=window_s)
    query = (
        select(
            ledger.c.demand_kind,
            func.coalesce(func.sum(ledger.c.prompt_tokens + ledger.c.completion_tokens), 0).label("tokens"),
        )
        .where(
            ledger.c.demand_kind.in_(_KINDS), ledger.c.ts > since, ledger.c.ts <= now, ledger.c.outcome == "ok",
            (ledger.c.itl_s.is_(None)) | (ledger.c.itl_s <= itl_slo_s),
        )
        .group_by(ledger.c.demand_kind)
    )
    with engine.connect() as conn:
        return {r["demand_kind"]: float(r["tokens"]) / window_s for r in conn.execute(query).mappings()}
