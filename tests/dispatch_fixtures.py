"""Helpers for dispatch tests: queued actions as a tick writes them, a settable clock, fleets, and a
tiny fake gateway (routing state, router admin, chat completions) on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from overseer_dagster.adapters.actuators import Actuators, StoreReportSink, StoreStressControl, UnconfiguredRouter
from overseer_dagster.adapters.fleet_source import FleetSourceError
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.store import actions, journal, write_tx

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def replica(rid: str, now: datetime = NOW, **fields: Any) -> dict:
    return {"replica_id": rid, "health": "healthy", "routing_state": "admitted", "warm": True, "inflight": 0,
            "max_inflight": 16, "observed_at": now.isoformat(), **fields}


def snapshot(*replicas: dict, now: datetime = NOW) -> FleetSnapshot:
    return FleetSnapshot.model_validate({"observed_at": now.isoformat(), "replicas": list(replicas)})


class StaticFleet:
    def __init__(self, snap: FleetSnapshot | None = None, *, problem: str | None = None) -> None:
        self.snap = snap
        self.problem = problem
        self.reads = 0

    def snapshot(self, now: datetime) -> FleetSnapshot:
        self.reads += 1
        if self.snap is None:
            raise FleetSourceError("fleet_unreachable", self.problem or "the fleet state endpoint is unreachable")
        return self.snap


def queue(engine: Engine, action: dict, *, now: datetime = NOW, kind: str | None = None,
          authority: str = "autonomous") -> str:
    """Enqueue one action with its decision row, as a tick does."""
    action_id = str(uuid.uuid4())
    text = json.dumps(action, sort_keys=True, separators=(",", ":"))
    kind = kind or action["kind"]
    with write_tx(engine) as conn:
        actions.enqueue(conn, action_id=action_id, tick_id=None, kind=kind, authority=authority,
                        action_json=text, now=now)
        journal.append(conn, [journal.Entry(phase="decision", state="queued", created_at=now, kind=kind,
                                            authority=authority, action_id=action_id, action_json=text)])
    return action_id


def run_for(instance: Any, request: Any, *, ended: str | None = "failed") -> Any:  # noqa: ANN401
    """The `dispatch_action` run the sensor daemon creates for a run request (its tags and run key), then, by
    `ended`, reported `failed` or `canceled` before it ever ran (its run worker never launched), or left on its
    way (None)."""
    from overseer_dagster.definitions import defs

    run = instance.create_run_for_job(defs.get_job_def("dispatch_action"), run_config=request.run_config,
                                      tags={**request.tags, "dagster/run_key": request.run_key})
    if ended == "failed":
        instance.report_run_failed(run)
    elif ended == "canceled":
        instance.report_run_canceled(run)
    return instance.get_run_by_id(run.run_id)


def store_actuators(engine: Engine, router: Any = None, warm: Any = None, cadence_s: float = 60.0) -> Actuators:
    none = UnconfiguredRouter()
    return Actuators(stress=StoreStressControl(engine, default_hold_s=3 * cadence_s), router=router or none,
                     warm=warm or none, reports=StoreReportSink(engine))


def outcomes(engine: Engine, action_id: str) -> list[tuple[str, str | None]]:
    return [(r["state"], r["reason"]) for r in journal.tail(engine, 1000)
            if r["action_id"] == action_id and r["phase"] == "outcome"]


@dataclass
class FakeGateway:
    """The gateway contract (docs/contracts.md) in a few lines, with knobs for failure."""

    replicas: dict[str, dict] = field(default_factory=dict)
    # verb (admit|drain|quarantine|chat) -> ("status", code) | ("hang", seconds) | ("state", routing_state).
    faults: dict[str, tuple[str, Any]] = field(default_factory=dict)
    admin_calls: list[tuple[str, str]] = field(default_factory=list)
    completions: list[dict] = field(default_factory=list)
    echo_replica: bool = True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fleet/state", self._state)
        app.router.add_post("/fleet/replicas/{rid}/{verb}", self._admin)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def set(self, rid: str, **fields: Any) -> None:
        self.replicas[rid].update(fields)

    async def _state(self, request: web.Request) -> web.Response:
        now = datetime.now(UTC).isoformat()
        reps = [{**r, "observed_at": now} for r in self.replicas.values()]
        return web.json_response({"observed_at": now, "replicas": reps})

    async def _misbehave(self, verb: str) -> web.Response | None:
        fault = self.faults.get(verb)
        if fault is None:
            return None
        what, arg = fault
        if what == "hang":
            await asyncio.sleep(arg)
        if what == "status":
            return web.json_response({"error": {"type": "internal", "message": "boom"}}, status=arg)
        return None

    async def _admin(self, request: web.Request) -> web.Response:
        rid, verb = request.match_info["rid"], request.match_info["verb"]
        self.admin_calls.append((rid, verb))
        bad = await self._misbehave(verb)
        if bad is not None:
            return bad
        if rid not in self.replicas:
            return web.json_response({"error": {"type": "unknown_replica", "message": f"no replica {rid}"}}, status=404)
        states = {"admit": "admitted", "drain": "draining", "quarantine": "quarantined"}
        if verb not in states:
            return web.json_response({"error": {"type": "unknown_verb"}}, status=404)
        fault = self.faults.get(verb)
        self.replicas[rid]["routing_state"] = fault[1] if fault and fault[0] == "state" else states[verb]
        return web.json_response({**self.replicas[rid], "observed_at": datetime.now(UTC).isoformat()})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "lab-model", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        rid = request.headers.get("X-Replica-Id", "")
        self.completions.append({"replica": rid, "kind": request.headers.get("X-Demand-Kind"),
                                 "max_tokens": body.get("max_tokens"), "model": body.get("model")})
        bad = await self._misbehave("chat")
        if bad is not None:
            return bad
        if rid not in self.replicas:
            return web.json_response({"error": {"type": "unknown_replica", "message": f"no replica {rid}"}}, status=404)
        self.replicas[rid]["warm"] = True
        headers = {"X-Replica-Id": rid} if self.echo_replica else {}
        return web.json_response({"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}]},
            headers=headers)
