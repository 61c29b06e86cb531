"""Fleet sources: where a tick's FleetSnapshot comes from, selected by one configuration string.

- `sample`: the snapshot shipped in the package (a fleet to look at before any is wired).
- `snapshot:<path or http(s) URL>`: the routing-state oracle contract (docs/contracts.md) as JSON,
  from a file or a gateway's `GET /fleet/state`.
- `probe:<config.json>`: vLLM/SGLang replicas probed directly (`ProbeConfig`).
- `prometheus:<config.json>`: a Prometheus server's HTTP API (`PrometheusConfig`).
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from overseer_dagster.adapters.prometheus_source import PrometheusSource
from overseer_dagster.adapters.replica_probe import ReplicaEndpoint, ReplicaProbeSource
from overseer_dagster.core.fleet import FleetSnapshot


class FleetSourceError(Exception):
    """The fleet could not be read: `reason` is a short code, the message says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FleetSource(Protocol):
    def snapshot(self, now: datetime) -> FleetSnapshot: ...


def _parse(body: bytes | str, where: str) -> FleetSnapshot:
    try:
        return FleetSnapshot.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise FleetSourceError("fleet_snapshot_invalid", f"{where}: {loc}: {first['msg']}") from None


class SnapshotSource:
    """The routing-state oracle contract, read from a file or over HTTP."""

    def __init__(self, location: str, timeout_s: float = 5.0) -> None:
        self.location = location
        self.timeout_s = timeout_s

    def snapshot(self, now: datetime) -> FleetSnapshot:
        if self.location.startswith(("http://", "https://")):
            try:
                response = httpx.get(self.location, timeout=self.timeout_s)
                response.raise_for_status()
            except httpx.TimeoutException:
                raise FleetSourceError("fleet_timeout", "the fleet state endpoint did not answer in time") from None
            except httpx.HTTPStatusError as exc:
                raise FleetSourceError("fleet_http_error", f"the fleet state endpoint answered {exc.response.status_code}") from None
            except httpx.HTTPError as exc:
                raise FleetSourceError("fleet_unreachable", f"the fleet state endpoint is unreachable ({type(exc).__name__})") from None
            return _parse(response.content, "fleet state")
        path = Path(self.location)
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise FleetSourceError("fleet_file_unreadable", f"fleet snapshot file: {exc.strerror}") from None
        return _parse(body, f"fleet snapshot {path.name}")


class SampleSource:
    """The sample snapshot shipped in the package, re-stamped at `now` so it never reads as stale."""

    def snapshot(self, now: datetime) -> FleetSnapshot:
        body = resources.files("overseer_dagster").joinpath("samples/fleet_snapshot.json").read_bytes()
        sample = _parse(body, "sample snapshot")
        replicas = tuple(r.model_copy(update={"observed_at": now}) for r in sample.replicas)
        return sample.model_copy(update={"observed_at": now, "replicas": replicas})


class ProbeConfig(BaseModel):
    """`probe:<file.json>`: replicas probed directly (`/health` + `/metrics` of vLLM or SGLang)."""

    model_config = ConfigDict(extra="forbid")
    replicas: list[ReplicaEndpoint]
    timeout_s: float = Field(default=2.0, gt=0)
    concurrency: int = Field(default=64, ge=1)


class PrometheusConfig(BaseModel):
    """`prometheus:<file.json>`: a Prometheus server's instant queries; label values map to replica ids."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(pattern=r"^https?://")
    replicas: dict[str, str]
    max_inflight: int | dict[str, int]
    replica_label: str = "instance"
    stale_after_s: float = Field(default=120.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)


def _config(model: type[BaseModel], path: str) -> BaseModel:
    try:
        return model.model_validate_json(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"OVERSEER_FLEET_SOURCE: {path}: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ValueError(f"OVERSEER_FLEET_SOURCE: {path}: {loc}: {first['msg']}") from None


# Under OVERSEER_HOME: the latency histograms each probe read, so the next tick's quantiles are of the
# window between them (`ReplicaProbeSource.baselines`).
PROBE_BASELINES = "probe-baselines.json"


def from_spec(spec: str, home: Path | None = None) -> FleetSource:
    """`sample`, `snapshot:<path|URL>`, `probe:<config.json>` or `prometheus:<config.json>`. `home` (the
    overseer's state directory) keeps what a source carries from one tick to the next."""
    kind, _, arg = spec.partition(":")
    if kind == "sample" and not arg:
        return SampleSource()
    if kind == "snapshot" and arg:
        return SnapshotSource(arg)
    if kind == "probe" and arg:
        probe = _config(ProbeConfig, arg)
        return ReplicaProbeSource(probe.replicas, timeout_s=probe.timeout_s, concurrency=probe.concurrency,
                                  baselines=home / PROBE_BASELINES if home else None)
    if kind == "prometheus" and arg:
        prom = _config(PrometheusConfig, arg)
        return PrometheusSource(prom.base_url, prom.replicas, prom.max_inflight, replica_label=prom.replica_label,
                                stale_after_s=prom.stale_after_s, timeout_s=prom.timeout_s)
    raise ValueError(
        f"OVERSEER_FLEET_SOURCE={spec!r} is not one of: sample, snapshot:<path or URL>, "
        "probe:<config.json>, prometheus:<config.json>"
    )
