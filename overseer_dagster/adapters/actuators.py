"""Actuators: the overseer's hands, each behind a small Protocol and each idempotent.

- `StressControl` writes stress-target rows (the stress harness reads them).
- `RouterAdmin` admits, drains and quarantines replicas at the gateway (docs/contracts.md).
- `WarmUp` sends a few short completions to one replica through the gateway.
- `ReportSink` stores a public-safe report.

Every failure is an `ActuatorError` with a short reason code and a public-safe message: the
dispatcher records it as the action's `failed` outcome. Nothing here decides whether to act.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import Engine

from overseer_dagster.core.fleet import ReplicaState
from overseer_dagster.core.health import Thresholds
from overseer_dagster.core.projection import emit_report_text
from overseer_dagster.core.redact import redact
from overseer_dagster.settings import health_thresholds
from overseer_dagster.store import reports, targets, write_tx
from overseer_dagster.store.health import snapshot_from_store

# Timeouts, chosen so one action always acts well within its dispatch lease (dispatch.ACT_BUDGET_S).
ROUTER_TIMEOUT_S = 5.0
WARM_TIMEOUT_S = 10.0
WARM_DEADLINE_S = 45.0
WARM_PARALLEL = 4
# Headers of the gateway contract: pin a request to one replica; label its demand kind.
REPLICA_HEADER = "X-Replica-Id"
DEMAND_KIND_HEADER = "X-Demand-Kind"


class ActuatorError(Exception):
    """An actuator could not act: `reason` is a short code, the message is public-safe."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(redact(message))
        self.reason = reason


# --- stress control ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StressWrite:
    """The targets one stress action wrote: scope (None = pool-wide) -> concurrency."""

    concurrency: dict[str | None, int]
    already_done: bool = False


class StressControl(Protocol):
    def start(self, *, action_id: str, replica_id: str | None, concurrency: int, duration_s: int,
              now: datetime) -> StressWrite: ...

    def scale(self, *, action_id: str, replica_id: str | None, concurrency: int, now: datetime) -> StressWrite: ...

    def back_off(self, *, action_id: str, replica_id: str | None, factor: float, now: datetime) -> StressWrite: ...

    def stop(self, *, action_id: str, replica_id: str | None, now: datetime) -> StressWrite: ...


class StoreStressControl:
    """Stress targets in the store. Idempotent per action: an action that already wrote its rows writes none.

    Pool-wide back-off and stop (no replica) also cover every per-replica target in force: reducing
    "the pool" must not leave a replica's own target running. A stop never expires before the target
    it replaces, or that older target would come back when the stop expires.
    """

    def __init__(self, engine: Engine, *, default_hold_s: float) -> None:
        self.engine = engine
        self.default_hold = timedelta(seconds=default_hold_s)

    def start(self, *, action_id: str, replica_id: str | None, concurrency: int, duration_s: int,
              now: datetime) -> StressWrite:
        return self._write(action_id, now, lambda active: {replica_id: (concurrency, now + timedelta(seconds=duration_s))})

    def scale(self, *, action_id: str, replica_id: str | None, concurrency: int, now: datetime) -> StressWrite:
        def plan(active):  # noqa: ANN001, ANN202
            current = active.get(replica_id)
            return {replica_id: (concurrency, current.expires_at if current else now + self.default_hold)}

        return self._write(action_id, now, plan)

    def back_off(self, *, action_id: str, replica_id: str | None, factor: float, now: datetime) -> StressWrite:
        def plan(active):  # noqa: ANN001, ANN202
            scopes = self._scopes(active, replica_id)
            return {
                s: (max(0, math.floor(active[s].concurrency * factor)) if s in active else 0,
                    active[s].expires_at if s in active else now + self.default_hold)
                for s in scopes
            }

        return self._write(action_id, now, plan)

    def stop(self, *, action_id: str, replica_id: str | None, now: datetime) -> StressWrite:
        def plan(active):  # noqa: ANN001, ANN202
            hold = now + self.default_hold
            return {s: (0, max(active[s].expires_at, hold) if s in active else hold)
                    for s in self._scopes(active, replica_id)}

        return self._write(action_id, now, plan)

    @staticmethod
    def _scopes(active: dict, replica_id: str | None) -> list[str | None]:
        if replica_id is not None:
            return [replica_id]
        return [None, *sorted(s for s in active if s is not None)]

    def _write(self, action_id: str, now: datetime, plan) -> StressWrite:  # noqa: ANN001
        with write_tx(self.engine) as conn:
            if targets.written_by(conn, action_id):
                return StressWrite({}, already_done=True)
            rows = plan(targets.active_on(conn, now))
            for scope, (concurrency, expires_at) in rows.items():
                targets.set_target(conn, replica_id=scope, concurrency=concurrency, now=now,
                                   expires_at=expires_at, action_id=action_id)
        return StressWrite({scope: c for scope, (c, _) in rows.items()})


# --- router admin and warm-up (the gateway) ----------------------------------------------------


class RouterAdmin(Protocol):
    def admit(self, replica_id: str) -> ReplicaState: ...

    def drain(self, replica_id: str) -> ReplicaState: ...

    def quarantine(self, replica_id: str) -> ReplicaState: ...


class WarmUp(Protocol):
    def warm(self, replica_id: str, requests: int) -> int:
        """Send `requests` short completions pinned to the replica; returns how many completed."""
        ...


def _gateway_error(exc: httpx.HTTPError | None, response: httpx.Response | None, what: str) -> ActuatorError:
    """One mapping from HTTP trouble to reason codes, for every gateway call."""
    if isinstance(exc, httpx.TimeoutException):
        return ActuatorError("router_timeout", f"{what}: the gateway did not answer in time")
    if exc is not None:
        return ActuatorError("router_unreachable", f"{what}: the gateway is unreachable ({type(exc).__name__})")
    assert response is not None
    error_type = None
    try:
        body = response.json()
        error_type = body.get("error", {}).get("type") if isinstance(body, dict) else None
    except ValueError:
        pass
    if response.status_code == 404 and error_type == "unknown_replica":
        return ActuatorError("unknown_replica", f"{what}: the gateway does not know this replica")
    if response.status_code >= 500:
        return ActuatorError("router_error", f"{what}: the gateway answered {response.status_code}")
    suffix = f" ({error_type})" if isinstance(error_type, str) and len(error_type) <= 64 else ""
    return ActuatorError("router_refused", f"{what}: the gateway answered {response.status_code}{suffix}")


class HttpRouterAdmin:
    """`POST {gateway}/fleet/replicas/{replica_id}/admit|drain|quarantine` (docs/contracts.md)."""

    _EXPECTED = {"admit": "admitted", "drain": "draining", "quarantine": "quarantined"}

    def __init__(self, base_url: str, *, timeout_s: float = ROUTER_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.transport = transport

    def admit(self, replica_id: str) -> ReplicaState:
        return self._set(replica_id, "admit")

    def drain(self, replica_id: str) -> ReplicaState:
        return self._set(replica_id, "drain")

    def quarantine(self, replica_id: str) -> ReplicaState:
        return self._set(replica_id, "quarantine")

    def _set(self, replica_id: str, verb: str) -> ReplicaState:
        what = f"{verb} {replica_id}"
        try:
            with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
                response = client.post(f"{self.base_url}/fleet/replicas/{replica_id}/{verb}")
        except httpx.HTTPError as exc:
            raise _gateway_error(exc, None, what) from None
        if response.status_code != 200:
            raise _gateway_error(None, response, what)
        try:
            state = ReplicaState.model_validate_json(response.content)
        except ValueError:
            raise ActuatorError("router_bad_response", f"{what}: the gateway's answer is not a replica state") from None
        if state.replica_id != replica_id or state.routing_state.value != self._EXPECTED[verb]:
            raise ActuatorError(
                "router_state_mismatch",
                f"{what}: the gateway reports {state.replica_id} {state.routing_state.value}",
            )
        return state


class GatewayWarmUp:
    """Short chat completions (max_tokens 1-4) through the gateway, pinned with `X-Replica-Id`,
    labelled `X-Demand-Kind: internal` so they never count as external demand."""

    def __init__(self, base_url: str, *, model: str | None = None, timeout_s: float = WARM_TIMEOUT_S,
                 deadline_s: float = WARM_DEADLINE_S, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.transport = transport

    def warm(self, replica_id: str, requests: int) -> int:
        deadline = time.monotonic() + self.deadline_s
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
            model = self.model or self._first_model(client)
            with ThreadPoolExecutor(max_workers=min(WARM_PARALLEL, requests)) as pool:
                done = list(pool.map(lambda i: self._one(client, model, replica_id, i, deadline), range(requests)))
        return sum(done)

    def _first_model(self, client: httpx.Client) -> str:
        what = "list models"
        try:
            response = client.get(f"{self.base_url}/v1/models")
        except httpx.HTTPError as exc:
            raise _gateway_error(exc, None, what) from None
        if response.status_code != 200:
            raise _gateway_error(None, response, what)
        try:
            return response.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ActuatorError("router_bad_response", f"{what}: the gateway lists no model") from None

    def _one(self, client: httpx.Client, model: str, replica_id: str, i: int, deadline: float) -> int:
        what = f"warm {replica_id}"
        if time.monotonic() > deadline:
            raise ActuatorError("router_timeout", f"{what}: warm-up ran past its {self.deadline_s:.0f} s deadline")
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1 + i % 4,
            "stream": False,
        }
        headers = {REPLICA_HEADER: replica_id, DEMAND_KIND_HEADER: "internal"}
        try:
            response = client.post(f"{self.base_url}/v1/chat/completions", content=json.dumps(body), headers={
                **headers, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise _gateway_error(exc, None, what) from None
        if response.status_code != 200:
            raise _gateway_error(None, response, what)
        # The gateway names the replica that served: a warm-up that landed elsewhere warmed nothing.
        served = response.headers.get(REPLICA_HEADER)
        if served != replica_id:
            raise ActuatorError("route_not_pinned", f"{what}: the gateway served it from {served or 'an unnamed replica'}")
        return 1


class UnconfiguredRouter:
    """No gateway configured (e.g. the `sample` fleet source): router actions fail, typed."""

    def _refuse(self, *_args: object) -> Any:
        raise ActuatorError("router_unconfigured", "no router is configured: set OVERSEER_ROUTER_URL "
                            "or an http(s) snapshot OVERSEER_FLEET_SOURCE")

    admit = drain = quarantine = warm = _refuse


# --- reports -----------------------------------------------------------------------------------


class ReportSink(Protocol):
    def emit(self, *, action_id: str, topic: str, now: datetime) -> str:
        """Publish a report on `topic`; returns the public text as stored."""
        ...


class StoreReportSink:
    """The `reports` table. Idempotent per action.

    What it publishes is the health report as the store can vouch for it now (`core.projection.
    emit_report_text`): the mind chose the topic and the moment, never the words. Its own summary is
    free text that may state figures no fresh signal backs; it stays in the action's private JSON.
    """

    def __init__(self, engine: Engine, thresholds: Thresholds | None = None) -> None:
        self.engine = engine
        self.thresholds = thresholds or health_thresholds()

    def emit(self, *, action_id: str, topic: str, now: datetime) -> str:
        public = emit_report_text(topic, snapshot_from_store(self.engine, now, self.thresholds)).value
        with write_tx(self.engine) as conn:
            reports.write(conn, topic=topic, summary=public, now=now, action_id=action_id)
        return public


# --- the set the dispatcher uses -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Actuators:
    stress: StressControl
    router: RouterAdmin
    warm: WarmUp
    reports: ReportSink


def from_settings(engine: Engine, *, router_url: str | None, warm_model: str | None, cadence_s: float) -> Actuators:
    """The production actuators: the store for stress and reports, the gateway (when configured) for the rest."""
    router: Any
    warm: Any
    if router_url:
        router, warm = HttpRouterAdmin(router_url), GatewayWarmUp(router_url, model=warm_model)
    else:
        router = warm = UnconfiguredRouter()
    return Actuators(
        stress=StoreStressControl(engine, default_hold_s=3 * cadence_s),
        router=router,
        warm=warm,
        reports=StoreReportSink(engine),
    )
