"""Who may do what: the authority of each action kind, fixed on the server side.

Authority is looked up by `kind` alone. No proposal field can change it: the vocabulary
forbids extra keys, so an action carrying `autonomous`, `approved`, `gate`, ... is blocked
before it ever reaches this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from overseer_dagster.core.vocabulary import ActionKind


class RiskyKind(StrEnum):
    provider_call = "provider_call"
    fleet_mutation = "fleet_mutation"
    wallet_spend = "wallet_spend"


@dataclass(frozen=True, slots=True)
class Authority:
    autonomous: bool
    risky_kind: RiskyKind | None
    rollback_required: bool

    def __post_init__(self) -> None:
        if self.autonomous != (self.risky_kind is None):
            raise ValueError("an action is autonomous exactly when it has no risky kind")
        if self.autonomous and self.rollback_required:
            raise ValueError("only gated actions carry a required rollback")


_AUTONOMOUS = Authority(autonomous=True, risky_kind=None, rollback_required=False)

AUTHORITY: Mapping[ActionKind, Authority] = MappingProxyType(
    {
        ActionKind.noop: _AUTONOMOUS,
        ActionKind.start_stress: _AUTONOMOUS,
        ActionKind.scale_stress: _AUTONOMOUS,
        ActionKind.back_off_stress: _AUTONOMOUS,
        ActionKind.stop_stress: _AUTONOMOUS,
        ActionKind.readmit_replica: _AUTONOMOUS,
        ActionKind.warm_replica: _AUTONOMOUS,
        ActionKind.emit_report: _AUTONOMOUS,
        ActionKind.request_scale_out: Authority(
            autonomous=False, risky_kind=RiskyKind.provider_call, rollback_required=True
        ),
        ActionKind.quarantine_replica: Authority(
            autonomous=False, risky_kind=RiskyKind.fleet_mutation, rollback_required=True
        ),
        ActionKind.wallet_spend: Authority(
            autonomous=False, risky_kind=RiskyKind.wallet_spend, rollback_required=False
        ),
    }
)

_missing = set(ActionKind) - AUTHORITY.keys()
if _missing:  # pragma: no cover - a new kind without an authority entry must not import
    raise RuntimeError(f"no authority for action kinds: {sorted(_missing)}")


class Effect(StrEnum):
    execute = "execute"
    pending_gate = "pending_gate"
    none = "none"


def effect_of(kind: ActionKind | str) -> Effect:
    """What accepting an action of this kind does. Raises ValueError for an unknown kind."""
    kind = ActionKind(kind)
    if kind is ActionKind.noop:
        return Effect.none
    return Effect.execute if AUTHORITY[kind].autonomous else Effect.pending_gate
