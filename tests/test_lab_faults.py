"""Each replica fault behaves as documented in overseer_dagster/lab/faults.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from http_fixtures import wait_until

from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.faults import EngineDead, ErrorBurst, Flap, Hang, Kill, Recover, Slow
from overseer_dagster.lab.replica import Replica, ReplicaConfig

pytestmark = pytest.mark.lab

FAST = EngineConfig(max_num_seqs=4, step_base_s=0.002, step_per_seq_s=0.0005, prefill_base_s=0.001,
                    prefill_s_per_token=0.00001)
MSG = [{"role": "user", "content": "hello"}]


def run(coro: Awaitable[Any], timeout: float = 25.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def replica():
    r = Replica(ReplicaConfig("replica-00", engine=FAST))
    await r.start()
    try:
        # A fresh connection per request: a killed server must be seen as refused, not via a pooled socket.
        no_pool = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=r.url, timeout=2.0, limits=no_pool) as c:
            yield r, c
    finally:
        await r.stop()


async def chat(c: httpx.AsyncClient, timeout: float = 2.0, **extra: Any) -> httpx.Response:
    return await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 8, **extra}, timeout=timeout)


def test_kill_refuses_connections_and_recover_rebinds_the_same_port() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            port = r.port
            stream = asyncio.create_task(chat(c, max_tokens=5000, stream=True, ignore_eos=True))
            await asyncio.sleep(0.1)
            await r.apply_fault(Kill())
            with pytest.raises(httpx.HTTPError):  # the in-flight stream dies with the process
                (await stream).raise_for_status()
                raise AssertionError("stream survived the kill")
            with pytest.raises(httpx.ConnectError):
                await c.get("/health")
            assert r.state()["killed"] and r.state()["running"] == 0
            await r.apply_fault(Recover())
            assert r.port == port
            assert (await c.get("/health")).status_code == 200
            assert (await chat(c)).status_code == 200
            assert r.engine.metrics.generation_tokens == 8  # a fresh engine: counters restarted

    run(go())


def test_kill_with_duration_recovers_by_itself() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            await r.apply_fault(Kill(duration_s=1.0))
            with pytest.raises(httpx.ConnectError):
                await c.get("/health")
            async def healthy() -> bool:
                try:
                    return (await c.get("/health")).status_code == 200
                except httpx.ConnectError:
                    return False

            await wait_until(healthy)  # recovered by itself, with no Recover applied

    run(go())


def test_hang_accepts_but_never_answers() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            await r.apply_fault(Hang())
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/health", timeout=0.3)
            with pytest.raises(httpx.ReadTimeout):
                await chat(c, timeout=0.3)
            assert (await c.get("/lab/state")).json()["hung"]  # the lab's own endpoints still answer
            await r.apply_fault(Recover())
            assert (await c.get("/health")).status_code == 200
            assert (await chat(c)).status_code == 200
            await wait_until(lambda: r.state()["running"] == 0)  # the timed-out requests left no slot behind

    run(go())


def test_slow_multiplies_step_time() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            async def timed() -> float:
                t = time.monotonic()
                assert (await chat(c, max_tokens=60, ignore_eos=True)).status_code == 200
                return time.monotonic() - t

            # Steps sleep, so a loaded machine makes a run later, never sooner: the slow run is held to its
            # configured floor, and the runs it is compared with get a second chance at a quiet moment.
            normal = min([await timed(), await timed()])
            await r.apply_fault(Slow(factor=5))
            slow = await timed()
            step_s = FAST.step_base_s + FAST.step_per_seq_s
            assert slow > 0.9 * 5 * 59 * step_s and slow > 2 * normal
            await r.apply_fault(Recover())
            assert min([await timed(), await timed()]) < slow / 2

    run(go())


def test_error_burst_count_then_serves_again() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            await r.apply_fault(ErrorBurst(count=3, status=503))
            codes = [(await chat(c)).status_code for _ in range(4)]
            assert codes == [503, 503, 503, 200]
            await r.apply_fault(ErrorBurst(count=2, mode="empty"))
            body = (await chat(c)).json()
            assert body["usage"]["completion_tokens"] == 0 and body["choices"][0]["message"]["content"] == ""
            stream = await chat(c, stream=True, stream_options={"include_usage": True})
            assert b'"completion_tokens":0' in stream.content and stream.content.endswith(b"data: [DONE]\n\n")
            assert (await chat(c)).json()["usage"]["completion_tokens"] == 8

    run(go())


def test_error_burst_for_a_duration() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            await r.apply_fault(ErrorBurst(duration_s=1.0))
            assert (await chat(c)).status_code == 500
            assert (await chat(c)).json()["type"] == "InternalServerError"
            await asyncio.sleep(1.05)
            assert (await chat(c)).status_code == 200

    run(go())


def test_flap_alternates_dead_and_alive_then_ends_alive() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            port = r.port
            await r.apply_fault(Flap(period_s=0.2, duration_s=1.0))
            seen = []
            for _ in range(20):
                try:
                    seen.append((await c.get("/health", timeout=0.3)).status_code == 200)
                except httpx.HTTPError:  # refused, or reset by a kill mid-request
                    seen.append(False)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            transitions = sum(1 for a, b in zip(seen, seen[1:]) if a != b)
            assert False in seen and True in seen and transitions >= 3, seen
            assert not r.state()["flapping"] and r.port == port
            assert (await c.get("/health")).status_code == 200

    run(go())


def test_engine_dead_health_503_then_recover() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            await r.apply_fault(EngineDead())
            assert (await c.get("/health")).status_code == 503
            assert (await chat(c)).status_code == 500
            await r.apply_fault(Recover())
            assert (await c.get("/health")).status_code == 200

    run(go())


def test_control_api_over_http() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            resp = await c.post("/lab/faults", json={"kind": "slow", "factor": 2})
            assert resp.status_code == 200 and resp.json()["state"]["slow_factor"] == 2
            bad = await c.post("/lab/faults", json={"kind": "explode"})
            assert bad.status_code == 400 and "explode" in bad.json()["message"]
            resp = await c.post("/lab/faults", json={"kind": "kill"})
            assert resp.status_code == 200 and resp.json()["applied"]["kind"] == "kill"
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.ConnectError):
                await c.get("/health")
            await r.apply_fault(Recover())
            assert (await c.post("/lab/faults", json={"kind": "recover"})).json()["state"]["slow_factor"] == 1

    run(go())
