"""Stress in the store: its ledger rows (batched, kept through an outage), goodput, and targets read with the dead-man."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from overseer_dagster.core.context import DemandSummary, KindUsage
from overseer_dagster.core.demand import DemandKind, Outcome, UsageRecord
from overseer_dagster.defs.assets import fleet_throughput
from overseer_dagster.defs.resources import StoreResource
from overseer_dagster.store import ledger, write_tx
from overseer_dagster.store.targets import set_target
from overseer_dagster.stress.control import TargetFollower, store_reader
from overseer_dagster.stress.ledger import LedgerBatcher

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def record(kind: DemandKind, *, tokens: int = 100, itl: float | None = 0.05, outcome: Outcome = Outcome.ok,
           at: datetime = NOW - timedelta(seconds=10)) -> UsageRecord:
    return UsageRecord(ts=at, demand_kind=kind, replica_id="r-0", prompt_tokens=tokens // 2,
                       completion_tokens=tokens - tokens // 2, itl_s=itl, outcome=outcome,
                       failure_reason=None if outcome is Outcome.ok else "x")


def test_goodput_counts_only_requests_that_met_the_itl_slo(engine: Engine) -> None:
    ledger.record_usage(engine, [
        record(DemandKind.external, tokens=600),
        record(DemandKind.external, tokens=300, itl=0.2),  # too slow
        record(DemandKind.external, tokens=60, itl=None),  # one token: no ITL, met
        record(DemandKind.external, tokens=900, outcome=Outcome.failed),
        record(DemandKind.internal_stress, tokens=1200),
        record(DemandKind.internal_stress, tokens=500, outcome=Outcome.preempted),
        record(DemandKind.external, tokens=6000, at=NOW - timedelta(seconds=90)),  # outside the window
    ])
    assert ledger.goodput(engine, NOW, 60, 0.1) == {"external": 11.0, "internal_stress": 20.0}


def test_fleet_throughput_reports_tokens_per_second_by_kind_and_goodput(engine: Engine, store_url: str) -> None:
    ledger.record_usage(engine, [record(DemandKind.external, tokens=600, itl=0.2),
                                 record(DemandKind.internal_stress, tokens=1200)])
    summary = DemandSummary(observed_at=NOW, window_s=60, by_kind={
        DemandKind.external: KindUsage(requests=1, prompt_tokens=300, completion_tokens=300),
        DemandKind.internal_stress: KindUsage(requests=1, prompt_tokens=600, completion_tokens=600),
    })
    out = fleet_throughput(external_demand=summary, store=StoreResource(database_url=store_url))
    assert out.value["external"] == 10.0 and out.value["internal_stress"] == 20.0
    assert out.value["goodput_external"] == 0.0  # its ITL missed the SLO
    assert out.value["goodput_internal_stress"] == 20.0
    meta = {k: getattr(v, "value", v) for k, v in out.metadata.items()}
    assert meta["tokens_per_s_all"] == 30.0
    assert meta["goodput_tokens_per_s_all"] == 20.0
    assert "projection_withheld" not in meta


def test_the_batcher_writes_in_batches_and_keeps_records_through_an_outage() -> None:
    async def scenario() -> None:
        written: list[list[UsageRecord]] = []
        down = True

        def sink(batch):  # noqa: ANN001, ANN202
            if down:
                raise ConnectionError("store down")
            written.append(list(batch))

        b = LedgerBatcher(sink, max_pending=3)
        for _ in range(2):
            b.add(record(DemandKind.internal_stress))
        await b.flush()
        assert written == [] and b.write_failures == 1
        for _ in range(2):
            b.add(record(DemandKind.internal_stress))
        assert b.dropped == 1  # bounded: the oldest goes
        down = False
        await b.flush()
        assert [len(w) for w in written] == [3] and b.written == 3

    asyncio.run(scenario())


def test_store_targets_follow_the_newest_row_and_the_dead_man(engine: Engine, store_url: str) -> None:
    with write_tx(engine) as conn:
        set_target(conn, replica_id=None, concurrency=6, now=NOW, expires_at=NOW + timedelta(minutes=3))
        set_target(conn, replica_id="r-1", concurrency=2, now=NOW, expires_at=NOW + timedelta(minutes=3))
    read = store_reader(store_url)
    follower = TargetFollower(cadence_s=60)
    at = NOW + timedelta(seconds=30)
    follower.observe(*read(at), at)
    assert follower.targets(at, ["r-0", "r-1"]) == {"r-0": 6, "r-1": 2}
    later = NOW + timedelta(seconds=121)  # no target written for two cadences
    follower.observe(*read(later), later)
    assert follower.targets(later, ["r-0", "r-1"]) == {"r-0": 0, "r-1": 0}


def test_an_unreachable_store_raises_for_the_harness_to_keep_its_last_targets(tmp_path) -> None:  # noqa: ANN001
    read = store_reader("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(Exception):  # noqa: B017, PT011 - any driver error: the harness treats them alike
        read(NOW)
