"""Demand as the token-usage ledger records it, and its per-window summary."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class DemandKind(StrEnum):
    external = "external"
    # No demand-kind header: counted as external when deciding (users first), reported apart.
    unlabeled = "unlabeled"
    internal = "internal"
    own_capacity = "own_capacity"
    internal_stress = "internal_stress"


# Demand that stress must yield to.
USER_DEMAND = frozenset({DemandKind.external, DemandKind.unlabeled})


class Outcome(StrEnum):
    ok = "ok"
    failed = "failed"
    # Internal stress cancelled to yield its slot: not a failure.
    preempted = "preempted"


class UsageRecord(BaseModel):
    """One served (or failed) request, as a gateway or the stress harness writes it to the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: AwareDatetime
    demand_kind: DemandKind
    replica_id: str | None = None
    model: str | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    ttft_s: float | None = Field(default=None, ge=0)
    itl_s: float | None = Field(default=None, ge=0)
    latency_s: float | None = Field(default=None, ge=0)
    outcome: Outcome = Outcome.ok
    failure_reason: str | None = Field(default=None, max_length=64)
