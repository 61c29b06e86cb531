"""The lab gateway: the router external clients use, and the routing-state oracle `GET /fleet/state`.

- `POST /v1/chat/completions` (same API as the replicas): sent to the admitted, healthy replica with the most free
  slots. With none free, the request waits in a bounded FIFO queue (`max_queue_wait_s`, `max_queue_len`) and is
  retried on a 429, a refused connection or a 5xx before any byte reached the client. It fails (503, OpenAI-style
  error, `type` = reason) only with `queue_timeout`, `queue_full`, `no_admitted_replica` or `upstream_error`.
- Health: per replica, every `probe_interval_s`, `GET /health` plus a one-token generation (`X-Demand-Kind:
  internal`; skipped while the replica is full, so probes never queue behind users). Breaker: 3 consecutive
  failures -> unhealthy, out of rotation (`draining`), trip recorded; 2 consecutive successes -> healthy, still
  draining until `admit` (unless `auto_readmit`). The first success after start is enough for a new replica.
- Live in-flight: its own routing plus each replica's `GET /lab/state`, polled every `state_poll_interval_s` and on
  every `GET /fleet/state` (stress traffic goes straight to replicas).
- `GET /fleet/state`: `FleetSnapshot` JSON, never a replica address. A replica's `queue_depth` is its own waiting
  queue plus its share (rounded up) of the user requests waiting in the gateway's FIFO for any routable replica. Admin: `POST /fleet/replicas/{id}/admit|drain|
  quarantine` (idempotent; returns the replica's state; 404 `unknown_replica`).
- Ledger: one `UsageRecord` per request served or failed (not for its own probes), through `on_record`.
- Outage (`take_down` / `bring_up`, the lab's `outage` fault): the port closes and every open connection is reset
  (requests in flight are recorded failed, `gateway_down`); probes, polls and routing state carry on inside, and
  `bring_up` re-binds the same port.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from overseer_dagster.core.demand import USER_DEMAND, DemandKind, Outcome, UsageRecord
from overseer_dagster.core.fleet import FleetSnapshot, RoutingState
from overseer_dagster.lab.replica import DEMAND_KIND_HEADER, demand_kind_of
from overseer_dagster.lab.serving import LOOPBACK, Listener, json_response
from overseer_dagster.lab.sse import StreamStats
from overseer_dagster.lab.upstream import BreakerConfig, Upstream
from overseer_dagster.lab.wire import openai_error, vllm_error

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_PROBE_BODY = json.dumps({"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}).encode()


@dataclass(frozen=True)
class GatewayConfig:
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 1.0
    state_poll_interval_s: float = 0.25
    state_timeout_s: float = 0.5
    max_queue_wait_s: float = 30.0
    max_queue_len: int = 4096
    connect_timeout_s: float = 1.0
    # No byte from a replica for this long fails the attempt (a hung replica).
    upstream_read_timeout_s: float = 30.0
    # After a refused connection, skip that replica this long (the breaker needs 3 probes to drain it).
    avoid_s: float = 2.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


class _Fail(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Retry(Exception):
    def __init__(self, *, busy: bool) -> None:
        super().__init__("retry")
        self.busy = busy


class _ClientGone(Exception):
    def __init__(self, response: web.StreamResponse | None = None) -> None:
        super().__init__("client gone")
        self.response = response


class _Waiter:
    __slots__ = ("fut", "exclude", "kind")

    def __init__(self, fut: asyncio.Future[Upstream], exclude: set[str], kind: str) -> None:
        self.fut = fut
        self.exclude = exclude
        self.kind = kind


class _Served:
    """What the ledger gets to know about one request."""

    __slots__ = ("replica_id", "prompt_tokens", "completion_tokens", "ttft", "itl", "outcome", "reason")

    def __init__(self) -> None:
        self.replica_id: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft: float | None = None
        self.itl: float | None = None
        self.outcome = Outcome.failed
        self.reason: str | None = None


class Gateway:
    def __init__(self, replicas: Mapping[str, str], config: GatewayConfig | None = None, *,
                 on_record: Callable[[UsageRecord], None] | None = None, host: str = LOOPBACK, port: int = 0,
                 extra_routes: Callable[[web.Application], None] | None = None) -> None:
        self.config = config or GatewayConfig()
        self.upstreams = {rid: Upstream(rid, url, self.config.breaker) for rid, url in replicas.items()}
        self._on_record = on_record
        self._extra_routes = extra_routes
        self.listener = Listener(self._make_app, host=host, port=port)
        self._waiters: deque[_Waiter] = deque()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.down = False  # in an outage: the port is closed, the state lives on

    @property
    def url(self) -> str:
        return self.listener.url

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                          sock_read=cfg.upstream_read_timeout_s),
        )
        # Learn capacity and health before taking traffic.
        await self._poll_all()
        await asyncio.gather(*(self._probe_once(up) for up in self.upstreams.values()))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop())]
        self._tasks += [loop.create_task(self._probe_loop(up)) for up in self.upstreams.values()]
        await self.listener.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.listener.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def take_down(self) -> None:
        """An outage: close the port and reset every connection (handlers in flight are cancelled)."""
        if self.down:
            return
        self.down = True
        await self.listener.stop()

    async def bring_up(self) -> None:
        """End an outage: re-bind the same port; routing state, breakers and latency windows are as they were."""
        if not self.down:
            return
        await self.listener.start()
        self.down = False
        self._dispatch()

    async def add_upstream(self, replica_id: str, url: str) -> Upstream:
        """A replica joins (the lab provider's scale-out): learn its capacity and health, then probe it."""
        up = Upstream(replica_id, url, self.config.breaker)
        self.upstreams[replica_id] = up
        await self._poll(up)
        await self._probe_once(up)
        self._tasks.append(asyncio.get_running_loop().create_task(self._probe_loop(up), name=f"probe:{replica_id}"))
        self._dispatch()
        return up

    async def remove_upstream(self, replica_id: str) -> None:
        """A replica leaves (released): out of routing and the routing state at once; its probes stop."""
        self.upstreams.pop(replica_id, None)
        for task in [t for t in self._tasks if t.get_name() == f"probe:{replica_id}"]:
            self._tasks.remove(task)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- routing state --------------------------------------------------------------------------------------

    def set_routing(self, replica_id: str, state: RoutingState) -> Upstream:
        up = self.upstreams[replica_id]
        if up.routing_state is not state:
            up.set_routing(state)
            self._dispatch()
        return up

    def snapshot(self) -> FleetSnapshot:
        now = asyncio.get_running_loop().time()
        at = datetime.now(UTC)
        replicas = [up.snapshot(now, at) for up in self.upstreams.values()]
        # Requests waiting in the gateway's own FIFO need a slot as much as a replica's waiting queue does:
        # each is spread over the replicas that could serve it (ceil), so the stress harness, which frees
        # slots per replica, sees them at once instead of after the freed slots were taken.
        waiting = sum(1 for w in self._waiters if not w.fut.done() and w.kind in USER_DEMAND)
        routable = [i for i, up in enumerate(self.upstreams.values()) if up.routable(now)]
        if waiting and routable:
            share = -(-waiting // len(routable))
            for i in routable:
                replicas[i] = replicas[i].model_copy(update={"queue_depth": replicas[i].queue_depth + share})
        return FleetSnapshot(observed_at=at, replicas=tuple(replicas))

    # -- slots and the queue --------------------------------------------------------------------------------

    def _pick(self, exclude: set[str]) -> Upstream | None:
        now = asyncio.get_running_loop().time()
        best, best_free = None, 0
        for up in self.upstreams.values():
            if up.replica_id in exclude or not up.routable(now):
                continue
            free = up.free()
            if free > best_free:
                best, best_free = up, free
        return best

    def _check_eligible(self, exclude: set[str]) -> None:
        admitted = [up for up in self.upstreams.values() if up.routing_state is RoutingState.admitted]
        if not admitted:
            raise _Fail("no_admitted_replica", "no replica is admitted")
        if all(up.replica_id in exclude for up in admitted):
            raise _Fail("upstream_error", "every admitted replica failed this request")

    def _reserve(self, up: Upstream, kind: str) -> None:
        up.gw_inflight += 1
        if kind in USER_DEMAND:
            up.gw_external += 1

    def _release(self, up: Upstream, kind: str) -> None:
        up.gw_inflight -= 1
        if kind in USER_DEMAND:
            up.gw_external -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to queued requests, oldest first."""
        if not self._waiters:
            return
        kept: deque[_Waiter] = deque()
        while self._waiters:
            w = self._waiters.popleft()
            if w.fut.done():
                continue
            try:
                self._check_eligible(w.exclude)
            except _Fail as fail:
                w.fut.set_exception(fail)
                continue
            up = self._pick(w.exclude)
            if up is None:
                kept.append(w)
                if not w.exclude and self._pick(set()) is None:
                    break  # nothing free anywhere: the rest wait too
                continue
            self._reserve(up, w.kind)  # reserved now, so the next waiter sees one slot fewer
            w.fut.set_result(up)
        kept.extend(self._waiters)
        self._waiters = kept

    async def _acquire(self, kind: str, exclude: set[str], deadline: float) -> Upstream:
        """A replica with a slot reserved for this request, FIFO behind earlier ones, within the deadline."""
        self._check_eligible(exclude)
        loop = asyncio.get_running_loop()
        if not self._waiters:
            up = self._pick(exclude)
            if up is not None:
                self._reserve(up, kind)
                return up
        if len(self._waiters) >= self.config.max_queue_len:
            raise _Fail("queue_full", f"{len(self._waiters)} requests already queued")
        w = _Waiter(loop.create_future(), exclude, kind)
        self._waiters.append(w)
        self._dispatch()
        try:
            await asyncio.wait([w.fut], timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            if w.fut.done() and not w.fut.cancelled() and w.fut.exception() is None:
                self._release(w.fut.result(), kind)  # a slot was handed over as the client left
            raise
        finally:
            if not w.fut.done():
                w.fut.cancel()
        if w.fut.cancelled():
            raise _Fail("upstream_error" if exclude else "queue_timeout",
                        f"no slot within {self.config.max_queue_wait_s:g}s")
        return w.fut.result()  # raises _Fail

    # -- the proxy ------------------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        started_at = datetime.now(UTC)
        kind = demand_kind_of(request.headers)
        served = _Served()
        model: str | None = None
        try:
            raw = await request.read()
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("Request body must be a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                served.reason = "bad_request"
                return json_response(vllm_error(f"JSON decode error: {exc}"), status=400)
            model = body.get("model") if isinstance(body.get("model"), str) else None
            stream = bool(body.get("stream"))
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            want_usage = stream and bool(options.get("include_usage"))
            if stream and not want_usage:  # the ledger needs token counts: ask, and strip them from the reply
                body["stream_options"] = {**options, "include_usage": True}
                raw = json.dumps(body).encode()
            exclude: set[str] = set()
            deadline = t0 + self.config.max_queue_wait_s
            while True:
                up = await self._acquire(kind, exclude, deadline)
                try:
                    served.replica_id = up.replica_id
                    return await self._forward(request, up, raw, kind, stream, want_usage, served, t0)
                except _Retry as retry:
                    if retry.busy:
                        up.avoid_until = loop.time() + self.config.state_poll_interval_s
                    else:
                        exclude.add(up.replica_id)
                finally:
                    self._release(up, kind)
        except _Fail as fail:
            served.reason = fail.reason
            return json_response(openai_error(str(fail), type_=fail.reason, status=503), status=503)
        except (asyncio.CancelledError, _ClientGone) as exc:
            if self.down:  # the gateway's own outage cut it
                served.reason = "gateway_down"
            elif kind == DemandKind.internal_stress:  # stress cancelled to yield its slot
                served.outcome, served.reason = Outcome.preempted, None
            else:
                served.reason = "client_disconnect"
            if isinstance(exc, asyncio.CancelledError):
                raise
            return exc.response or web.Response(status=499)  # nobody is listening
        finally:
            self._record(kind, model, served, started_at, loop.time() - t0)

    async def _forward(self, request: web.Request, up: Upstream, raw: bytes, kind: str, stream: bool,
                       want_usage: bool, served: _Served, t0: float) -> web.StreamResponse:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        out: web.StreamResponse | None = None
        stats = StreamStats()
        try:
            async with self._session.post(
                up.url + "/v1/chat/completions", data=raw,
                headers={"Content-Type": "application/json", DEMAND_KIND_HEADER: kind},
            ) as upstream:
                if upstream.status == 429:
                    raise _Retry(busy=True)
                if upstream.status >= 500:
                    raise _Retry(busy=False)
                if upstream.status != 200:  # the client's mistake: pass it on
                    served.reason = "bad_request"
                    return web.Response(body=await upstream.read(), status=upstream.status,
                                        content_type="application/json")
                if not stream:
                    body = await upstream.read()
                    try:
                        usage = json.loads(body).get("usage") or {}
                    except (ValueError, AttributeError):
                        usage = {}
                    self._served_ok(up, served, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                    None, None, loop.time())
                    return web.Response(body=body, content_type="application/json")
                async for data in upstream.content.iter_any():
                    chunk = stats.feed(data, loop.time(), drop_usage=not want_usage)
                    if not chunk:
                        continue
                    if out is None:
                        out = web.StreamResponse(headers=_SSE_HEADERS)
                        await self._to_client(out.prepare(request), out)
                    await self._to_client(out.write(chunk), out)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if out is None:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    up.avoid_until = loop.time() + self.config.avoid_s
                raise _Retry(busy=False) from exc
        if out is None:  # 200 but not one event: nothing was sent, so another replica may serve it
            raise _Retry(busy=False)
        if not stats.done:
            served.reason = "upstream_error"
            err = openai_error("the replica closed the stream", type_="upstream_error", status=502)
            await self._to_client(out.write(b"data: " + json.dumps(err).encode() + b"\n\n"), out)
        else:
            now = loop.time()
            ttft = None if stats.first_t is None else stats.first_t - t0
            self._served_ok(up, served, stats.prompt_tokens, stats.completion_tokens, ttft, stats.itl(), now)
            if stats.finish_reason == "abort":  # evicted by engine priority preemption
                served.outcome = Outcome.preempted if kind == DemandKind.internal_stress else Outcome.failed
                served.reason = None if kind == DemandKind.internal_stress else "aborted"
        await self._to_client(out.write_eof(), out)
        return out

    @staticmethod
    async def _to_client(aw: Any, out: web.StreamResponse | None = None) -> None:
        try:
            await aw
        except ConnectionError as exc:  # the client left (aiohttp's reset error is also a ClientError)
            raise _ClientGone(out) from exc

    def _served_ok(self, up: Upstream, served: _Served, prompt: int, completion: int, ttft: float | None,
                   itl: float | None, now: float) -> None:
        served.outcome, served.reason = Outcome.ok, None
        served.prompt_tokens, served.completion_tokens = int(prompt), int(completion)
        served.ttft, served.itl = ttft, itl
        up.record_latency(now, ttft, itl)

    def _record(self, kind: str, model: str | None, served: _Served, started_at: datetime, latency: float) -> None:
        if self._on_record is None:
            return
        self._on_record(UsageRecord(
            ts=started_at, demand_kind=DemandKind(kind), replica_id=served.replica_id, model=model,
            prompt_tokens=served.prompt_tokens, completion_tokens=served.completion_tokens,
            ttft_s=served.ttft, itl_s=served.itl, latency_s=max(0.0, latency), outcome=served.outcome,
            failure_reason=served.reason,
        ))

    # -- probes and polls -----------------------------------------------------------------------------------

    async def _probe_loop(self, up: Upstream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await self._probe_once(up)
            await asyncio.sleep(max(0.0, self.config.probe_interval_s - (loop.time() - t)))

    async def _probe_once(self, up: Upstream) -> None:
        ok = await self._probe(up)
        if up.record_probe(ok, asyncio.get_running_loop().time()):
            self._dispatch()

    async def _probe(self, up: Upstream) -> bool:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
        try:
            async with self._session.get(up.url + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    return False
            if up.free() <= 0:
                return True
            async with self._session.post(
                up.url + "/v1/chat/completions", data=_PROBE_BODY, timeout=timeout,
                headers={"Content-Type": "application/json", DEMAND_KIND_HEADER: DemandKind.internal.value},
            ) as resp:
                if resp.status == 429:
                    return True  # busy is alive
                if resp.status != 200:
                    return False
                usage = (await resp.json()).get("usage") or {}
                return int(usage.get("completion_tokens", 0)) >= 1
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.state_poll_interval_s)
            await self._poll_all()

    async def _poll_all(self) -> None:
        await asyncio.gather(*(self._poll(up) for up in self.upstreams.values()))
        self._dispatch()

    async def _poll(self, up: Upstream) -> None:
        assert self._session is not None
        try:
            async with self._session.get(
                up.url + "/lab/state", timeout=aiohttp.ClientTimeout(total=self.config.state_timeout_s)
            ) as resp:
                state = await resp.json()
            up.record_poll(state)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            up.polled = False
            up.polled_running = up.polled_waiting = up.gw_at_poll = 0

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/fleet/state", self._fleet_state)
        app.router.add_post("/fleet/replicas/{replica_id}/{action:admit|drain|quarantine}", self._admin)
        if self._extra_routes is not None:
            self._extra_routes(app)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        assert self._session is not None
        now = asyncio.get_running_loop().time()
        for up in self.upstreams.values():
            if up.routable(now):
                try:
                    async with self._session.get(up.url + "/v1/models") as resp:
                        return web.Response(body=await resp.read(), status=resp.status,
                                            content_type="application/json")
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    continue
        return json_response(openai_error("no replica is serving", type_="no_admitted_replica", status=503), 503)

    async def _fleet_state(self, request: web.Request) -> web.Response:
        await self._poll_all()
        return json_response(self.snapshot().model_dump(mode="json"))

    async def _admin(self, request: web.Request) -> web.Response:
        replica_id = request.match_info["replica_id"]
        if replica_id not in self.upstreams:
            return json_response({"error": {"type": "unknown_replica", "replica_id": replica_id}}, status=404)
        state = {"admit": RoutingState.admitted, "drain": RoutingState.draining,
                 "quarantine": RoutingState.quarantined}[request.match_info["action"]]
        up = self.set_routing(replica_id, state)
        now = asyncio.get_running_loop().time()
        return json_response(up.snapshot(now, datetime.now(UTC)).model_dump(mode="json"))
