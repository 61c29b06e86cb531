"""Replay: recorded rule-mind ticks re-decide to exactly their journal rows; any edit is named."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from overseer_dagster import replay
from overseer_dagster.adapters.mind import MindAnswer, RuleMind
from overseer_dagster.cli import main
from overseer_dagster.core.context import DemandSummary, KindUsage, StressStatus
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.limits import Limits
from overseer_dagster.settings import TickSettings
from overseer_dagster.store import connect, db
from overseer_dagster.store.tables import decisions, ticks
from overseer_dagster.tick import run_tick

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)


def fleet(now: datetime, observed_at: datetime | None = None, n: int = 4, **overrides: dict) -> FleetSnapshot:
    at = (observed_at or now).isoformat()
    base = {"health": "healthy", "routing_state": "admitted", "inflight": 2, "external_inflight": 2,
            "max_inflight": 16, "itl_p90_s": 0.02, "observed_at": at}
    replicas = [dict(base, replica_id=f"r-{i}") for i in range(n)]
    for rid, fields in overrides.items():
        next(r for r in replicas if r["replica_id"] == rid.replace("_", "-")).update(fields)
    return FleetSnapshot.model_validate({"observed_at": at, "replicas": replicas})


def demand(now: datetime) -> DemandSummary:
    return DemandSummary(observed_at=now, window_s=60, last_row_at=now,
                         by_kind={"external": KindUsage(requests=40, prompt_tokens=4000, completion_tokens=900)})


class Scripted:
    name = "script"

    def __init__(self, raw: str) -> None:
        self.raw = raw

    def propose(self, ctx):  # noqa: ANN001, ANN201
        return MindAnswer(raw=self.raw)


def tick(engine, now, snapshot, *, mind=None, mode="autonomous", cfg=None, stress=None):  # noqa: ANN001, ANN201
    return run_tick(engine, now=now, settings=cfg or TickSettings(), enabled=True, mode=mode, fleet=snapshot,
                    fleet_problem=None if snapshot is not None else "fleet_unreachable: no answer",
                    demand=demand(now), stress=stress or StressStatus(), mind=mind or RuleMind())


def a_run_of_ticks(engine) -> list[str]:  # noqa: ANN001
    """Ticks covering every way the rule policy's decision is recorded; returns their outcomes."""
    at = [NOW + timedelta(minutes=i) for i in range(9)]
    busy = {f"r_{i}": {"inflight": 15, "external_inflight": 15} for i in range(4)}
    results = [
        tick(engine, at[0], fleet(at[0])),  # start stress
        tick(engine, at[1], fleet(at[1], r_1={"routing_state": "draining"}, r_2={"breaker_trips_30m": 3},
                                  r_3={"warm": False})),  # readmit, quarantine (gated), warm
        tick(engine, at[2], fleet(at[2], **busy), stress=StressStatus(pool_concurrency=4)),  # scale out, back off
        tick(engine, at[3], fleet(at[3]), mode="advisory"),
        tick(engine, at[4], fleet(at[4], r_3={"warm": False}), cfg=TickSettings(daily_bound=1)),  # daily bound
        tick(engine, at[5], None),  # fleet unavailable
        tick(engine, at[6], fleet(at[6], observed_at=at[6] - timedelta(hours=1)),
             stress=StressStatus(pool_concurrency=4)),  # stale view: stop stress
        # Two actions where the limits allow one: blocked.
        tick(engine, at[7], fleet(at[7], r_3={"warm": False}), cfg=TickSettings(limits=Limits(max_actions_per_tick=1))),
        tick(engine, at[8], fleet(at[8]), mind=Scripted('{"actions":[{"kind":"noop"}]}')),  # not the rule mind
    ]
    return [r.outcome for r in results]


def states(engine) -> set[str]:  # noqa: ANN001
    with engine.connect() as conn:
        return set(conn.execute(select(decisions.c.state)).scalars())


def test_a_run_of_ticks_replays_with_no_difference(engine) -> None:
    outcomes = a_run_of_ticks(engine)
    assert (outcomes.count("decided"), outcomes.count("skipped"), outcomes.count("blocked")) == (7, 1, 1)
    # The run exercised every way a decision is recorded.
    assert {"queued", "pending_approval", "advisory", "skipped", "blocked", "no_action"} <= states(engine)

    report = replay.replay(engine, SINCE)
    assert (report.count("matched"), report.count("differs"), report.count("not_replayable")) == (8, 0, 1)
    assert not report.differs
    [other] = report.public()["results"]
    assert (other["status"], other["reason"]) == ("not_replayable", "mind=script")


def _first_tick(engine) -> dict:  # noqa: ANN001
    with engine.connect() as conn:
        return dict(conn.execute(select(ticks).order_by(ticks.c.started_at).limit(1)).mappings().one())


def _retamper_context(engine, tick_id: str, edit, *, fix_digest: bool) -> None:  # noqa: ANN001
    from overseer_dagster.core.context import digest_of

    with engine.begin() as conn:
        context = json.loads(conn.execute(select(ticks.c.context_json).where(ticks.c.tick_id == tick_id)).scalar_one())
        edit(context)
        text = json.dumps(context, sort_keys=True, separators=(",", ":"))
        values = {"context_json": text, **({"context_digest": digest_of(text)} if fix_digest else {})}
        conn.execute(update(ticks).where(ticks.c.tick_id == tick_id).values(**values))


def _drain_r0(context: dict) -> None:
    context["fleet"]["replicas"][0]["routing_state"] = "draining"


@pytest.mark.parametrize("fix_digest", [False, True])
def test_an_edited_context_is_reported_with_the_decision_it_changes(engine, fix_digest: bool) -> None:
    a_run_of_ticks(engine)
    first = _first_tick(engine)
    _retamper_context(engine, first["tick_id"], _drain_r0, fix_digest=fix_digest)

    report = replay.replay(engine, SINCE)
    assert report.differs and report.count("differs") == 1
    [result] = [r for r in report.public()["results"] if r["status"] == "differs"]
    assert result["tick_id"] == first["tick_id"]
    what = [d["what"] for d in result["differences"]]
    assert "context_digest" in what  # the tick's digest, or the rows' digest when the tick's was rewritten
    [decision] = [d for d in result["differences"] if d["what"] == "decision" and d["row"] == 0]
    # The edited fleet has a drained, healthy replica: the rule policy would now readmit it first.
    assert decision["replayed"]["kind"] == "readmit_replica"
    assert decision["recorded"]["kind"] != "readmit_replica"


def test_an_edit_that_leaves_the_decision_alone_is_still_named(engine) -> None:
    a_run_of_ticks(engine)
    first = _first_tick(engine)

    def slower_ttft(context: dict) -> None:
        context["fleet"]["replicas"][0]["ttft_p50_s"] = 9.0

    _retamper_context(engine, first["tick_id"], slower_ttft, fix_digest=False)
    [result] = [r for r in replay.replay(engine, SINCE).public()["results"] if r["status"] == "differs"]
    assert [d["what"] for d in result["differences"]] == ["context_digest"]


@pytest.mark.parametrize(("column", "value"), [
    ("state", "pending_approval"), ("reason", "daily_bound"), ("kind", "stop_stress"),
    ("action_json", '{"concurrency":64,"duration_s":180,"kind":"start_stress"}'),
])
def test_an_edited_decision_row_is_reported_at_that_row(engine, column: str, value: str) -> None:
    a_run_of_ticks(engine)
    first = _first_tick(engine)
    with engine.begin() as conn:
        seq = conn.execute(select(decisions.c.seq).where(decisions.c.tick_id == first["tick_id"])
                           .order_by(decisions.c.seq).limit(1)).scalar_one()
        conn.execute(update(decisions).where(decisions.c.seq == seq).values(**{column: value}))

    [result] = [r for r in replay.replay(engine, SINCE).public()["results"] if r["status"] == "differs"]
    [difference] = result["differences"]
    assert (difference["what"], difference["row"], difference["fields"]) == ("decision", 0, [column])
    # The private action JSON is shown as a digest prefix only.
    assert "concurrency" not in json.dumps(result)


def test_a_deleted_decision_row_is_a_missing_row(engine) -> None:
    a_run_of_ticks(engine)
    first = _first_tick(engine)
    with engine.begin() as conn:
        conn.execute(decisions.delete().where(decisions.c.tick_id == first["tick_id"]))
    [result] = [r for r in replay.replay(engine, SINCE).public()["results"] if r["status"] == "differs"]
    assert result["differences"][0]["recorded"] is None and result["differences"][0]["replayed"] is not None


def test_a_tick_without_recorded_decision_inputs_is_not_guessed(engine) -> None:
    a_run_of_ticks(engine)
    first = _first_tick(engine)
    with engine.begin() as conn:
        conn.execute(update(ticks).where(ticks.c.tick_id == first["tick_id"]).values(decision_inputs_json=None))
    report = replay.replay(engine, SINCE)
    assert not report.differs
    reasons = {r["reason"] for r in report.public()["results"]}
    assert reasons == {"decision_inputs_not_recorded", "mind=script"}


def test_only_ticks_since_the_given_time_are_replayed(engine) -> None:
    a_run_of_ticks(engine)
    assert len(replay.replay(engine, NOW + timedelta(minutes=7)).ticks) == 2
    assert replay.replay(engine, NOW + timedelta(hours=1)).ticks == []


# --- the command ---------------------------------------------------------------------------------


def test_the_command_exits_0_when_nothing_differs_and_1_naming_the_tick_when_something_does(capsys) -> None:
    engine = connect()
    a_run_of_ticks(engine)
    since = ["--since", SINCE.isoformat().replace("+00:00", "Z")]
    assert main(["replay", *since, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ticks"], out["matched"], out["differs"], out["not_replayable"]) == (9, 8, 0, 1)

    first = _first_tick(engine)
    _retamper_context(engine, first["tick_id"], _drain_r0, fix_digest=True)
    assert main(["replay", *since, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["differs"] == 1 and out["results"][0]["tick_id"] == first["tick_id"]

    assert main(["replay", *since]) == 1
    text = capsys.readouterr().out
    assert f"{first['tick_id']} DIFFERS" in text and "replayed queued readmit_replica" in text


def test_the_command_refuses_a_time_it_cannot_read(capsys) -> None:
    assert main(["replay", "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - timedelta(hours=2)),
    ("90m", NOW - timedelta(minutes=90)),
    ("1.5d", NOW - timedelta(hours=36)),
    ("30s", NOW - timedelta(seconds=30)),
    ("1w", NOW - timedelta(days=7)),
    ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T11:00:00+01:00", datetime(2026, 12, 3, 10, tzinfo=UTC)),
])
def test_since_is_a_duration_or_an_rfc3339_time(text: str, expected: datetime) -> None:
    assert replay.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "2026-12-03T10:00:00", "", "h"])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        replay.parse_since(text, NOW)


# --- any fleet -----------------------------------------------------------------------------------

_REPLICA = st.fixed_dictionaries({
    "health": st.sampled_from(["healthy", "healthy", "healthy", "unhealthy", "unknown"]),
    "routing_state": st.sampled_from(["admitted", "admitted", "admitted", "draining", "quarantined"]),
    "warm": st.booleans(),
    "external_inflight": st.integers(0, 16),
    "queue_depth": st.integers(0, 4),
    "stress_inflight": st.integers(0, 4),
    "itl_p90_s": st.none() | st.floats(0.001, 0.5),
    "breaker_trips_30m": st.integers(0, 4),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replicas=st.lists(_REPLICA, min_size=0, max_size=12),
    mode=st.sampled_from(["autonomous", "advisory"]),
    daily_bound=st.integers(0, 4),
    stress=st.integers(0, 8),
    second=st.integers(0, 59),
    age_s=st.sampled_from([0, 30, 600]),
)
def test_any_recorded_rule_tick_replays_to_its_rows(replicas: list[dict], mode: str, daily_bound: int, stress: int,
                                                    second: int, age_s: int) -> None:
    now = NOW.replace(minute=second % 30, second=second)
    observed = (now - timedelta(seconds=age_s)).isoformat()
    snapshot = FleetSnapshot.model_validate({"observed_at": observed, "replicas": [
        {**r, "replica_id": f"r-{i}", "max_inflight": 16, "observed_at": observed,
         "inflight": r["external_inflight"] + r["stress_inflight"]} for i, r in enumerate(replicas)]})
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'store.db'}"
        engine = db.connect(url)
        try:
            tick(engine, now, snapshot, mode=mode, cfg=TickSettings(daily_bound=daily_bound),
                 stress=StressStatus(pool_concurrency=stress))
            report = replay.replay(engine, now - timedelta(minutes=1))
        finally:
            db._engines.pop(url, None)
            engine.dispose()
    assert [t.status for t in report.ticks] == ["matched"], report.public()
