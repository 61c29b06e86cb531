"""The authority table: fixed per kind, complete, and out of any proposal's reach."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from overseer_dagster.core.authority import AUTHORITY, Authority, Effect, RiskyKind, effect_of
from overseer_dagster.core.proposal import parse_proposal
from overseer_dagster.core.vocabulary import EXAMPLES, ActionKind

# Literal on purpose: adding a kind, or changing what one may do, must change this test.
# kind: (autonomous, risky_kind, rollback_required, effect)
EXPECTED = {
    "noop": (True, None, False, "none"),
    "start_stress": (True, None, False, "execute"),
    "scale_stress": (True, None, False, "execute"),
    "back_off_stress": (True, None, False, "execute"),
    "stop_stress": (True, None, False, "execute"),
    "readmit_replica": (True, None, False, "execute"),
    "warm_replica": (True, None, False, "execute"),
    "emit_report": (True, None, False, "execute"),
    "request_scale_out": (False, "provider_call", True, "pending_gate"),
    "quarantine_replica": (False, "fleet_mutation", True, "pending_gate"),
    "wallet_spend": (False, "wallet_spend", False, "pending_gate"),
}


def test_every_kind_has_an_entry_and_nothing_else_does() -> None:
    assert set(AUTHORITY) == set(ActionKind) == set(EXPECTED)


def test_authority_table_is_exactly_as_specified() -> None:
    actual = {
        str(kind): (a.autonomous, a.risky_kind, a.rollback_required, str(effect_of(kind)))
        for kind, a in AUTHORITY.items()
    }
    assert actual == EXPECTED


def test_risky_kinds_and_effects_are_exactly_these() -> None:
    assert [k.value for k in RiskyKind] == ["provider_call", "fleet_mutation", "wallet_spend"]
    assert [e.value for e in Effect] == ["execute", "pending_gate", "none"]


def test_table_is_read_only() -> None:
    assert isinstance(AUTHORITY, MappingProxyType)
    with pytest.raises(TypeError):
        AUTHORITY[ActionKind.wallet_spend] = Authority(True, None, False)  # type: ignore[index]
    with pytest.raises(AttributeError):
        AUTHORITY[ActionKind.wallet_spend].autonomous = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields",
    [
        {"autonomous": True, "risky_kind": RiskyKind.provider_call, "rollback_required": False},
        {"autonomous": False, "risky_kind": None, "rollback_required": False},
        {"autonomous": True, "risky_kind": None, "rollback_required": True},
    ],
)
def test_inconsistent_authority_cannot_be_built(fields: dict) -> None:
    with pytest.raises(ValueError):
        Authority(**fields)


def test_effect_of_accepts_kind_values_and_rejects_unknown_kinds() -> None:
    assert effect_of("request_scale_out") is Effect.pending_gate
    with pytest.raises(ValueError):
        effect_of("Request_Scale_Out")


@pytest.mark.parametrize("kind", list(ActionKind))
@pytest.mark.parametrize(
    "smuggled",
    [
        {"autonomous": True},
        {"approved": True},
        {"receipt": "sig:abc"},
        {"gate": "approved"},
        {"status": "approved"},
        {"risky_kind": None},
        {"rollback_required": False},
        {"effect": "execute"},
    ],
    ids=lambda d: next(iter(d)),
)
def test_no_proposal_field_can_change_authority(kind: ActionKind, smuggled: dict) -> None:
    verdict = parse_proposal(json.dumps({"actions": [{**EXAMPLES[kind], **smuggled}]}))
    assert verdict.verdict == "blocked"
    assert verdict.reason == "schema_invalid"
    assert verdict.detail == f"actions[0].{next(iter(smuggled))}: unexpected key"


@pytest.mark.parametrize("smuggled", [{"approved": True}, {"autonomous": True}])
def test_envelope_level_authority_fields_are_blocked_too(smuggled: dict) -> None:
    verdict = parse_proposal(json.dumps({"actions": [EXAMPLES[ActionKind.noop]], **smuggled}))
    assert verdict.verdict == "blocked"
    assert verdict.detail == f"{next(iter(smuggled))}: unexpected key"


# --- gated kinds: only through an effective gate (fleet_mutation, provider_call, wallet_spend) ------------

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "overseer_dagster"


def _calls(tree: ast.AST, attr: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of every call `<anything>.<attr>(...)` or `<attr>(...)` in `tree`."""
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            if isinstance(child, ast.Call):
                func = child.func
                if (isinstance(func, ast.Attribute) and func.attr == attr) or (
                        isinstance(func, ast.Name) and func.id == attr):
                    found.append((where, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def _overseer_modules() -> dict[str, ast.AST]:
    # The lab is the emulated outside world (it *is* a wallet and a provider); the overseer never imports it.
    return {str(p.relative_to(PACKAGE.parent)): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))
            if "lab" not in p.relative_to(PACKAGE).parts}


@pytest.mark.parametrize(("method", "only_in"), [
    ("pay", ("overseer_dagster/gated.py", "_act")),  # the wallet
    ("scale_out", ("overseer_dagster/gated.py", "_act")),  # the provider
    ("quarantine", ("overseer_dagster/gated.py", "_act")),  # the router's fleet mutation
])
def test_every_call_of_a_gated_actuator_is_in_the_gated_dispatch(method: str, only_in: tuple[str, str]) -> None:
    calls = [(module, where) for module, tree in _overseer_modules().items() for where, _ in _calls(tree, method)]
    assert calls == [only_in], f"{method}() is called outside gated._act: {calls}"


def test_the_gated_dispatch_acts_only_after_an_effective_approval_is_claimed_and_consumed() -> None:
    tree = _overseer_modules()["overseer_dagster/gated.py"]
    act_calls = [(where, line) for where, line in _calls(tree, "_act")]
    assert [where for where, _ in act_calls] == ["dispatch_gated"], act_calls
    [(_, act_line)] = act_calls
    [(_, effective_line)] = [c for c in _calls(tree, "effective_problem") if c[0] == "dispatch_gated"]
    [(_, claim_line)] = [c for c in _calls(tree, "claim_gated") if c[0] == "dispatch_gated"]
    [(_, hash_line)] = [c for c in _calls(tree, "action_hash") if c[0] == "dispatch_gated"]
    assert effective_line < claim_line < hash_line < act_line
    # And nothing else in the package reaches `_act` or the wallet's adapter besides the gated module's builder.
    for module, tree_ in _overseer_modules().items():
        reaches_in = [n for n in ast.walk(tree_) if (isinstance(n, ast.Attribute) and n.attr == "_act"
                                                     and isinstance(n.value, ast.Name) and n.value.id == "gated")
                      or (isinstance(n, ast.ImportFrom) and (n.module or "").endswith("gated")
                          and any(a.name == "_act" for a in n.names))]
        assert not reaches_in, module
        for builder in ("wallet_from", "HttpWallet"):
            callers = {where for where, _ in _calls(tree_, builder)}
            assert callers <= {"actuators_from_settings", "wallet_from"}, (module, builder, callers)


@pytest.mark.parametrize("state", ["pending", "rejected", "expired", "forged_receipt", "used", "superseded",
                                   "hash_edited"])
def test_the_wallet_is_never_paid_without_an_effective_gate(engine, tmp_path, state: str) -> None:
    from datetime import timedelta

    from gate_fixtures import NOW, StaticFleet, fleet, hands, open_gate, operators, wallet_spend
    from sqlalchemy import update

    from overseer_dagster import approvals, gated
    from overseer_dagster.receipts import generate_key
    from overseer_dagster.store import write_tx
    from overseer_dagster.store.tables import gates as gates_table

    ops = operators(tmp_path)
    gate = open_gate(engine, wallet_spend())
    now = NOW + timedelta(seconds=5)
    if state == "rejected":
        approvals.decide(engine, ops.registry, ops.sign(gate, decision="reject"), now=NOW)
    elif state == "expired":
        approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
        now = gate["expires_at"]
        gated.expire(engine, now)
    elif state == "forged_receipt":
        forged = generate_key()
        bad = ops.sign(gate, key=forged)
        from overseer_dagster.store import receipts

        with write_tx(engine) as conn:  # written straight into the store, bypassing the checks
            conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"]).values(state="approved"))
            conn.execute(receipts.receipts.insert().values(
                receipt_id="b" * 64, gate_id=gate["gate_id"], action_hash=gate["action_hash"], operator="alice",
                decision="approve", issued_at=bad.issued_at, signature=bad.signature, recorded_at=NOW))
    elif state == "used":
        approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
        first = hands()
        gated.dispatch_gated(engine, gate["action_id"], run_id="first", clock=lambda: now, enabled=True,
                             mode="autonomous", fleet=StaticFleet(fleet()), actuators=first, registry=ops.registry)
        assert len(first.wallet.payments) == 1
    elif state == "superseded":
        approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
        with write_tx(engine) as conn:
            conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"])
                         .values(state="superseded"))
    elif state == "hash_edited":
        approvals.decide(engine, ops.registry, ops.sign(gate), now=NOW)
        with write_tx(engine) as conn:
            conn.execute(update(gates_table).where(gates_table.c.gate_id == gate["gate_id"])
                         .values(action_hash="1" * 64))
    actuators = hands()
    assert gated.sweep(engine, now=now, registry=ops.registry, fleet=StaticFleet(fleet())).launch == []
    result = gated.dispatch_gated(engine, gate["action_id"], run_id="r", clock=lambda: now, enabled=True,
                                  mode="autonomous", fleet=StaticFleet(fleet()), actuators=actuators,
                                  registry=ops.registry)
    assert actuators.wallet.payments == [], result
    assert result.outcome in ("not_effective", "not_queued")
