"""The fleet as the overseer sees it: one snapshot per tick.

`FleetSnapshot` is also the wire contract of the routing-state oracle (`GET /fleet/state`,
docs/contracts.md): a gateway, the lab, or a file can serve it as JSON and it parses here.
It never carries replica URLs or addresses.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, computed_field

REPLICA_ID_PATTERN = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_REPLICA_ID = re.compile(REPLICA_ID_PATTERN)


def _check_replica_id(value: str) -> str:
    if not _REPLICA_ID.fullmatch(value):
        raise ValueError(f"replica_id must match {REPLICA_ID_PATTERN}")
    return value


ReplicaId = Annotated[str, AfterValidator(_check_replica_id)]


class Health(StrEnum):
    healthy = "healthy"
    unhealthy = "unhealthy"
    # Malformed, partial or stale telemetry: never counted as healthy.
    unknown = "unknown"


class RoutingState(StrEnum):
    admitted = "admitted"
    # Out of rotation by the health breaker (or drained by an operator): re-admission is autonomous.
    draining = "draining"
    # Out of rotation by an approved quarantine gate: it comes back only through that gate's rollback.
    quarantined = "quarantined"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReplicaState(_Model):
    replica_id: ReplicaId
    health: Health
    routing_state: RoutingState
    warm: bool = True
    inflight: int = Field(ge=0)
    max_inflight: int = Field(ge=1)
    external_inflight: int = Field(default=0, ge=0)
    stress_inflight: int = Field(default=0, ge=0)
    queue_depth: int = Field(default=0, ge=0)
    ttft_p50_s: float | None = Field(default=None, ge=0)
    ttft_p99_s: float | None = Field(default=None, ge=0)
    itl_p50_s: float | None = Field(default=None, ge=0)
    itl_p90_s: float | None = Field(default=None, ge=0)
    # Health-breaker trips in the last 30 minutes (flapping detection).
    breaker_trips_30m: int = Field(default=0, ge=0)
    # Why health is unknown (malformed, partial or stale telemetry), as a short reason code.
    unknown_reason: str | None = None
    observed_at: AwareDatetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def free_slots(self) -> int:
        return max(0, self.max_inflight - self.inflight)

    @property
    def in_rotation(self) -> bool:
        return self.routing_state is RoutingState.admitted

    @property
    def ready(self) -> bool:
        """Serving external traffic: healthy and admitted."""
        return self.health is Health.healthy and self.in_rotation


class FleetSnapshot(_Model):
    """Routing state of every replica at one moment, from one source."""

    observed_at: AwareDatetime
    replicas: tuple[ReplicaState, ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def headroom(self) -> int:
        """Live headroom: free slots summed over healthy, admitted replicas."""
        return sum(r.free_slots for r in self.replicas if r.ready)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.ready)

    @property
    def capacity(self) -> int:
        """Slots on ready replicas."""
        return sum(r.max_inflight for r in self.replicas if r.ready)

    def replica(self, replica_id: str) -> ReplicaState | None:
        for r in self.replicas:
            if r.replica_id == replica_id:
                return r
        return None

    def age_s(self, now: datetime) -> float:
        return (now - self.observed_at).total_seconds()
