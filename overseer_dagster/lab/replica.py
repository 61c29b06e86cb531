"""One emulated vLLM replica: a real HTTP server on loopback speaking vLLM's OpenAI API and metrics.

Endpoints: `POST /v1/chat/completions` (streaming SSE or not), `GET /v1/models`, `GET /health`, `GET /metrics`;
lab-only: `GET /lab/state` (running/waiting by demand kind, fault flags) and `POST /lab/faults` (see `faults`).
The `/lab/*` endpoints are never subject to `hang` or `engine_dead` so a test can always reach them.
Demand kind comes from the `X-Demand-Kind` header (missing or unknown: `unlabeled`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from overseer_dagster.core.demand import DemandKind
from overseer_dagster.lab.engine import Engine, EngineConfig, Seq
from overseer_dagster.lab.faults import (
    FAULT_ADAPTER,
    EngineDead,
    ErrorBurst,
    Fault,
    Flap,
    Hang,
    Kill,
    Recover,
    Slow,
)
from overseer_dagster.lab.serving import LOOPBACK, Listener, json_response
from overseer_dagster.lab.wire import (
    DONE,
    ChatRequest,
    ChunkWriter,
    estimate_tokens,
    models_body,
    openai_error,
    parse_chat_request,
    vllm_error,
)

DEMAND_KIND_HEADER = "X-Demand-Kind"
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_KINDS = frozenset(k.value for k in DemandKind)


def demand_kind_of(headers: Any) -> str:
    value = headers.get(DEMAND_KIND_HEADER)
    return value if value in _KINDS else DemandKind.unlabeled.value


@dataclass(frozen=True)
class ReplicaConfig:
    replica_id: str
    model: str = DEFAULT_MODEL
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = LOOPBACK
    port: int = 0
    seed: int | None = None


class Replica:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.replica_id = config.replica_id
        self.engine = self._new_engine()
        self.listener = Listener(self._make_app, host=config.host, port=config.port)
        self.killed = False
        self.engine_dead = False
        self._burst: ErrorBurst | None = None
        self._burst_left: int | None = None
        self._burst_until: float | None = None
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._flap: asyncio.Task[None] | None = None
        self._life = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._created = int(time.time())
        self._stopping = False

    @property
    def url(self) -> str:
        return self.listener.url

    @property
    def port(self) -> int:
        return self.listener.port

    def _new_engine(self) -> Engine:
        return Engine(self.config.engine, model=self.config.model, seed=self.config.seed)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.engine.start()
        await self.listener.start()

    async def stop(self) -> None:
        self._stopping = True  # no fault timer or flap may bring it back up from here
        for task in [*self._timers.values(), *([self._flap] if self._flap else []), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._timers.values(), *([self._flap] if self._flap else []), *self._tasks,
                             return_exceptions=True)
        self._timers.clear()
        self._flap = None
        await self.listener.stop()
        await self.engine.close()

    # -- faults ---------------------------------------------------------------------------------------------

    async def apply_fault(self, fault: Fault) -> None:
        if isinstance(fault, Recover):
            await self.recover()
        elif isinstance(fault, Kill):
            await self._kill()
            self._clear_after("kill", fault.duration_s)
        elif isinstance(fault, Hang):
            self.engine.set_hung(True)
            self._clear_after("hang", fault.duration_s)
        elif isinstance(fault, Slow):
            self.engine.slow_factor = fault.factor
            self._clear_after("slow", fault.duration_s)
        elif isinstance(fault, ErrorBurst):
            self._burst = fault
            self._burst_left = fault.count
            self._burst_until = None if fault.duration_s is None else time.monotonic() + fault.duration_s
        elif isinstance(fault, Flap):
            await self._stop_flap()
            self._flap = asyncio.get_running_loop().create_task(self._flapping(fault.period_s, fault.duration_s))
        elif isinstance(fault, EngineDead):
            self.engine_dead = True
            self.listener.abort_connections()  # in-flight requests die with the engine
            self._clear_after("engine_dead", fault.duration_s)

    async def recover(self) -> None:
        await self._stop_flap()
        for kind in list(self._timers):
            self._timers.pop(kind).cancel()
        self._burst = self._burst_left = self._burst_until = None
        self.engine_dead = False
        self.engine.set_hung(False)
        self.engine.slow_factor = 1.0
        await self._revive()

    async def _kill(self) -> None:
        async with self._life:
            if self.killed:
                return
            self.killed = True
            await self.listener.stop()
            await self.engine.close()

    async def _revive(self) -> None:
        """Restart after a kill: a fresh engine (counters restart) on the same port."""
        async with self._life:
            if not self.killed or self._stopping:
                return
            self.engine = self._new_engine()
            self.engine.start()
            await self.listener.start()
            self.killed = False

    def _clear_after(self, kind: str, duration_s: float | None) -> None:
        old = self._timers.pop(kind, None)
        if old is not None:
            old.cancel()
        if duration_s is not None:
            self._timers[kind] = asyncio.get_running_loop().create_task(self._clear_later(kind, duration_s))

    async def _clear_later(self, kind: str, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        self._timers.pop(kind, None)
        if kind == "kill":
            await self._revive()
        elif kind == "hang":
            self.engine.set_hung(False)
        elif kind == "slow":
            self.engine.slow_factor = 1.0
        elif kind == "engine_dead":
            self.engine_dead = False

    async def _flapping(self, period_s: float, duration_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        try:
            while loop.time() < end:
                await asyncio.shield(self._kill())
                await asyncio.sleep(min(period_s, max(0.0, end - loop.time())))
                await asyncio.shield(self._revive())
                if loop.time() >= end:
                    break
                await asyncio.sleep(min(period_s, end - loop.time()))
        finally:
            if self._flap is asyncio.current_task():
                self._flap = None
            if self.killed:  # ends alive, even when cancelled
                task = loop.create_task(self._revive())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _stop_flap(self) -> None:
        flap, self._flap = self._flap, None
        if flap is not None:
            flap.cancel()
            await asyncio.gather(flap, return_exceptions=True)

    def _take_burst(self) -> ErrorBurst | None:
        burst = self._burst
        if burst is None:
            return None
        if self._burst_until is not None and time.monotonic() >= self._burst_until:
            self._burst = None
            return None
        if self._burst_left is not None:
            self._burst_left -= 1
            if self._burst_left <= 0:
                self._burst = None
        return burst

    # -- state ----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        engine = self.engine
        running = dict.fromkeys(_KINDS, 0)
        waiting = dict.fromkeys(_KINDS, 0)
        for seq in engine.running:
            running[seq.kind] += 1
        for seq in engine.waiting:
            waiting[seq.kind] += 1
        return {
            "replica_id": self.replica_id,
            "model": self.config.model,
            "max_num_seqs": engine.config.max_num_seqs,
            "running": len(engine.running),
            "waiting": len(engine.waiting),
            "running_by_kind": running,
            "waiting_by_kind": waiting,
            "dead": self.killed or self.engine_dead,
            "killed": self.killed,
            "engine_dead": self.engine_dead,
            "hung": engine.hung,
            "slow_factor": engine.slow_factor,
            "error_burst": self._burst is not None,
            "flapping": self._flap is not None,
            "singleflight": engine.config.singleflight,
            "priority_preemption": engine.config.priority_preemption,
            "generation_tokens_total": engine.metrics.generation_tokens,
        }

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/lab/state", self._lab_state)
        app.router.add_post("/lab/faults", self._lab_faults)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        await self.engine.until_alive()
        return web.Response(status=503 if self.engine_dead else 200)

    async def _models(self, request: web.Request) -> web.Response:
        await self.engine.until_alive()
        cfg = self.config
        return json_response(models_body(cfg.model, created=self._created, max_model_len=cfg.engine.max_model_len))

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.engine.until_alive()
        return web.Response(body=self.engine.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _lab_state(self, request: web.Request) -> web.Response:
        return json_response(self.state())

    async def _lab_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            fault = FAULT_ADAPTER.validate_json(await request.read())
        except ValidationError as exc:
            return json_response(vllm_error(str(exc)), status=400)
        if isinstance(fault, (Kill, Flap, EngineDead)):
            # These drop every connection, this one included: answer first, then apply.
            resp = json_response({"applied": fault.model_dump(mode="json")})
            await resp.prepare(request)
            await resp.write_eof()
            task = asyncio.get_running_loop().create_task(self.apply_fault(fault))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return resp
        await self.apply_fault(fault)
        return json_response({"applied": fault.model_dump(mode="json"), "state": self.state()})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        await engine.until_alive()
        parsed = parse_chat_request(await request.read())
        if isinstance(parsed, str):
            return json_response(vllm_error(parsed), status=400)
        cfg = self.config
        if parsed.model is not None and parsed.model != cfg.model:
            return json_response(
                vllm_error(f"The model `{parsed.model}` does not exist.", status=404, type_="NotFoundError"), 404
            )
        if parsed.priority != 0 and not engine.config.priority_preemption:
            return json_response(
                vllm_error(f"Got priority {parsed.priority} but Priority scheduling is not enabled."), 400
            )
        prompt_tokens = estimate_tokens(parsed.prompt_chars())
        limit = parsed.token_limit
        max_len = engine.config.max_model_len
        if prompt_tokens + (limit or 1) > max_len:
            return json_response(vllm_error(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{prompt_tokens + (limit or 0)} tokens ({prompt_tokens} in the messages, {limit or 0} in the "
                "completion). Please reduce the length of the messages or completion."), 400)
        if self.engine_dead:
            return json_response(vllm_error("EngineCore encountered an issue. See stack trace for the root cause.",
                                            status=500, type_="InternalServerError"), 500)
        burst = self._take_burst()
        if burst is not None:
            if burst.mode == "5xx":
                return json_response(vllm_error("lab error burst", status=burst.status,
                                                type_="InternalServerError"), burst.status)
            return await self._empty(request, parsed, prompt_tokens)
        seq = engine.new_seq(kind=demand_kind_of(request.headers), priority=parsed.priority,
                             prompt_tokens=prompt_tokens, max_tokens=limit, ignore_eos=parsed.ignore_eos)
        if not engine.submit(seq):
            return json_response(openai_error(
                f"replica {self.replica_id} is at max_num_seqs={engine.config.max_num_seqs}",
                type_="rate_limit_exceeded", status=429), 429)
        try:
            if parsed.stream:
                return await self._stream(request, engine, seq, parsed, prompt_tokens)
            await engine.first_token(seq)
            while seq.finish is None:
                await engine.next_tokens(seq)
            writer = ChunkWriter(cfg.model)
            return json_response(writer.completion(seq.generated, seq.finish, prompt_tokens))
        finally:
            engine.release(seq)

    async def _stream(self, request: web.Request, engine: Engine, seq: Seq, parsed: ChatRequest,
                      prompt_tokens: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        writer = ChunkWriter(self.config.model)
        try:
            # Headers go out at once, as vLLM's StreamingResponse: a queued request is already "200".
            await resp.prepare(request)
            await engine.first_token(seq)
            seq.sent = seq.generated
            await resp.write(writer.content(seq.sent, first=True, finish_reason=seq.finish))
            while seq.finish is None:
                n = await engine.next_tokens(seq)
                await resp.write(writer.content(n, finish_reason=seq.finish))
            if parsed.include_usage:
                await resp.write(writer.usage(prompt_tokens, seq.sent))
            await resp.write(DONE)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away: the finally in _chat frees the slot
        return resp

    async def _empty(self, request: web.Request, parsed: ChatRequest, prompt_tokens: int) -> web.StreamResponse:
        writer = ChunkWriter(self.config.model)
        if not parsed.stream:
            return json_response(writer.completion(0, "stop", prompt_tokens))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(writer.content(0, first=True) + writer.content(0, finish_reason="stop"))
        if parsed.include_usage:
            await resp.write(writer.usage(prompt_tokens, 0))
        await resp.write(DONE)
        await resp.write_eof()
        return resp
