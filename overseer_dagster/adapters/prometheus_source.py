"""A fleet source over a Prometheus server's HTTP API: each replica's load from instant queries.

Series are grouped by one replica label (default `instance`), whose values are usually addresses:
they are mapped to replica ids here, through configuration, and never leave this module.

Health, per configured replica:
- `up` is 1, running and waiting counts are present and their samples are fresh: healthy.
- otherwise unknown, never healthy, with `unknown_reason`: `absent` (Prometheus has no such target),
  `scrape_failed` (`up` is 0), `metrics_missing:requests_running` / `metrics_missing:requests_waiting`,
  `stale` (the newest sample is older than `stale_after_s`), `metrics_malformed`.
- Prometheus unreachable or its answer unusable: every replica unknown, `prometheus_error`.

Prometheus knows no router state either, so every replica is reported `admitted`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from overseer_dagster.core.fleet import FleetSnapshot, Health, ReplicaId, ReplicaState, RoutingState
from overseer_dagster.core.telemetry import MALFORMED, missing

PROMETHEUS_ERROR = "prometheus_error"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# vLLM, or SGLang where there is no vLLM series. Tensor/pipeline/expert-parallel ranks of one engine
# report the same requests: max across them, then sum across engines (as core.telemetry does).
_RUNNING = "vllm:num_requests_running or sglang:num_running_reqs"
_WAITING = "vllm:num_requests_waiting or sglang:num_queue_reqs"
_SAME_REQUESTS = "tp_rank, pp_rank, moe_ep_rank"


class _Sample(BaseModel):
    metric: dict[str, str]
    value: tuple[float, str]


class _Vector(BaseModel):
    resultType: Literal["vector"]
    result: list[_Sample]


class _QueryResponse(BaseModel):
    status: Literal["success"]
    data: _Vector


class _PrometheusError(Exception):
    pass


class PrometheusSource:
    def __init__(
        self,
        base_url: str,
        replica_ids: Mapping[str, str],
        max_inflight: int | Mapping[str, int],
        *,
        replica_label: str = "instance",
        stale_after_s: float = 120.0,
        timeout_s: float = 5.0,
    ) -> None:
        """`replica_ids`: replica label value -> replica id; `max_inflight`: one for all, or by replica id."""
        if not _LABEL_NAME.fullmatch(replica_label):
            raise ValueError("replica_label must be a Prometheus label name")
        ids = [TypeAdapter(ReplicaId).validate_python(r) for r in replica_ids.values()]
        if len(set(ids)) != len(ids):
            raise ValueError("each replica id may be mapped from one label value only")
        limits = {r: max_inflight for r in ids} if isinstance(max_inflight, int) else dict(max_inflight)
        if any(r not in limits or limits[r] < 1 for r in ids):
            raise ValueError("every replica needs a max_inflight of at least 1")
        if stale_after_s <= 0 or timeout_s <= 0:
            raise ValueError("stale_after_s and timeout_s must be positive")
        self._query_url = base_url.rstrip("/") + "/api/v1/query"
        self._replica_ids = dict(replica_ids)
        self._max_inflight = limits
        self.stale_after_s = stale_after_s
        self.timeout_s = timeout_s
        self._label = replica_label
        by = f"by ({replica_label})"
        self._queries = {
            "up": f"min {by} (up)",
            "running": f"sum {by} (max without ({_SAME_REQUESTS}) ({_RUNNING}))",
            "waiting": f"sum {by} (max without ({_SAME_REQUESTS}) ({_WAITING}))",
            # Results carry the evaluation time: ask for the samples' own, which timestamp() gives
            # only for a bare selector (around any other expression it too answers the evaluation time).
            "sampled_at": f"min {by} (timestamp(vllm:num_requests_running) or timestamp(sglang:num_running_reqs))",
        }

    def snapshot(self, now: datetime) -> FleetSnapshot:
        try:
            with httpx.Client(timeout=self.timeout_s) as client:
                results = {name: self._query(client, q) for name, q in self._queries.items()}
        except _PrometheusError:
            results = None
        replicas = tuple(self._state(replica_id, results, now) for replica_id in self._replica_ids.values())
        return FleetSnapshot(observed_at=now, replicas=replicas)

    def _query(self, client: httpx.Client, query: str) -> dict[str, float]:
        """Replica id -> value, for the configured label values; other series are ignored."""
        try:
            response = client.get(self._query_url, params={"query": query})
            answer = _QueryResponse.model_validate_json(response.content)
            pairs = [(s.metric.get(self._label), float(s.value[1])) for s in answer.data.result]
        except (httpx.HTTPError, ValidationError, ValueError) as exc:
            raise _PrometheusError from exc
        return {self._replica_ids[v]: x for v, x in pairs if v in self._replica_ids}

    def _state(self, replica_id: str, results: dict[str, dict[str, float]] | None, now: datetime) -> ReplicaState:
        reason, running, waiting = self._verdict(replica_id, results, now)
        return ReplicaState(
            replica_id=replica_id,
            health=Health.unknown if reason else Health.healthy,
            routing_state=RoutingState.admitted,
            inflight=round(running + waiting),
            max_inflight=self._max_inflight[replica_id],
            queue_depth=round(waiting),
            unknown_reason=reason,
            observed_at=now,
        )

    def _verdict(
        self, replica_id: str, results: dict[str, dict[str, float]] | None, now: datetime
    ) -> tuple[str | None, float, float]:
        """(why health is unknown, or None; running; waiting)."""
        if results is None:
            return PROMETHEUS_ERROR, 0.0, 0.0
        up = results["up"].get(replica_id)
        running = results["running"].get(replica_id)
        waiting = results["waiting"].get(replica_id)
        sampled_at = results["sampled_at"].get(replica_id)
        if up is None:
            return "absent", 0.0, 0.0
        if up != 1:
            return "scrape_failed", 0.0, 0.0
        if running is None:
            return missing("requests_running"), 0.0, 0.0
        if waiting is None:
            return missing("requests_waiting"), 0.0, 0.0
        if not all(math.isfinite(x) and x >= 0 for x in (running, waiting)):
            return MALFORMED, 0.0, 0.0
        if sampled_at is None or now.timestamp() - sampled_at > self.stale_after_s:
            return "stale", running, waiting
        return None, running, waiting
