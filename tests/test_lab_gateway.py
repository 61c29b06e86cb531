"""The lab gateway: routing and queueing, typed failures, health breaker, admin API, the /fleet/state oracle, ledger."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from http_fixtures import wait_until

from overseer_dagster.core.demand import DemandKind, Outcome, UsageRecord
from overseer_dagster.core.fleet import FleetSnapshot, Health, RoutingState
from overseer_dagster.lab.faults import Kill, Recover
from overseer_dagster.lab.runtime import Lab, fast_lab_config

pytestmark = pytest.mark.lab

MSG = [{"role": "user", "content": "hello gateway"}]


def run(coro: Awaitable[Any], timeout: float = 25.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def lab(replicas: int = 2, slots: int = 2, *, records: list[UsageRecord] | None = None, **kw: Any):
    the_lab = Lab(fast_lab_config(replicas, slots=slots, **kw),
                  ledger_sink=records.extend if records is not None else None)
    await the_lab.start()
    try:
        async with httpx.AsyncClient(base_url=the_lab.gateway_url, timeout=15.0,
                                     limits=httpx.Limits(max_connections=500)) as client:
            yield the_lab, client
    finally:
        await the_lab.stop()



async def chat(c: httpx.AsyncClient, kind: str | None = "external", **extra: Any) -> httpx.Response:
    headers = {"X-Demand-Kind": kind} if kind else {}
    return await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 12, **extra}, headers=headers)


async def state(c: httpx.AsyncClient) -> FleetSnapshot:
    return FleetSnapshot.model_validate_json((await c.get("/fleet/state")).content)


def test_fleet_state_is_a_snapshot_without_addresses() -> None:
    async def go() -> None:
        async with lab(3, 4) as (_, c):
            assert (await chat(c, stream=True)).status_code == 200
            resp = await c.get("/fleet/state")
            assert "127.0.0.1" not in resp.text and "http" not in resp.text
            snap = FleetSnapshot.model_validate_json(resp.content)
            assert [r.replica_id for r in snap.replicas] == ["replica-00", "replica-01", "replica-02"]
            assert all(r.health is Health.healthy and r.routing_state is RoutingState.admitted for r in snap.replicas)
            assert snap.headroom == 12 and all(r.max_inflight == 4 for r in snap.replicas)
            assert resp.json()["headroom"] == 12  # computed fields are served
            served = [r for r in snap.replicas if r.ttft_p50_s is not None]
            assert served and served[0].itl_p90_s is not None

    run(go())


def test_saturated_external_requests_all_succeed_by_queueing() -> None:
    records: list[UsageRecord] = []

    async def go() -> None:
        async with lab(2, 2, records=records) as (the_lab, c):
            results = await asyncio.gather(*(chat(c, stream=i % 2 == 0, max_tokens=30, ignore_eos=True)
                                             for i in range(24)))
            assert [r.status_code for r in results] == [200] * 24
            assert all(r.content.endswith(b"data: [DONE]\n\n") for r in results[::2])  # the streamed ones
            await asyncio.sleep(0.2)  # one ledger flush

    run(go())
    assert len(records) == 24
    assert all(r.outcome is Outcome.ok and r.demand_kind is DemandKind.external for r in records)
    assert all(r.completion_tokens == 30 and r.replica_id for r in records)
    streamed = [r for r in records if r.ttft_s is not None]
    assert len(streamed) == 12 and all(r.itl_s is not None and r.latency_s >= r.ttft_s for r in streamed)


def test_usage_chunk_only_when_asked_and_unlabeled_default() -> None:
    records: list[UsageRecord] = []

    async def go() -> None:
        async with lab(records=records) as (_, c):
            plain = await chat(c, kind=None, stream=True)
            assert b'"usage"' not in plain.content
            asked = await chat(c, kind=None, stream=True, stream_options={"include_usage": True})
            assert b'"completion_tokens":12' in asked.content
            await asyncio.sleep(0.2)

    run(go())
    assert [r.demand_kind for r in records] == [DemandKind.unlabeled] * 2
    assert all(r.completion_tokens == 12 for r in records)  # counted even when the client did not ask


def test_queue_timeout_is_a_typed_503() -> None:
    records: list[UsageRecord] = []

    async def go() -> None:
        async with lab(1, 1, records=records, gateway={"max_queue_wait_s": 0.3}) as (_, c):
            long = asyncio.create_task(chat(c, max_tokens=400, ignore_eos=True))
            await asyncio.sleep(0.1)
            t = time.monotonic()
            resp = await chat(c)
            assert 0.25 < time.monotonic() - t < 1.5
            assert resp.status_code == 503
            assert resp.json()["error"]["type"] == "queue_timeout"
            assert (await long).status_code == 200
            await asyncio.sleep(0.2)

    run(go())
    failed = [r for r in records if r.outcome is Outcome.failed]
    assert [r.failure_reason for r in failed] == ["queue_timeout"]


def test_requests_queued_at_the_gateway_show_in_the_replicas_queue_depth() -> None:
    """The stress harness frees slots per replica from /fleet/state: a request waiting in the gateway's own
    FIFO must show there at once, spread (rounded up) over the replicas that could serve it."""

    async def go() -> None:
        async with lab(2, 1) as (_, c):
            busy = [asyncio.create_task(chat(c, max_tokens=300, ignore_eos=True)) for _ in range(2)]
            await wait_until(lambda: False not in [t.done() is False for t in busy], 1.0)
            await asyncio.sleep(0.2)
            assert [r.queue_depth for r in (await state(c)).replicas] == [0, 0]
            queued = [asyncio.create_task(chat(c)) for _ in range(3)]
            await asyncio.sleep(0.2)
            assert [r.queue_depth for r in (await state(c)).replicas] == [2, 2]  # ceil(3 / 2) each
            assert all(r.status_code == 200 for r in await asyncio.gather(*busy, *queued))
            assert [r.queue_depth for r in (await state(c)).replicas] == [0, 0]

    run(go())


def test_queue_full_is_a_typed_503() -> None:
    async def go() -> None:
        async with lab(1, 1, gateway={"max_queue_len": 1}) as (_, c):
            long = asyncio.create_task(chat(c, max_tokens=200, ignore_eos=True))
            await asyncio.sleep(0.1)
            queued = asyncio.create_task(chat(c))
            await asyncio.sleep(0.1)
            resp = await chat(c)
            assert resp.status_code == 503 and resp.json()["error"]["type"] == "queue_full"
            assert (await long).status_code == 200 and (await queued).status_code == 200

    run(go())


def test_no_admitted_replica_is_a_typed_503() -> None:
    async def go() -> None:
        async with lab(2, 2) as (_, c):
            for rid in ("replica-00", "replica-01"):
                assert (await c.post(f"/fleet/replicas/{rid}/drain")).status_code == 200
            resp = await chat(c)
            assert resp.status_code == 503 and resp.json()["error"]["type"] == "no_admitted_replica"
            await c.post("/fleet/replicas/replica-01/admit")
            assert (await chat(c)).status_code == 200

    run(go())


def test_routes_to_the_replica_with_most_free_slots_and_counts_stress() -> None:
    async def go() -> None:
        # Slow probes: a probe's one-token request would briefly take a slot and blur exact counts.
        async with lab(2, 4, gateway={"probe_interval_s": 10}) as (the_lab, c):
            # Stress straight to replica-00 (bypassing the gateway) takes 3 of its 4 slots.
            direct = httpx.AsyncClient(base_url=the_lab.replica_urls["replica-00"], timeout=15)
            body = {"messages": MSG, "max_tokens": 300, "ignore_eos": True}
            stress = [asyncio.create_task(direct.post("/v1/chat/completions", json=body,
                                                      headers={"X-Demand-Kind": "internal_stress"}))
                      for _ in range(3)]
            await wait_until(lambda: the_lab.gateway.upstreams["replica-00"].polled_running == 3)
            external = [asyncio.create_task(chat(c, max_tokens=300, ignore_eos=True)) for _ in range(3)]
            await wait_until(lambda: the_lab.replicas["replica-01"].state()["running"] == 3)
            snap = await state(c)
            r0, r1 = snap.replica("replica-00"), snap.replica("replica-01")
            assert (r0.stress_inflight, r0.external_inflight) == (3, 0)
            assert (r1.stress_inflight, r1.external_inflight, r1.inflight) == (0, 3, 3)
            assert snap.headroom == 2
            for t in stress:
                t.cancel()
            await asyncio.gather(*stress, return_exceptions=True)
            await direct.aclose()
            assert [r.status_code for r in await asyncio.gather(*external)] == [200] * 3

    run(go())


def test_singleflight_429_is_retried_not_failed() -> None:
    async def go() -> None:
        async with lab(2, 1, singleflight=True) as (the_lab, c):
            # Stress fills both replicas directly; the gateway learns it only from polls and replicas' 429s.
            clients = [httpx.AsyncClient(base_url=u, timeout=15) for u in the_lab.replica_urls.values()]

            async def stress_one(cl: httpx.AsyncClient) -> httpx.Response:
                while True:  # the gateway's own one-token health probe may hold the single slot a moment
                    resp = await cl.post("/v1/chat/completions", headers={"X-Demand-Kind": "internal_stress"},
                                         json={"messages": MSG, "max_tokens": 60, "ignore_eos": True})
                    if resp.status_code != 429:
                        return resp
                    await asyncio.sleep(0.01)

            stress = [asyncio.create_task(stress_one(cl)) for cl in clients]
            deadline = time.monotonic() + 5
            while sum(r.stress_inflight for r in (await state(c)).replicas) < 2:  # both slots taken by stress
                assert time.monotonic() < deadline, "stress never reached both replicas"
                await asyncio.sleep(0.01)
            results = await asyncio.gather(*(chat(c) for _ in range(6)))
            assert [r.status_code for r in results] == [200] * 6
            assert [r.status_code for r in await asyncio.gather(*stress)] == [200, 200]
            for cl in clients:
                await cl.aclose()

    run(go())


def test_killed_replica_traffic_is_retried_elsewhere() -> None:
    async def go() -> None:
        async with lab(3, 2, breaker={"failures_to_trip": 1000}) as (the_lab, c):
            await the_lab.apply_fault("replica-01", Kill())
            results = await asyncio.gather(*(chat(c) for _ in range(20)))
            assert [r.status_code for r in results] == [200] * 20
            await the_lab.apply_fault("replica-01", Recover())

    run(go())


def test_breaker_trips_after_3_failures_heals_after_2_and_stays_draining_until_admit() -> None:
    async def go() -> None:
        async with lab(2, 2) as (the_lab, c):
            up = the_lab.gateway.upstreams["replica-00"]
            await the_lab.apply_fault("replica-00", Kill())
            await wait_until(lambda: up.health is Health.unhealthy)
            assert up.fails == 3
            snap = (await state(c)).replica("replica-00")
            assert snap.routing_state is RoutingState.draining and snap.breaker_trips_30m == 1
            assert (await chat(c)).status_code == 200  # served by replica-01

            await the_lab.apply_fault("replica-00", Recover())
            await wait_until(lambda: up.health is Health.healthy)
            assert up.oks == 2
            await asyncio.sleep(0.2)
            snap = (await state(c)).replica("replica-00")
            assert snap.health is Health.healthy and snap.routing_state is RoutingState.draining
            assert snap.breaker_trips_30m == 1
            resp = await c.post("/fleet/replicas/replica-00/admit")
            assert resp.json()["routing_state"] == "admitted"
            assert (await state(c)).replica("replica-00").ready

    run(go())


def test_breaker_with_auto_readmit_returns_replica_to_rotation() -> None:
    async def go() -> None:
        async with lab(2, 2, breaker={"auto_readmit": True}) as (the_lab, c):
            up = the_lab.gateway.upstreams["replica-00"]
            await the_lab.apply_fault("replica-00", {"kind": "hang"})
            await wait_until(lambda: up.routing_state is RoutingState.draining, timeout=5)
            await the_lab.apply_fault("replica-00", {"kind": "recover"})
            await wait_until(lambda: up.routing_state is RoutingState.admitted and up.health is Health.healthy)
            # An operator's drain is not undone by the breaker.
            await c.post("/fleet/replicas/replica-00/drain")
            await asyncio.sleep(0.3)
            assert up.routing_state is RoutingState.draining

    run(go())


def test_error_burst_probe_failures_trip_the_breaker() -> None:
    async def go() -> None:
        async with lab(2, 2) as (the_lab, c):
            up = the_lab.gateway.upstreams["replica-01"]
            await the_lab.apply_fault("replica-01", {"kind": "error_burst", "duration_s": 5, "mode": "empty"})
            await wait_until(lambda: up.health is Health.unhealthy)
            assert up.routing_state is RoutingState.draining

    run(go())


def test_admin_api_is_idempotent_and_404s_unknown_replicas() -> None:
    async def go() -> None:
        async with lab(2, 2) as (_, c):
            for action, expected in (("quarantine", "quarantined"), ("quarantine", "quarantined"),
                                     ("drain", "draining"), ("drain", "draining"),
                                     ("admit", "admitted"), ("admit", "admitted")):
                resp = await c.post(f"/fleet/replicas/replica-01/{action}")
                assert resp.status_code == 200
                body = resp.json()
                assert body["replica_id"] == "replica-01" and body["routing_state"] == expected
                assert "http" not in resp.text
            resp = await c.post("/fleet/replicas/replica-99/admit")
            assert resp.status_code == 404
            assert resp.json() == {"error": {"type": "unknown_replica", "replica_id": "replica-99"}}

    run(go())


def test_gateway_client_disconnect_frees_the_replica_slot() -> None:
    records: list[UsageRecord] = []

    async def go() -> None:
        async with lab(1, 2, records=records) as (the_lab, c):
            async def long_stream() -> None:
                async with c.stream("POST", "/v1/chat/completions", headers={"X-Demand-Kind": "internal_stress"},
                                    json={"messages": MSG, "max_tokens": 5000, "stream": True}) as s:
                    async for _ in s.aiter_raw():
                        pass

            tasks = [asyncio.create_task(long_stream()) for _ in range(2)]
            await wait_until(lambda: the_lab.replicas["replica-00"].state()["running"] == 2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await wait_until(lambda: the_lab.replicas["replica-00"].state()["running"] == 0)
            assert the_lab.gateway.upstreams["replica-00"].gw_inflight == 0
            await asyncio.sleep(0.2)

    run(go())
    assert [r.outcome for r in records] == [Outcome.preempted] * 2  # stress cancelled to yield is not a failure


def test_malformed_request_to_gateway_is_400() -> None:
    records: list[UsageRecord] = []

    async def go() -> None:
        async with lab(records=records) as (_, c):
            resp = await c.post("/v1/chat/completions", content=b"{oops")
            assert resp.status_code == 400 and resp.json()["type"] == "BadRequestError"
            resp = await c.post("/v1/chat/completions", json={"messages": []})
            assert resp.status_code == 400 and resp.json()["object"] == "error"  # the replica's verdict
            await asyncio.sleep(0.2)

    run(go())
    assert [r.failure_reason for r in records] == ["bad_request", "bad_request"]
