"""Gates through Dagster: the `approve_action` job records a signed decision (and a materialization of
`approval_receipts`) or fails naming the cause; the `approved_dispatch` sensor launches effective gates,
also while the tick schedule is stopped, never while OVERSEER_ENABLED is off, again under a new run key
when a run ended without claiming (three runs at most); `approval_gates` shows
the open gates as a Markdown table; `dispatch_action` runs a gated action through its approval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dispatch_fixtures import run_for
from gate_fixtures import QUARANTINE, fleet, open_gate, operators, wallet_spend
from test_sensors import schedule_state

from overseer_dagster.defs.approvals import approved_dispatch, due_rollbacks
from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, StoreResource
from overseer_dagster.store import actions, gates, journal, receipts


@pytest.fixture
def ops(tmp_path, monkeypatch, store_url):
    ops = operators(tmp_path)
    monkeypatch.setenv("OVERSEER_OPERATORS", str(ops.path))
    monkeypatch.setenv("OVERSEER_DATABASE_URL", store_url)
    return ops


def _now() -> datetime:
    return datetime.now(UTC)


def approve_config(signed) -> dict:  # noqa: ANN001
    return {"ops": {"record_approval": {"config": {
        "gate_id": signed.gate_id, "operator": signed.operator, "decision": signed.decision,
        "issued_at": signed.issued_at, "signature": signed.signature, "note": signed.note}}}}


def run_job(name: str, run_config: dict) -> dg.ExecuteInProcessResult:
    from overseer_dagster.definitions import defs

    with dg.instance_for_test() as instance:
        return defs.get_job_def(name).execute_in_process(run_config=run_config, instance=instance,
                                                          raise_on_error=False)


def test_the_approve_action_job_records_the_decision_and_materializes_the_receipt(engine, ops) -> None:
    now = _now()
    gate = open_gate(engine, QUARANTINE, snap=fleet(now), now=now)
    result = run_job("approve_action", approve_config(ops.sign(gate, issued_at=now, note="flapping")))
    assert result.success
    [materialization] = result.asset_materializations_for_node("record_approval")
    assert materialization.asset_key == dg.AssetKey("approval_receipts")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    [receipt] = receipts.for_gate(engine, gate["gate_id"])
    assert meta == {"gate_id": gate["gate_id"], "kind": "quarantine_replica", "risky_kind": "fleet_mutation",
                    "operator": "alice", "decision": "approve", "receipt_id_prefix": receipt["receipt_id"][:12],
                    "action_hash_prefix": gate["action_hash"][:12]}
    assert gates.get(engine, gate["gate_id"])["state"] == "approved"


@pytest.mark.parametrize(("tamper", "reason"), [
    ({"signature": "A" * 86 + "=="}, "bad_signature"),
    ({"operator": "mallory"}, "unregistered_operator"),
    ({"gate_id": "00000000-0000-4000-8000-000000000000"}, "unknown_gate"),
    ({"issued_at": "2020-01-01T00:00:00Z"}, "bad_signature"),  # the signed time cannot be swapped
])
def test_a_refused_approval_fails_the_run_naming_the_cause(engine, ops, tamper, reason) -> None:
    now = _now()
    gate = open_gate(engine, QUARANTINE, snap=fleet(now), now=now)
    config = approve_config(ops.sign(gate, issued_at=now))
    config["ops"]["record_approval"]["config"].update(tamper)
    result = run_job("approve_action", config)
    assert not result.success
    description = result.failure_data_for_node("record_approval").user_failure_data.description
    assert description.startswith(f"approval refused ({reason}):"), description
    assert gates.get(engine, gate["gate_id"])["state"] == "pending"
    assert [r["reason"] for r in journal.tail(engine, 5) if r["state"] == "approval_refused"] == [reason]


def evaluate(sensor, instance, store_url: str):  # noqa: ANN001, ANN201
    from overseer_dagster.definitions import defs

    resources = {"store": StoreResource(database_url=store_url), "fleet": FleetResource(source="sample"),
                 "actuators": ActuatorsResource()}
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources) as context:
        return sensor.evaluate_tick(context)


def test_approved_gates_are_launched_even_while_the_tick_schedule_is_stopped(engine, ops, store_url) -> None:
    now = _now()
    gate = open_gate(engine, wallet_spend(), snap=fleet(now), now=now)
    waiting = open_gate(engine, wallet_spend(7), snap=fleet(now), now=now)
    from overseer_dagster import approvals

    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=now), now=now)
    with dg.instance_for_test() as instance, schedule_state(instance, running=False):
        result = evaluate(approved_dispatch, instance, store_url)
    [request] = result.run_requests
    assert request.run_key == f"gated:{gate['gate_id']}"
    assert {k: v for k, v in request.tags.items() if k.startswith("overseer/")} == {
        "overseer/action_id": gate["action_id"], "overseer/kind": "wallet_spend", "overseer/gate_id": gate["gate_id"]}
    assert request.run_config["ops"] == {"execute_action": {"config": {"action_id": gate["action_id"]}}}
    [report] = result.asset_events
    assert report.asset_key == dg.AssetKey("approval_gates")
    table = report.metadata["gates"].value
    assert gate["gate_id"] in table and waiting["gate_id"] in table and "21000 sats to payee-lab" in table
    assert [report.metadata[k].value for k in ("open_gates", "approved", "pending")] == [2, 1, 1]


def test_nothing_gated_is_launched_while_the_kill_switch_is_off(engine, ops, store_url, monkeypatch) -> None:
    now = _now()
    gate = open_gate(engine, wallet_spend(), snap=fleet(now), now=now)
    from overseer_dagster import approvals

    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=now), now=now)
    monkeypatch.setenv("OVERSEER_ENABLED", "off")
    with dg.instance_for_test() as instance:
        result = evaluate(approved_dispatch, instance, store_url)
        assert not result.run_requests and "OVERSEER_ENABLED is off" in result.skip_message
        assert "OVERSEER_ENABLED is off" in evaluate(due_rollbacks, instance, store_url).skip_message
    monkeypatch.setenv("OVERSEER_MODE", "advisory")
    monkeypatch.setenv("OVERSEER_ENABLED", "on")
    with dg.instance_for_test() as instance:
        assert "advisory" in evaluate(approved_dispatch, instance, store_url).skip_message


def test_a_gated_run_that_ended_without_claiming_is_launched_again_under_a_new_key_at_most_three_times(
        engine, ops, store_url) -> None:
    from overseer_dagster import approvals

    approved = _now() - timedelta(seconds=30)
    gate = open_gate(engine, wallet_spend(), snap=fleet(approved), now=approved)
    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=approved), now=approved)
    keys = []
    with dg.instance_for_test() as instance:
        for _ in range(3):
            [request] = evaluate(approved_dispatch, instance, store_url).run_requests
            run = run_for(instance, request, ended=None)
            # On its way: asked again under the same key, which Dagster skips.
            assert [r.run_key for r in evaluate(approved_dispatch, instance, store_url).run_requests] == [
                request.run_key]
            instance.report_run_failed(run)  # ... then it ends before claiming (its run worker never launched)
            keys.append(request.run_key)
        exhausted = evaluate(approved_dispatch, instance, store_url)
    gate_id = gate["gate_id"]
    assert keys == [f"gated:{gate_id}", f"gated:{gate_id}:2", f"gated:{gate_id}:3"]
    assert exhausted.run_requests == [] and exhausted.skip_message == "no effective gates to launch"
    # Nothing invented: the action never ran, the operator's approval stays unused until the gate expires.
    assert actions.get(engine, gate["action_id"])["status"] == "gated"
    assert receipts.approval_for(engine, gate_id)["consumed_at"] is None
    assert gates.get(engine, gate_id)["state"] == "approved"


def test_the_gates_table_is_reported_only_when_the_open_gates_change(engine, ops, store_url) -> None:
    now = _now()
    open_gate(engine, QUARANTINE, snap=fleet(now), now=now)
    from overseer_dagster.definitions import defs

    resources = {"store": StoreResource(database_url=store_url), "fleet": FleetResource(source="sample"),
                 "actuators": ActuatorsResource()}
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources) as context:
            first = approved_dispatch.evaluate_tick(context)
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=resources,
                                     cursor=first.cursor) as context:
            second = approved_dispatch.evaluate_tick(context)
    assert len(first.asset_events) == 1 and second.asset_events == []


def test_a_malformed_registry_fails_naming_the_entry(engine, ops, store_url, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"operators": [{"name": "alice", "public_key": "bm90IGEga2V5"}]}')
    monkeypatch.setenv("OVERSEER_OPERATORS", str(bad))
    with dg.instance_for_test() as instance, pytest.raises(Exception, match=r'operators\[0\] \("alice"\)'):
        evaluate(approved_dispatch, instance, store_url)


def test_dispatch_action_runs_an_approved_wallet_spend_once_through_the_lab_wallet(engine, ops, monkeypatch) -> None:
    from overseer_dagster import approvals
    from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config

    with BackgroundLab(fast_lab_config(1)) as lab:
        monkeypatch.setenv("OVERSEER_WALLET_URL", lab.gateway_url)
        now = _now()
        gate = open_gate(engine, wallet_spend(), snap=fleet(now), now=now)
        approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=now), now=now)
        config = {"ops": {"execute_action": {"config": {"action_id": gate["action_id"]}}}}
        assert run_job("dispatch_action", config).success
        assert run_job("dispatch_action", config).success  # a second run finds nothing to do
        assert [(p.payee_ref, p.amount_sats) for p in lab.wallet.payments] == [("payee-lab", 21000)]
    assert actions.get(engine, gate["action_id"])["status"] == "succeeded"
    assert gates.get(engine, gate["gate_id"])["state"] == "executed"
