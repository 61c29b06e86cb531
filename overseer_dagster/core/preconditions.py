"""Dispatch-time checks, the pure part: may a queued action still act on the fleet as it is now,
and does the fleet show that an action's effect happened?

A decision was made on a past view of the fleet. Before acting, the dispatcher re-reads the fleet
and asks `refusal`; after a crash, the reconciler asks `effect_in_fleet` instead of acting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from overseer_dagster.core.fleet import FleetSnapshot, Health, RoutingState
from overseer_dagster.core.vocabulary import Action, ActionKind

# A fleet view older than this many cadences is stale (the tick uses the same bound).
FRESH_CADENCES = 3
# A queued action older than this is no longer what was decided: the world it was decided on is gone.
STALE_CADENCES = 5
STALE_FLOOR_S = 300.0

# Kinds whose precondition or effect lives in the fleet (the rest live in the store).
_ON_REPLICA = frozenset({ActionKind.readmit_replica, ActionKind.warm_replica})
# Stress that adds load needs a fresh view; stopping or backing off is always safe (the policy
# proposes `stop_stress` precisely when the view is stale).
_ADDS_LOAD = frozenset({ActionKind.start_stress, ActionKind.scale_stress})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action may not act now: a short reason code and a public-safe sentence."""

    reason: str
    detail: str


def needs_fleet(kind: ActionKind | str) -> bool:
    kind = ActionKind(kind)
    return kind in _ON_REPLICA or kind in _ADDS_LOAD


def stale_after_s(cadence_s: float) -> float:
    return max(STALE_FLOOR_S, STALE_CADENCES * cadence_s)


def decision_stale(queued_since: datetime, now: datetime, cadence_s: float) -> bool:
    return (now - queued_since).total_seconds() > stale_after_s(cadence_s)


def refusal(action: Action, fleet: FleetSnapshot | None, *, now: datetime, cadence_s: float,
            fleet_problem: str | None = None) -> Refusal | None:
    """None when the action may act on `fleet` at `now`; else why not."""
    kind = action.action_kind
    if not needs_fleet(kind):
        return None
    if fleet is None:
        return Refusal("fleet_unavailable", fleet_problem or "the fleet could not be read")
    if kind in _ADDS_LOAD:
        age = fleet.age_s(now)
        if age > FRESH_CADENCES * cadence_s:
            return Refusal("fleet_stale", f"the fleet view is {int(age)} s old")
    replica_id = getattr(action, "replica_id", None)
    if replica_id is None:
        return None
    replica = fleet.replica(replica_id)
    if replica is None:
        return Refusal("replica_unknown", f"{replica_id} is not in the fleet")
    if kind is ActionKind.readmit_replica:
        if replica.routing_state is RoutingState.quarantined:
            # Only the quarantine gate's rollback brings a quarantined replica back.
            return Refusal("replica_quarantined", f"{replica_id} is quarantined")
        if replica.routing_state is not RoutingState.draining:
            return Refusal("replica_not_draining", f"{replica_id} is {replica.routing_state.value}")
        if replica.health is not Health.healthy:
            return Refusal("replica_unhealthy", f"{replica_id} is {replica.health.value}")
        return None
    if not replica.ready:
        return Refusal("replica_not_ready", f"{replica_id} is {replica.health.value} and {replica.routing_state.value}")
    return None


def effect_in_fleet(action: Action, fleet: FleetSnapshot) -> bool:
    """Whether the fleet shows the effect of a replica action (readmitted, warm)."""
    replica = fleet.replica(getattr(action, "replica_id", None) or "")
    if replica is None:
        return False
    if action.action_kind is ActionKind.readmit_replica:
        return replica.routing_state is RoutingState.admitted
    if action.action_kind is ActionKind.warm_replica:
        return replica.warm
    raise ValueError(f"{action.kind} has no effect in the fleet")
