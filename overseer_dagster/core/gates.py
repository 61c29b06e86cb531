"""Approval gates, the pure part: what a gated action is bound to, and its canonical hash.

The hash covers the validated action and the fleet precondition it was decided on, so an
approval can never be applied to a different action, or to the same action on a changed fleet.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.vocabulary import Action

GATE_TTL_S = 3600


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def action_json(action: Action) -> str:
    return canonical(action.model_dump(mode="json", exclude_none=True))


def precondition_for(action: Action, fleet: FleetSnapshot | None) -> dict[str, Any]:
    """The slice of fleet state the action depends on; re-checked at dispatch."""
    replica_id = getattr(action, "replica_id", None)
    if replica_id is not None and fleet is not None:
        r = fleet.replica(replica_id)
        if r is not None:
            return {"replica_id": r.replica_id, "routing_state": r.routing_state.value}
    if action.kind == "request_scale_out" and fleet is not None:
        return {"fleet_replicas": len(fleet.replicas)}
    return {}


def action_hash(action: Action, precondition: dict[str, Any]) -> str:
    blob = canonical({"action": action.model_dump(mode="json", exclude_none=True), "precondition": precondition})
    return hashlib.sha256(blob.encode()).hexdigest()
