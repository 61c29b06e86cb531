"""One tick, as a user of the store sees it: every outcome is a row; invalid output acts on nothing."""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from overseer_dagster import settings
from overseer_dagster.adapters.mind import MindAnswer, RuleMind
from overseer_dagster.core.context import StressStatus
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.limits import Limits
from overseer_dagster.settings import TickSettings
from overseer_dagster.store import journal
from overseer_dagster.store.tables import actions, gates
from overseer_dagster.tick import run_tick

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)


def fleet(now: datetime = NOW, **overrides) -> FleetSnapshot:
    base = {"health": "healthy", "routing_state": "admitted", "inflight": 0, "max_inflight": 16,
            "observed_at": now.isoformat()}
    replicas = [dict(base, replica_id=f"r-{i}") for i in range(3)]
    for rid, fields in overrides.items():
        next(r for r in replicas if r["replica_id"] == rid).update(fields)
    return FleetSnapshot.model_validate({"observed_at": now.isoformat(), "replicas": replicas})


class Scripted:
    name = "script"

    def __init__(self, raw: str | None, unavailable: str | None = None) -> None:
        self.answer = MindAnswer(raw=raw, unavailable=unavailable)

    def propose(self, ctx):  # noqa: ANN001, ANN201
        return self.answer


def tick(engine, mind=None, *, now=NOW, snapshot=..., enabled=True, mode="autonomous", cfg=None, problem=None):  # noqa: ANN001, ANN201
    return run_tick(
        engine, now=now, settings=cfg or TickSettings(), enabled=enabled, mode=mode,
        fleet=fleet(now) if snapshot is ... else snapshot, fleet_problem=problem, demand=None,
        stress=StressStatus(), mind=mind or RuleMind(),
    )


def count(engine, table) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_disabled_tick_writes_one_disabled_row_and_nothing_else(engine) -> None:
    result = tick(engine, Scripted('{"actions":[{"kind":"stop_stress"}]}'), enabled=False)
    assert [r["state"] for r in result.rows] == ["disabled"]
    assert count(engine, actions) == 0


@pytest.mark.parametrize("raw", [
    '{"actions":[{"kind":"stop_stress"},{"kind":"start_stress","concurrency":"8","duration_s":60}]}',
    '{"actions":[{"kind":"request_scale_out","gpu_class":"h100","count":1,"max_hourly_usd":5,'
    '"rollback":{"action":"scale_in","after_s":600},"approved":true}]}',
    "I think we should scale out. " + "x" * 5000,
])
def test_schema_invalid_output_blocks_and_queues_nothing_and_opens_no_gate(engine, raw: str) -> None:
    result = tick(engine, Scripted(raw))
    [row] = result.rows
    assert row["state"] == "blocked" and row["reason"] == "schema_invalid"
    assert row["raw_digest"] and len(row["raw_excerpt"]) <= 1000
    assert raw not in (row["raw_excerpt"] or "") or len(raw) <= 1000
    assert count(engine, actions) == 0 and count(engine, gates) == 0


def test_a_blocked_rows_excerpt_is_scrubbed(engine) -> None:
    key = "sk-" + "proj-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48))
    raw = f"Sure! I used Authorization: Bearer {key} and 10.1.2.3:8000 to check. Scale out now."
    [row] = tick(engine, Scripted(raw)).rows
    assert row["state"] == "blocked" and row["raw_digest"] == hashlib.sha256(raw.encode()).hexdigest()
    assert "Sure! I used" in row["raw_excerpt"]
    assert key not in row["raw_excerpt"] and key[:12] not in row["raw_excerpt"] and "10.1.2.3" not in row["raw_excerpt"]


def test_context_invalid_blocks_the_whole_proposal(engine) -> None:
    raw = json.dumps({"actions": [{"kind": "stop_stress"}, {"kind": "readmit_replica", "replica_id": "r-9"}]})
    [row] = tick(engine, Scripted(raw)).rows
    assert (row["state"], row["reason"]) == ("blocked", "context_invalid")
    assert count(engine, actions) == 0


def test_valid_proposal_queues_autonomous_and_gates_risky_actions(engine) -> None:
    raw = json.dumps({"actions": [
        {"kind": "stop_stress"},
        {"kind": "quarantine_replica", "replica_id": "r-1", "reason_code": "error_rate",
         "rollback": {"action": "readmit_replica", "replica_id": "r-1"}},
        {"kind": "noop"},
    ]})
    rows = tick(engine, Scripted(raw)).rows
    assert [r["state"] for r in rows] == ["queued", "pending_approval", "no_action"]
    assert rows[1]["gate_id"] and rows[1]["authority"] == "gated"
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(actions.c.kind, actions.c.status)).all())
    assert statuses == {"stop_stress": "queued", "quarantine_replica": "gated"}


@pytest.mark.parametrize(("classes", "expected"), [
    (("b200",), [("request_scale_out", "pending_approval"), ("back_off_stress", "queued")]),
    ((), [("back_off_stress", "queued")]),
])
def test_the_rule_policy_asks_only_for_a_configured_gpu_class(engine, classes, expected) -> None:  # noqa: ANN001
    # A full fleet with stress running: the rule mind asks for capacity and backs stress off. Asking for a
    # class the operator did not configure would block the whole proposal, the back-off with it.
    at = NOW + timedelta(minutes=3)  # no periodic report in the way
    full = fleet(at, **{f"r-{i}": {"inflight": 16, "external_inflight": 16} for i in range(3)})
    cfg = TickSettings(limits=Limits(gpu_classes=classes), scale_out_max_hourly_usd=30.0)
    result = run_tick(engine, now=at, settings=cfg, enabled=True, mode="autonomous", fleet=full,
                      fleet_problem=None, demand=None, stress=StressStatus(pool_concurrency=4), mind=RuleMind())
    assert [(r["kind"], r["state"]) for r in result.rows] == expected
    with engine.connect() as conn:
        asked = conn.execute(select(actions.c.action_json).where(actions.c.kind == "request_scale_out")).scalars()
        assert [(json.loads(a)["gpu_class"], json.loads(a)["max_hourly_usd"]) for a in asked] == [
            (c, 30.0) for c in classes]
    assert count(engine, gates) == len(classes)


def test_repeated_gated_proposal_points_at_the_open_gate(engine) -> None:
    raw = json.dumps({"actions": [{"kind": "quarantine_replica", "replica_id": "r-1", "reason_code": "error_rate",
                                   "rollback": {"action": "readmit_replica", "replica_id": "r-1"}}]})
    first = tick(engine, Scripted(raw)).rows[0]
    second = tick(engine, Scripted(raw), now=NOW + timedelta(minutes=1)).rows[0]
    assert first["gate_id"] == second["gate_id"]
    assert count(engine, gates) == 1


def test_tick_within_cadence_is_skipped(engine) -> None:
    tick(engine)
    [row] = tick(engine, now=NOW + timedelta(seconds=20)).rows
    assert (row["state"], row["reason"]) == ("skipped", "cadence")
    assert tick(engine, now=NOW + timedelta(seconds=60)).outcome == "decided"


def test_a_tick_holding_the_lease_keeps_others_from_deciding(engine) -> None:
    from overseer_dagster.store import ticks, write_tx

    with write_tx(engine) as conn:
        assert ticks.acquire_lease(conn, "someone-else", NOW, 300)
    [row] = tick(engine).rows
    assert (row["state"], row["reason"]) == ("skipped", "cadence")
    # An expired lease is taken over.
    assert tick(engine, now=NOW + timedelta(seconds=301)).outcome == "decided"


def test_malformed_fleet_snapshot_records_skipped_with_the_problem(engine) -> None:
    [row] = tick(engine, snapshot=None, problem="fleet_snapshot_invalid: replicas.0.inflight: must be >= 0").rows
    assert (row["state"], row["reason"]) == ("skipped", "fleet_unavailable")
    assert "replicas.0.inflight" in row["detail"]


@pytest.mark.parametrize("reason", ["mind_unavailable", "mind_unconfigured"])
def test_mind_without_an_answer_records_skipped(engine, reason: str) -> None:
    [row] = tick(engine, Scripted(None, unavailable=reason)).rows
    assert (row["state"], row["reason"]) == ("skipped", reason)


def test_daily_bound_skips_autonomous_actions_beyond_it(engine) -> None:
    raw = json.dumps({"actions": [{"kind": "stop_stress"}] * 3})
    rows = tick(engine, Scripted(raw), cfg=TickSettings(daily_bound=2)).rows
    assert [(r["state"], r["reason"]) for r in rows] == [("queued", None), ("queued", None), ("skipped", "daily_bound")]


def test_advisory_mode_records_and_queues_nothing(engine) -> None:
    rows = tick(engine, Scripted('{"actions":[{"kind":"stop_stress"}]}'), mode="advisory").rows
    assert [r["state"] for r in rows] == ["advisory"]
    assert count(engine, actions) == 0


def test_every_tick_outcome_extends_a_verifiable_chain(engine) -> None:
    tick(engine, enabled=False)
    tick(engine, Scripted("garbage"))
    tick(engine, now=NOW + timedelta(minutes=2))
    assert journal.verify(engine).ok


@pytest.mark.parametrize("value,expected", [
    (None, True), ("1", True), ("TRUE", True), ("Yes", True), ("on", True),
    ("0", False), ("False", False), ("NO", False), ("off", False),
])
def test_kill_switch_values(value, expected) -> None:  # noqa: ANN001
    env = {} if value is None else {"OVERSEER_ENABLED": value}
    assert settings.enabled(env) is expected


@pytest.mark.parametrize("value", ["", "2", "enable", "tru"])
def test_kill_switch_refuses_anything_else_naming_the_variable(value: str) -> None:
    with pytest.raises(settings.ConfigError, match="OVERSEER_ENABLED"):
        settings.enabled({"OVERSEER_ENABLED": value})


def test_the_scale_out_ceiling_is_configured_and_checked_naming_the_variable() -> None:
    assert TickSettings.from_env({}).scale_out_max_hourly_usd == 12.0
    assert TickSettings.from_env({"OVERSEER_SCALE_OUT_MAX_HOURLY_USD": "30"}).scale_out_max_hourly_usd == 30.0
    for bad in ("0", "-5", "501", "nan", "inf", "lots"):
        with pytest.raises(settings.ConfigError, match="OVERSEER_SCALE_OUT_MAX_HOURLY_USD"):
            TickSettings.from_env({"OVERSEER_SCALE_OUT_MAX_HOURLY_USD": bad})
