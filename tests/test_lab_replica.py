"""The emulated replica speaks vLLM: API shapes, metrics contract, capacity model, exact slot accounting."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from http_fixtures import wait_until

from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.replica import Replica, ReplicaConfig
from overseer_dagster.lab.traffic import ClientPool

pytestmark = pytest.mark.lab

FAST = {"step_base_s": 0.002, "step_per_seq_s": 0.0005, "prefill_base_s": 0.001, "prefill_s_per_token": 0.00001,
        "output_tokens_min": 8, "output_tokens_max": 32}
MSG = [{"role": "user", "content": "hello there, replica"}]


def run(coro: Awaitable[Any], timeout: float = 25.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def replica(**engine: Any):
    r = Replica(ReplicaConfig("replica-00", engine=EngineConfig(**{**FAST, **engine}), seed=1))
    await r.start()
    try:
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as client:
            yield r, client
    finally:
        await r.stop()



def sse_events(body: bytes) -> list[Any]:
    events = [e[len(b"data: "):] for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    return [e.decode() if e == b"[DONE]" else json.loads(e) for e in events]


EXPECTED_FAMILIES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}


def test_metrics_contract_parses_to_vllm_families() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            for _ in range(3):
                resp = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 9})
                assert resp.status_code == 200
            resp = await c.get("/metrics")
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(resp.text)}
            for name, type_ in EXPECTED_FAMILIES.items():
                assert families[name].type == type_, name
                for s in families[name].samples:
                    assert s.labels["model_name"] == r.config.model
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
            label = (("model_name", r.config.model),)
            assert samples[("vllm:generation_tokens_total", label)] == 27
            assert samples[("vllm:prompt_tokens_total", label)] > 0
            reasons = {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"].samples}
            assert reasons == {"stop": 0, "length": 3, "abort": 0}
            ttft = [s for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_count")]
            assert ttft[0].value == 3
            itl_count = [s for s in families["vllm:inter_token_latency_seconds"].samples if s.name.endswith("_count")]
            assert itl_count[0].value == 3 * 8  # one per decoded token after the first
            assert "_created" not in resp.text

    run(go())


def test_models_health_and_completion_shapes() -> None:
    async def go() -> None:
        async with replica() as (r, c):
            assert (await c.get("/health")).status_code == 200
            models = (await c.get("/v1/models")).json()
            assert models["object"] == "list" and models["data"][0]["id"] == r.config.model
            assert models["data"][0]["owned_by"] == "vllm" and "max_model_len" in models["data"][0]

            body = (await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 5})).json()
            assert body["object"] == "chat.completion"
            assert body["choices"][0]["finish_reason"] == "length"
            assert body["usage"]["completion_tokens"] == 5
            assert body["choices"][0]["message"]["role"] == "assistant"

            resp = await c.post("/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}})
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = sse_events(resp.content)
            assert events[-1] == "[DONE]"
            usage = events[-2]
            assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
            chunks = events[:-2]
            assert all(e["object"] == "chat.completion.chunk" for e in chunks)
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks)
            assert len(text) == 4 * 10  # 4 characters a token
            assert len(chunks) < 10  # several tokens a chunk (tokens_per_chunk)

            no_usage = sse_events((await c.post("/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 3, "stream": True})).content)
            assert all("usage" not in e for e in no_usage if isinstance(e, dict))

    run(go())


@pytest.mark.parametrize("payload, fragment", [
    (b"{not json", "JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"max_tokens": 4}).encode(), "messages"),
    (json.dumps({"messages": MSG, "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"messages": "hi"}).encode(), "messages"),
    (json.dumps({"messages": MSG, "priority": -1}).encode(), "Priority scheduling is not enabled"),
    (json.dumps({"messages": MSG, "max_tokens": 10**6}).encode(), "maximum context length"),
])
def test_malformed_request_gets_vllm_400(payload: bytes, fragment: str) -> None:
    async def go() -> None:
        async with replica() as (r, c):
            resp = await c.post("/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
            assert resp.status_code == 400
            body = resp.json()
            assert body["object"] == "error" and body["type"] == "BadRequestError" and body["code"] == 400
            assert body["param"] is None and fragment in body["message"]
            ok = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
            assert ok.status_code == 200  # still serving
            assert r.state()["running"] == 0

    run(go())


def test_unknown_model_is_404() -> None:
    async def go() -> None:
        async with replica() as (_, c):
            resp = await c.post("/v1/chat/completions", json={"model": "nope", "messages": MSG})
            assert resp.status_code == 404 and resp.json()["type"] == "NotFoundError"

    run(go())


def test_fifo_queue_beyond_slots_and_demand_kinds() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=2, step_base_s=0.02) as (r, c):
            async def one(kind: str) -> int:
                resp = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 20},
                                    headers={"X-Demand-Kind": kind})
                return resp.status_code

            kinds = ["external", "internal_stress", "external", "bogus", "internal_stress"]
            tasks = [asyncio.create_task(one(k)) for k in kinds]
            await wait_until(lambda: r.state()["running"] == 2 and r.state()["waiting"] == 3)
            state = (await c.get("/lab/state")).json()
            assert state["max_num_seqs"] == 2
            assert state["running_by_kind"]["external"] == 1 and state["running_by_kind"]["internal_stress"] == 1
            assert state["waiting_by_kind"]["unlabeled"] == 1  # unknown header value
            assert await asyncio.gather(*tasks) == [200] * 5
            assert r.state()["running"] == 0 and r.state()["waiting"] == 0

    run(go())


def test_singleflight_refuses_with_429() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=1, singleflight=True, step_base_s=0.02) as (r, c):
            first = asyncio.create_task(c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 20}))
            await wait_until(lambda: r.state()["running"] == 1)
            resp = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 20})
            assert not first.done()  # at once, not queued behind the first
            assert resp.status_code == 429
            assert resp.json()["error"]["type"] == "rate_limit_exceeded"
            assert (await first).status_code == 200

    run(go())


def test_full_batch_slows_every_sequence() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=8, step_base_s=0.002, step_per_seq_s=0.004) as (_, c):
            async def timed() -> float:
                t = time.monotonic()
                resp = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 40})
                assert resp.status_code == 200
                return time.monotonic() - t

            # A stall on a loaded machine only lengthens a run: the lone run gets a second chance.
            alone = min([await timed(), await timed()])
            crowded = await asyncio.gather(*(timed() for _ in range(8)))
            assert min(crowded) > 2.5 * alone, (alone, crowded)

    run(go())


def test_prefill_grows_with_prompt_tokens() -> None:
    async def go() -> None:
        async with replica(prefill_s_per_token=0.0002) as (_, c):
            async def ttft(chars: int) -> float:
                t = time.monotonic()
                async with c.stream("POST", "/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": "x" * chars}], "max_tokens": 2, "stream": True}) as s:
                    async for _ in s.aiter_raw():
                        return time.monotonic() - t
                raise AssertionError("no chunk")

            short, long = await ttft(40), await ttft(4000)  # 10 vs 1000 tokens: +0.2 s prefill
            # Prefill sleeps: load makes it later, never sooner; the long prompt pays most of its 0.2 s.
            assert long > 0.9 * 1000 * 0.0002 and long > short, (short, long)

    run(go())


def test_max_tokens_honoured_and_default_length_stops() -> None:
    async def go() -> None:
        async with replica(output_tokens_min=5, output_tokens_max=7) as (_, c):
            body = (await c.post("/v1/chat/completions", json={"messages": MSG})).json()
            assert body["choices"][0]["finish_reason"] == "stop"
            assert 5 <= body["usage"]["completion_tokens"] <= 7
            body = (await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3})).json()
            assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"
            body = (await c.post("/v1/chat/completions", json={
                "messages": MSG, "max_tokens": 50, "ignore_eos": True})).json()
            assert body["usage"]["completion_tokens"] == 50

    run(go())


def test_client_disconnect_frees_the_slot_at_once() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=1, step_base_s=0.01) as (r, c):
            async def long_stream() -> None:
                async with c.stream("POST", "/v1/chat/completions", json={
                        "messages": MSG, "max_tokens": 5000, "stream": True}) as s:
                    async for _ in s.aiter_raw():
                        pass

            task = asyncio.create_task(long_stream())
            await wait_until(lambda: r.engine.metrics.generation_tokens > 8)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await wait_until(lambda: r.state()["running"] == 0)

    run(go())


def test_no_leaked_slots_after_2000_cancelled_streams() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=16, step_base_s=0.003) as (r, _), ClientPool(8) as pool:
            url = r.url + "/v1/chat/completions"
            rng = random.Random(7)
            gate = asyncio.Semaphore(200)

            streaming = 0
            peak = {"running": 0, "waiting": 0}

            async def stream_then_cancel(i: int) -> None:
                async def consume(first: asyncio.Event) -> None:
                    nonlocal streaming
                    body = {"messages": MSG, "max_tokens": 400 if i % 50 else 20, "stream": True}
                    async with pool.client(i).stream("POST", url, json=body) as s:
                        async for _ in s.aiter_raw():
                            if not first.is_set():
                                streaming += 1
                                first.set()

                async with gate:
                    first = asyncio.Event()
                    task = asyncio.create_task(consume(first))
                    if i % 2:  # cancelled while decoding
                        await asyncio.wait([task, asyncio.create_task(first.wait())],
                                           return_when=asyncio.FIRST_COMPLETED)
                    # else: anywhere (connecting, queued, prefill, decoding); a few finish first.
                    done, _ = await asyncio.wait([task], timeout=rng.uniform(0.0, 0.03))
                    state = r.state()
                    peak["running"] = max(peak["running"], state["running"])
                    peak["waiting"] = max(peak["waiting"], state["waiting"])
                    if not done:
                        task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            await asyncio.gather(*(stream_then_cancel(i) for i in range(2000)))
            await wait_until(lambda: r.state()["running"] == 0 and r.state()["waiting"] == 0, timeout=3)
            assert streaming >= 1000 and peak["running"] == 16 and peak["waiting"] > 0  # every phase was hit
            # The replica still has every slot: 16 requests run at once.
            before = r.engine.metrics.success["length"]
            body = {"messages": MSG, "max_tokens": 30, "ignore_eos": True}
            tasks = [asyncio.create_task(pool.client(i).post(url, json=body)) for i in range(16)]
            await wait_until(lambda: r.state()["running"] == 16)
            assert r.state()["waiting"] == 0
            assert [t.status_code for t in await asyncio.gather(*tasks)] == [200] * 16
            assert r.engine.metrics.success["length"] == before + 16

    run(go())


def test_priority_preemption_evicts_lowest_priority_with_abort() -> None:
    async def go() -> None:
        async with replica(max_num_seqs=2, priority_preemption=True, step_base_s=0.01) as (r, c):
            async def stream(priority: int, max_tokens: int) -> list[Any]:
                resp = await c.post("/v1/chat/completions", json={
                    "messages": MSG, "max_tokens": max_tokens, "stream": True, "priority": priority,
                    "ignore_eos": True})
                return sse_events(resp.content)

            low = asyncio.create_task(stream(10, 400))
            mid = asyncio.create_task(stream(5, 400))
            await wait_until(lambda: r.state()["running"] == 2)
            high = await stream(0, 5)
            low_events = await low
            assert low_events[-2]["choices"][0]["finish_reason"] == "abort"
            assert high[-2]["choices"][0]["finish_reason"] == "length"
            assert r.engine.metrics.preemptions == 1 and r.engine.metrics.success["abort"] == 1
            mid_events = await mid
            assert mid_events[-2]["choices"][0]["finish_reason"] == "length"
            assert r.state()["running"] == 0

    run(go())
