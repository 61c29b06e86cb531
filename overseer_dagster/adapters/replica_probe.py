"""A fleet source that asks every replica itself, many at once: `GET /health`, then `GET /metrics`.

Health, per replica:
- `/health` answers 200 and `/metrics` parses with running and waiting counts: healthy.
- `/health` answers anything else: unhealthy (the replica said so; metrics do not overrule it).
- No answer in time, refused, or metrics malformed or partial: unknown, never healthy, with
  `unknown_reason` a short code (`timeout`, `connect_error`, `metrics_malformed`,
  `metrics_missing:requests_waiting`, ...). A probe never raises for a replica.

Every replica is reported `admitted`: a replica does not know whether a router sends it traffic, so a
direct probe cannot see routing state. Pair it with the routing-state oracle where rotation matters.

TTFT and ITL quantiles are of the window since the previous probe: the engine's cumulative histograms
minus the ones that probe read (`Histogram.since`), kept in the `baselines` file because each tick runs
in a process of its own. A replica with no tokens in the window has no latency figure (None), as the
routing-state oracle reports it. Without an earlier page (the first probe, no `baselines` file) or when
the counters went down (the engine restarted), the page's own histograms are used: since the engine
(re)started. Replica addresses stay inside this module: reasons never carry them; the baselines file
holds replica ids and histograms only.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

from overseer_dagster.core.fleet import FleetSnapshot, Health, ReplicaId, ReplicaState, RoutingState
from overseer_dagster.core.telemetry import EngineTelemetry, Histogram, TelemetryError, parse_engine_metrics
from overseer_dagster.files import write_text_atomically

# inflight = running + waiting: a page without either cannot say how busy the replica is. The probe
# reads only what a ReplicaState carries: parsing is most of a probe's CPU.
_REQUIRED = ("requests_running", "requests_waiting")
_READ = (*_REQUIRED, "ttft", "itl")
_LATENCY = ("ttft", "itl")
# replica id -> latency field -> the histogram the last probe read
Baselines = dict[str, dict[str, Histogram]]


class ReplicaEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    replica_id: ReplicaId
    # Where `/health` and `/metrics` live, e.g. the engine's OpenAI-compatible server root.
    base_url: str = Field(pattern=r"^https?://")
    max_inflight: int = Field(ge=1)


class ReplicaProbeSource:
    def __init__(
        self,
        endpoints: Iterable[ReplicaEndpoint],
        *,
        timeout_s: float = 2.0,
        concurrency: int = 64,
        max_metrics_bytes: int = 16 * 1024 * 1024,
        baselines: Path | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        ids = [e.replica_id for e in self.endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("replica ids must be unique")
        if timeout_s <= 0 or concurrency < 1 or max_metrics_bytes < 1:
            raise ValueError("timeout_s, concurrency and max_metrics_bytes must be positive")
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.max_metrics_bytes = max_metrics_bytes
        # Where each probe leaves the histograms it read, for the next one's window (None: every
        # quantile is since the engine started).
        self.baselines = baselines

    def snapshot(self, now: datetime) -> FleetSnapshot:
        """Probe every replica; from code already inside an event loop, await `probe` instead."""
        return asyncio.run(self.probe(now))

    async def probe(self, now: datetime) -> FleetSnapshot:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        earlier = load_baselines(self.baselines) if self.baselines else {}
        slots = asyncio.Semaphore(self.concurrency)
        tls = httpx.create_ssl_context()  # once per probe: building one costs more than a probe
        probed = await asyncio.gather(*(self._replica(slots, tls, e, now, earlier.get(e.replica_id, {}))
                                        for e in self.endpoints))
        if self.baselines:
            read = {e.replica_id: pages for e, (_, pages) in zip(self.endpoints, probed) if pages}
            # A replica that did not answer keeps its older page: its next window spans the gap.
            kept = {e.replica_id: earlier[e.replica_id] for e in self.endpoints if e.replica_id in earlier}
            try:
                save_baselines(self.baselines, kept | read)
            except OSError:  # the fleet was read: the next probe's window just starts further back
                pass
        return FleetSnapshot(observed_at=now, replicas=tuple(state for state, _ in probed))

    async def _replica(
        self, slots: asyncio.Semaphore, tls: ssl.SSLContext, endpoint: ReplicaEndpoint, now: datetime,
        earlier: Mapping[str, Histogram],
    ) -> tuple[ReplicaState, dict[str, Histogram]]:
        """The replica's state, and the latency histograms its page carried (the next probe's baseline)."""
        base = endpoint.base_url.rstrip("/")
        async with slots:  # the deadline starts once the replica's turn comes, not while it queues
            # A client per replica: one shared pool scans all its connections for every request,
            # which grows with the square of the concurrency. trust_env=False: never via a proxy.
            async with httpx.AsyncClient(verify=tls, timeout=self.timeout_s, trust_env=False) as client:
                health, metrics = await self._ask(client, base)
        pages = {}
        if isinstance(metrics, EngineTelemetry):
            pages = {f: h for f in _LATENCY if (h := getattr(metrics, f)) is not None}
        try:
            return _state(endpoint, health, metrics, now, earlier), pages
        except Exception:  # a value the state model refuses (a negative latency bound, ...)
            return _state(endpoint, health, "probe_error", now, earlier), {}

    async def _ask(self, client: httpx.AsyncClient, base: str) -> tuple[int | str, EngineTelemetry | str | None]:
        """(health status or reason, telemetry or reason), both within one deadline of timeout_s.

        One after the other, over one connection. A replica that does not answer `/health` is not
        asked for `/metrics`; one that answers anything is, so an unhealthy replica still shows its load.
        """
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                health = (await client.get(base + "/health")).status_code
        except Exception as exc:
            return _reason(exc), None
        try:
            async with asyncio.timeout_at(deadline):
                return health, await self._metrics(client, base + "/metrics")
        except Exception as exc:
            return health, _reason(exc)

    async def _metrics(self, client: httpx.AsyncClient, url: str) -> EngineTelemetry | str:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                return f"metrics_status:{response.status_code}"
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_metrics_bytes:
                    return "metrics_too_large"
        try:
            return parse_engine_metrics(body.decode("utf-8", errors="replace"), fields=_READ, require=_REQUIRED)
        except TelemetryError as exc:
            return exc.reason_code


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.HTTPError):
        return "http_error"
    return "probe_error"


def _window(page: Histogram | None, earlier: Histogram | None) -> Histogram | None:
    """What a latency quantile is read over: the observations since `earlier` (the previous probe's page)
    when that lines up with `page`; else `page` itself (no earlier page, or the engine restarted)."""
    if page is None or earlier is None:
        return page
    since = page.since(earlier)
    return page if since is None else since


def _state(endpoint: ReplicaEndpoint, health: object, metrics: object, now: datetime,
           earlier: Mapping[str, Histogram]) -> ReplicaState:
    telemetry = metrics if isinstance(metrics, EngineTelemetry) else None
    reason: str | None = None
    if isinstance(health, int) and health != 200:
        status = Health.unhealthy
    elif isinstance(health, str):
        status, reason = Health.unknown, health
    elif telemetry is None:
        status, reason = Health.unknown, str(metrics)
    else:
        status = Health.healthy
    running = telemetry.requests_running if telemetry else 0.0
    waiting = (telemetry.requests_waiting or 0.0) if telemetry else 0.0
    ttft = _window(telemetry.ttft, earlier.get("ttft")) if telemetry else None
    itl = _window(telemetry.itl, earlier.get("itl")) if telemetry else None
    return ReplicaState(
        replica_id=endpoint.replica_id,
        health=status,
        routing_state=RoutingState.admitted,
        inflight=round(running + waiting),
        max_inflight=endpoint.max_inflight,
        queue_depth=round(waiting),
        ttft_p50_s=ttft.quantile(0.5) if ttft else None,
        ttft_p99_s=ttft.quantile(0.99) if ttft else None,
        itl_p50_s=itl.quantile(0.5) if itl else None,
        itl_p90_s=itl.quantile(0.9) if itl else None,
        unknown_reason=reason,
        observed_at=now,
    )


# --- the baselines file -------------------------------------------------------------------------------


def load_baselines(path: Path) -> Baselines:
    """The histograms the last probe left at `path`; empty when there is none or it cannot be read (then
    this probe's quantiles are since each engine started, and it writes a good file for the next)."""
    try:
        raw = json.loads(path.read_text())
        return {rid: {f: Histogram.model_validate(h) for f, h in pages.items() if f in _LATENCY}
                for rid, pages in raw["replicas"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save_baselines(path: Path, baselines: Baselines) -> None:
    """Write `baselines` to `path` atomically (a reader sees the old file or the new, never half)."""
    write_text_atomically(path, json.dumps({"replicas": {
        rid: {f: {"buckets": [[_bound(le), c] for le, c in h.buckets], "count": h.count, "sum": h.sum}
              for f, h in pages.items()}
        for rid, pages in baselines.items()}}, separators=(",", ":")))


def _bound(le: float) -> float | str:
    # JSON has no infinity: the +Inf bucket is written as Prometheus writes it, which pydantic reads back.
    return "+Inf" if math.isinf(le) else le
