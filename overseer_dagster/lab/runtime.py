"""The `Lab`: N emulated replicas and the gateway in one process and one asyncio loop.

    async with Lab(LabConfig(replicas=4)) as lab:
        lab.gateway_url, lab.replica_urls, await lab.apply_fault("replica-01", Kill())

`BackgroundLab` runs one on its own loop in a thread (for synchronous callers such as pytest fixtures).
Lab-only control on the gateway's port: `POST /lab/replicas/{id}/faults` (a fault JSON, see `faults`) and
`GET /lab/replicas/{id}/state`, which work even while that replica is killed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import ValidationError

from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.faults import FAULT_ADAPTER, Fault
from overseer_dagster.lab.gateway import Gateway, GatewayConfig
from overseer_dagster.lab.ledger import LedgerBuffer, Sink
from overseer_dagster.lab.provider import LabProvider
from overseer_dagster.lab.replica import DEFAULT_MODEL, Replica, ReplicaConfig
from overseer_dagster.lab.serving import LOOPBACK, json_response
from overseer_dagster.lab.upstream import BreakerConfig
from overseer_dagster.lab.wallet import LabWallet
from overseer_dagster.lab.wire import vllm_error

T = TypeVar("T")


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

    async def apply_fault(self, replica_id: str, fault: Fault | dict[str, Any]) -> None:
        if isinstance(fault, dict):
            fault = FAULT_ADAPTER.validate_python(fault)
        await self.replicas[replica_id].apply_fault(fault)

    # -- lab control on the gateway's port ------------------------------------------------------------------

    def _control_routes(self, app: web.Application) -> None:
        self.provider.routes(app)
        self.wallet.routes(app)
        app.router.add_post("/lab/replicas/{replica_id}/faults", self._post_fault)
        app.router.add_get("/lab/replicas/{replica_id}/state", self._get_state)

    async def _post_fault(self, request: web.Request) -> web.Response:
        replica = self.replicas.get(request.match_info["replica_id"])
        if replica is None:
            return json_response({"error": {"type": "unknown_replica",
                                            "replica_id": request.match_info["replica_id"]}}, 404)
        try:
            fault = FAULT_ADAPTER.validate_json(await request.read())
        except ValidationError as exc:
            return json_response(vllm_error(str(exc)), 400)
        await replica.apply_fault(fault)
        return json_response({"applied": fault.model_dump(mode="json"), "state": replica.state()})

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
