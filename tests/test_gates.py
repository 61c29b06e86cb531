"""Gates, as an operator and an attacker see them: a gated action acts only through an operator's signed,
single-use approval of that exact action; everything else is refused, naming the cause, and acts on nothing.

Each store test runs on SQLite and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from gate_fixtures import (
    NOW,
    QUARANTINE,
    SCALE_OUT,
    CountingProvider,
    CountingRouter,
    CountingWallet,
    StaticFleet,
    fleet,
    hands,
    later,
    open_gate,
    operators,
    wallet_spend,
)
from sqlalchemy import select, update

from overseer_dagster import approvals, gated
from overseer_dagster.adapters.actuators import ActuatorError
from overseer_dagster.core.approval import Refused
from overseer_dagster.core.fleet import FleetSnapshot, ReplicaState
from overseer_dagster.dispatch import NOT_QUEUED
from overseer_dagster.gated import NOT_EFFECTIVE, GatedActuators
from overseer_dagster.receipts import generate_key
from overseer_dagster.store import actions, gates, journal, receipts, write_tx
from overseer_dagster.store.tables import gates as gates_table
from overseer_dagster.store.tables import receipts as receipts_table


@pytest.fixture
def ops(tmp_path):
    return operators(tmp_path)


def refused_rows(engine, gate_id: str) -> list[tuple[str, str]]:
    return [(r["state"], r["reason"]) for r in journal.tail(engine, 1000)
            if r["gate_id"] == gate_id and r["state"].endswith("_refused")]


def refuse(engine, ops, signed, *, now=NOW) -> Refused:
    with pytest.raises(Refused) as caught:
        approvals.decide(engine, ops.registry, signed, now=now)
    return caught.value


def dispatch(engine, gate: dict, ops, actuators: GatedActuators | None = None, *, snap=None, now=NOW,
             enabled: bool = True, mode: str = "autonomous", run_id: str = "run-1"):
    actuators = actuators or hands()
    return gated.dispatch_gated(
        engine, gate["action_id"], run_id=run_id, clock=lambda: now, enabled=enabled, mode=mode,
        fleet=StaticFleet(fleet(now) if snap is None else snap), actuators=actuators, registry=ops.registry,
    ), actuators


# --- recording decisions ------------------------------------------------------------------------------


def test_a_registered_operators_signed_approval_is_recorded_with_its_receipt(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    assert (gate["state"], gate["kind"], gate["risky_kind"]) == ("pending", "quarantine_replica", "fleet_mutation")
    assert gate["expires_at"] - gate["created_at"] == timedelta(minutes=60)
    rec = approvals.decide(engine, ops.registry, ops.sign(gate, note="flapping all morning"), now=later(5))
    assert (rec.decision, rec.operator, rec.action_hash) == ("approve", "alice", gate["action_hash"])
    assert gates.get(engine, gate["gate_id"])["state"] == "approved"
    [receipt] = receipts.for_gate(engine, gate["gate_id"])
    assert receipt["receipt_id"] == rec.receipt_id and len(rec.receipt_id) == 64
    assert (receipt["consumed_at"], receipt["note"]) == (None, "flapping all morning")
    [row] = [r for r in journal.tail(engine, 10) if r["state"] == "approved"]
    assert (row["phase"], row["gate_id"], row["kind"]) == ("decision", gate["gate_id"], "quarantine_replica")
    assert journal.verify(engine).ok


@pytest.mark.parametrize("case", ["forged", "wrong_gate", "wrong_decision", "edited_issued_at"])
def test_a_signature_that_is_not_the_operators_over_this_exact_approval_is_refused(engine, ops, case) -> None:
    gate = open_gate(engine, QUARANTINE)
    other = open_gate(engine, {**QUARANTINE, "replica_id": "r-2", "rollback": {"action": "readmit_replica",
                                                                              "replica_id": "r-2"}})
    signed = {
        "forged": lambda: ops.sign(gate, key=generate_key()),  # alice's name, someone else's key
        "wrong_gate": lambda: _with(ops.sign(other), gate_id=gate["gate_id"]),
        "wrong_decision": lambda: _with(ops.sign(gate, decision="reject"), decision="approve"),
        "edited_issued_at": lambda: _with(ops.sign(gate), issued_at="2026-12-03T12:00:31Z"),
    }[case]()
    exc = refuse(engine, ops, signed)
    assert exc.reason == "bad_signature" and "signature" in str(exc)
    assert gates.get(engine, gate["gate_id"])["state"] == "pending"
    assert receipts.for_gate(engine, gate["gate_id"]) == []
    assert refused_rows(engine, gate["gate_id"]) == [("approval_refused", "bad_signature")]


def _with(signed, **fields):
    from dataclasses import replace

    return replace(signed, **fields)


def test_an_unregistered_operator_is_refused(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    mallory = generate_key()
    exc = refuse(engine, ops, ops.sign(gate, operator="mallory", key=mallory))
    assert exc.reason == "unregistered_operator" and "mallory" in str(exc)
    assert gates.get(engine, gate["gate_id"])["state"] == "pending"
    assert refused_rows(engine, gate["gate_id"]) == [("approval_refused", "unregistered_operator")]


def test_an_unknown_gate_is_refused(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    exc = refuse(engine, ops, _with(ops.sign(gate), gate_id="00000000-0000-4000-8000-000000000000"))
    assert exc.reason == "unknown_gate"
    [row] = [r for r in journal.tail(engine, 5) if r["state"] == "approval_refused"]
    assert (row["reason"], row["gate_id"]) == ("unknown_gate", None)


@pytest.mark.parametrize("issued", [NOW - timedelta(minutes=11), NOW + timedelta(minutes=2)], ids=["old", "future"])
def test_a_stale_approval_is_refused(engine, ops, issued) -> None:
    gate = open_gate(engine, QUARANTINE)
    exc = refuse(engine, ops, ops.sign(gate, issued_at=issued))
    assert exc.reason == "stale_issued_at"
    assert gates.get(engine, gate["gate_id"])["state"] == "pending"


def test_an_approval_within_the_clock_skew_is_accepted(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=NOW + timedelta(seconds=50)), now=NOW)
    assert gates.get(engine, gate["gate_id"])["state"] == "approved"


def test_an_expired_gate_cannot_be_approved_and_is_left_untouched(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    when = gate["expires_at"] + timedelta(seconds=1)
    exc = refuse(engine, ops, ops.sign(gate, issued_at=when), now=when)
    assert exc.reason == "expired"
    assert gates.get(engine, gate["gate_id"])["state"] == "pending"  # untouched; the sweep expires it
    assert gated.expire(engine, when) == [gate["gate_id"]]
    assert gates.get(engine, gate["gate_id"])["state"] == "expired"
    assert actions.get(engine, gate["action_id"])["status"] == "blocked"
    assert actions.get(engine, gate["action_id"])["outcome_reason"] == "gate_expired"


def test_approve_after_reject_is_refused(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate, operator="bob", decision="reject"), now=NOW)
    assert gates.get(engine, gate["gate_id"])["state"] == "rejected"
    assert (actions.get(engine, gate["action_id"])["status"], actions.get(engine, gate["action_id"])["outcome_reason"]
            ) == ("blocked", "gate_rejected")
    exc = refuse(engine, ops, ops.sign(gate, issued_at=later(1)), now=later(2))
    assert exc.reason == "already_decided" and "rejected" in str(exc)
    assert gates.get(engine, gate["gate_id"])["state"] == "rejected"


def test_replaying_the_same_signed_approval_is_refused(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    signed = ops.sign(gate)
    approvals.decide(engine, ops.registry, signed, now=NOW)
    exc = refuse(engine, ops, signed, now=later(30))
    assert exc.reason == "replayed"
    # Re-encoding the signature does not make a new receipt.
    import base64

    reencoded = _with(signed, signature=" " + base64.b64encode(base64.b64decode(signed.signature)).decode() + "\n")
    assert refuse(engine, ops, reencoded, now=later(31)).reason == "replayed"
    assert len(receipts.for_gate(engine, gate["gate_id"])) == 1


def test_two_concurrent_approvals_of_one_gate_exactly_one_wins(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    signed = [ops.sign(gate, operator=name, issued_at=later(i)) for i in range(4) for name in ("alice", "bob")]
    start = threading.Barrier(len(signed))
    outcomes: list[str] = []
    lock = threading.Lock()

    def approve(s) -> None:  # noqa: ANN001
        start.wait()
        try:
            approvals.decide(engine, ops.registry, s, now=later(10))
            result = "won"
        except Refused as exc:
            result = exc.reason.value
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=approve, args=(s,)) for s in signed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("won") == 1, outcomes
    assert set(outcomes) - {"won"} == {"already_decided"}
    assert len(receipts.for_gate(engine, gate["gate_id"])) == 1
    assert gates.get(engine, gate["gate_id"])["state"] == "approved"
    assert journal.verify(engine).ok


def test_the_database_allows_one_decision_per_gate(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    rec = approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    row = receipts.get(engine, rec.receipt_id)
    with pytest.raises(Exception), write_tx(engine) as conn:  # noqa: B017 - IntegrityError of either driver
        conn.execute(receipts_table.insert().values({**row, "receipt_id": "f" * 64, "decision": "reject"}))


# --- dispatch: effective, once ----------------------------------------------------------------------


def test_an_approved_gate_executes_once_and_its_receipt_is_consumed(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    rec = approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    assert [g.gate_id for g in gated.sweep(engine, now=later(1), registry=ops.registry,
                                           fleet=StaticFleet(fleet())).launch] == [gate["gate_id"]]
    result, hands_ = dispatch(engine, gate, ops, now=later(2))
    assert (result.outcome, result.recorded) == ("succeeded", True)
    assert hands_.wallet.payments == [("payee-lab", 21000, gate["action_id"])]
    assert gates.get(engine, gate["gate_id"])["state"] == "executed"
    receipt = receipts.get(engine, rec.receipt_id)
    assert (receipt["consumed_by_action"], receipt["consumed_at"]) == (gate["action_id"], later(2))
    again, hands_again = dispatch(engine, gate, ops, now=later(3), run_id="run-2")
    assert again.outcome == NOT_QUEUED and hands_again.wallet.payments == []
    assert gated.sweep(engine, now=later(4), registry=ops.registry, fleet=StaticFleet(fleet())).launch == []
    states = [r["state"] for r in journal.tail(engine, 20) if r["action_id"] == gate["action_id"]]
    assert states == ["pending_approval", "approved", "dispatching", "succeeded"]
    assert journal.verify(engine).ok


def test_two_concurrent_dispatches_of_one_approved_gate_act_once(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    wallet = CountingWallet()
    shared = GatedActuators(router=CountingRouter(), provider=hands().provider, wallet=wallet)
    start = threading.Barrier(6)
    results = []

    def run(i: int) -> None:
        start.wait()
        results.append(dispatch(engine, gate, ops, shared, now=later(2), run_id=f"run-{i}")[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wallet.payments) == 1
    assert sorted(r.outcome for r in results) == ["not_queued"] * 5 + ["succeeded"]


def test_an_action_whose_fleet_changed_after_approval_is_not_executed(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)  # decided while r-1 was admitted
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    changed = fleet(later(5), r_1={"routing_state": "draining"})
    result, hands_ = dispatch(engine, gate, ops, snap=changed, now=later(5))
    assert (result.outcome, result.reason) == ("precondition_failed", "action_changed")
    assert hands_.router.calls == []
    assert gates.get(engine, gate["gate_id"])["state"] == "superseded"
    assert receipts.approval_for(engine, gate["gate_id"])["consumed_at"] is not None


def test_a_scale_out_decided_on_another_fleet_size_is_superseded(engine, ops) -> None:
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    grown = fleet(later(5)).model_copy(update={"replicas": fleet(later(5)).replicas[:2]})
    result, hands_ = dispatch(engine, gate, ops, snap=grown, now=later(5))
    assert (result.outcome, result.reason) == ("precondition_failed", "action_changed")
    assert hands_.provider.calls == []


def test_an_edited_action_or_hash_in_the_store_makes_the_approval_void(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    with write_tx(engine) as conn:  # someone with database access raises the amount
        conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"]).values(
            action_json=gate["action_json"].replace("21000", "99000")))
    result, hands_ = dispatch(engine, gate, ops, now=later(2))
    assert hands_.wallet.payments == []
    assert result.outcome in ("blocked", "precondition_failed")
    assert gates.get(engine, gate["gate_id"])["state"] == "superseded"

    gate2 = open_gate(engine, wallet_spend(500))
    approvals.decide(engine, ops.registry, ops.sign(gate2), now=NOW)
    with write_tx(engine) as conn:  # ... or rewrites the gate's hash to match another action
        conn.execute(update(gates_table).where(gates_table.c.gate_id == gate2["gate_id"]).values(
            action_hash="0" * 64))
    result, hands_ = dispatch(engine, gate2, ops, now=later(2))
    assert (result.outcome, hands_.wallet.payments) == (NOT_EFFECTIVE, [])


def test_a_receipt_written_by_hand_is_not_an_approval(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    with write_tx(engine) as conn:
        conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"]).values(state="approved"))
        conn.execute(receipts_table.insert().values(
            receipt_id="a" * 64, gate_id=gate["gate_id"], action_hash=gate["action_hash"], operator="alice",
            decision="approve", issued_at="2026-12-03T12:00:30Z", signature="A" * 86 + "==", recorded_at=NOW))
    assert gated.sweep(engine, now=later(1), registry=ops.registry, fleet=StaticFleet(fleet())).launch == []
    result, hands_ = dispatch(engine, gate, ops, now=later(2))
    assert (result.outcome, hands_.wallet.payments) == (NOT_EFFECTIVE, [])
    assert actions.get(engine, gate["action_id"])["status"] == "gated"


def test_an_operator_removed_from_the_registry_no_longer_approves(engine, ops, tmp_path) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    without_alice = operators(tmp_path / "later", names=("bob",)).registry
    result = gated.dispatch_gated(engine, gate["action_id"], run_id="r", clock=lambda: later(1), enabled=True,
                                  mode="autonomous", fleet=StaticFleet(fleet()), actuators=hands(),
                                  registry=without_alice)
    assert result.outcome == NOT_EFFECTIVE


def test_the_gated_claim_requires_an_unused_approval(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    with pytest.raises(receipts.ClaimLost), write_tx(engine) as conn:  # pending: no approval at all
        receipts.claim_gated(conn, action_id=gate["action_id"], gate_id=gate["gate_id"], receipt_id="x" * 64,
                             run_id="r", now=NOW, lease_s=60)
    rec = approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    with write_tx(engine) as conn:
        receipts.claim_gated(conn, action_id=gate["action_id"], gate_id=gate["gate_id"],
                             receipt_id=rec.receipt_id, run_id="r", now=later(1), lease_s=60)
    with write_tx(engine) as conn:  # put the action back: the receipt is still used
        conn.execute(update(actions.actions).where(actions.actions.c.action_id == gate["action_id"]).values(
            status="gated"))
    with pytest.raises(receipts.ClaimLost), write_tx(engine) as conn:
        receipts.claim_gated(conn, action_id=gate["action_id"], gate_id=gate["gate_id"],
                             receipt_id=rec.receipt_id, run_id="r2", now=later(2), lease_s=60)
    with engine.connect() as conn:  # and the unique constraint holds one consumption per action
        assert conn.execute(select(receipts_table.c.consumed_by_action)).scalars().all() == [gate["action_id"]]


def test_an_approved_gate_never_used_expires(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    assert gated.expire(engine, gate["expires_at"] - timedelta(seconds=1)) == []
    assert gated.expire(engine, gate["expires_at"]) == [gate["gate_id"]]
    result, hands_ = dispatch(engine, gate, ops, now=gate["expires_at"])
    assert hands_.wallet.payments == [] and result.outcome == NOT_QUEUED


def test_with_the_kill_switch_off_an_approved_gate_waits_unused(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    result, hands_ = dispatch(engine, gate, ops, now=later(1), enabled=False)
    assert (result.outcome, result.reason, result.recorded) == ("blocked", "kill_switch", False)
    assert hands_.wallet.payments == []
    assert receipts.approval_for(engine, gate["gate_id"])["consumed_at"] is None
    result, _ = dispatch(engine, gate, ops, now=later(1), mode="advisory")
    assert (result.outcome, result.recorded) == ("advisory", False)
    result, hands_ = dispatch(engine, gate, ops, now=later(2))
    assert (result.outcome, len(hands_.wallet.payments)) == ("succeeded", 1)


def test_a_repeated_proposal_waiting_on_the_same_gate_is_settled_with_it(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    again = open_gate(engine, QUARANTINE, now=later(60))
    assert again["gate_id"] == gate["gate_id"]
    approvals.decide(engine, ops.registry, ops.sign(gate, issued_at=later(61)), now=later(61))
    result, hands_ = dispatch(engine, gate, ops, now=later(62))
    assert result.outcome == "succeeded" and hands_.router.calls == [("quarantine", "r-1")]
    with engine.connect() as conn:
        statuses = conn.execute(select(actions.actions.c.status, actions.actions.c.outcome_reason)
                                .where(actions.actions.c.gate_id == gate["gate_id"])).all()
    assert sorted(statuses) == [("blocked", "gate_executed"), ("succeeded", None)]


def test_an_actuator_failure_spends_the_approval(engine, ops) -> None:
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    actuators = hands()
    actuators.provider.fail = "over_budget"
    result, _ = dispatch(engine, gate, ops, actuators, now=later(1))
    assert (result.outcome, result.reason) == ("failed", "over_budget")
    assert gates.get(engine, gate["gate_id"])["state"] == "executed"
    assert receipts.rollback_for(engine, gate["gate_id"]) is None


# --- crashes: settled from the world, never acted again ---------------------------------------------------


def test_a_crashed_gated_dispatch_is_reconciled_from_the_wallet_not_paid_again(engine, ops) -> None:
    gate = open_gate(engine, wallet_spend())
    rec = approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    wallet = CountingWallet()
    with write_tx(engine) as conn:
        receipts.claim_gated(conn, action_id=gate["action_id"], gate_id=gate["gate_id"], receipt_id=rec.receipt_id,
                             run_id="dead", now=later(1), lease_s=120)
    wallet.pay(payee_ref="payee-lab", amount_sats=21000, purpose="provider_invoice", idempotency_key=gate["action_id"])
    actuators = GatedActuators(router=CountingRouter(), provider=hands().provider, wallet=wallet)
    swept = gated.sweep(engine, now=later(200), registry=ops.registry, fleet=StaticFleet(fleet()),
                        actuators=actuators)
    assert [(s.outcome, s.reason) for s in swept.settled] == [("succeeded", "reconciled")]
    assert len(wallet.payments) == 1
    assert gates.get(engine, gate["gate_id"])["state"] == "executed"


# --- rollbacks ------------------------------------------------------------------------------------------


def test_a_scale_out_schedules_its_scale_in_which_runs_when_due_without_an_operator(engine, ops) -> None:
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    actuators = hands()
    result, _ = dispatch(engine, gate, ops, actuators, now=later(1))
    assert result.outcome == "succeeded"
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    assert (rollback["plan"], rollback["launch"], rollback["due_at"]) == ("scale_in", "automatic", later(601))
    assert gated.due_rollbacks(engine, later(600)) == []
    with pytest.raises(Refused) as early:
        gated.run_rollback(engine, gate["gate_id"], None, run_id="rb", clock=lambda: later(600), enabled=True,
                           registry=ops.registry, actuators=actuators, fleet=StaticFleet(fleet()))
    assert early.value.reason == "no_rollback"
    assert [r["gate_id"] for r in gated.due_rollbacks(engine, later(601))] == [gate["gate_id"]]
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb", clock=lambda: later(601), enabled=True,
                              registry=ops.registry, actuators=actuators, fleet=StaticFleet(fleet()))
    assert done.outcome == "rolled_back"
    assert actuators.provider.calls == [("scale_out", gate["action_id"]), ("release", "alloc-1")]
    assert receipts.rollback_for(engine, gate["gate_id"])["state"] == "done"
    assert gated.due_rollbacks(engine, later(9999)) == []


def test_a_failed_automatic_scale_in_is_tried_again_later(engine, ops) -> None:
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    actuators = hands()
    dispatch(engine, gate, ops, actuators, now=later(1))
    actuators.provider.fail = "provider_error"
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb1", clock=lambda: later(601), enabled=True,
                              registry=ops.registry, actuators=actuators, fleet=StaticFleet(fleet()))
    assert (done.outcome, done.reason) == ("rollback_failed", "provider_error")
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    assert (rollback["state"], rollback["attempts"], rollback["due_at"]) == ("pending", 1, later(631))


class BusyThenIdleFleet:
    """The fleet as a scale-in's drain wait reads it: `scale-1-0` (the allocation's replica) has `busy` external
    requests in flight for the first `busy_reads` reads, then none; stress there never goes away. Each read is
    logged in `calls` (shared with the fakes), so the order of drain, reads and release shows."""

    def __init__(self, calls: list, *, busy_reads: int, busy: int = 2) -> None:
        self.calls = calls
        self.busy_reads = busy_reads
        self.busy = busy
        self.reads = 0

    def snapshot(self, now: datetime) -> FleetSnapshot:
        self.reads += 1
        external = self.busy if self.reads <= self.busy_reads else 0
        self.calls.append(("fleet", external))
        extra = {"replica_id": "scale-1-0", "health": "healthy", "routing_state": "draining", "inflight": external + 3,
                 "max_inflight": 16, "external_inflight": external, "stress_inflight": 3,
                 "observed_at": now.isoformat()}
        snap = fleet(now)
        return snap.model_copy(update={"replicas": (*snap.replicas, ReplicaState.model_validate(extra))})


def scaled_out(engine, ops, calls: list) -> tuple[dict, GatedActuators]:  # noqa: ANN001
    """An executed scale-out whose router and provider log into one shared, ordered `calls`."""
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    actuators = GatedActuators(router=CountingRouter(calls=calls), provider=CountingProvider(calls=calls),
                               wallet=CountingWallet())
    assert dispatch(engine, gate, ops, actuators, now=later(1))[0].outcome == "succeeded"
    return gate, actuators


def test_a_scale_in_drains_its_replicas_and_releases_them_only_once_no_external_request_is_in_flight(
        engine, ops, monkeypatch) -> None:
    monkeypatch.setattr(gated, "DRAIN_POLL_S", 0.01)
    calls: list = []
    gate, actuators = scaled_out(engine, ops, calls)
    busy = BusyThenIdleFleet(calls, busy_reads=3)
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb", clock=lambda: later(601), enabled=True,
                              registry=ops.registry, actuators=actuators, fleet=busy)
    assert (done.outcome, done.detail) == ("rolled_back", "allocation alloc-1 is released")
    # Drained first, released only after a read showing no external request there (stress does not hold it).
    assert calls == [("scale_out", gate["action_id"]), ("drain", "scale-1-0"),
                     ("fleet", 2), ("fleet", 2), ("fleet", 2), ("fleet", 0), ("release", "alloc-1")]
    assert receipts.rollback_for(engine, gate["gate_id"])["state"] == "done"


def test_a_scale_in_whose_replicas_stay_busy_is_not_released_and_is_tried_again(engine, ops, monkeypatch) -> None:
    monkeypatch.setattr(gated, "DRAIN_POLL_S", 0.01)
    monkeypatch.setattr(gated, "DRAIN_WAIT_S", 0.05)
    calls: list = []
    gate, actuators = scaled_out(engine, ops, calls)
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb1", clock=lambda: later(601), enabled=True,
                              registry=ops.registry, actuators=actuators,
                              fleet=BusyThenIdleFleet(calls, busy_reads=10 ** 6))
    assert (done.outcome, done.reason) == ("rollback_failed", "drain_timeout")
    assert "scale-1-0" in done.detail and ("release", "alloc-1") not in calls
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    assert (rollback["state"], rollback["attempts"], rollback["due_at"]) == ("pending", 1, later(631))
    # The retry drains again (idempotent) and, the requests done, releases.
    calls.clear()
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb2", clock=lambda: later(631), enabled=True,
                              registry=ops.registry, actuators=actuators, fleet=BusyThenIdleFleet(calls, busy_reads=0))
    assert done.outcome == "rolled_back"
    assert calls == [("drain", "scale-1-0"), ("fleet", 0), ("release", "alloc-1")]


class GoneRouter(CountingRouter):
    """A router that no longer knows any replica (404 `unknown_replica`)."""

    def drain(self, rid: str) -> ReplicaState:
        self.calls.append(("drain", rid))
        raise ActuatorError("unknown_replica", "drain: the gateway does not know this replica")


def test_a_replica_the_router_no_longer_knows_does_not_hold_up_its_scale_in(engine, ops) -> None:
    calls: list = []
    gate, actuators = scaled_out(engine, ops, calls)
    gone = GatedActuators(router=GoneRouter(calls=calls), provider=actuators.provider, wallet=actuators.wallet)
    done = gated.run_rollback(engine, gate["gate_id"], None, run_id="rb", clock=lambda: later(601), enabled=True,
                              registry=ops.registry, actuators=gone,
                              fleet=BusyThenIdleFleet(calls, busy_reads=10 ** 6))
    assert done.outcome == "rolled_back"
    # Already gone: nothing to wait for (the fleet is not even read), released at once.
    assert calls[1:] == [("drain", "scale-1-0"), ("release", "alloc-1")]


def test_a_quarantine_is_rolled_back_only_by_an_operators_signed_go_ahead(engine, ops) -> None:
    gate = open_gate(engine, QUARANTINE)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    actuators = hands()
    dispatch(engine, gate, ops, actuators, now=later(1))
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    assert (rollback["plan"], rollback["launch"], rollback["due_at"]) == ("readmit_replica", "operator", None)
    assert gated.due_rollbacks(engine, later(10 ** 6)) == []

    def rollback_with(signed, when):  # noqa: ANN001, ANN202
        return gated.run_rollback(engine, gate["gate_id"], signed, run_id="rb", clock=lambda: when, enabled=True,
                                  registry=ops.registry, actuators=actuators, fleet=StaticFleet(fleet()))

    with pytest.raises(Refused) as unsigned:
        rollback_with(None, later(5))
    assert unsigned.value.reason == "no_rollback"
    with pytest.raises(Refused) as approval_reused:  # an approval's signature is not a rollback's
        rollback_with(_with(ops.sign(gate, issued_at=later(5)), decision="rollback"), later(5))
    assert approval_reused.value.reason == "bad_signature"
    signed = ops.sign(gate, operator="bob", decision="rollback", issued_at=later(5))
    done = rollback_with(signed, later(6))
    assert (done.outcome, done.operator) == ("rolled_back", "bob")
    assert actuators.router.calls == [("quarantine", "r-1"), ("admit", "r-1")]
    with pytest.raises(Refused) as replay:
        rollback_with(signed, later(7))
    assert replay.value.reason == "replayed"
    assert [r for r in receipts.for_gate(engine, gate["gate_id"]) if r["decision"] == "rollback"][0][
        "consumed_by_action"] == rollback["rollback_id"]
    assert ("rollback_refused", "replayed") in refused_rows(engine, gate["gate_id"])


def test_a_rollback_whose_run_died_is_launched_again(engine, ops) -> None:
    gate = open_gate(engine, SCALE_OUT)
    approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
    dispatch(engine, gate, ops, now=later(1))
    rollback = receipts.rollback_for(engine, gate["gate_id"])
    with write_tx(engine) as conn:  # a rollback run starts, then dies
        assert receipts.start_rollback(conn, rollback["rollback_id"], run_id="dead", now=later(601), lease_s=120)
    assert gated.due_rollbacks(engine, later(700)) == []
    [again] = gated.due_rollbacks(engine, later(722))
    assert (again["state"], again["attempts"]) == ("pending", 1)  # a new attempt, so a new run key


def test_the_operators_view_of_gates_shows_typed_fields_only(engine) -> None:
    import json

    gate = open_gate(engine, QUARANTINE)
    planted = {**json.loads(gate["action_json"]), "replica_id": "http://10.1.2.3:8000/admin",
               "reason": "token sk-live-abcdefghijklmnopqrstuvwx"}
    with write_tx(engine) as conn:  # whatever the store holds, the view shows only what its types allow
        conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"]).values(
            action_json=json.dumps(planted)))
    view = approvals.open_gates_view(engine, later(90))
    shown = json.dumps(view.value) + approvals.gates_markdown(view)
    assert "10.1.2.3" not in shown and "sk-live" not in shown and view.withheld
    [row] = view.value["gates"]
    assert (row["kind"], row["state"], row["age_s"], row["action_hash_prefix"]) == (
        "quarantine_replica", "pending", 90, gate["action_hash"][:12])
