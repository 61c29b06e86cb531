"""Live per-replica load for the fast loop: from the routing-state oracle, or from each replica's own metrics.

- `GatewayLoad`: `GET /fleet/state` (docs/contracts.md). External pressure on a replica is its
  `external_inflight` plus its `queue_depth` (requests waiting for a slot there are external: the harness
  sends stress straight to replicas and never queues it at the gateway).
- `MetricsLoad`: each replica's `/metrics` (vLLM or SGLang): running + waiting minus the harness's own
  in-flight count there. Needs `max_inflight` (the engine's `max_num_seqs`), which the page does not carry.

Each reading is stamped on the harness's monotonic clock, back-dated by the source's own age (a snapshot
observed 400 ms before it arrived is 400 ms old on arrival). A failed read raises `LoadError`; the fast loop
keeps the old readings, which go stale after a second and then allow no stress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

import httpx

from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.telemetry import TelemetryError, parse_engine_metrics
from overseer_dagster.stress.allowance import ReplicaLoad

READ_TIMEOUT_S = 1.0
_FIELDS = ("requests_running", "requests_waiting")


class LoadError(Exception):
    """The load could not be read; `reason` is a short code (never an address)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoadSource(Protocol):
    async def read(self) -> dict[str, ReplicaLoad]: ...

    async def aclose(self) -> None: ...


def _wall() -> datetime:
    return datetime.now(UTC)


def loads_from_snapshot(snap: FleetSnapshot, *, mono_now: float, wall_now: datetime) -> dict[str, ReplicaLoad]:
    """Per replica: slots, external pressure (running + queued) and when it was observed, on the monotonic clock."""
    out = {}
    for r in snap.replicas:
        age = max(0.0, (wall_now - min(r.observed_at, snap.observed_at)).total_seconds())
        out[r.replica_id] = ReplicaLoad(
            max_inflight=r.max_inflight,
            external_inflight=r.external_inflight + r.queue_depth,
            observed_at=mono_now - age,
            ready=r.ready,
        )
    return out


class GatewayLoad:
    def __init__(self, gateway_url: str, *, clock: Callable[[], float], wall: Callable[[], datetime] = _wall,
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        self._url = gateway_url.rstrip("/") + "/fleet/state"
        self._clock = clock
        self._wall = wall
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)
        self._timeout_s = timeout_s

    async def read(self) -> dict[str, ReplicaLoad]:
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.get(self._url)
        except (TimeoutError, httpx.TimeoutException):
            raise LoadError("gateway_timeout") from None
        except httpx.HTTPError:
            raise LoadError("gateway_unreachable") from None
        if resp.status_code != 200:
            raise LoadError(f"gateway_status:{resp.status_code}")
        try:
            snap = FleetSnapshot.model_validate_json(resp.content)
        except ValueError:
            raise LoadError("gateway_malformed") from None
        return loads_from_snapshot(snap, mono_now=self._clock(), wall_now=self._wall())

    async def aclose(self) -> None:
        await self._client.aclose()


class MetricsLoad:
    def __init__(self, replicas: Mapping[str, str], *, max_inflight: int, own_inflight: Callable[[str], int],
                 clock: Callable[[], float], timeout_s: float = READ_TIMEOUT_S) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._urls = {rid: url.rstrip("/") + "/metrics" for rid, url in replicas.items()}
        self._max = max_inflight
        self._own = own_inflight
        self._clock = clock
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False)

    async def _one(self, rid: str, url: str) -> ReplicaLoad | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                resp = await self._client.get(url)
            if resp.status_code != 200:
                return None
            telemetry = parse_engine_metrics(resp.text, fields=_FIELDS, require=_FIELDS)
        except (TimeoutError, httpx.HTTPError, TelemetryError):
            return None
        busy = int(telemetry.requests_running + (telemetry.requests_waiting or 0))
        return ReplicaLoad(max_inflight=self._max, external_inflight=max(0, busy - self._own(rid)),
                           observed_at=self._clock())

    async def read(self) -> dict[str, ReplicaLoad]:
        results = await asyncio.gather(*(self._one(rid, url) for rid, url in self._urls.items()))
        loads = {rid: load for rid, load in zip(self._urls, results, strict=True) if load is not None}
        if not loads:
            raise LoadError("metrics_unreachable")
        return loads

    async def aclose(self) -> None:
        await self._client.aclose()
