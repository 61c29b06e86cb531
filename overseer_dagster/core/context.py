"""What one tick knows: the public-safe context every mind (rule policy or LLM) decides from.

It holds replica ids and figures, never URLs, addresses, prompts or keys; its JSON is what an
LLM mind sees and what replay re-runs.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from overseer_dagster.core.demand import USER_DEMAND, DemandKind
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.vocabulary import MAX_HOURLY_USD


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindUsage(_Model):
    requests: int = 0
    failures: int = 0
    preempted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_mean_s: float | None = None
    itl_mean_s: float | None = None


class DemandSummary(_Model):
    """The ledger over one window, by demand kind."""

    observed_at: AwareDatetime
    window_s: float = Field(gt=0)
    last_row_at: AwareDatetime | None = None
    by_kind: dict[DemandKind, KindUsage] = {}

    def _user(self, field: str) -> int:
        return sum(getattr(u, field) for k, u in self.by_kind.items() if k in USER_DEMAND)

    @property
    def external_tokens_per_min(self) -> float:
        tokens = self._user("prompt_tokens") + self._user("completion_tokens")
        return tokens * 60.0 / self.window_s

    @property
    def external_requests(self) -> int:
        return self._user("requests")

    @property
    def external_failures(self) -> int:
        return self._user("failures")

    def tokens_per_s(self, kind: DemandKind) -> float:
        u = self.by_kind.get(kind)
        return 0.0 if u is None else (u.prompt_tokens + u.completion_tokens) / self.window_s


class StressStatus(_Model):
    """The stress targets in force (from the store)."""

    pool_concurrency: int = 0
    per_replica: dict[str, int] = {}
    last_refreshed_at: AwareDatetime | None = None

    @property
    def active(self) -> bool:
        return self.pool_concurrency > 0 or any(self.per_replica.values())


class TickContext(_Model):
    now: AwareDatetime
    cadence_s: float = Field(gt=0)
    fleet: FleetSnapshot | None
    fleet_problem: str | None = None
    demand: DemandSummary | None = None
    stress: StressStatus = StressStatus()
    # External ITL p90 target; stress backs off before external traffic misses it.
    itl_slo_s: float = Field(default=0.1, gt=0)
    stress_reserve_slots: int = Field(default=1, ge=1)
    # The GPU class the rule policy asks for when external demand nears capacity: the first configured
    # (`Limits.gpu_classes`); None when none is configured, and then it asks for none. Defaults to what
    # contexts recorded before the field existed were decided with.
    scale_out_gpu_class: str | None = "h100"
    # The hourly ceiling that scale-out asks an operator to sign.
    scale_out_max_hourly_usd: float = Field(default=12.0, gt=0, le=MAX_HOURLY_USD)

    def fleet_fresh(self) -> bool:
        return self.fleet is not None and self.fleet.age_s(self.now) <= 3 * self.cadence_s

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return digest_of(self.canonical_json())


def digest_of(canonical_json: str) -> str:
    """The digest of a context's canonical JSON (for callers that already hold it: it is costly at scale)."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()
