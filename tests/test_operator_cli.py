"""The operator's side: keys (`overseer operator keygen`), the registry the code location reads,
`overseer gates`, and `overseer approve --print-config` (the Launchpad's run config)."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime

import pytest
import yaml
from gate_fixtures import QUARANTINE, fleet, open_gate, wallet_spend

from overseer_dagster import approvals, cli
from overseer_dagster.approvals import SignedDecision
from overseer_dagster.receipts import OperatorRegistry, RegistryError, load_private_key, load_registry


def overseer(*argv: str) -> int:
    return cli.main(list(argv))


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_prints_the_registry_entry(tmp_path, capsys) -> None:
    assert overseer("operator", "keygen", "--name", "alice", "--out", str(tmp_path / "keys"),
                    "--registry", str(tmp_path / "operators.json")) == 0
    entry = json.loads(capsys.readouterr().out)
    key_file = tmp_path / "keys" / "alice.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert set(entry) == {"name", "public_key"} and entry["name"] == "alice"
    assert "PRIVATE" not in json.dumps(entry)
    registry = OperatorRegistry.load(tmp_path / "operators.json")
    assert "alice" in registry
    from overseer_dagster.receipts import public_key_b64

    assert public_key_b64(load_private_key(key_file)) == entry["public_key"]
    # Never overwrites a key.
    assert overseer("operator", "keygen", "--name", "alice", "--out", str(tmp_path / "keys")) == cli.USAGE_ERROR


@pytest.mark.parametrize(("document", "message"), [
    ({"operators": [{"name": "alice", "public_key": "bm90IGEga2V5"}]}, 'operators[0] ("alice"): public_key is 9 bytes'),
    ({"operators": [{"name": "bob", "public_key": "%%%"}]}, 'operators[0] ("bob"): public_key is not base64'),
    ({"operators": [{"name": "Bob!", "public_key": "x"}]}, "operators[0]: name must match"),
    ({"operators": [{"name": "carol"}]}, 'operators[0] ("carol"): public_key is missing'),
    ({"operators": "alice"}, 'expected an object {"operators"'),
])
def test_a_malformed_registry_entry_fails_the_load_naming_it(tmp_path, document, message) -> None:
    path = tmp_path / "operators.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RegistryError) as caught:
        OperatorRegistry.load(path)
    assert message in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_a_duplicate_operator_fails_the_load(tmp_path) -> None:
    from overseer_dagster.receipts import generate_key, registry_entry

    entry = registry_entry("alice", generate_key())
    path = tmp_path / "operators.json"
    path.write_text(json.dumps({"operators": [entry, {**entry}]}))
    with pytest.raises(RegistryError, match=r'operators\[1\] \("alice"\): alice is registered twice'):
        OperatorRegistry.load(path)


def test_the_registry_is_found_by_variable_or_under_the_home_and_may_be_toml(tmp_path, monkeypatch) -> None:
    from overseer_dagster.receipts import generate_key, registry_entry

    assert load_registry().keys == {}  # no file: nobody can approve anything
    entry = registry_entry("alice", generate_key())
    toml = tmp_path / "ops.toml"
    toml.write_text(f'[[operators]]\nname = "alice"\npublic_key = "{entry["public_key"]}"\n')
    monkeypatch.setenv("OVERSEER_OPERATORS", str(toml))
    assert "alice" in load_registry()
    monkeypatch.delenv("OVERSEER_OPERATORS")
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "operators.json").write_text(json.dumps({"operators": [entry]}))
    assert "alice" in load_registry()


def test_a_private_key_readable_by_others_is_refused(tmp_path, monkeypatch, capsys) -> None:
    overseer("operator", "keygen", "--name", "alice", "--out", str(tmp_path))
    os.chmod(tmp_path / "alice.pem", 0o644)
    monkeypatch.setenv("OVERSEER_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    from overseer_dagster.store import connect

    gate = open_gate(connect(), QUARANTINE)
    capsys.readouterr()
    assert overseer("approve", gate["gate_id"], "--key", str(tmp_path / "alice.pem"), "--operator", "alice",
                    "--print-config") == cli.USAGE_ERROR
    assert "readable by others" in capsys.readouterr().err


def test_gates_lists_open_gates_public_safe(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OVERSEER_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    from overseer_dagster.store import connect

    now = datetime.now(UTC)
    quarantine = open_gate(connect(), QUARANTINE, snap=fleet(now), now=now)
    spend = open_gate(connect(), wallet_spend(), snap=fleet(now), now=now)
    assert overseer("gates", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert (listed["open_gates"], listed["pending"]) == (2, 2)
    by_id = {g["gate_id"]: g for g in listed["gates"]}
    assert by_id[quarantine["gate_id"]]["replica_id"] == "r-1"
    assert by_id[spend["gate_id"]]["amount_sats"] == 21000
    assert by_id[spend["gate_id"]]["action_hash_prefix"] == spend["action_hash"][:12]
    assert all(60 * 59 <= g["expires_in_s"] <= 3600 and g["age_s"] < 60 for g in listed["gates"])
    assert "action_json" not in json.dumps(listed) and spend["action_hash"] not in json.dumps(listed)
    assert overseer("gates") == 0
    text = capsys.readouterr().out
    assert "quarantine_replica" in text and "21000 sats to payee-lab (provider_invoice)" in text


def test_print_config_is_a_launchpad_run_config_the_job_accepts(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OVERSEER_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    registry = tmp_path / "operators.json"
    overseer("operator", "keygen", "--name", "alice", "--out", str(tmp_path), "--registry", str(registry))
    from overseer_dagster.store import connect, gates

    now = datetime.now(UTC)
    gate = open_gate(connect(), QUARANTINE, snap=fleet(now), now=now)
    capsys.readouterr()
    assert overseer("approve", gate["gate_id"], "--key", str(tmp_path / "alice.pem"), "--operator", "alice",
                    "--note", "seen it flap", "--print-config") == 0
    out = capsys.readouterr()
    assert "quarantine_replica r-1" in out.err
    config = yaml.safe_load(out.out)["ops"]["record_approval"]["config"]
    assert set(config) == {"gate_id", "operator", "decision", "issued_at", "signature", "note"}
    assert "PRIVATE" not in out.out
    approvals.decide(connect(), OperatorRegistry.load(registry), SignedDecision(**config), now=datetime.now(UTC))
    assert gates.get(connect(), gate["gate_id"])["state"] == "approved"


def test_approve_without_a_reachable_dagster_says_so(tmp_path, monkeypatch, capsys) -> None:
    from http_fixtures import closed_port_url

    monkeypatch.setenv("OVERSEER_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    overseer("operator", "keygen", "--name", "alice", "--out", str(tmp_path))
    from overseer_dagster.store import connect

    gate = open_gate(connect(), QUARANTINE)
    capsys.readouterr()
    assert overseer("approve", gate["gate_id"], "--key", str(tmp_path / "alice.pem"), "--operator", "alice",
                    "--dagster", closed_port_url()) == 1
    assert "unreachable" in capsys.readouterr().err
