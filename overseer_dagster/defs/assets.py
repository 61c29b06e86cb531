"""The tick as assets: watch (fleet_state, external_demand, fleet_throughput), then decide."""

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from overseer_dagster import settings, tick
from overseer_dagster.adapters.fleet_source import FleetSourceError
from overseer_dagster.core.context import DemandSummary, KindUsage, StressStatus
from overseer_dagster.core.demand import DemandKind
from overseer_dagster.core.fleet import FleetSnapshot, Health
from overseer_dagster.core.redact import redact
from overseer_dagster.defs.resources import FleetResource, MindResource, StoreResource
from overseer_dagster.store import ledger, targets

TICK_GROUP = "overseer_tick"


@dataclass(frozen=True, slots=True)
class FleetReading:
    snapshot: FleetSnapshot | None
    problem: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


@dg.asset(group_name=TICK_GROUP, description="Per-replica health and routing state, from the fleet source.")
def fleet_state(context: dg.AssetExecutionContext, fleet: FleetResource) -> dg.Output[FleetReading]:
    try:
        snap = fleet.snapshot(_now())
    except FleetSourceError as exc:
        context.log.warning(redact(f"fleet source: {exc.reason}: {exc}"))
        return dg.Output(FleetReading(None, redact(f"{exc.reason}: {exc}")), metadata={"fleet_problem": exc.reason})
    health = Counter(r.health.value for r in snap.replicas)
    return dg.Output(
        FleetReading(snap),
        metadata={
            "replicas": len(snap.replicas),
            "ready_replicas": snap.ready_replicas,
            "headroom": snap.headroom,
            "unknown_replicas": health.get(Health.unknown.value, 0),
            "external_inflight": sum(r.external_inflight for r in snap.replicas),
            "stress_inflight": sum(r.stress_inflight for r in snap.replicas),
        },
    )


@dg.asset(group_name=TICK_GROUP, description="External demand from the token-usage ledger over the last cadence.")
def external_demand(store: StoreResource) -> dg.Output[DemandSummary]:
    now = _now()
    window_s = settings.TickSettings.from_env().cadence_s
    engine = store.engine()
    by_kind = {
        DemandKind(r["demand_kind"]): KindUsage(**{k: r[k] for k in KindUsage.model_fields})
        for r in ledger.window_by_kind(engine, now, window_s)
    }
    summary = DemandSummary(observed_at=now, window_s=window_s, last_row_at=ledger.last_row_at(engine), by_kind=by_kind)
    return dg.Output(
        summary,
        metadata={
            "external_tokens_per_min": round(summary.external_tokens_per_min, 1),
            "external_requests": summary.external_requests,
            "external_failures": summary.external_failures,
        },
    )


@dg.asset(group_name=TICK_GROUP, description="Tokens per second by demand kind over the last cadence.")
def fleet_throughput(external_demand: DemandSummary) -> dg.Output[dict[str, float]]:
    rates = {k.value: round(external_demand.tokens_per_s(k), 2) for k in DemandKind}
    return dg.Output(rates, metadata={f"tokens_per_s_{k}": v for k, v in rates.items()})


def _stress_status(store: StoreResource, now: datetime) -> StressStatus:
    engine = store.engine()
    active = targets.active(engine, now)
    pool = active.get(None)
    return StressStatus(
        pool_concurrency=pool.concurrency if pool else 0,
        per_replica={k: t.concurrency for k, t in active.items() if k is not None},
        last_refreshed_at=targets.last_refreshed(engine),
    )


@dg.asset(
    group_name=TICK_GROUP,
    description="One tick's decision: the mind proposes, the schema and the fleet validate, rows are recorded.",
)
def overseer_decision(
    context: dg.AssetExecutionContext,
    fleet_state: FleetReading,
    external_demand: DemandSummary,
    fleet_throughput: dict[str, float],
    store: StoreResource,
    mind: MindResource,
) -> dg.MaterializeResult:
    now = _now()
    result = tick.run_tick(
        store.engine(),
        now=now,
        settings=settings.TickSettings.from_env(),
        enabled=settings.enabled(),
        mode=settings.mode(),
        fleet=fleet_state.snapshot,
        fleet_problem=fleet_state.problem,
        demand=external_demand,
        stress=_stress_status(store, now),
        mind=mind.get(),
    )
    states = Counter(r["state"] for r in result.rows)
    decided = [
        {"state": r["state"], "kind": r["kind"], "reason": r["reason"], "gate_id": r["gate_id"]}
        for r in result.rows
    ]
    context.log.info(f"tick {result.tick_id}: {result.outcome} ({dict(states)})")
    return dg.MaterializeResult(
        metadata={
            "tick_id": result.tick_id,
            "outcome": result.outcome,
            "rows": len(result.rows),
            **{f"actions_{s}": states.get(s, 0) for s in ("queued", "pending_approval", "no_action", "advisory")},
            "blocked": states.get("blocked", 0),
            "skipped": states.get("skipped", 0),
            "decided": dg.MetadataValue.json(json.loads(redact(json.dumps(decided)))),
        }
    )
