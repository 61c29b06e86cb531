"""How long one direct probe of a whole fleet takes: `python -m overseer_dagster.bench.probe [replicas]`.

One aiohttp server on loopback stands in for every replica (`/r/{i}/health`, `/r/{i}/metrics`), all
serving one vLLM V1 page with two data-parallel engines. By default it runs in a process of its own, as
replicas are other machines in production; `server="thread"` puts it in the prober's process, sharing
its GIL (pessimistic about CPU). Either way the network is loopback: optimistic. The probe is
measured as a tick runs it: with a baselines file a previous probe wrote (latency over the window
between them), loaded, windowed and written again.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from pathlib import Path

from aiohttp import web

from overseer_dagster.adapters.fleet_source import PROBE_BASELINES
from overseer_dagster.adapters.replica_probe import ReplicaEndpoint, ReplicaProbeSource

# vLLM V1's default bounds.
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)
_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVERS = ("process", "thread")


def metrics_page(engines: int = 2) -> str:
    """A vLLM V1 `/metrics` page: the series the probe reads, and histograms it skips."""
    lines: list[str] = []
    for e in range(engines):
        labels = f'engine="{e}",model_name="{_MODEL}"'
        lines += [
            f"vllm:num_requests_running{{{labels}}} {8 + e}.0",
            f"vllm:num_requests_waiting{{{labels}}} {e}.0",
            f"vllm:kv_cache_usage_perc{{{labels}}} 0.{3 + e}",
            f"vllm:prompt_tokens_total{{{labels}}} 1.2e+06",
            f"vllm:generation_tokens_total{{{labels}}} 3.4e+06",
            f"vllm:num_preemptions_total{{{labels}}} 2.0",
        ]
        for reason in ("stop", "length", "abort"):
            lines.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} 100.0')
        histograms = {
            "time_to_first_token_seconds": _TTFT,
            "inter_token_latency_seconds": _ITL,
            "time_per_output_token_seconds": _ITL,
            "e2e_request_latency_seconds": _E2E,
            "request_queue_time_seconds": _E2E,
            "request_prefill_time_seconds": _E2E,
            "request_decode_time_seconds": _E2E,
        }
        for name, bounds in histograms.items():
            lines.append(f"# TYPE vllm:{name} histogram")
            for i, le in enumerate((*bounds, "+Inf")):
                lines.append(f'vllm:{name}_bucket{{{labels},le="{le}"}} {min(10 * i, 150)}.0')
            lines += [f"vllm:{name}_count{{{labels}}} 150.0", f"vllm:{name}_sum{{{labels}}} 321.5"]
    return "\n".join(lines) + "\n"


def _app() -> web.Application:
    page = metrics_page()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/r/{i}/metrics", metrics)
    app.router.add_get("/r/{i}/health", health)
    return app


async def _start(runner: web.AppRunner) -> str:
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


def _serve(base_url: Queue) -> None:
    """The stand-in replicas in a process of their own, until the bench terminates it."""
    async def main() -> None:
        base_url.put(await _start(web.AppRunner(_app(), access_log=None)))
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def _replicas(server: str) -> Iterator[str]:
    """The stand-in replicas' base URL: served by a process of their own (`process`, as replicas are other
    machines in production) or by a thread of the prober's process (`thread`, sharing its GIL)."""
    if server == "process":
        spawn = multiprocessing.get_context("spawn")
        base_url: Queue = spawn.Queue()
        child = spawn.Process(target=_serve, args=(base_url,), name="bench-replicas", daemon=True)
        child.start()
        try:
            yield base_url.get(timeout=60)
        finally:
            child.terminate()
            child.join(10)
        return
    runner = web.AppRunner(_app(), access_log=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-replicas", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(_start(runner), loop).result(timeout=10)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def run(replicas: int = 1000, server: str = "process") -> dict:
    if server not in SERVERS:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}")
    with _replicas(server) as base, tempfile.TemporaryDirectory() as home:
        endpoints = [ReplicaEndpoint(replica_id=f"r{i}", base_url=f"{base}/r/{i}", max_inflight=64)
                     for i in range(replicas)]
        baselines = Path(home) / PROBE_BASELINES
        ReplicaProbeSource(endpoints, baselines=baselines).snapshot(datetime.now(UTC))  # the previous tick's
        source = ReplicaProbeSource(endpoints, baselines=baselines)
        wall, cpu = time.perf_counter(), time.process_time()
        fleet = source.snapshot(datetime.now(UTC))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        baselines_bytes = baselines.stat().st_size
    return {
        "bench": "probe",
        "replicas": replicas,
        "server": server,
        "wall_s": round(wall, 3),
        # The prober's process CPU (with `thread`, the stand-in server's too): on a machine shared with
        # other work, wall time alone misleads.
        "cpu_s": round(cpu, 3),
        "ready": fleet.ready_replicas,
        "baselines_bytes": baselines_bytes,
        "unknown_reasons": dict(Counter(r.unknown_reason for r in fleet.replicas if r.unknown_reason)),
    }


if __name__ == "__main__":
    print(json.dumps(run(*(int(a) for a in sys.argv[1:2]))))
