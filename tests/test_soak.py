"""The chaos soak, short: one minute of injected faults against the whole system, every check passing.

`overseer bench soak --minutes N` runs the lab, the stress harness and Dagster (code server, daemon,
webserver) as separate processes, launches ticks, and injects replica kills, hangs, slowdowns and
flapping, a scripted mind answering garbage (some with planted secrets) and timing out, a competing
writer on the store, a SIGKILLed daemon, a gateway restart and a doubly submitted approval
(overseer_dagster/bench/soak.py). The longer run and its figures are in BENCHMARKS.md.

Also, without any process: how `check_external` attributes a failure to a gateway restart the soak
injected, and the restarts' plan.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from overseer_dagster.bench import soak
from overseer_dagster.core.demand import UsageRecord
from overseer_dagster.store import ledger

SINCE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
DOWN_AT = SINCE + timedelta(seconds=60)  # the restart's window, as the soak records it: 60 s to 66 s
BACK_AT = DOWN_AT + timedelta(seconds=6)


def restart() -> soak.FaultRecord:
    return soak.FaultRecord("gateway_restart", "gateway", DOWN_AT, BACK_AT, {"down_s": 5.0})


def failed(reason: str, *, started: datetime, latency_s: float, kind: str = "external") -> UsageRecord:
    """A failed request as the lab records it: `ts` when it started, `latency_s` until it failed."""
    return UsageRecord(ts=started, demand_kind=kind, latency_s=latency_s, outcome="failed", failure_reason=reason)


def test_a_request_the_injected_gateway_restart_cut_is_the_injections_doing(engine: Engine) -> None:
    ledger.record_usage(engine, [
        # A stream that started 20 s before the restart and was cut when the gateway went down.
        failed("gateway_down", started=DOWN_AT - timedelta(seconds=20), latency_s=20.3),
        # Refused at connect during the outage, and just after the soak saw the gateway back (the grace).
        failed("connect_error", started=DOWN_AT + timedelta(seconds=2), latency_s=0.001, kind="unlabeled"),
        failed("connect_error", started=BACK_AT + timedelta(seconds=0.5), latency_s=0.001),
    ])
    result = soak.check_external(engine, SINCE, [restart()])
    assert result["ok"] and result["value"] == 0, result
    assert result["cut_by_injected_gateway_restart"] == 3 and result["failed_total"] == 3


def test_outside_its_window_or_for_another_reason_a_failure_still_counts(engine: Engine) -> None:
    ledger.record_usage(engine, [
        # Refused at connect 3 s after the gateway was back: not the restart's doing.
        failed("connect_error", started=BACK_AT + timedelta(seconds=3), latency_s=0.001),
        # Cut by a gateway outage 2 s before this restart's window opened: no restart the soak injected.
        failed("gateway_down", started=DOWN_AT - timedelta(seconds=40), latency_s=38.0),
        # Failed within the window, but not in a way a restart fails a request: the product's doing.
        failed("queue_timeout", started=DOWN_AT - timedelta(seconds=27), latency_s=30.0),
        failed("upstream_error", started=DOWN_AT + timedelta(seconds=1), latency_s=0.5),
        # Within the window (its grace), attributed: the one exception here.
        failed("gateway_down", started=DOWN_AT - timedelta(seconds=3), latency_s=2.2),
    ])
    result = soak.check_external(engine, SINCE, [restart()])
    assert not result["ok"] and result["value"] == 4, result
    assert result["cut_by_injected_gateway_restart"] == 1
    assert result["counted_by_reason"] == {"connect_error": 1, "gateway_down": 1, "queue_timeout": 1,
                                           "upstream_error": 1}


def test_without_an_injected_restart_a_gateway_down_counts(engine: Engine) -> None:
    ledger.record_usage(engine, [failed("gateway_down", started=DOWN_AT, latency_s=1.0)])
    # Replica faults do not excuse it either, even on the same moment.
    kill = soak.FaultRecord("replica_kill", "replica-01", DOWN_AT, BACK_AT)
    result = soak.check_external(engine, SINCE, [kill])
    assert result["value"] == 1 and result["cut_by_injected_gateway_restart"] == 0, result


@pytest.mark.parametrize("minutes", [0.5, 1.0, 2.0, 10.0, 30.0])
def test_gateway_restarts_are_planned_from_the_seed_apart_and_inside_the_window(minutes: float) -> None:
    window = minutes * 60
    for seed in range(50):
        plan = soak.gateway_plan(random.Random(seed), window)
        assert plan == soak.gateway_plan(random.Random(seed), window)
        if window <= 120:
            assert len(plan) == 1, (seed, plan)  # in the shortest soak too
        else:
            assert 2 <= len(plan) <= math.ceil(window / 150), (seed, plan)  # a couple in ten minutes
        lo, hi = soak.GATEWAY_DOWN_SHORT_S if window <= 120 else soak.GATEWAY_DOWN_S
        for at, down in plan:
            assert lo <= down <= hi and at + down <= window - 10
        # Never two at once: the next is planned long after the last one could have ended (waiting included).
        for (at, down), (next_at, _) in zip(plan, plan[1:], strict=False):
            assert next_at > at + soak.GATEWAY_WAIT_FOR_REPLICA_FAULT_S + down + 30


@pytest.mark.daemon
@pytest.mark.lab
@pytest.mark.timeout(600)
# dagster-graphql's client calls gql the old way; nothing of ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")
def test_one_minute_of_faults_breaks_no_invariant() -> None:
    result = soak.run(1.0, seed=0)
    failed = {name: check for name, check in result["checks"].items() if not check["ok"]}
    assert "error" not in result, soak.format_result(result)
    assert result["checks"] and not failed, soak.format_result(result)
    faults = result["faults"]
    # Every kind of fault was injected at least once.
    for kind in ("replica_kill", "replica_hang", "replica_slow", "replica_flap", "db_lock", "daemon_kill",
                 "gateway_restart"):
        assert faults.get(kind, 0) >= 1, (kind, faults)
    assert faults["mind_garbage"] >= 1 and faults["mind_timeout"] >= 1, faults
    assert result["passed"]
