"""Fleet health after each tick: signals -> snapshot -> public report; and the checks that turn red.

- `fleet_health` (in the tick group, so it runs after each `overseer_decision`): the snapshot, its
  public report as Markdown and JSON, numeric metadata per signal, and the `overclaim_blocked`
  check (WARN) when any signal is not fresh.
- `loop_fresh` (ERROR, on `overseer_decision`): the age of the last tick, read from the store. It
  runs in every tick run and, on its own schedule, between them: a check inside the tick run alone
  could never see the tick stop.
"""

from datetime import UTC, datetime

import dagster as dg

from overseer_dagster import settings
from overseer_dagster.core import health, projection
from overseer_dagster.core.context import DemandSummary
from overseer_dagster.core.demand import USER_DEMAND
from overseer_dagster.defs import public
from overseer_dagster.defs.assets import TICK_GROUP, FleetReading, overseer_decision
from overseer_dagster.defs.resources import StoreResource
from overseer_dagster.store import health as store_health
from overseer_dagster.store import targets

OVERCLAIM_CHECK = "overclaim_blocked"


def _now() -> datetime:
    return datetime.now(UTC)


@dg.asset(
    group_name=TICK_GROUP,
    deps=[overseer_decision],
    check_specs=[dg.AssetCheckSpec(
        OVERCLAIM_CHECK, asset="fleet_health",
        description="Warns while any health signal is not fresh: the report then states no figure resting on it.",
    )],
    description="The fleet's health signals after each tick, and the public report they allow.",
)
def fleet_health(
    context: dg.AssetExecutionContext,
    fleet_state: FleetReading,
    external_demand: DemandSummary,
    fleet_throughput: dict[str, float],
    store: StoreResource,
) -> dg.MaterializeResult:
    now = _now()
    thresholds = settings.health_thresholds()
    # User goodput as `fleet_throughput` read it, over the same window: not a second scan of the ledger.
    goodput = sum(fleet_throughput.get(f"goodput_{k.value}", 0.0) for k in USER_DEMAND)
    engine = store.engine()
    fleet = fleet_state.snapshot
    if fleet is None and fleet_state.problem:
        # The source failed: the last reading a tick made, so the signal says how old the view is (stale).
        fleet = store_health.last_fleet_reading(engine)
    snapshot = health.build(
        health.HealthInputs(
            fleet=fleet,
            fleet_problem=fleet_state.problem,
            demand=external_demand,
            stress=targets.status(engine, now),
            store=store_health.readings(engine, now, thresholds, demand_until=external_demand.observed_at,
                                        demand_window_s=external_demand.window_s, goodput_tokens_per_s=goodput),
        ),
        now=now,
        thresholds=thresholds,
    )
    markdown, document = projection.public_report(snapshot)
    store_health.save_report(document)
    not_fresh = [s["kind"] for s in document["signals"] if s["state"] != "fresh"]
    public.log(context, "info", "fleet health: {status}; not fresh: {not_fresh}",
               status=document["status"], not_fresh=not_fresh)
    return dg.MaterializeResult(
        metadata={
            **public.metadata("fleet_health", projection.health_values(snapshot)),
            "report": dg.MetadataValue.md(markdown),
            "document": dg.MetadataValue.json(document),
        },
        check_results=[dg.AssetCheckResult(
            check_name=OVERCLAIM_CHECK,
            passed=not document["overclaim_blocked"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata=public.metadata("fleet_health", {"signals_not_fresh": len(not_fresh),
                                                      "status": document["status"]}),
        )],
    )


@dg.asset_check(
    asset=overseer_decision,
    name="loop_fresh",
    description="Fails when no tick has written a row within the freshness window (default three cadences).",
)
def loop_fresh(store: StoreResource) -> dg.AssetCheckResult:
    now = _now()
    signal = health.loop_signal(store_health.loop_reading(store.engine()), now, settings.health_thresholds())
    values = {f"overseer_loop_{k}": v for k, v in signal.values.items()}
    return dg.AssetCheckResult(
        passed=signal.state not in (health.SignalState.stale, health.SignalState.unavailable),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=public.metadata("fleet_health", {"overseer_loop_state": signal.state.value, **values}),
    )


overseer_watch = dg.define_asset_job(
    "overseer_watch",
    selection=dg.AssetSelection.checks(loop_fresh),
    description="Between ticks: is the overseer loop still ticking? (the `loop_fresh` check only)",
    # One small check: a step process of its own would cost more CPU than the check itself.
    executor_def=dg.in_process_executor,
)

overseer_watch_schedule = dg.ScheduleDefinition(
    name="overseer_watch_schedule",
    job=overseer_watch,
    cron_schedule="*/3 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Read-only: evaluates `loop_fresh`, so a stalled tick turns red without waiting for a tick.",
)
