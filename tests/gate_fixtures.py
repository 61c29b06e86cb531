"""Helpers for gate tests: operator keys made per test, gates opened exactly as a tick opens them,
signed decisions, and hands (router, provider, wallet) that count what they were asked to do."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from overseer_dagster import tick
from overseer_dagster.adapters.actuators import ActuatorError
from overseer_dagster.adapters.spend import Allocation, Payment
from overseer_dagster.approvals import SignedDecision
from overseer_dagster.core.approval import signed_message
from overseer_dagster.core.decide import rows_for
from overseer_dagster.core.fleet import FleetSnapshot, ReplicaState
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import decide_text
from overseer_dagster.gated import GatedActuators
from overseer_dagster.receipts import OperatorRegistry, add_to_registry, generate_key, registry_entry, sign
from overseer_dagster.store import gates

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
LIMITS = Limits(payee_refs=frozenset({"payee-lab", "payee-acme"}))

QUARANTINE = {"kind": "quarantine_replica", "replica_id": "r-1", "reason_code": "health_check_failed",
              "rollback": {"action": "readmit_replica", "replica_id": "r-1"}}
SCALE_OUT = {"kind": "request_scale_out", "gpu_class": "h100", "count": 1, "max_hourly_usd": 12.0,
             "rollback": {"action": "scale_in", "after_s": 600}}


def wallet_spend(amount_sats: int = 21000, payee_ref: str = "payee-lab") -> dict:
    return {"kind": "wallet_spend", "amount_sats": amount_sats, "purpose": "provider_invoice", "payee_ref": payee_ref}


def fleet(now: datetime = NOW, **overrides: dict) -> FleetSnapshot:
    base = {"health": "healthy", "routing_state": "admitted", "inflight": 0, "max_inflight": 16,
            "observed_at": now.isoformat()}
    replicas = [dict(base, replica_id=f"r-{i}") for i in range(3)]
    for rid, fields in overrides.items():
        next(r for r in replicas if r["replica_id"] == rid.replace("_", "-")).update(fields)
    return FleetSnapshot.model_validate({"observed_at": now.isoformat(), "replicas": replicas})


class StaticFleet:
    def __init__(self, snap: FleetSnapshot | None) -> None:
        self.snap = snap

    def snapshot(self, now: datetime) -> FleetSnapshot:
        from overseer_dagster.adapters.fleet_source import FleetSourceError

        if self.snap is None:
            raise FleetSourceError("fleet_unreachable", "the fleet state endpoint is unreachable")
        return self.snap


def open_gate(engine: Engine, action: dict, *, snap: FleetSnapshot | None = None, now: datetime = NOW) -> dict:
    """Decide one gated action as a tick does (parse, validate, rows, one transaction); its gate row."""
    snap = fleet(now) if snap is None else snap
    verdict = decide_text(json.dumps({"actions": [action]}), snap, LIMITS)
    assert verdict.verdict == "valid", verdict
    rows = rows_for(verdict, snap, now=now, mode="autonomous", autonomous_today=0, daily_bound=100)
    [written] = tick._journal(engine, str(uuid.uuid4()), now, rows)  # noqa: SLF001 - the tick's own writer
    assert written["state"] == "pending_approval"
    return gates.get(engine, written["gate_id"])


@dataclass
class Operators:
    keys: dict[str, Ed25519PrivateKey]
    registry: OperatorRegistry
    path: Path

    def sign(self, gate: dict, *, operator: str = "alice", decision: str = "approve",
             issued_at: datetime | str = NOW, key: Ed25519PrivateKey | None = None,
             action_hash: str | None = None, note: str = "") -> SignedDecision:
        issued = issued_at if isinstance(issued_at, str) else issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        message = signed_message(gate_id=gate["gate_id"], action_hash=action_hash or gate["action_hash"],
                                 decision=decision, operator=operator, issued_at=issued)
        return SignedDecision(gate_id=gate["gate_id"], operator=operator, decision=decision, issued_at=issued,
                              signature=sign(key or self.keys[operator], message), note=note)


def operators(tmp_path: Path, names: tuple[str, ...] = ("alice", "bob")) -> Operators:
    """Fresh key pairs for `names`, registered in a JSON registry under tmp_path."""
    keys = {name: generate_key() for name in names}
    path = tmp_path / "operators.json"
    for name, key in keys.items():
        add_to_registry(path, registry_entry(name, key))
    return Operators(keys, OperatorRegistry.load(path), path)


# --- hands that count --------------------------------------------------------------------------------


@dataclass
class CountingRouter:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _state(self, rid: str, state: str) -> ReplicaState:
        return ReplicaState.model_validate({"replica_id": rid, "health": "healthy", "routing_state": state,
                                            "inflight": 0, "max_inflight": 16,
                                            "observed_at": datetime.now(UTC).isoformat()})

    def admit(self, rid: str) -> ReplicaState:
        self.calls.append(("admit", rid))
        return self._state(rid, "admitted")

    def drain(self, rid: str) -> ReplicaState:
        self.calls.append(("drain", rid))
        return self._state(rid, "draining")

    def quarantine(self, rid: str) -> ReplicaState:
        self.calls.append(("quarantine", rid))
        return self._state(rid, "quarantined")


@dataclass
class CountingProvider:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail: str | None = None

    def scale_out(self, *, gpu_class: str, count: int, max_hourly_usd: float, idempotency_key: str) -> Allocation:
        self.calls.append(("scale_out", idempotency_key))
        if self.fail:
            raise ActuatorError(self.fail, "provider says no")
        return Allocation("alloc-1", gpu_class, count, 4.0 * count, "provisioning", ("scale-1-0",))

    def release(self, allocation_id: str) -> Allocation:
        self.calls.append(("release", allocation_id))
        if self.fail:
            raise ActuatorError(self.fail, "provider says no")
        return Allocation(allocation_id, "h100", 1, 4.0, "released")

    def find(self, idempotency_key: str) -> Allocation | None:
        return next((Allocation("alloc-1", "h100", 1, 4.0, "ready", ("scale-1-0",)) for c in self.calls
                     if c == ("scale_out", idempotency_key)), None)


@dataclass
class CountingWallet:
    payments: list[tuple[str, int, str]] = field(default_factory=list)

    def pay(self, *, payee_ref: str, amount_sats: int, purpose: str, idempotency_key: str) -> Payment:
        self.payments.append((payee_ref, amount_sats, idempotency_key))
        return Payment(f"pay-{len(self.payments)}", payee_ref, amount_sats, purpose, "settled")

    def find(self, idempotency_key: str) -> Payment | None:
        return next((Payment("pay-1", p, a, "provider_invoice", "settled") for p, a, k in self.payments
                     if k == idempotency_key), None)


def hands() -> GatedActuators:
    return GatedActuators(router=CountingRouter(), provider=CountingProvider(), wallet=CountingWallet())


def later(seconds: float, start: datetime = NOW) -> datetime:
    return start + timedelta(seconds=seconds)
