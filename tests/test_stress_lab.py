"""The stress harness against the lab: a short external spike, no external failure, stress preempted not failed.

The lab (2 singleflight replicas x 8 slots, engine preemption off, external requests wait at most 3 s at the
gateway) runs on its own loop in a thread; the harness reads `/fleet/state` and a real store, as `overseer
stress` does. A harness that did not yield would hold most slots through the spike and fail external requests.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from overseer_dagster.core.demand import Outcome
from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.gateway import GatewayConfig
from overseer_dagster.lab.profiles import Sizes, step_spike
from overseer_dagster.lab.runtime import BackgroundLab, LabConfig
from overseer_dagster.lab.traffic import TrafficGenerator
from overseer_dagster.store import connect, write_tx
from overseer_dagster.store.tables import ledger
from overseer_dagster.store.targets import set_target
from overseer_dagster.stress.control import store_reader
from overseer_dagster.stress.harness import HarnessConfig, StressHarness
from overseer_dagster.stress.ledger import store_sink
from overseer_dagster.stress.load import GatewayLoad

pytestmark = pytest.mark.lab

REPLICAS, SLOTS = 2, 8


def test_a_spike_preempts_stress_and_fails_no_external_request(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = connect(url)
    now = datetime.now(UTC)
    with write_tx(engine) as conn:
        set_target(conn, replica_id=None, concurrency=SLOTS - 1, now=now, expires_at=now + timedelta(minutes=10))
    config = LabConfig(
        replicas=REPLICAS,
        engine=EngineConfig(max_num_seqs=SLOTS, singleflight=True, priority_preemption=False),
        gateway=GatewayConfig(max_queue_wait_s=3.0),
    )
    with BackgroundLab(config) as lab:
        summary, stats = asyncio.run(_spike(lab.gateway_url, lab.replica_urls, url))
    engine.dispose()

    assert summary.sent > 50
    assert summary.failed == 0, summary.failures_by_reason
    assert stats["errors"] == 0
    rows = _stress_rows(url)
    yielded = [r for r in rows if r["outcome"] == Outcome.preempted and r["failure_reason"] == "yield_external"]
    assert yielded, "the spike should have preempted stress"
    assert not [r for r in rows if r["outcome"] == Outcome.failed]
    assert {r["demand_kind"] for r in rows} == {"internal_stress"}


async def _spike(gateway: str, replicas: dict[str, str], url: str) -> tuple:
    harness = StressHarness(replicas, load=GatewayLoad(gateway, clock=time.monotonic),
                            read_targets=store_reader(url), sink=store_sink(url), config=HarnessConfig(seed=1))
    stop = asyncio.Event()
    running = asyncio.get_running_loop().create_task(harness.run(stop))
    try:
        await _until(lambda: sum(harness.stats()["inflight"].values()) >= REPLICAS * 4, timeout_s=10)
        # About 0.66 s a request in a full replica: 3/s is ~12% of the slots, 21/s ~90%, for 4 s.
        traffic = TrafficGenerator(gateway, step_spike(3.0, 21.0, at_s=2.0, hold_s=4.0), duration_s=8.0, seed=3,
                                   prompt_tokens=Sizes(median=64), max_tokens=Sizes(median=24), request_timeout_s=20)
        summary = await traffic.run()
    finally:
        stop.set()
        await running
    return summary, harness.stats()


async def _until(condition, timeout_s: float) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("the harness never started its stress")
        await asyncio.sleep(0.05)


def _stress_rows(url: str) -> list[dict]:
    engine = connect(url)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(ledger)).mappings()]
