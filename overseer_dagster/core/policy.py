"""The built-in mind: a deterministic rule policy over the same context an LLM would get.

It returns the same JSON envelope as text, which then goes through the same parser and
validation as any LLM's answer: no shortcut around the schema.
"""

from __future__ import annotations

import json

from overseer_dagster.core.context import TickContext
from overseer_dagster.core.fleet import Health, RoutingState

MAX_ACTIONS = 8
QUARANTINE_AFTER_TRIPS = 3
# External utilisation of ready slots above which stress backs off, and above which more capacity is asked for.
BACK_OFF_AT = 0.6
SCALE_OUT_AT = 0.9
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
    fleet = ctx.fleet
    assert fleet is not None
    ready = [r for r in fleet.replicas if r.ready]
    capacity = sum(r.max_inflight for r in ready)
    if not ready or capacity == 0:
        return [{"kind": "stop_stress", "reason": "no ready replica"}] if ctx.stress.active else []
    external = sum(r.external_inflight for r in ready)
    utilisation = external / capacity
    out: list[dict] = []
    if utilisation >= SCALE_OUT_AT:
        out.append({
            "kind": "request_scale_out", "gpu_class": "h100", "count": 1, "max_hourly_usd": 12.0,
            "reason": "external demand above 90% of ready slots",
            "rollback": {"action": "scale_in", "after_s": 3600},
        })
    if utilisation >= BACK_OFF_AT:
        if ctx.stress.active:
            out.append({"kind": "back_off_stress", "factor": 0.5, "reason": "external demand is rising"})
        return out
    if _itl_over_slo(ctx):
        if ctx.stress.active:
            out.append({"kind": "back_off_stress", "factor": 0.7, "reason": "external ITL p90 above its SLO"})
        return out
    # Fill the slack: per replica, the slots external traffic leaves after the reserve; the
    # harness's fast loop trims this further, live, as external demand moves.
    slack = min(r.max_inflight - ctx.stress_reserve_slots - r.external_inflight for r in ready)
    concurrency = max(1, min(64, slack))
    out.append({
        "kind": "start_stress", "concurrency": concurrency, "duration_s": int(min(3600, max(10, 3 * ctx.cadence_s))),
        "reason": "fill idle slots while external demand leaves headroom",
    })
    return out


def _itl_over_slo(ctx: TickContext) -> bool:
    fleet = ctx.fleet
    assert fleet is not None
    worst = max((r.itl_p90_s for r in fleet.replicas if r.ready and r.itl_p90_s is not None), default=None)
    return worst is not None and worst > ctx.itl_slo_s


def _envelope(actions: list[dict]) -> str:
    return json.dumps({"actions": actions or [{"kind": "noop"}]}, separators=(",", ":"))
