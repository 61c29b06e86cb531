"""The lab gateway's outage: its port refuses connections, the replicas keep running, it comes back on the same
port with its routing state; traffic and the stress harness live through it (overseer_dagster/lab/faults.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from http_fixtures import wait_until

from overseer_dagster.core.demand import Outcome, UsageRecord
from overseer_dagster.core.fleet import FleetSnapshot, RoutingState
from overseer_dagster.lab.faults import FaultError, Outage, parse_fault
from overseer_dagster.lab.profiles import Sizes, steady
from overseer_dagster.lab.runtime import Lab, fast_lab_config
from overseer_dagster.lab.traffic import TrafficGenerator
from overseer_dagster.stress.control import Target
from overseer_dagster.stress.harness import HarnessConfig, StressHarness
from overseer_dagster.stress.load import GatewayLoad

pytestmark = pytest.mark.lab

MSG = [{"role": "user", "content": "hello gateway"}]
# A fresh connection per request: a closed port must be seen as refused, not through a pooled socket.
NO_POOL = httpx.Limits(max_keepalive_connections=0)


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))



async def refused(c: httpx.AsyncClient, method: str, url: str, **kw: Any) -> bool:
    try:
        await c.request(method, url, **kw)
    except httpx.ConnectError:
        return True
    return False


async def state(c: httpx.AsyncClient, gateway: str) -> FleetSnapshot:
    return FleetSnapshot.model_validate_json((await c.get(gateway + "/fleet/state")).content)


def test_an_outage_refuses_every_endpoint_then_serves_again_on_the_same_port_with_its_routing_state() -> None:
    async def go() -> None:
        lab = Lab(fast_lab_config(3, slots=2))
        await lab.start()
        try:
            gw = lab.gateway_url
            async with httpx.AsyncClient(timeout=5.0, limits=NO_POOL) as c:
                await c.post(gw + "/fleet/replicas/replica-01/drain")
                await c.post(gw + "/fleet/replicas/replica-02/quarantine")
                # Long enough for the checks below to fall inside it on a loaded machine.
                resp = await c.post(gw + "/lab/gateway/faults", json={"kind": "outage", "duration_s": 2.5})
                assert resp.status_code == 200 and resp.json()["applied"] == {"kind": "outage", "duration_s": 2.5}
                await wait_until(lambda: lab.gateway_down, timeout=5.0)
                for method, path, body in (
                    ("GET", "/fleet/state", None), ("GET", "/health", None),
                    ("POST", "/v1/chat/completions", {"messages": MSG, "max_tokens": 4}),
                    ("POST", "/fleet/replicas/replica-01/admit", None),
                    ("GET", "/lab/replicas/replica-00/state", None),
                    ("POST", "/lab/gateway/faults", {"kind": "outage", "duration_s": 1}),
                ):
                    assert await refused(c, method, gw + path, json=body), path
                # The replicas keep running and serving.
                direct = await c.post(lab.replica_urls["replica-00"] + "/v1/chat/completions",
                                      json={"messages": MSG, "max_tokens": 4})
                assert direct.status_code == 200

                await wait_until(lambda: not lab.gateway_down, timeout=8.0)
                assert lab.gateway_url == gw  # the same port
                snap = await state(c, gw)
                routing = {r.replica_id: r.routing_state for r in snap.replicas}
                assert routing == {"replica-00": RoutingState.admitted, "replica-01": RoutingState.draining,
                                   "replica-02": RoutingState.quarantined}
                chat = await c.post(gw + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 4},
                                    headers={"X-Demand-Kind": "external"})
                assert chat.status_code == 200
                assert (await c.post(gw + "/fleet/replicas/replica-01/admit")).json()["routing_state"] == "admitted"
        finally:
            await lab.stop()

    run(go())


def test_a_request_in_flight_when_the_gateway_goes_down_is_recorded_failed_gateway_down() -> None:
    async def go() -> None:
        records: list[UsageRecord] = []
        lab = Lab(fast_lab_config(2, slots=2), ledger_sink=records.extend)
        await lab.start()
        try:
            async with httpx.AsyncClient(base_url=lab.gateway_url, timeout=5.0, limits=NO_POOL) as c:
                stream = asyncio.create_task(c.post(
                    "/v1/chat/completions", headers={"X-Demand-Kind": "external"},
                    json={"messages": MSG, "max_tokens": 5000, "ignore_eos": True, "stream": True}))
                await wait_until(lambda: sum(up.gw_inflight for up in lab.gateway.upstreams.values()) == 1, timeout=5.0)
                await lab.gateway_outage(0.3)
                with pytest.raises(httpx.HTTPError):
                    (await stream).raise_for_status()
                    raise AssertionError("the stream survived the outage")
                await wait_until(lambda: not lab.gateway_down, timeout=5.0)
                after = await c.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 4})
                assert after.status_code == 200
            await wait_until(lambda: len(records) >= 2, timeout=5.0)
            cut = [r for r in records if r.outcome is Outcome.failed]
            assert [r.failure_reason for r in cut] == ["gateway_down"]
            # Every slot the cut request held is free again.
            assert all(up.gw_inflight == 0 for up in lab.gateway.upstreams.values())
        finally:
            await lab.stop()

    run(go())


def test_another_outage_restarts_the_countdown_restore_ends_it_and_stop_never_rebinds() -> None:
    async def go() -> None:
        lab = Lab(fast_lab_config(2, slots=2))
        await lab.start()
        stopped = False
        try:
            gw = lab.gateway_url
            async with httpx.AsyncClient(timeout=2.0, limits=NO_POOL) as c:
                await lab.apply_fault("gateway", {"kind": "outage", "duration_s": 0.9})
                await asyncio.sleep(0.6)
                await lab.apply_fault("gateway", Outage(kind="outage", duration_s=1.8))
                await asyncio.sleep(0.9)  # past the first outage's end: still down
                assert lab.gateway_down and await refused(c, "GET", gw + "/health")
                await lab.restore_gateway()  # at once
                assert not lab.gateway_down and (await c.get(gw + "/health")).status_code == 200
                await asyncio.sleep(1.5)  # past the second's end: the cancelled countdown does nothing
                assert not lab.gateway_down

                await lab.gateway_outage(0.2)
                t0 = time.monotonic()
                await lab.stop()
                stopped = True
                assert time.monotonic() - t0 < 5
                await asyncio.sleep(0.4)
                assert await refused(c, "GET", gw + "/health")  # stopped for good, not re-bound
        finally:
            if not stopped:
                await lab.stop()

    run(go())


@pytest.mark.parametrize("target, body, message", [
    ("gateway", '{"kind": "outage"}', "duration_s: required: the lab's control API lives on the gateway's port"),
    ("gateway", '{"kind": "outage", "duration_s": 0}', "duration_s: Input should be greater than 0"),
    ("gateway", '{"kind": "kill", "duration_s": 5}', "kind: 'kill' is a replica fault; the gateway takes outage"),
    ("gateway", '{"kind": "explode", "duration_s": 5}', "kind: 'explode' is not one of outage"),
    ("replica-01", '{"kind": "outage", "duration_s": 5}', "kind: 'outage' is the gateway's fault"),
    ("replica-01", '{"kind": "explode"}', "kind: 'explode' is not one of kill, hang, slow, error_burst, flap"),
    ("replica-01", '{}', "kind: required, one of kill, hang"),
    ("replica-01", '{"kind": "kill", "duration_s": "soon"}', "duration_s: Input should be a valid number"),
    ("replica-01", '{"kind": "kill",', "not JSON: "),
    ("replica-01", '["kill"]', "a fault is a JSON object with a kind"),
])
def test_a_fault_is_validated_for_its_target_naming_the_problem(target: str, body: str, message: str) -> None:
    with pytest.raises(FaultError) as err:
        parse_fault(target, body)
    assert str(err.value).startswith(message), str(err.value)


def test_the_control_api_refuses_a_bad_outage_and_an_outage_for_a_replica() -> None:
    async def go() -> None:
        lab = Lab(fast_lab_config(2, slots=2))
        await lab.start()
        try:
            async with httpx.AsyncClient(base_url=lab.gateway_url, timeout=5.0) as c:
                bad = await c.post("/lab/gateway/faults", json={"kind": "outage"})
                assert bad.status_code == 400 and "duration_s: required" in bad.json()["message"]
                wrong = await c.post("/lab/replicas/replica-00/faults", json={"kind": "outage", "duration_s": 1})
                assert wrong.status_code == 400 and "gateway's fault" in wrong.json()["message"]
                assert not lab.gateway_down and (await c.get("/health")).status_code == 200
            with pytest.raises(FaultError):
                await lab.apply_fault("replica-00", Outage(kind="outage", duration_s=1))
        finally:
            await lab.stop()

    run(go())


def test_lab_traffic_through_an_outage_fails_fast_as_connect_error_and_recovers() -> None:
    async def go() -> None:
        lab = Lab(fast_lab_config(2, slots=4))
        await lab.start()
        try:
            traffic = TrafficGenerator(lab.gateway_url, steady(20.0), duration_s=2.5, seed=5,
                                       prompt_tokens=Sizes(median=32), max_tokens=Sizes(median=8, max=16),
                                       request_timeout_s=10)
            running = asyncio.create_task(traffic.run())
            await asyncio.sleep(0.5)
            await lab.gateway_outage(1.0)
            summary = await running
        finally:
            await lab.stop()
        assert summary.sent == summary.ok + summary.failed
        assert summary.failures_by_reason.get("connect_error", 0) >= 5, summary.failures_by_reason
        # Scheduled well inside the outage (0.5 s to 1.5 s), so even a request sent late finds it down.
        during = [r for r in traffic.results if 0.75 <= r.start_s <= 1.25]
        assert during and all(r.outcome == "failed" for r in during)
        assert all(r.latency_s is not None and r.latency_s < 1.0 for r in during if r.reason == "connect_error")
        after = [r for r in traffic.results if r.start_s >= 2.0]
        assert after and all(r.outcome == "ok" for r in after), [r.reason for r in after]

    run(go())


def test_the_stress_harness_reads_an_unreachable_oracle_as_stale_and_stops_stress_until_it_returns() -> None:
    async def go() -> None:
        lab = Lab(fast_lab_config(2, slots=6, output_tokens_min=2000, output_tokens_max=4000))
        await lab.start()
        rows: list[UsageRecord] = []
        wall = datetime.now(UTC)
        harness = StressHarness(
            lab.replica_urls, load=GatewayLoad(lab.gateway_url, clock=time.monotonic), sink=rows.extend,
            read_targets=lambda now: ({None: Target(3, wall + timedelta(hours=1))}, wall),
            config=HarnessConfig(seed=1))
        stop = asyncio.Event()
        running = asyncio.create_task(harness.run(stop))
        inflight = lambda: sum(harness.stats()["inflight"].values())  # noqa: E731
        try:
            await wait_until(lambda: inflight() >= 4, timeout=10)
            await lab.gateway_outage(3.0)
            await wait_until(lambda: inflight() == 0, timeout=2.5)  # a reading over 1 s old: no stress
            assert harness.stats()["load_failures"] > 0
            await wait_until(lambda: not lab.gateway_down, timeout=5)
            await wait_until(lambda: inflight() >= 4, timeout=10)  # readable again: stress comes back
        finally:
            stop.set()
            await running
            await lab.stop()
        assert harness.stats()["errors"] == 0
        assert not [r for r in rows if r.outcome is Outcome.failed]
        assert "stale_load" in harness.stats()["preempted_by_reason"]

    run(go(), timeout=60)
