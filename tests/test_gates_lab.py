"""Gated actions against the lab, over the real contracts (docs/contracts.md): router quarantine and
its operator rollback, the provider's scale-out and its automatic scale-in (which drains before it releases,
so a user's request in flight there completes), the wallet."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
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
                              actuators=hands, fleet=source)
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
                              registry=ops.registry, actuators=hands, fleet=source)
    assert (done.outcome, done.detail) == ("rolled_back", "allocation alloc-001 is released")
    assert set(routing(source)) == {"replica-00", "replica-01", "replica-02"}
    assert lab.provider.allocations["alloc-001"].state == "released"


def stream_completion(gateway_url: str, model: str, max_tokens: int, out: dict) -> None:
    """One external streaming chat completion through the gateway; what the client saw lands in `out`."""
    body = {"model": model, "messages": [{"role": "user", "content": "write a long answer"}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True, "stream_options": {"include_usage": True}}
    events = []
    out["done"] = False
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=60.0,
                      headers={"X-Demand-Kind": "external"}) as response:
        out["status"] = response.status_code
        for line in response.iter_lines():
            if line == "data: [DONE]":
                out["done"] = True
            elif line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    out["errors"] = [e for e in events if "error" in e]
    out["finish_reasons"] = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    out["usage"] = next((e["usage"] for e in events if e.get("usage")), None)


def test_a_request_in_flight_on_a_replica_being_scaled_in_completes(engine, lab, tmp_path) -> None:
    ops = operators(tmp_path)
    gate, result, source, hands = approve_and_dispatch(engine, ops, lab, SCALE_OUT)
    assert result.outcome == "succeeded"

    def replica(rid: str):  # noqa: ANN202
        return next((r for r in source.snapshot(datetime.now(UTC)).replicas if r.replica_id == rid), None)

    assert wait_for(lambda: (r := replica("scale-001-0")) is not None and r.ready)
    # Only the new replica in rotation for a moment, so the gateway sends a user's long answer there.
    old = ["replica-00", "replica-01", "replica-02"]
    for rid in old:
        hands.router.drain(rid)
    seen: dict = {}
    user = threading.Thread(target=stream_completion, args=(lab.gateway_url, lab.config.model, 800, seen))
    user.start()
    assert wait_for(lambda: replica("scale-001-0").external_inflight == 1)
    for rid in old:
        hands.router.admit(rid)

    due = receipts.rollback_for(engine, gate["gate_id"])["due_at"] + timedelta(seconds=1)
    started = time.monotonic()
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb-1", clock=lambda: due, enabled=True,
                              registry=ops.registry, actuators=hands, fleet=source)
    waited = time.monotonic() - started
    user.join(30)
    assert (done.outcome, done.detail) == ("rolled_back", "allocation alloc-001 is released")
    # The user's answer came back whole: 200, every token, a normal finish, no error event.
    assert (seen["status"], seen["errors"], seen["finish_reasons"], seen["done"]) == (200, [], ["length"], True)
    assert seen["usage"]["completion_tokens"] == 800
    assert waited > 0.5  # the release waited for it
    assert set(routing(source)) == set(old)
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
