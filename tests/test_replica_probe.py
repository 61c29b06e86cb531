"""ReplicaProbeSource against real HTTP servers on loopback, one per replica, serving the real samples."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from http_fixtures import LoopbackServer, closed_port_url

from overseer_dagster.adapters.replica_probe import ReplicaEndpoint, ReplicaProbeSource
from overseer_dagster.core.fleet import FleetSnapshot, Health, RoutingState
from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.faults import Kill, Recover, Slow
from overseer_dagster.lab.replica import Replica, ReplicaConfig

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Long enough for a healthy loopback replica on a loaded machine; the hanging ones sleep 30 s.
TIMEOUT_S = 2.0

# A current vLLM V1 page: two data-parallel engines, every series labelled engine="<index>".
V1_PAGE = "".join(
    f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {running}\n'
    f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} {waiting}\n'
    f'vllm:time_to_first_token_seconds_bucket{{engine="{e}",le="0.1",model_name="m"}} 10\n'
    f'vllm:time_to_first_token_seconds_bucket{{engine="{e}",le="0.5",model_name="m"}} 20\n'
    f'vllm:time_to_first_token_seconds_bucket{{engine="{e}",le="+Inf",model_name="m"}} 20\n'
    f'vllm:time_to_first_token_seconds_count{{engine="{e}",model_name="m"}} 20\n'
    f'vllm:inter_token_latency_seconds_bucket{{engine="{e}",le="0.02",model_name="m"}} 100\n'
    f'vllm:inter_token_latency_seconds_bucket{{engine="{e}",le="+Inf",model_name="m"}} 100\n'
    f'vllm:inter_token_latency_seconds_count{{engine="{e}",model_name="m"}} 100\n'
    for e, running, waiting in ((0, 6, 1), (1, 4, 2))
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def replica(health: Handler, metrics: Handler) -> web.Application:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def ok(text: str = "") -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    return handler


def status(code: int) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=code)

    return handler


async def hang(_: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response()


def sample(name: str) -> Handler:
    return ok((FIXTURES / name).read_text())


# replica id -> (app, max_inflight); None: nothing listens there.
REPLICAS: dict[str, tuple[web.Application | None, int]] = {
    "vllm-v1": (replica(ok(), ok(V1_PAGE)), 32),
    "vllm-v1-doc": (replica(ok(), sample("vllm-metrics-sample-2.txt")), 32),
    "vllm-v0": (replica(ok(), sample("vllm-metrics-sample-1.txt")), 16),
    "sglang": (replica(ok(), sample("sglang-metrics-sample-1.txt")), 4096),
    "sick": (replica(status(503), sample("sglang-metrics-sample-1.txt")), 4096),
    "garbage": (replica(ok(), ok("<html><body>not metrics</body></html>")), 16),
    "metrics-error": (replica(ok(), status(500)), 16),
    "hangs": (replica(hang, sample("vllm-metrics-sample-1.txt")), 16),
    "metrics-hang": (replica(ok(), hang), 16),
    "gone": (None, 16),
}


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetSnapshot]:
    with contextlib.ExitStack() as servers:
        endpoints = [
            ReplicaEndpoint(
                replica_id=rid,
                base_url=servers.enter_context(LoopbackServer(app)) if app else closed_port_url(),
                max_inflight=max_inflight,
            )
            for rid, (app, max_inflight) in REPLICAS.items()
        ]
        yield ReplicaProbeSource(endpoints, timeout_s=TIMEOUT_S).snapshot(NOW)


def test_healthy_replicas_report_their_load(fleet: FleetSnapshot) -> None:
    v1, v0, sglang = fleet.replica("vllm-v1"), fleet.replica("vllm-v0"), fleet.replica("sglang")
    assert v1 and v0 and sglang
    assert (v1.health, v1.inflight, v1.queue_depth, v1.unknown_reason) == (Health.healthy, 13, 3, None)
    assert (v1.ttft_p50_s, v1.ttft_p99_s, v1.itl_p50_s, v1.itl_p90_s) == pytest.approx((0.1, 0.492, 0.01, 0.018))
    assert (v0.health, v0.inflight, v0.ttft_p50_s) == (Health.healthy, 0, None)
    assert (sglang.health, sglang.inflight, sglang.queue_depth) == (Health.healthy, 162 + 2826, 2826)
    assert sglang.ttft_p50_s == 30.0
    assert sglang.itl_p50_s == pytest.approx(0.0930824, abs=1e-6)


@pytest.mark.parametrize(
    ("replica_id", "health", "reason"),
    [
        ("sick", Health.unhealthy, None),
        # The document's V1 sample is elided: no waiting count, so no inflight, so not trusted.
        ("vllm-v1-doc", Health.unknown, "metrics_missing:requests_waiting"),
        ("garbage", Health.unknown, "metrics_malformed"),
        ("metrics-error", Health.unknown, "metrics_status:500"),
        ("hangs", Health.unknown, "timeout"),
        ("metrics-hang", Health.unknown, "timeout"),
        ("gone", Health.unknown, "connect_error"),
    ],
)
def test_replicas_that_cannot_be_trusted_are_never_healthy(
    fleet: FleetSnapshot, replica_id: str, health: Health, reason: str | None
) -> None:
    state = fleet.replica(replica_id)
    assert state is not None
    assert (state.health, state.unknown_reason) == (health, reason)


def test_an_unhealthy_replica_still_shows_its_load(fleet: FleetSnapshot) -> None:
    sick = fleet.replica("sick")
    assert sick is not None and sick.inflight == 162 + 2826 and not sick.ready


def test_fleet_totals_count_only_ready_replicas(fleet: FleetSnapshot) -> None:
    assert fleet.ready_replicas == 3
    assert fleet.headroom == (32 - 13) + (16 - 0) + (4096 - 2988)
    assert all(r.routing_state is RoutingState.admitted for r in fleet.replicas)
    assert {r.observed_at for r in fleet.replicas} == {NOW} and fleet.observed_at == NOW
    assert [r.replica_id for r in fleet.replicas] == list(REPLICAS)


def test_no_address_leaves_the_probe(fleet: FleetSnapshot) -> None:
    assert "127.0.0.1" not in fleet.model_dump_json()


def test_at_most_concurrency_replicas_are_probed_at_once() -> None:
    open_now = peak = 0

    async def counted(_: web.Request) -> web.Response:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await asyncio.sleep(0.02)
        open_now -= 1
        return web.Response(text=V1_PAGE)

    app = web.Application()
    app.router.add_get("/r/{i}/health", counted)
    app.router.add_get("/r/{i}/metrics", counted)
    with LoopbackServer(app) as base:
        endpoints = [ReplicaEndpoint(replica_id=f"r{i}", base_url=f"{base}/r/{i}", max_inflight=8) for i in range(12)]
        fleet = ReplicaProbeSource(endpoints, concurrency=3).snapshot(NOW)
    assert fleet.ready_replicas == 12
    assert peak == 3


def test_configuration_is_checked() -> None:
    endpoint = ReplicaEndpoint(replica_id="a", base_url="http://a.invalid", max_inflight=1)
    with pytest.raises(ValueError):
        ReplicaProbeSource([endpoint, endpoint])
    with pytest.raises(ValueError):
        ReplicaProbeSource([endpoint], timeout_s=0)
    with pytest.raises(ValueError):
        ReplicaEndpoint(replica_id="Not_An_Id", base_url="http://a.invalid", max_inflight=1)
    with pytest.raises(ValueError):
        ReplicaEndpoint(replica_id="a", base_url="a.invalid:8000", max_inflight=1)
    with pytest.raises(ValueError):
        ReplicaProbeSource([endpoint]).snapshot(datetime(2026, 3, 1))  # naive: whose noon?


def test_a_page_too_large_to_read_is_not_trusted() -> None:
    with LoopbackServer(replica(ok(), sample("sglang-metrics-sample-1.txt"))) as base:
        endpoint = ReplicaEndpoint(replica_id="big", base_url=base, max_inflight=8)
        fleet = ReplicaProbeSource([endpoint], max_metrics_bytes=4096).snapshot(NOW)
    assert (fleet.replicas[0].health, fleet.replicas[0].unknown_reason) == (Health.unknown, "metrics_too_large")


# --- latency over the window since the last probe (a lab replica: vLLM's histograms, really served) -------

# About 8 ms a token (a third of the 25 ms the test allows, for a loaded machine's jitter); under Slow(8),
# about 65 ms: apart by more than a bucket of vLLM's ITL histogram.
STEADY = EngineConfig(max_num_seqs=8, step_base_s=0.008, step_per_seq_s=0.0002, prefill_base_s=0.001,
                      prefill_s_per_token=0.00001)


async def _traffic(replica: Replica, requests: int, tokens: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "ignore_eos": True})
            for _ in range(requests)))
    assert all(a.status_code == 200 for a in answers)


def test_latency_is_of_the_window_since_the_last_probe_even_across_processes(tmp_path: Path) -> None:
    """A slowdown shows in the next reading, though the engine's lifetime histogram barely moves; each tick
    builds a new source (a run process of its own), so the window lives in the baselines file."""
    baselines = tmp_path / "probe-baselines.json"

    async def go() -> None:
        replica = Replica(ReplicaConfig("replica-00", engine=STEADY))
        await replica.start()
        try:
            endpoint = ReplicaEndpoint(replica_id="replica-00", base_url=replica.url, max_inflight=8)

            async def itl_p90(windowed: bool) -> float | None:
                source = ReplicaProbeSource([endpoint], baselines=baselines if windowed else None)
                [state] = (await source.probe(NOW)).replicas
                assert state.health is Health.healthy
                return state.itl_p90_s

            await _traffic(replica, requests=6, tokens=48)  # ~280 steady tokens
            first = await itl_p90(windowed=True)  # no earlier page: since the engine started
            assert first is not None and first <= 0.025
            await replica.apply_fault(Slow(factor=8))
            await _traffic(replica, requests=1, tokens=12)  # ~11 slow tokens: under 5% of them all
            assert await itl_p90(windowed=False) <= 0.025  # the lifetime figure hides the slowdown
            assert await itl_p90(windowed=True) >= 0.05  # the window shows it
            assert await itl_p90(windowed=True) is None  # no tokens since: no latency to state
            await replica.apply_fault(Recover())

            await replica.apply_fault(Kill())  # the engine restarts: its counters begin again
            await replica.apply_fault(Recover())
            await _traffic(replica, requests=2, tokens=24)
            after_restart = await itl_p90(windowed=True)
            assert after_restart is not None and after_restart <= 0.025
        finally:
            await replica.stop()

    asyncio.run(asyncio.wait_for(go(), 60))
    assert "127.0.0.1" not in baselines.read_text()  # replica ids and histograms only


def test_an_unreadable_baselines_file_costs_the_window_not_the_reading(tmp_path: Path) -> None:
    baselines = tmp_path / "probe-baselines.json"
    baselines.write_text("{not json")
    with LoopbackServer(replica(ok(), ok(V1_PAGE))) as base:
        endpoint = ReplicaEndpoint(replica_id="vllm-v1", base_url=base, max_inflight=32)
        fleet = ReplicaProbeSource([endpoint], baselines=baselines).snapshot(NOW)
        again = ReplicaProbeSource([endpoint], baselines=baselines).snapshot(NOW)
    assert fleet.replicas[0].itl_p90_s == pytest.approx(0.018)  # the page's own histogram, as without a file
    assert again.replicas[0].itl_p90_s is None  # the file was rewritten: nothing happened in between


@pytest.mark.parametrize("server", ["process", "thread"])
def test_the_probe_benchmark_probes_every_stand_in_replica_and_leaves_nothing_running(server: str) -> None:
    import multiprocessing
    import threading

    from overseer_dagster.bench import probe as bench_probe

    result = bench_probe.run(replicas=20, server=server)
    assert (result["ready"], result["unknown_reasons"], result["server"]) == (20, {}, server)
    assert result["baselines_bytes"] > 0  # measured as a tick runs it: windowed, with a baselines file
    assert not multiprocessing.active_children()
    assert not [t for t in threading.enumerate() if t.name == "bench-replicas"]
