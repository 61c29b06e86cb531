"""Traffic generator: open-loop arrivals through the gateway following a demand profile (`profiles`).

Arrivals are a non-homogeneous Poisson process (thinning against the profile's peak) from a seeded RNG; each
request streams through httpx and its outcome, TTFT, ITL and end-to-end latency are recorded. A request that
cannot connect (the gateway in an outage) is recorded failed at once, `connect_error`, and arrivals carry on at
the profile's rate. `run_closed_loop` keeps a fixed number of streams in flight instead (benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from overseer_dagster.lab.profiles import Profile, Sizes
from overseer_dagster.lab.sse import StreamStats
from overseer_dagster.lab.upstream import quantile

_WORDS = "the quick fleet of replicas serves tokens while the overseer keeps watch ".split()
_PROMPT_POOL = " ".join(_WORDS[i % len(_WORDS)] for i in range(20_000))


def prompt_text(tokens: int) -> str:
    """About `tokens` tokens of text (4 characters a token)."""
    chars = 4 * tokens
    reps = chars // len(_PROMPT_POOL) + 1
    return (_PROMPT_POOL * reps)[:chars] if reps > 1 else _PROMPT_POOL[:chars]


@dataclass
class RequestResult:
    start_s: float
    outcome: str  # "ok" or "failed"
    reason: str | None = None
    status: int | None = None
    ttft_s: float | None = None
    itl_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class TrafficSummary:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    itl_p90_s: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    completion_tokens: int = 0
    duration_s: float = 0.0

    @classmethod
    def of(cls, results: list[RequestResult], duration_s: float) -> TrafficSummary:
        ok = [r for r in results if r.outcome == "ok"]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        itl = [r.itl_s for r in ok if r.itl_s is not None]
        latency = [r.latency_s for r in ok if r.latency_s is not None]
        return cls(
            sent=len(results), ok=len(ok), failed=len(results) - len(ok),
            failures_by_reason=dict(Counter(r.reason or "unknown" for r in results if r.outcome != "ok")),
            ttft_p50_s=quantile(ttft, 0.5), ttft_p99_s=quantile(ttft, 0.99), itl_p90_s=quantile(itl, 0.9),
            latency_p50_s=quantile(latency, 0.5), latency_p99_s=quantile(latency, 0.99),
            completion_tokens=sum(r.completion_tokens for r in ok), duration_s=duration_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _failure_reason(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error") if isinstance(data.get("error"), dict) else data
        if isinstance(err.get("type"), str):
            return err["type"]
    except (ValueError, AttributeError):
        pass
    return f"http_{status}"


class TrafficGenerator:
    def __init__(self, gateway_url: str, profile: Profile, *, duration_s: float | None = None, seed: int = 0,
                 prompt_tokens: Sizes | None = None, max_tokens: Sizes | None = None,
                 demand_kind: str = "external", model: str | None = None, request_timeout_s: float = 120.0,
                 clients: ClientPool | None = None) -> None:
        self.url = gateway_url.rstrip("/") + "/v1/chat/completions"
        self.profile = profile
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.prompt_tokens = prompt_tokens or Sizes(median=200, sigma=0.6, min=8, max=2000)
        self.max_tokens = max_tokens or Sizes(median=128, sigma=0.5, min=8, max=1024)
        self.demand_kind = demand_kind
        self.model = model
        self.timeout = request_timeout_s
        self._clients = clients
        self.results: list[RequestResult] = []

    def _end_s(self) -> float | None:
        ends = [e for e in (self.duration_s, self.profile.end_s) if e is not None]
        return min(ends) if ends else None

    async def run(self, stop: asyncio.Event | None = None) -> TrafficSummary:
        """Send arrivals until the duration (or profile) ends or `stop` is set; then wait for in-flight ones."""
        end = self._end_s()
        if end is None and stop is None:
            raise ValueError("an open-ended profile needs duration_s or a stop event")
        loop = asyncio.get_running_loop()
        clients = self._clients or ClientPool()
        tasks: set[asyncio.Task[None]] = set()
        t0 = loop.time()
        try:
            t = 0.0
            peak = self.profile.peak
            while peak > 0:
                t += self.rng.expovariate(peak)
                if end is not None and t >= end:
                    break
                if self.rng.random() * peak > self.profile.rate_at(t):
                    continue  # thinned: the rate at t is below the peak
                delay = t0 + t - loop.time()
                if delay > 0:
                    if stop is not None:
                        try:
                            await asyncio.wait_for(stop.wait(), delay)
                            break
                        except TimeoutError:
                            pass
                    else:
                        await asyncio.sleep(delay)
                elif stop is not None and stop.is_set():
                    break
                body = self._body()
                task = loop.create_task(self._one(clients.client(), body, t))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if peak <= 0 and end is not None:
                await asyncio.sleep(max(0.0, t0 + end - loop.time()))
            if tasks:
                if stop is not None and stop.is_set():
                    for task in tasks:
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._clients is None:
                await clients.aclose()
        return TrafficSummary.of(self.results, loop.time() - t0)

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": prompt_text(self.prompt_tokens.sample(self.rng))}],
            "max_tokens": self.max_tokens.sample(self.rng),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.model is not None:
            body["model"] = self.model
        return body

    async def _one(self, client: httpx.AsyncClient, body: dict[str, Any], start_s: float) -> None:
        result = await stream_request(client, self.url, body, self.demand_kind, self.timeout)
        result.start_s = start_s
        self.results.append(result)


class ClientPool:
    """Several httpx clients used in turn: httpcore's pool does O(connections^2) work per request event, so
    hundreds of concurrent streams through one client stall the loop for seconds; small pools do not."""

    def __init__(self, clients: int = 16) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=64)
        tls = ssl.create_default_context()  # one context for all: building one per client costs ~25 ms
        self._clients = [httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=5.0), verify=tls)
                         for _ in range(max(1, clients))]
        self._next = 0

    def client(self, index: int | None = None) -> httpx.AsyncClient:
        if index is None:
            index, self._next = self._next, self._next + 1
        return self._clients[index % len(self._clients)]

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def stream_request(client: httpx.AsyncClient, url: str, body: dict[str, Any], demand_kind: str,
                         timeout_s: float) -> RequestResult:
    """One streaming chat request, measured from the client's side."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = RequestResult(start_s=0.0, outcome="failed")
    stats = StreamStats()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body, headers={"X-Demand-Kind": demand_kind}) as resp:
                result.status = resp.status_code
                if resp.status_code != 200:
                    result.reason = _failure_reason(resp.status_code, await resp.aread())
                    return result
                async for data in resp.aiter_raw():
                    stats.feed(data, loop.time())
    except TimeoutError:
        result.reason = "client_timeout"
        return result
    except httpx.ConnectError:  # nothing listening (the gateway in an outage): failed at once, not retried
        result.reason = "connect_error"
        return result
    except httpx.HTTPError as exc:
        result.reason = type(exc).__name__
        return result
    finally:
        result.latency_s = loop.time() - t0
    if stats.error is not None:
        result.reason = str(stats.error.get("type") or "stream_error")
    elif not stats.done:
        result.reason = "incomplete_stream"
    elif stats.finish_reason == "abort":
        result.reason = "aborted"
    else:
        result.outcome = "ok"
    result.ttft_s = None if stats.first_t is None else stats.first_t - t0
    result.itl_s = stats.itl()
    result.prompt_tokens = stats.prompt_tokens
    result.completion_tokens = stats.completion_tokens
    return result


async def run_closed_loop(gateway_url: str, *, concurrency: int, duration_s: float, max_tokens: int,
                          prompt_tokens: int = 64, demand_kind: str = "external", seed: int = 0) -> TrafficSummary:
    """Keep `concurrency` streams in flight for `duration_s`; each generates exactly n tokens, n uniform in
    [max_tokens/2, 3*max_tokens/2] (spread, so completions do not come in synchronized waves)."""
    url = gateway_url.rstrip("/") + "/v1/chat/completions"
    rng = random.Random(seed)
    content = prompt_text(prompt_tokens)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results: list[RequestResult] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while loop.time() - t0 < duration_s:
            body = {"messages": [{"role": "user", "content": content}], "ignore_eos": True, "stream": True,
                    "max_tokens": rng.randint(max(1, max_tokens // 2), max(1, 3 * max_tokens // 2)),
                    "stream_options": {"include_usage": True}}
            result = await stream_request(client, url, body, demand_kind, duration_s + 60)
            result.start_s = loop.time() - t0
            results.append(result)

    async with ClientPool(clients=max(1, concurrency // 16)) as pool:
        tasks = [loop.create_task(worker(pool.client(i))) for i in range(concurrency)]
        try:
            await asyncio.sleep(duration_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return TrafficSummary.of(results, loop.time() - t0)
