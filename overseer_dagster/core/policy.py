"""The built-in mind: a deterministic rule policy over the same context an LLM would get.

It returns the same JSON envelope as text, which then goes through the same parser and
validation as any LLM's answer: no shortcut around the schema.
"""

from __future__ import annotations

import json
import math

from overseer_dagster.core.context import TickContext
from overseer_dagster.core.fleet import Health, RoutingState

MAX_ACTIONS = 8
QUARANTINE_AFTER_TRIPS = 3
# External utilisation of ready slots above which stress backs off, and above which more capacity is asked for.
BACK_OFF_AT = 0.6
SCALE_OUT_AT = 0.9
# Stress aims at the batch where the worst external ITL p90 meets its SLO with 10% to spare; under half
# the SLO, ITL says nothing about the knee yet and stress may fill every slot but the reserve.
KNEE_MARGIN = 0.9
ITL_QUIET = 0.5
MAX_STRESS_CONCURRENCY = 64
REPORT_EVERY_MIN = 15


def propose(ctx: TickContext) -> str:
    actions: list[dict] = []
    fleet = ctx.fleet
    if fleet is None or not ctx.fleet_fresh():
        # A stale view of the fleet: stop stress rather than run it blind.
        if ctx.stress.active:
            actions.append({"kind": "stop_stress", "reason": "fleet view is stale"})
        return _envelope(actions)

    for r in fleet.replicas:
        if r.routing_state is RoutingState.draining and r.health is Health.healthy:
            actions.append({"kind": "readmit_replica", "replica_id": r.replica_id,
                            "reason": "health recovered after a breaker trip"})
        elif r.routing_state is RoutingState.admitted and r.breaker_trips_30m >= QUARANTINE_AFTER_TRIPS:
            actions.append({
                "kind": "quarantine_replica", "replica_id": r.replica_id, "reason_code": "health_check_failed",
                "reason": f"{r.breaker_trips_30m} breaker trips in 30 minutes",
                "rollback": {"action": "readmit_replica", "replica_id": r.replica_id},
            })
        elif r.ready and not r.warm:
            actions.append({"kind": "warm_replica", "replica_id": r.replica_id, "requests": 4})

    actions.extend(_stress(ctx))

    if ctx.now.minute % REPORT_EVERY_MIN == 0 and ctx.now.second < ctx.cadence_s:
        actions.append({
            "kind": "emit_report", "topic": "capacity",
            "summary": f"{fleet.ready_replicas} of {len(fleet.replicas)} replicas ready; headroom {fleet.headroom} slots.",
        })
    return _envelope(actions[:MAX_ACTIONS])


def _stress(ctx: TickContext) -> list[dict]:
    """How hard stress runs: toward the saturation knee while external demand leaves headroom.

    The target is per replica and an upper bound: the harness's fast loop trims it live to the slots
    external demand leaves (reserve kept), so this tick only decides how hard, never who wins a slot.
    """
    fleet = ctx.fleet
    assert fleet is not None
    ready = [r for r in fleet.replicas if r.ready]
    capacity = sum(r.max_inflight for r in ready)
    if not ready or capacity == 0:
        return [{"kind": "stop_stress", "reason": "no ready replica"}] if ctx.stress.active else []
    # External requests queued for a slot are external demand too.
    external = sum(r.external_inflight + r.queue_depth for r in ready)
    utilisation = external / capacity
    out: list[dict] = []
    if utilisation >= SCALE_OUT_AT and ctx.scale_out_gpu_class is not None:
        out.append({
            "kind": "request_scale_out", "gpu_class": ctx.scale_out_gpu_class, "count": 1,
            "max_hourly_usd": ctx.scale_out_max_hourly_usd,
            "reason": "external demand above 90% of ready slots",
            "rollback": {"action": "scale_in", "after_s": 3600},
        })
    if utilisation >= BACK_OFF_AT:
        if ctx.stress.active:
            out.append({"kind": "back_off_stress", "factor": 0.5, "reason": "external demand is rising"})
        return out
    worst_itl = _worst_itl_p90(ctx)
    if worst_itl is not None and worst_itl > ctx.itl_slo_s:
        if ctx.stress.active:
            out.append({"kind": "back_off_stress", "factor": 0.7, "reason": "external ITL p90 above its SLO"})
        return out
    concurrency = _knee_concurrency(ctx, ready, worst_itl)
    if concurrency < 1:
        if ctx.stress.active:
            out.append({"kind": "stop_stress", "reason": "no slack below the ITL knee"})
        return out
    out.append({
        "kind": "start_stress", "concurrency": concurrency, "duration_s": int(min(3600, max(10, 3 * ctx.cadence_s))),
        "reason": "fill idle slots up to the saturation knee while external demand leaves headroom",
    })
    return out


def _knee_concurrency(ctx: TickContext, ready: list, worst_itl: float | None) -> int:
    """Stress per replica at the saturation knee: where external ITL p90 would still meet its SLO.

    Without ITL pressure (no reading, or p90 under ITL_QUIET x SLO) that is every slot but the reserve.
    Nearer the SLO, ITL is taken as proportional to the batch (which overstates its growth, so the
    estimate errs low), the knee batch kept KNEE_MARGIN inside the SLO, and external demand comes first.
    """
    ceiling = min(r.max_inflight for r in ready) - ctx.stress_reserve_slots
    if worst_itl is None or worst_itl <= ITL_QUIET * ctx.itl_slo_s:
        return max(0, min(MAX_STRESS_CONCURRENCY, ceiling))
    batch = max(1.0, sum(r.inflight for r in ready) / len(ready))
    knee_batch = math.floor(batch * KNEE_MARGIN * ctx.itl_slo_s / worst_itl)
    external = math.ceil(sum(r.external_inflight + r.queue_depth for r in ready) / len(ready))
    return max(0, min(MAX_STRESS_CONCURRENCY, ceiling, knee_batch - external))


def _worst_itl_p90(ctx: TickContext) -> float | None:
    fleet = ctx.fleet
    assert fleet is not None
    return max((r.itl_p90_s for r in fleet.replicas if r.ready and r.itl_p90_s is not None), default=None)


def _envelope(actions: list[dict]) -> str:
    return json.dumps({"actions": actions or [{"kind": "noop"}]}, separators=(",", ":"))
