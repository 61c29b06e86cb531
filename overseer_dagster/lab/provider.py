"""The lab's GPU provider, on the gateway's port (the provider contract in docs/contracts.md):

- `POST /provider/scale_out {gpu_class, count, max_hourly_usd}` (header `Idempotency-Key`): prices the
  request (`PRICES_USD_PER_HOUR` per replica), refuses it over `max_hourly_usd` (409 `over_budget`) or
  for an unknown class (400 `unknown_gpu_class`), else answers 202 with the allocation
  (`state: provisioning`); `count` emulated replicas join the lab fleet (and the gateway's routing)
  after `join_delay_s`, and the allocation turns `ready`. The same key again answers the same allocation.
- `POST /provider/release {allocation_id}`: the replicas leave the fleet and stop; `state: released`.
  Idempotent; 404 `unknown_allocation`.
- `GET /provider/allocations?idempotency_key=K` (or `allocation_id=`): one allocation, or 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from overseer_dagster.lab.replica import Replica, ReplicaConfig
from overseer_dagster.lab.serving import json_response

if TYPE_CHECKING:
    from overseer_dagster.lab.runtime import Lab

log = logging.getLogger(__name__)

PRICES_USD_PER_HOUR = {"h100": 4.0, "h200": 6.0, "b200": 9.0}
MAX_COUNT = 8


@dataclass
class LabAllocation:
    allocation_id: str
    gpu_class: str
    count: int
    hourly_usd: float
    state: str
    replica_ids: list[str] = field(default_factory=list)
    idempotency_key: str | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "idempotency_key"}


def _error(kind: str, message: str, status: int) -> web.Response:
    return json_response({"error": {"type": kind, "message": message}}, status=status)


class LabProvider:
    def __init__(self, lab: Lab, *, join_delay_s: float = 1.0) -> None:
        self.lab = lab
        self.join_delay_s = join_delay_s
        self.allocations: dict[str, LabAllocation] = {}
        self._by_key: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/provider/scale_out", self._scale_out)
        app.router.add_post("/provider/release", self._release)
        app.router.add_get("/provider/allocations", self._find)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    # -- handlers ---------------------------------------------------------------------------------------

    async def _scale_out(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            gpu_class, count, ceiling = body["gpu_class"], body["count"], body["max_hourly_usd"]
            if not (isinstance(gpu_class, str) and isinstance(count, int) and isinstance(ceiling, (int, float))):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error("bad_request", "expected {gpu_class: str, count: int, max_hourly_usd: number}", 400)
        key = request.headers.get("Idempotency-Key")
        async with self._lock:
            if key and key in self._by_key:
                return json_response(self.allocations[self._by_key[key]].public())
            if gpu_class not in PRICES_USD_PER_HOUR:
                return _error("unknown_gpu_class", f"no {gpu_class} on offer", 400)
            if not 1 <= count <= MAX_COUNT:
                return _error("bad_count", f"count must be 1 to {MAX_COUNT}", 400)
            hourly = PRICES_USD_PER_HOUR[gpu_class] * count
            if hourly > ceiling:
                return _error("over_budget", f"{count} x {gpu_class} costs {hourly} USD/h", 409)
            n = len(self.allocations) + 1
            allocation = LabAllocation(
                allocation_id=f"alloc-{n:03d}", gpu_class=gpu_class, count=count, hourly_usd=hourly,
                state="provisioning", replica_ids=[f"scale-{n:03d}-{i}" for i in range(count)], idempotency_key=key,
            )
            self.allocations[allocation.allocation_id] = allocation
            if key:
                self._by_key[key] = allocation.allocation_id
            self._tasks[allocation.allocation_id] = asyncio.get_running_loop().create_task(self._provision(allocation))
        log.info("provider: %s provisioning %d x %s", allocation.allocation_id, count, gpu_class)
        return json_response(allocation.public(), status=202)

    async def _release(self, request: web.Request) -> web.Response:
        try:
            allocation_id = json.loads(await request.read())["allocation_id"]
        except (ValueError, KeyError, TypeError):
            return _error("bad_request", "expected {allocation_id: str}", 400)
        allocation = self.allocations.get(allocation_id) if isinstance(allocation_id, str) else None
        if allocation is None:
            return _error("unknown_allocation", "no such allocation", 404)
        if allocation.state != "released":
            allocation.state = "released"
            task = self._tasks.pop(allocation.allocation_id, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self._remove(allocation)
            log.info("provider: %s released", allocation.allocation_id)
        return json_response(allocation.public())

    async def _find(self, request: web.Request) -> web.Response:
        key = request.query.get("idempotency_key")
        allocation_id = self._by_key.get(key) if key else request.query.get("allocation_id")
        allocation = self.allocations.get(allocation_id or "")
        if allocation is None:
            return _error("unknown_allocation", "no such allocation", 404)
        return json_response(allocation.public())

    # -- the fleet --------------------------------------------------------------------------------------

    async def _provision(self, allocation: LabAllocation) -> None:
        await asyncio.sleep(self.join_delay_s)
        cfg = self.lab.config
        try:
            for i, rid in enumerate(allocation.replica_ids):
                replica = Replica(ReplicaConfig(rid, model=cfg.model, engine=cfg.engine, host=cfg.host,
                                                seed=cfg.seed + 1000 + i))
                await replica.start()
                self.lab.replicas[rid] = replica
                assert self.lab.gateway is not None
                await self.lab.gateway.add_upstream(rid, replica.url)
        except asyncio.CancelledError:
            await self._remove(allocation)
            raise
        allocation.state = "ready"
        self._tasks.pop(allocation.allocation_id, None)
        log.info("provider: %s ready", allocation.allocation_id)

    async def _remove(self, allocation: LabAllocation) -> None:
        for rid in allocation.replica_ids:
            if self.lab.gateway is not None:
                await self.lab.gateway.remove_upstream(rid)
            replica = self.lab.replicas.pop(rid, None)
            if replica is not None:
                await replica.stop()
