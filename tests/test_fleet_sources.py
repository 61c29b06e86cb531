"""Pointing the overseer at real vLLM/SGLang metric samples served over HTTP gives the right figures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from overseer_dagster.adapters import fleet_source
from conftest import FIXTURES
from http_fixtures import LoopbackServer

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SAMPLES = {"vllm-v0": "vllm-metrics-sample-1.txt", "vllm-v1": "vllm-metrics-sample-2.txt",
           "sglang": "sglang-metrics-sample-1.txt"}


def samples_app() -> web.Application:
    """A directory of samples over HTTP: /<replica>/health and /<replica>/metrics."""
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=(FIXTURES / SAMPLES[request.match_info["replica"]]).read_text())

    app.router.add_get("/{replica}/health", health)
    app.router.add_get("/{replica}/metrics", metrics)
    return app


def test_probe_source_over_real_samples(tmp_path: Path) -> None:
    with LoopbackServer(samples_app()) as base:
        config = tmp_path / "probe.json"
        config.write_text(json.dumps({"replicas": [
            {"replica_id": "vllm-v0", "base_url": f"{base}/vllm-v0", "max_inflight": 16},
            {"replica_id": "vllm-v1", "base_url": f"{base}/vllm-v1", "max_inflight": 16},
            {"replica_id": "sglang", "base_url": f"{base}/sglang", "max_inflight": 4096},
        ]}))
        snap = fleet_source.from_spec(f"probe:{config}").snapshot(NOW)
    by_id = {r.replica_id: r for r in snap.replicas}
    # V0 sample: idle (0 running, 0 waiting, 0 swapped): all 16 slots free.
    assert by_id["vllm-v0"].health == "healthy" and by_id["vllm-v0"].inflight == 0
    # The V1 sample as published is elided: no waiting count, so it cannot be proven healthy.
    assert by_id["vllm-v1"].health == "unknown"
    assert by_id["vllm-v1"].unknown_reason == "metrics_missing:requests_waiting"
    # SGLang sample: 162 running + 2826 queued.
    assert by_id["sglang"].health == "healthy" and by_id["sglang"].inflight == 162 + 2826
    assert snap.ready_replicas == 2
    assert snap.headroom == 16 + (4096 - 162 - 2826)


def test_the_tick_s_probe_reads_latency_over_the_window_kept_in_overseer_home(tmp_path: Path) -> None:
    from overseer_dagster.defs.resources import FleetResource
    from overseer_dagster.store.db import overseer_home

    with LoopbackServer(samples_app()) as base:
        config = tmp_path / "probe.json"
        config.write_text(json.dumps({"replicas": [
            {"replica_id": "sglang", "base_url": f"{base}/sglang", "max_inflight": 4096}]}))
        fleet = FleetResource(source=f"probe:{config}")
        first, second = fleet.snapshot(NOW), fleet.snapshot(NOW)
    # First: the histograms since the engine started. Then the same page again: no token in between.
    assert first.replicas[0].itl_p50_s == pytest.approx(0.0930824, abs=1e-6)
    assert (second.replicas[0].itl_p50_s, second.replicas[0].ttft_p50_s) == (None, None)
    assert (overseer_home() / fleet_source.PROBE_BASELINES).is_file()


def test_probe_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    config = tmp_path / "probe.json"
    config.write_text(json.dumps({"replicas": [{"replica_id": "a", "base_url": "ftp://x", "max_inflight": 4}]}))
    with pytest.raises(ValueError, match=r"probe.json: replicas\.0\.base_url"):
        fleet_source.from_spec(f"probe:{config}")


def test_unknown_source_kind_names_the_variable() -> None:
    with pytest.raises(ValueError, match="OVERSEER_FLEET_SOURCE"):
        fleet_source.from_spec("consul:somewhere")


def test_snapshot_source_reports_a_malformed_snapshot_with_its_field(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.json"
    bad.write_text(json.dumps({"observed_at": "2026-12-03T12:00:00Z", "replicas": [
        {"replica_id": "r-1", "health": "healthy", "routing_state": "admitted", "inflight": -1,
         "max_inflight": 4, "observed_at": "2026-12-03T12:00:00Z"}]}))
    with pytest.raises(fleet_source.FleetSourceError) as err:
        fleet_source.from_spec(f"snapshot:{bad}").snapshot(NOW)
    assert err.value.reason == "fleet_snapshot_invalid" and "replicas.0.inflight" in str(err.value)
