"""The audit chain: any edit to any stored journal row is caught at that row, and `overseer audit`
says so (exit 1, the seq named); `audit tail` shows only public columns, scrubbed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from dispatch_fixtures import Clock, StaticFleet, queue, replica, snapshot, store_actuators
from sqlalchemy import update

from overseer_dagster import dispatch
from overseer_dagster.store import journal
from overseer_dagster.store.tables import decisions


def audit(store_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OVERSEER_DATABASE_URL": store_url}
    return subprocess.run([sys.executable, "-m", "overseer_dagster.cli", "audit", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def seeded(engine) -> list[dict]:  # noqa: ANN001
    """A short journal: decisions and every kind of outcome row."""
    fleet = StaticFleet(snapshot(replica("r-0")))
    for action in ({"kind": "stop_stress"}, {"kind": "readmit_replica", "replica_id": "r-0"},
                   {"kind": "emit_report", "topic": "health", "summary": "all well"}):
        action_id = queue(engine, action)
        dispatch.dispatch_action(engine, action_id, run_id="run", clock=Clock(), enabled=True, mode="autonomous",
                                 cadence_s=60, fleet=fleet, actuators=store_actuators(engine))
    return journal.tail(engine, 1000)


# Every stored column and a value that differs from anything seeded.
EDITS = {
    "entry_id": "00000000-0000-0000-0000-000000000000", "phase": None, "tick_id": "t", "state": "succeeded!",
    "reason": "edited", "detail": "edited", "kind": "wallet_spend", "authority": "gated",
    "action_id": "a", "gate_id": "g", "action_json": "{}", "context_digest": "c" * 64, "raw_digest": "d" * 64,
    "raw_excerpt": "edited", "prev_hash": "e" * 64, "row_hash": "f" * 64, "created_at": None,
}


@pytest.mark.parametrize("column", sorted(EDITS))
def test_editing_any_column_of_any_row_breaks_the_chain_at_that_row(engine, column: str) -> None:
    rows = seeded(engine)
    assert journal.verify(engine).ok
    for victim in (rows[0], rows[len(rows) // 2], rows[-1]):
        value = EDITS[column]
        if column == "phase":
            value = "outcome" if victim["phase"] == "decision" else "decision"
        if column == "created_at":
            value = victim["created_at"] + timedelta(seconds=1)
        with engine.begin() as conn:
            conn.execute(update(decisions).where(decisions.c.seq == victim["seq"]).values({column: value}))
        report = journal.verify(engine)
        assert (report.ok, report.broken_seq) == (False, victim["seq"]), column
        with engine.begin() as conn:  # put it back: the chain holds again
            conn.execute(update(decisions).where(decisions.c.seq == victim["seq"]).values({column: victim[column]}))
        assert journal.verify(engine).ok


def test_deleting_the_newest_row_is_caught(engine) -> None:
    rows = seeded(engine)
    with engine.begin() as conn:
        conn.execute(decisions.delete().where(decisions.c.seq == rows[-1]["seq"]))
    assert journal.verify(engine).broken_seq == rows[-1]["seq"]


def test_audit_verify_exits_1_naming_the_edited_row(engine, store_url) -> None:
    rows = seeded(engine)
    ok = audit(store_url, "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"intact: {len(rows)} rows" in ok.stdout
    victim = rows[2]
    with engine.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.seq == victim["seq"]).values(detail="nothing happened"))
    broken = audit(store_url, "verify")
    assert broken.returncode == 1
    assert f"seq {victim['seq']}" in broken.stdout
    as_json = json.loads(audit(store_url, "verify", "--json").stdout)
    assert (as_json["ok"], as_json["broken_seq"]) == (False, victim["seq"])


def test_audit_tail_shows_public_columns_scrubbed(engine, store_url) -> None:
    seeded(engine)
    with engine.begin() as conn:  # a detail that leaked an address and a key
        conn.execute(update(decisions).where(decisions.c.seq == 1).values(
            detail="gateway http://10.1.2.3:8000 key " + "sk-" + "abcdefghijklmnopqrstuvwx1234"))
    p = audit(store_url, "tail", "--json", "-n", "100")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert all(set(r) == set(journal.PUBLIC_FIELDS) for r in rows)
    text = p.stdout
    assert "action_json" not in text and "raw_excerpt" not in text
    assert "10.1.2.3" not in text and "sk-abcdefghijklmnop" not in text
    assert len(audit(store_url, "tail", "-n", "2").stdout.splitlines()) == 2


def test_audit_tail_shows_one_line_per_row_and_json_the_whole_detail(engine, store_url) -> None:
    rows = seeded(engine)
    long = "upstream said:\n" + " ".join(f"attempt {i} got HTTP 503." for i in range(30))
    with engine.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.seq == rows[-1]["seq"]).values(detail=long))
    table = audit(store_url, "tail", "-n", "1").stdout.splitlines()
    assert len(table) == 1 and "upstream said: attempt 0 got HTTP 503." in table[0] and table[0].endswith(" ...")
    assert "attempt 29" not in table[0]
    [as_json] = [json.loads(line) for line in audit(store_url, "tail", "--json", "-n", "1").stdout.splitlines()]
    assert as_json["detail"] == long


def test_dispatch_outcomes_extend_the_chain(engine) -> None:
    rows = seeded(engine)
    assert [r["state"] for r in rows if r["phase"] == "outcome"] == [
        "dispatching", "succeeded", "dispatching", "precondition_failed", "dispatching", "succeeded"]
    assert journal.verify(engine).ok
