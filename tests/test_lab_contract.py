"""The lab speaks production's contracts: its /metrics parse with the same parser and mapping as the
real vLLM samples, and the overseer's tick reads live fleet state and demand from it."""

from __future__ import annotations

import time

import dagster as dg
import httpx
import pytest

from conftest import FIXTURES
from overseer_dagster.core.telemetry import parse_engine_metrics
from overseer_dagster.definitions import defs
from overseer_dagster.defs.resources import FleetResource, MindResource, StoreResource
from overseer_dagster.lab.ledger import store_sink
from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config

pytestmark = pytest.mark.lab
FIELDS = ("requests_running", "requests_waiting", "kv_cache_usage", "prompt_tokens_total",
          "generation_tokens_total", "request_success_total", "preemptions_total")


def _chat(base: str, n: int, kind: str = "external") -> None:
    with httpx.Client(timeout=30) as client:
        model = client.get(f"{base}/v1/models").json()["data"][0]["id"]
        for _ in range(n):
            r = client.post(f"{base}/v1/chat/completions", headers={"X-Demand-Kind": kind},
                            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
            assert r.status_code == 200, r.text


def test_lab_metrics_and_real_samples_map_to_the_same_fields() -> None:
    real = parse_engine_metrics((FIXTURES / "vllm-metrics-sample-1.txt").read_text())
    # The gateway's health probes paused, so none is in flight when the test reads `requests_running`.
    with BackgroundLab(fast_lab_config(1, slots=4, gateway={"probe_interval_s": 10})) as lab:
        [url] = lab.replica_urls.values()
        _chat(url, 3)
        lab_metrics = parse_engine_metrics(httpx.get(f"{url}/metrics").text)
    assert lab_metrics.engine == real.engine == "vllm"
    for field in FIELDS:
        assert (getattr(lab_metrics, field) is None) == (getattr(real, field) is None), field
    # Ours plus the gateway's one-token health probes, which a real engine counts too.
    assert lab_metrics.request_success_total >= 3
    assert lab_metrics.generation_tokens_total > 0 and lab_metrics.requests_running == 0
    assert lab_metrics.ttft.count == lab_metrics.e2e.count == lab_metrics.request_success_total


def test_the_tick_reads_live_fleet_state_and_demand_from_the_lab(store_url: str) -> None:
    with BackgroundLab(fast_lab_config(2, slots=4), ledger_sink=store_sink(store_url)) as lab:
        _chat(lab.gateway_url, 5)
        time.sleep(1.0)  # the gateway batches ledger writes every 0.5 s
        result = defs.resolve_job_def("overseer_tick").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            resources={"store": StoreResource(database_url=store_url),
                       "fleet": FleetResource(source=f"snapshot:{lab.gateway_url}/fleet/state"),
                       "mind": MindResource(mind="rule")},
        )
    assert result.success
    meta = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}
    assert meta["fleet_state"]["replicas"] == 2 and meta["fleet_state"]["ready_replicas"] == 2
    assert meta["external_demand"]["external_requests"] == 5
    assert meta["overseer_decision"]["outcome"] == "decided"
