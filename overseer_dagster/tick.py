"""One overseer tick: kill switch, deciding lease, cadence and daily bounds, mind, verdict, rows.

The Dagster asset `overseer_decision` calls `run_tick`; so does nothing else. Every outcome is at
least one journal row, written in one transaction with its gates and queued actions.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, update

from overseer_dagster.adapters.mind import Mind
from overseer_dagster.core.context import DemandSummary, StressStatus, TickContext, digest_of
from overseer_dagster.core.decide import Row, rows_for, tick_row
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.health import reason_code
from overseer_dagster.core.proposal import decide_text
from overseer_dagster.settings import TickSettings
from overseer_dagster.store import actions, gates, journal, ticks, write_tx
from overseer_dagster.store.tables import ticks as ticks_table

# Scheduled runs start with some jitter: a tick this close to the cadence still counts as on time.
CADENCE_SLACK = 0.9


@dataclass(frozen=True, slots=True)
class TickResult:
    tick_id: str
    outcome: str
    rows: list[dict]


def _journal(engine: Engine, tick_id: str, now: datetime, rows: list[Row], *, context_digest: str | None = None,
             finish: dict | None = None, lease_holder: str | None = None) -> list[dict]:
    """Write a tick's rows, its gates and queued actions, and close the tick, all in one transaction."""
    entries = []
    with write_tx(engine) as conn:
        for row in rows:
            action_id = str(uuid.uuid4()) if row.kind else None
            gate_id = None
            if row.gate is not None:
                gate_id, _created = gates.open_gate(conn, row.gate, action_id=action_id,
                                                    action_json=row.action_json or "", now=now)
            if row.state in ("queued", "pending_approval") and action_id:
                actions.enqueue(conn, action_id=action_id, tick_id=tick_id, kind=row.kind or "",
                                authority=row.authority or "", action_json=row.action_json or "", now=now,
                                status="queued" if row.state == "queued" else "gated", gate_id=gate_id)
            entries.append(journal.Entry(
                entry_id=action_id or str(uuid.uuid4()), phase="decision", state=row.state, created_at=now,
                tick_id=tick_id, reason=row.reason, detail=row.detail, kind=row.kind, authority=row.authority,
                action_id=action_id, gate_id=gate_id, action_json=row.action_json, context_digest=context_digest,
                raw_digest=row.raw_digest, raw_excerpt=row.raw_excerpt,
            ))
        written = journal.append(conn, entries)
        if finish is not None:
            conn.execute(update(ticks_table).where(ticks_table.c.tick_id == tick_id).values(**finish))
        if lease_holder is not None:
            ticks.release_lease(conn, lease_holder)
    return written


def run_tick(
    engine: Engine,
    *,
    now: datetime,
    settings: TickSettings,
    enabled: bool,
    mode: str,
    fleet: FleetSnapshot | None,
    fleet_problem: str | None,
    demand: DemandSummary | None,
    stress: StressStatus,
    mind: Mind,
) -> TickResult:
    tick_id = str(uuid.uuid4())
    if not enabled:
        rows = _journal(engine, tick_id, now, [tick_row("disabled", "kill_switch", "OVERSEER_ENABLED is off")])
        return TickResult(tick_id, "disabled", rows)

    with write_tx(engine) as conn:
        skip = None
        if not ticks.acquire_lease(conn, tick_id, now, settings.lease_ttl_s):
            skip = tick_row("skipped", "cadence", "another tick holds the deciding lease")
        else:
            last = ticks.last_deciding_start(conn)
            if last is not None and now - last < timedelta(seconds=settings.cadence_s * CADENCE_SLACK):
                skip = tick_row("skipped", "cadence", f"last deciding tick {int((now - last).total_seconds())} s ago")
                ticks.release_lease(conn, tick_id)
            else:
                ticks.record_tick(conn, tick_id=tick_id, started_at=now, outcome="deciding", mind=mind.name)
                day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
                autonomous_today = ticks.autonomous_queued_since(conn, day_start)
    if skip is not None:
        return TickResult(tick_id, "skipped", _journal(engine, tick_id, now, [skip]))

    ctx = TickContext(
        now=now, cadence_s=settings.cadence_s, fleet=fleet, fleet_problem=fleet_problem, demand=demand,
        stress=stress, itl_slo_s=settings.itl_slo_s, stress_reserve_slots=settings.stress_reserve_slots,
        scale_out_gpu_class=settings.scale_out_gpu_class, scale_out_max_hourly_usd=settings.scale_out_max_hourly_usd,
    )
    raw: str | None = None
    try:
        if fleet is None:
            rows, outcome = [tick_row("skipped", "fleet_unavailable", fleet_problem)], "skipped"
        else:
            answer = mind.propose(ctx)
            raw = answer.raw
            if answer.unavailable or raw is None:
                # A mind adapter's code lands in short columns and public metadata: only a code gets through.
                reason = reason_code(answer.unavailable, "mind_unavailable")
                rows, outcome = [tick_row("skipped", reason, answer.detail)], reason
            else:
                verdict = decide_text(raw, fleet, settings.limits)
                rows = rows_for(verdict, fleet, now=now, mode=mode, autonomous_today=autonomous_today,
                                daily_bound=settings.daily_bound, raw=raw)
                outcome = "decided" if verdict.verdict == "valid" else "blocked"
    except Exception as exc:  # noqa: BLE001 - a tick always records its row, then the run fails loudly
        rows, outcome = [tick_row("skipped", "tick_error", type(exc).__name__)], "tick_error"
        _journal(engine, tick_id, now, rows, finish={"outcome": outcome, "finished_at": now}, lease_holder=tick_id)
        raise
    context_json = ctx.canonical_json()  # once: a 10,000-replica fleet takes ~0.1 s to serialise
    digest = digest_of(context_json)
    finish = {"outcome": outcome, "finished_at": now, "context_json": context_json, "context_digest": digest,
              "raw_proposal": raw, "decision_inputs_json": decision_inputs_json(
                  mode=mode, autonomous_today=autonomous_today, settings=settings)}
    written = _journal(engine, tick_id, now, rows, context_digest=digest, finish=finish, lease_holder=tick_id)
    return TickResult(tick_id, outcome, written)


def decision_inputs_json(*, mode: str, autonomous_today: int, settings: TickSettings) -> str:
    """What deciding takes besides the context (`decide_text`'s limits, `rows_for`'s mode and daily bound), as
    stored with each tick for `overseer replay`: private, like the context, and never shown to a mind."""
    limits = settings.limits.model_dump(mode="json")
    limits["payee_refs"] = sorted(limits["payee_refs"])
    return json.dumps({"mode": mode, "autonomous_today": autonomous_today, "daily_bound": settings.daily_bound,
                       "limits": limits}, sort_keys=True, separators=(",", ":"))
