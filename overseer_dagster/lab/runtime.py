"""The `Lab`: N emulated replicas and the gateway in one process and one asyncio loop.

    async with Lab(LabConfig(replicas=4)) as lab:
        lab.gateway_url, lab.replica_urls, await lab.apply_fault("replica-01", Kill())

`BackgroundLab` runs one on its own loop in a thread (for synchronous callers such as pytest fixtures).
Lab-only control on the gateway's port: `POST /lab/replicas/{id}/faults` (a fault JSON, see `faults`) and
`GET /lab/replicas/{id}/state`, which work even while that replica is killed; `POST /lab/gateway/faults`
(`{"kind": "outage", "duration_s": S}`: answered first, then the port closes for S seconds and re-binds by
itself, since nothing could reach the lab to end it). In process: `apply_fault("gateway", ...)`,
`gateway_outage(S)` and `restore_gateway()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.faults import FAULT_ADAPTER, GATEWAY, Fault, FaultError, Outage, parse_fault
from overseer_dagster.lab.gateway import Gateway, GatewayConfig
from overseer_dagster.lab.ledger import LedgerBuffer, Sink
from overseer_dagster.lab.provider import LabProvider
from overseer_dagster.lab.replica import DEFAULT_MODEL, Replica, ReplicaConfig
from overseer_dagster.lab.serving import LOOPBACK, json_response
from overseer_dagster.lab.upstream import BreakerConfig
from overseer_dagster.lab.wallet import LabWallet
from overseer_dagster.lab.wire import vllm_error

T = TypeVar("T")
log = logging.getLogger(__name__)


def replica_ids(n: int) -> list[str]:
    return [f"replica-{i:02d}" for i in range(n)]


@dataclass(frozen=True)
class LabConfig:
    replicas: int = 4
    engine: EngineConfig = field(default_factory=EngineConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    model: str = DEFAULT_MODEL
    gateway_port: int = 0
    host: str = LOOPBACK
    seed: int = 0
    ledger_flush_s: float = 0.5


def fast_lab_config(replicas: int = 2, *, slots: int = 4, gateway: dict[str, Any] | None = None,
                    breaker: dict[str, Any] | None = None, **engine: Any) -> LabConfig:
    """Short timings for tests: ~5 ms decode steps, 50 ms probes and polls, a 5 s queue bound."""
    engine = {"max_num_seqs": slots, "step_base_s": 0.004, "step_per_seq_s": 0.0005, "prefill_base_s": 0.001,
              "prefill_s_per_token": 0.00001, "output_tokens_min": 8, "output_tokens_max": 32, **engine}
    gw = {"probe_interval_s": 0.05, "probe_timeout_s": 0.25, "state_poll_interval_s": 0.05,
          "state_timeout_s": 0.25, "max_queue_wait_s": 5.0, "avoid_s": 0.2, "upstream_read_timeout_s": 5.0,
          **(gateway or {})}
    return LabConfig(replicas=replicas, engine=EngineConfig(**engine),
                     gateway=GatewayConfig(**gw, breaker=BreakerConfig(**(breaker or {}))), ledger_flush_s=0.05)


class Lab:
    def __init__(self, config: LabConfig | None = None, *, ledger_sink: Sink | None = None) -> None:
        self.config = config or LabConfig()
        self.replicas: dict[str, Replica] = {}
        self.gateway: Gateway | None = None
        self.ledger = LedgerBuffer(ledger_sink, flush_interval_s=self.config.ledger_flush_s)
        # The provider and wallet contracts (docs/contracts.md), served on the gateway's port.
        self.provider = LabProvider(self)
        self.wallet = LabWallet()
        self._outage: asyncio.Task[None] | None = None  # the countdown of a gateway outage
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def gateway_url(self) -> str:
        assert self.gateway is not None, "lab not started"
        return self.gateway.url

    @property
    def replica_urls(self) -> dict[str, str]:
        return {rid: r.url for rid, r in self.replicas.items()}

    def ready_info(self) -> dict[str, Any]:
        return {"gateway": self.gateway_url, "replicas": self.replica_urls}

    async def start(self) -> None:
        cfg = self.config
        try:
            for i, rid in enumerate(replica_ids(cfg.replicas)):
                replica = Replica(ReplicaConfig(rid, model=cfg.model, engine=cfg.engine, host=cfg.host,
                                                seed=cfg.seed + i))
                self.replicas[rid] = replica
                await replica.start()
            self.ledger.start()
            self.gateway = Gateway(self.replica_urls, cfg.gateway, on_record=self.ledger.add, host=cfg.host,
                                   port=cfg.gateway_port, extra_routes=self._control_routes)
            await self.gateway.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._stopping = True  # no outage countdown may re-bind the gateway from here
        pending = [*self._tasks, *([self._outage] if self._outage else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._outage = None
        await self.provider.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        await asyncio.gather(*(r.stop() for r in self.replicas.values()), return_exceptions=True)
        await self.ledger.aclose()

    async def __aenter__(self) -> Lab:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def apply_fault(self, target: str, fault: Fault | Outage | dict[str, Any]) -> None:
        """A fault for a replica (by id) or for the gateway (`"gateway"`, an `Outage`)."""
        if target == GATEWAY:
            outage = parse_fault(GATEWAY, fault) if isinstance(fault, dict) else fault
            if not isinstance(outage, Outage):
                raise FaultError(f"the gateway takes an outage, not {outage.kind}")
            await self.gateway_outage(outage.duration_s)
            return
        if isinstance(fault, dict):
            fault = FAULT_ADAPTER.validate_python(fault)
        if isinstance(fault, Outage):
            raise FaultError(f"an outage is the gateway's fault, not {target}'s")
        await self.replicas[target].apply_fault(fault)

    # -- the gateway's outage -------------------------------------------------------------------------------

    async def gateway_outage(self, duration_s: float) -> None:
        """Close the gateway's port for `duration_s` (another outage while down restarts the countdown)."""
        gateway = self.gateway
        assert gateway is not None, "lab not started"
        if self._stopping:
            return
        if self._outage is not None:
            self._outage.cancel()
        await gateway.take_down()
        log.warning("lab: gateway outage: port %d closed for %gs; the replicas keep running",
                    gateway.listener.port, duration_s)
        self._outage = asyncio.get_running_loop().create_task(self._end_outage_after(duration_s))

    async def _end_outage_after(self, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        await self.restore_gateway()

    async def restore_gateway(self) -> None:
        """End an outage now: the gateway re-binds its port (retried each second while the port is taken)."""
        timer, self._outage = self._outage, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        gateway = self.gateway
        while gateway is not None and gateway.down and not self._stopping:
            try:
                await gateway.bring_up()
            except OSError as exc:
                log.warning("lab: gateway port %d not bindable yet (%s); retrying", gateway.listener.port, exc)
                await asyncio.sleep(1.0)
            else:
                log.warning("lab: gateway back on port %d", gateway.listener.port)

    @property
    def gateway_down(self) -> bool:
        return self.gateway is not None and self.gateway.down

    # -- lab control on the gateway's port ------------------------------------------------------------------

    def _control_routes(self, app: web.Application) -> None:
        self.provider.routes(app)
        self.wallet.routes(app)
        app.router.add_post("/lab/replicas/{replica_id}/faults", self._post_fault)
        app.router.add_get("/lab/replicas/{replica_id}/state", self._get_state)
        app.router.add_post("/lab/gateway/faults", self._post_gateway_fault)

    async def _post_fault(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["replica_id"])
        if replica is None:
            return json_response({"error": {"type": "unknown_replica",
                                            "replica_id": request.match_info["replica_id"]}}, 404)
        try:
            fault = parse_fault(replica.replica_id, await request.read())
        except FaultError as exc:
            return json_response(vllm_error(str(exc)), 400)
        await replica.apply_fault(fault)  # type: ignore[arg-type]  # parse_fault gives a replica fault here
        return json_response({"applied": fault.model_dump(mode="json"), "state": replica.state()})

    async def _post_gateway_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            outage = parse_fault(GATEWAY, await request.read())
        except FaultError as exc:
            return json_response(vllm_error(str(exc)), 400)
        # The outage drops every connection, this one included: answer first, then apply.
        port = self.gateway.listener.port if self.gateway is not None else None
        resp = json_response({"applied": outage.model_dump(mode="json"), "port": port})
        await resp.prepare(request)
        await resp.write_eof()
        task = asyncio.get_running_loop().create_task(self.gateway_outage(outage.duration_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return resp

    async def _get_state(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["replica_id"])
        if replica is None:
            return json_response({"error": {"type": "unknown_replica",
                                            "replica_id": request.match_info["replica_id"]}}, 404)
        return json_response(replica.state())


class BackgroundLab:
    """A `Lab` on its own event loop in a daemon thread. Use as a context manager; `call` runs coroutines there."""

    def __init__(self, config: LabConfig | None = None, *, ledger_sink: Sink | None = None) -> None:
        self.lab = Lab(config, ledger_sink=ledger_sink)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lab-loop", daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def __enter__(self) -> Lab:
        self._thread.start()
        try:
            self.call(self.lab.start(), timeout=60.0)
        except BaseException:
            self._shutdown()
            raise
        return self.lab

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.lab.stop(), timeout=60.0)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
