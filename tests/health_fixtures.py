"""Builders shared by the health and projection tests, and fake secrets assembled from parts.

The secrets are fake and built at run time so that no file holds one whole.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from overseer_dagster.core import health
from overseer_dagster.core.context import DemandSummary, KindUsage, StressStatus
from overseer_dagster.core.demand import DemandKind
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.health import Thresholds

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
T = Thresholds()  # cadence 60 s: fresh within 180 s, dead-man 120 s
OLD = NOW - timedelta(seconds=T.fresh_s + 1)


def fleet(observed: datetime = NOW, **overrides) -> FleetSnapshot:
    """Three healthy, admitted, warm replicas r-0..r-2 reporting telemetry; `r_1={...}` overrides one."""
    base = {"health": "healthy", "routing_state": "admitted", "inflight": 4, "max_inflight": 16,
            "itl_p90_s": 0.03, "observed_at": observed.isoformat()}
    replicas = [dict(base, replica_id=f"r-{i}") for i in range(3)]
    for rid, fields in overrides.items():
        next(r for r in replicas if r["replica_id"] == rid.replace("_", "-")).update(fields)
    return FleetSnapshot.model_validate({"observed_at": observed.isoformat(), "replicas": replicas})


def demand(observed: datetime = NOW, last_row: datetime | None = NOW, failures: int = 0) -> DemandSummary:
    usage = KindUsage(requests=100, failures=failures, prompt_tokens=6000, completion_tokens=3000)
    return DemandSummary(observed_at=observed, window_s=60, last_row_at=last_row,
                         by_kind={DemandKind.external: usage, DemandKind.internal_stress: KindUsage(completion_tokens=600)})


FRESH_LOOP = health.LoopReading(last_row_at=NOW, last_row_state="queued", last_tick_at=NOW, last_tick_outcome="decided")


def inputs(**overrides) -> health.HealthInputs:
    base = {
        "fleet": fleet(), "fleet_problem": None, "demand": demand(),
        "stress": StressStatus(pool_concurrency=2, last_refreshed_at=NOW),
        "store": health.StoreReadings(loop=FRESH_LOOP, goodput_tokens_per_s=90.0),
    }
    return health.HealthInputs(**{**base, **overrides})


def snapshot(**overrides) -> health.HealthSnapshot:
    """Every signal fresh unless an input is overridden."""
    return health.build(inputs(**overrides), now=NOW, thresholds=T)


def secrets() -> dict[str, str]:
    """Fake secrets of each kind a public surface must never show, keyed by what they are."""
    ip = ".".join(["10", "20", "30", "40"])
    token = "".join(["fAkE", "t0kEn", "Zq9", "xW2vB7", "nM4kL8"])
    words = ["legal", "winner", "thank", "year", "wave", "sausage", "worth", "useful"]
    return {
        "ip": ip,
        "ip_message": f"connect to {ip}:8000 failed",
        "origin": "http" + "://" + "gpu-node-7.internal" + ":8000/v1",
        "bearer": "Bearer " + token,
        "token": token,
        "vendor_key": "sk" + "-" + "proj" + "-" + "a1b2c3d4e5" * 4,
        "seed": " ".join(words + ["legal", "winner", "thank", "yellow"]),
        "prompt": "PROMPT-" + "please summarise the quarterly numbers for ACME",
    }
