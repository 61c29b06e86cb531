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
