"""The CLI contracts, exactly as a script calling `overseer` sees them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

OVERSEER = [sys.executable, "-m", "overseer_dagster.cli"]


def run(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*OVERSEER, *args], input=stdin, capture_output=True, text=True, timeout=120, env=env)


def test_validate_proposal_valid() -> None:
    raw = json.dumps({"actions": [
        {"kind": "noop"}, {"kind": "stop_stress"},
        {"kind": "wallet_spend", "amount_sats": 10, "purpose": "provider_invoice", "payee_ref": "payee-a"},
    ]})
    p = run("validate-proposal", stdin=raw)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"verdict": "valid", "reason": None, "actions": [
        {"kind": "noop", "effect": "none"}, {"kind": "stop_stress", "effect": "execute"},
        {"kind": "wallet_spend", "effect": "pending_gate"},
    ]}


def test_validate_proposal_blocked_exits_zero() -> None:
    p = run("validate-proposal", stdin='{"actions": []}')
    assert p.returncode == 0
    assert json.loads(p.stdout) == {"verdict": "blocked", "reason": "schema_invalid", "actions": []}


def test_validate_proposal_reads_a_file(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('{"actions":[{"kind":"noop"}]}')
    assert json.loads(run("validate-proposal", "--file", str(f)).stdout)["verdict"] == "valid"


def test_validate_proposal_jsonl_keeps_ids_and_order() -> None:
    lines = [{"id": 1, "raw": '{"actions":[{"kind":"noop"}]}'}, {"id": "b", "raw": "nonsense"}]
    p = run("validate-proposal", "--jsonl", stdin="\n".join(json.dumps(x) for x in lines))
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(o["id"], o["verdict"]) for o in out] == [(1, "valid"), ("b", "blocked")]
    assert set(out[1]) == {"id", "verdict", "reason", "actions"}


def test_validate_proposal_jsonl_bad_line_is_a_usage_error_that_loses_nothing() -> None:
    stdin = '{"id": 1, "raw": "{}"}\nnot json\n{"id": 3, "raw": "{\\"actions\\":[{\\"kind\\":\\"noop\\"}]}"}\n'
    p = run("validate-proposal", "--jsonl", stdin=stdin)
    assert p.returncode == 2
    assert "line(s) 2" in p.stderr
    assert [json.loads(x)["id"] for x in p.stdout.splitlines()] == [1, 3]


def test_validate_proposal_with_context(tmp_path: Path) -> None:
    snapshot = {"observed_at": "2026-12-03T12:00:00Z", "replicas": [
        {"replica_id": "r-1", "health": "healthy", "routing_state": "draining", "inflight": 0,
         "max_inflight": 8, "observed_at": "2026-12-03T12:00:00Z"}]}
    ctx = tmp_path / "fleet.json"
    ctx.write_text(json.dumps(snapshot))
    ok = run("validate-proposal", "--context", str(ctx), stdin='{"actions":[{"kind":"readmit_replica","replica_id":"r-1"}]}')
    unknown = run("validate-proposal", "--context", str(ctx), stdin='{"actions":[{"kind":"readmit_replica","replica_id":"r-2"}]}')
    assert json.loads(ok.stdout)["verdict"] == "valid"
    assert json.loads(unknown.stdout) == {"verdict": "blocked", "reason": "context_invalid", "actions": []}


def test_usage_errors_exit_two() -> None:
    assert run("validate-proposal", "--bogus").returncode == 2
    missing = run("validate-proposal", "--file", "/nonexistent/proposal.json")
    assert missing.returncode == 2 and "proposal.json" in missing.stderr


def test_redact_plain_and_jsonl() -> None:
    assert "10.1.2.3" not in run("redact", stdin="upstream 10.1.2.3:8000 refused\n").stdout
    p = run("redact", "--jsonl", stdin='{"id": 7, "text": "origin http://gpu-7.internal:8000/v1"}\n')
    out = json.loads(p.stdout)
    assert out["id"] == 7 and "gpu-7.internal" not in out["text"]


@pytest.mark.parametrize("command", [
    ["validate-proposal"], ["redact"],
])
def test_fast_commands_never_import_dagster(command: list[str]) -> None:
    code = (
        "import sys, io; sys.stdin = io.StringIO('{\"actions\":[{\"kind\":\"noop\"}]}');"
        "from overseer_dagster.cli import main; main(%r);"
        "assert 'dagster' not in sys.modules, 'dagster imported'" % (command,)
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_tick_once_runs_the_job_and_prints_its_rows(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, OVERSEER_HOME=str(tmp_path / "home"))
    env.pop("DAGSTER_HOME", None)
    p = run("tick", "--once", "--json", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["success"] is True
    assert {r["state"] for r in out["rows"]} <= {"queued", "pending_approval", "no_action"}
    assert out["rows"], "a tick always records at least one row"
    again = json.loads(run("tick", "--once", "--json", env=env).stdout)
    assert [(r["state"], r["reason"]) for r in again["rows"]] == [("skipped", "cadence")]
