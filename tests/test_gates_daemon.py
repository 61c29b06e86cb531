"""The whole story with real Dagster processes (code server, daemon, webserver) and the lab: a quarantine
gate does nothing until `overseer approve` with a registered key; then it executes once; a wrong key and
a replayed approval are refused; `overseer rollback` brings the replica back. The tick schedule stays
stopped throughout: approved gates do not need the autonomous loop."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gate_fixtures import open_gate

from overseer_dagster import cli
from overseer_dagster.adapters.fleet_source import SnapshotSource
from overseer_dagster.deploy import Deployment
from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config
from overseer_dagster.receipts import add_to_registry, generate_key, registry_entry, write_private_key
from overseer_dagster.store import actions, connect, gates, journal

pytestmark = [pytest.mark.daemon, pytest.mark.lab,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*")]


def wait_for(condition, timeout_s: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_a_quarantine_gate_waits_for_a_signed_approval_then_executes_once(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    alice, mallory = generate_key(), generate_key()
    write_private_key(alice, tmp_path / "alice.pem")
    write_private_key(mallory, tmp_path / "mallory.pem")
    add_to_registry(tmp_path / "operators.json", registry_entry("alice", alice))
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    with BackgroundLab(fast_lab_config(3)) as lab:
        source = SnapshotSource(f"{lab.gateway_url}/fleet/state")
        env = {"OVERSEER_DATABASE_URL": store_url, "OVERSEER_HOME": str(tmp_path / "home"),
               "OVERSEER_OPERATORS": str(tmp_path / "operators.json"),
               "OVERSEER_FLEET_SOURCE": f"snapshot:{lab.gateway_url}/fleet/state"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        engine = connect(store_url)
        now = datetime.now(UTC)
        gate = open_gate(engine, {"kind": "quarantine_replica", "replica_id": "replica-01",
                                  "reason_code": "health_check_failed",
                                  "rollback": {"action": "readmit_replica", "replica_id": "replica-01"}},
                         snap=source.snapshot(now), now=now)

        def routing() -> str:
            return next(r.routing_state.value for r in source.snapshot(datetime.now(UTC)).replicas
                        if r.replica_id == "replica-01")

        with Deployment(tmp_path / "dagster", env=env) as dagster:
            dagster.start_webserver()
            url = dagster.webserver_url
            capsys.readouterr()
            assert cli.main(["gates", "--json"]) == 0
            [listed] = json.loads(capsys.readouterr().out)["gates"]
            assert (listed["gate_id"], listed["kind"], listed["replica_id"]) == (gate["gate_id"],
                                                                                 "quarantine_replica", "replica-01")
            time.sleep(10)  # sensor ticks pass: a pending gate does nothing
            assert routing() == "admitted" and actions.get(engine, gate["action_id"])["status"] == "gated"

            assert cli.main(["approve", gate["gate_id"], "--key", str(tmp_path / "mallory.pem"),
                             "--operator", "alice", "--dagster", url]) == 1
            assert "approval refused (bad_signature)" in capsys.readouterr().err
            assert gates.get(engine, gate["gate_id"])["state"] == "pending"

            assert cli.main(["approve", gate["gate_id"], "--key", str(tmp_path / "alice.pem"),
                             "--operator", "alice", "--dagster", url, "--print-config"]) == 0
            signed = tmp_path / "approval.yaml"
            signed.write_text(capsys.readouterr().out)
            assert cli.main(["approve", gate["gate_id"], "--from-config", str(signed), "--dagster", url]) == 0
            assert wait_for(lambda: actions.get(engine, gate["action_id"])["status"] == "succeeded", 120), (
                actions.get(engine, gate["action_id"]), [s.log_tail() for s in dagster.services])
            assert routing() == "quarantined"
            assert gates.get(engine, gate["gate_id"])["state"] == "executed"

            capsys.readouterr()  # the same signed approval again
            assert cli.main(["approve", gate["gate_id"], "--from-config", str(signed), "--dagster", url]) == 1
            assert "approval refused (replayed)" in capsys.readouterr().err
            executed = [r for r in journal.tail(engine, 200) if r["action_id"] == gate["action_id"]
                        and r["state"] == "succeeded"]
            assert len(executed) == 1

            assert cli.main(["rollback", gate["gate_id"], "--key", str(tmp_path / "alice.pem"),
                             "--operator", "alice", "--dagster", url]) == 0
            assert routing() == "admitted"
