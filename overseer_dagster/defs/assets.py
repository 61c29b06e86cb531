"""The tick as assets: watch (fleet_state, external_demand, fleet_throughput), then decide."""

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
from overseer_dagster.defs import public
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
    except Exception as exc:  # noqa: BLE001 - any source failure is "fleet unavailable"; its text stays private
        reason = exc.reason if isinstance(exc, FleetSourceError) else "fleet_source_error"
        public.log(context, "warning", "fleet source: {reason}", reason=reason)
        return dg.Output(FleetReading(None, redact(f"{reason}: {exc}")),
                         metadata=public.metadata("fleet_state", {"fleet_problem": reason}))
    health = Counter(r.health.value for r in snap.replicas)
    return dg.Output(
        FleetReading(snap),
        metadata=public.metadata("fleet_state", {
            "replicas": len(snap.replicas),
            "ready_replicas": snap.ready_replicas,
            "headroom": snap.headroom,
            "unknown_replicas": health.get(Health.unknown.value, 0),
            "external_inflight": sum(r.external_inflight for r in snap.replicas),
            "stress_inflight": sum(r.stress_inflight for r in snap.replicas),
        }),
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
        metadata=public.metadata("external_demand", {
            "external_tokens_per_min": round(summary.external_tokens_per_min, 1),
            "external_requests": summary.external_requests,
            "external_failures": summary.external_failures,
        }),
    )


@dg.asset(
    group_name=TICK_GROUP,
    description="Tokens per second by demand kind over the last cadence, and goodput: those of requests within the ITL SLO.",
)
def fleet_throughput(external_demand: DemandSummary, store: StoreResource) -> dg.Output[dict[str, float]]:
    rates = {k.value: round(external_demand.tokens_per_s(k), 2) for k in DemandKind}
    # Goodput per kind: internal_stress is counted in all-demand totals, never as external demand.
    good = ledger.goodput(store.engine(), external_demand.observed_at, external_demand.window_s,
                          settings.TickSettings.from_env().itl_slo_s)
    goodput = {k.value: round(good.get(k.value, 0.0), 2) for k in DemandKind}
    metadata = public.metadata("fleet_throughput", {
        **{f"tokens_per_s_{k}": v for k, v in rates.items()},
        "tokens_per_s_all": round(sum(rates.values()), 2),
        **{f"goodput_tokens_per_s_{k}": v for k, v in goodput.items()},
        "goodput_tokens_per_s_all": round(sum(goodput.values()), 2),
    })
    # Goodput unrounded in the value: `fleet_health` sums it into the health figure.
    exact = {f"goodput_{k.value}": good.get(k.value, 0.0) for k in DemandKind}
    return dg.Output({**rates, **exact}, metadata=metadata)


def _stress_status(store: StoreResource, now: datetime) -> StressStatus:
    return targets.status(store.engine(), now)


def _decide(now: datetime, fleet_state: FleetReading, external_demand: DemandSummary, store: StoreResource,
            mind: MindResource) -> tick.TickResult:
    return tick.run_tick(
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
    try:
        result = _decide(now, fleet_state, external_demand, store, mind)
    except Exception as exc:
        # The tick has journaled `tick_error`; the exception's text may carry private values, so it stays here.
        raise dg.Failure(description=f"tick_error ({type(exc).__name__}): the tick failed; see its journal row",
                         allow_retries=False) from None
    states = Counter(r["state"] for r in result.rows)
    decided = [
        {"state": r["state"], "kind": r["kind"], "reason": r["reason"], "gate_id": r["gate_id"]}
        for r in result.rows
    ]
    public.log(context, "info", "tick {tick_id}: {outcome} ({states})",
               tick_id=result.tick_id, outcome=result.outcome, states=dict(states))
    return dg.MaterializeResult(
        metadata=public.metadata("overseer_decision", {
            "tick_id": result.tick_id,
            "outcome": result.outcome,
            "rows": len(result.rows),
            **{f"actions_{s}": states.get(s, 0) for s in ("queued", "pending_approval", "no_action", "advisory")},
            "blocked": states.get("blocked", 0),
            "skipped": states.get("skipped", 0),
            "decided": decided,
        })
    )
