"""Gated actions against the lab, over the real contracts (docs/contracts.md): router quarantine and
its operator rollback, the provider's scale-out and its automatic scale-in, the wallet."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from gate_fixtures import SCALE_OUT, open_gate, operators, wallet_spend

from overseer_dagster import approvals, gated
from overseer_dagster.adapters.actuators import HttpRouterAdmin
from overseer_dagster.adapters.fleet_source import SnapshotSource
from overseer_dagster.adapters.spend import HttpProvider, HttpWallet
from overseer_dagster.gated import GatedActuators
from overseer_dagster.lab.runtime import BackgroundLab, fast_lab_config
from overseer_dagster.store import gates, receipts

pytestmark = pytest.mark.lab


@pytest.fixture
def lab():  # noqa: ANN201
    with BackgroundLab(fast_lab_config(3)) as lab:
        lab.provider.join_delay_s = 0.2
        yield lab


def world(lab):  # noqa: ANN001, ANN201
    base = lab.gateway_url
    return (SnapshotSource(f"{base}/fleet/state"),
            GatedActuators(router=HttpRouterAdmin(base), provider=HttpProvider(base), wallet=HttpWallet(base)))


def routing(source: SnapshotSource) -> dict[str, str]:
    return {r.replica_id: r.routing_state.value for r in source.snapshot(datetime.now(UTC)).replicas}


def approve_and_dispatch(engine, ops, lab, action: dict):  # noqa: ANN001, ANN201
    source, hands = world(lab)
    now = datetime.now(UTC)
    gate = open_gate(engine, action, snap=source.snapshot(now), now=now)
    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=now), now=now)
    result = gated.dispatch_gated(engine, gate["action_id"], run_id="run-1", clock=lambda: datetime.now(UTC),
                                  enabled=True, mode="autonomous", fleet=source, actuators=hands,
                                  registry=ops.registry)
    return gate, result, source, hands


def wait_for(condition, timeout_s: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_an_approved_quarantine_takes_the_replica_out_and_its_rollback_restores_it(engine, lab, tmp_path) -> None:
    ops = operators(tmp_path)
    quarantine = {"kind": "quarantine_replica", "replica_id": "replica-01", "reason_code": "health_check_failed",
                  "rollback": {"action": "readmit_replica", "replica_id": "replica-01"}}
    gate, result, source, hands = approve_and_dispatch(engine, ops, lab, quarantine)
    assert (result.outcome, result.detail) == ("succeeded", "replica-01 is quarantined")
    assert routing(source)["replica-01"] == "quarantined"
    now = datetime.now(UTC)
    done = gated.run_rollback(engine, gate["gate_id"], ops.sign(gate, operator="bob", decision="rollback",
                                                                 issued_at=now),
                              run_id="rb-1", clock=lambda: datetime.now(UTC), enabled=True, registry=ops.registry,
                              actuators=hands)
    assert (done.outcome, done.detail) == ("rolled_back", "replica-01 is admitted")
    assert routing(source) == {"replica-00": "admitted", "replica-01": "admitted", "replica-02": "admitted"}
    assert receipts.rollback_for(engine, gate["gate_id"])["state"] == "done"


def test_an_approved_scale_out_joins_the_fleet_and_its_scale_in_releases_it(engine, lab, tmp_path) -> None:
    ops = operators(tmp_path)
    gate, result, source, hands = approve_and_dispatch(engine, ops, lab, SCALE_OUT)
    assert result.outcome == "succeeded" and "alloc-001" in result.detail
    assert wait_for(lambda: "scale-001-0" in routing(source))
    assert wait_for(lambda: next(r for r in source.snapshot(datetime.now(UTC)).replicas
                                 if r.replica_id == "scale-001-0").ready)
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    assert rollback["plan"] == "scale_in" and rollback["launch"] == "automatic"
    due = rollback["due_at"] + timedelta(seconds=1)
    assert [r["gate_id"] for r in gated.due_rollbacks(engine, due)] == [gate["gate_id"]]
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb-1", clock=lambda: due, enabled=True,
                              registry=ops.registry, actuators=hands)
    assert (done.outcome, done.detail) == ("rolled_back", "allocation alloc-001 is released")
    assert set(routing(source)) == {"replica-00", "replica-01", "replica-02"}
    assert lab.provider.allocations["alloc-001"].state == "released"


def test_the_provider_refuses_a_scale_out_over_the_approved_price(engine, lab, tmp_path) -> None:
    ops = operators(tmp_path)
    cheap = {**SCALE_OUT, "max_hourly_usd": 3.0}  # one h100 costs 4.0 USD/h in the lab
    gate, result, source, _ = approve_and_dispatch(engine, ops, lab, cheap)
    assert (result.outcome, result.reason) == ("failed", "over_budget")
    assert lab.provider.allocations == {} and len(routing(source)) == 3
    assert gates.get(engine, gate["gate_id"])["state"] == "executed"


def test_the_wallet_pays_a_registered_payee_once_and_refuses_an_unknown_one(engine, lab, tmp_path) -> None:
    ops = operators(tmp_path)
    _, paid, _, hands = approve_and_dispatch(engine, ops, lab, wallet_spend(1500))
    assert (paid.outcome, paid.detail) == ("succeeded", "payment pay-0001: 1500 sats to payee-lab, settled")
    # The same action asked twice (a retried call) is one payment.
    again = hands.wallet.pay(payee_ref="payee-lab", amount_sats=1500, purpose="provider_invoice",
                             idempotency_key=paid.action_id)
    assert again.payment_id == "pay-0001" and len(lab.wallet.payments) == 1
    _, refused, _, _ = approve_and_dispatch(engine, ops, lab, wallet_spend(1500, payee_ref="payee-acme"))
    assert (refused.outcome, refused.reason) == ("failed", "unknown_payee")
    assert lab.wallet.balance_sats == 1_000_000 - 1500
