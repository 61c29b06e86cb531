"""The action vocabulary: every action a mind may propose, as strict pydantic models.

`Action` is a discriminated union on `kind`; `Envelope` is the whole proposal
(`{"actions": [...]}`, 1 to 8 actions). Every model forbids extra keys, is strict
(no "8" -> 8, no 8.0 -> 8, no true -> 1) and frozen. Nothing here grants authority:
what an action may do is keyed by its kind in `core.authority`, never by a proposal field.

Free text (`reason`, `summary`) allows no control characters but newline and tab, no format
(Unicode Cf: bidi, zero-width, BOM), invisible filler, separator or lone-surrogate characters,
and must pass `redact.is_public_safe`.

Configuration-dependent rules (offered GPU classes, the fleet's scale-out maximum,
registered payees) are not checked here; they need `Limits` and live in `core.proposal`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from overseer_dagster.core import redact
from overseer_dagster.core.fleet import REPLICA_ID_PATTERN

PAYEE_REF_PATTERN = r"payee-[a-z0-9]{1,16}"
# Shape only; whether the class is offered is configuration (`Limits.gpu_classes`).
GPU_CLASS_PATTERN = r"[a-z0-9][a-z0-9-]{0,31}"
MAX_ACTIONS = 8
# The highest hourly ceiling a request_scale_out may carry.
MAX_HOURLY_USD = 500


def _anchored(pattern: str) -> str:
    # pydantic's `pattern=` searches; anchoring makes it a full match (Rust regex: `$` is end of text).
    return rf"^(?:{pattern})$"


class ActionKind(StrEnum):
    noop = "noop"
    start_stress = "start_stress"
    scale_stress = "scale_stress"
    back_off_stress = "back_off_stress"
    stop_stress = "stop_stress"
    readmit_replica = "readmit_replica"
    warm_replica = "warm_replica"
    emit_report = "emit_report"
    request_scale_out = "request_scale_out"
    quarantine_replica = "quarantine_replica"
    wallet_spend = "wallet_spend"


# --- free text --------------------------------------------------------------------------------

# Invisible characters outside category Cf (fillers, combining grapheme joiner).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
# Cc: controls, Cf: format (bidi overrides/isolates, zero-width, BOM), Cs: lone surrogates,
# Zl/Zp: line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@lru_cache(maxsize=4096)
def _forbidden(char: str) -> bool:
    if char in "\n\t":
        return False
    return char in _INVISIBLE or unicodedata.category(char) in _FORBIDDEN_CATEGORIES


def _check_free_text(text: str) -> str:
    bad = [c for c in set(text) if _forbidden(c)]
    if bad:
        first = min(bad, key=text.index)
        raise ValueError(f"contains a forbidden control, format or invisible character (U+{ord(first):04X})")
    if not redact.is_public_safe(text):
        raise ValueError("is not public-safe (it looks like it contains an address, credential or other secret)")
    return text


# Free text: no controls but \n and \t, no format/bidi/zero-width characters, public-safe.
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_check_free_text)]
Summary = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_check_free_text)]
ReplicaRef = Annotated[str, Field(max_length=63, pattern=_anchored(REPLICA_ID_PATTERN))]
PayeeRef = Annotated[str, Field(max_length=22, pattern=_anchored(PAYEE_REF_PATTERN))]
GpuClass = Annotated[str, Field(max_length=32, pattern=_anchored(GPU_CLASS_PATTERN))]
Concurrency = Annotated[int, Field(ge=1, le=64)]


# --- actions ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    _field_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._field_names = frozenset(cls.model_fields)

    @model_validator(mode="before")
    @classmethod
    def _no_key_flood(cls, data: object) -> object:
        # pydantic reports every extra key, and 64 KiB holds thousands. More keys than fields
        # means at least one is unexpected: report the first one alone.
        if type(data) is dict and len(data) > len(cls._field_names):
            key = next(k for k in data if k not in cls._field_names)
            raise PydanticCustomError("unexpected_key", "an unexpected key (more keys than fields)", {"key": key})
        return data


class _Action(_Strict):
    reason: Reason | None = None

    @property
    def action_kind(self) -> ActionKind:
        return ActionKind(self.kind)  # type: ignore[attr-defined]


class Noop(_Action):
    kind: Literal["noop"] = "noop"


class StartStress(_Action):
    kind: Literal["start_stress"] = "start_stress"
    concurrency: Concurrency  # per replica
    duration_s: int = Field(ge=10, le=3600)
    replica_id: ReplicaRef | None = None  # absent: every eligible replica


class ScaleStress(_Action):
    kind: Literal["scale_stress"] = "scale_stress"
    concurrency: Concurrency
    replica_id: ReplicaRef | None = None


class BackOffStress(_Action):
    kind: Literal["back_off_stress"] = "back_off_stress"
    factor: float = Field(ge=0.05, le=0.95, allow_inf_nan=False)
    replica_id: ReplicaRef | None = None


class StopStress(_Action):
    kind: Literal["stop_stress"] = "stop_stress"
    replica_id: ReplicaRef | None = None


class ReadmitReplica(_Action):
    kind: Literal["readmit_replica"] = "readmit_replica"
    replica_id: ReplicaRef


class WarmReplica(_Action):
    kind: Literal["warm_replica"] = "warm_replica"
    replica_id: ReplicaRef
    requests: int = Field(ge=1, le=100)


class EmitReport(_Action):
    kind: Literal["emit_report"] = "emit_report"
    topic: Literal["capacity", "health", "cost", "incident"]
    summary: Summary


class ScaleInRollback(_Strict):
    action: Literal["scale_in"] = "scale_in"
    after_s: int = Field(ge=300, le=86400)


class RequestScaleOut(_Action):
    kind: Literal["request_scale_out"] = "request_scale_out"
    gpu_class: GpuClass
    count: int = Field(ge=1, le=8)
    max_hourly_usd: float = Field(gt=0, le=MAX_HOURLY_USD, allow_inf_nan=False)
    rollback: ScaleInRollback


class QuarantineRollback(_Strict):
    action: Literal["readmit_replica"] = "readmit_replica"
    replica_id: ReplicaRef


class QuarantineReplica(_Action):
    kind: Literal["quarantine_replica"] = "quarantine_replica"
    replica_id: ReplicaRef
    reason_code: Literal["health_check_failed", "error_rate", "latency_slo", "operator_request"]
    rollback: QuarantineRollback

    @model_validator(mode="after")
    def _rollback_readmits_the_same_replica(self) -> QuarantineReplica:
        if self.rollback.replica_id != self.replica_id:
            raise ValueError("rollback.replica_id must equal replica_id (the quarantined replica)")
        return self


class WalletSpend(_Action):
    kind: Literal["wallet_spend"] = "wallet_spend"
    amount_sats: int = Field(ge=1, le=100_000)
    purpose: Literal["scale_out_deposit", "provider_invoice"]
    payee_ref: PayeeRef


Action = Annotated[
    Union[
        Noop,
        StartStress,
        ScaleStress,
        BackOffStress,
        StopStress,
        ReadmitReplica,
        WarmReplica,
        EmitReport,
        RequestScaleOut,
        QuarantineReplica,
        WalletSpend,
    ],
    Field(discriminator="kind"),
]


def _json_array_as_tuple(value: object) -> object:
    # Strict tuples reject lists; a JSON array arrives as a list. Nothing else is converted.
    if type(value) is not list:
        return value
    # Checked before the items are: pydantic would validate (and report) every one first.
    if len(value) > MAX_ACTIONS:
        raise PydanticCustomError(
            "too_long",
            "at most {max_length} actions",
            {"field_type": "List", "max_length": MAX_ACTIONS, "actual_length": len(value)},
        )
    return tuple(value)


class Envelope(_Strict):
    """The whole proposal: exactly one key, `actions`, holding 1 to 8 actions."""

    actions: Annotated[
        tuple[Action, ...],
        BeforeValidator(_json_array_as_tuple),
        Field(min_length=1, max_length=MAX_ACTIONS),
    ]


# One valid example per kind, as a mind would write it (the wallet_spend payee must also be
# registered in `Limits.payee_refs` to pass the configuration check).
EXAMPLES: Mapping[ActionKind, Mapping[str, object]] = MappingProxyType(
    {
        ActionKind.noop: {"kind": "noop", "reason": "fleet is steady"},
        ActionKind.start_stress: {"kind": "start_stress", "concurrency": 8, "duration_s": 600},
        ActionKind.scale_stress: {"kind": "scale_stress", "concurrency": 16, "replica_id": "gpu-node-1"},
        ActionKind.back_off_stress: {"kind": "back_off_stress", "factor": 0.5},
        ActionKind.stop_stress: {"kind": "stop_stress", "replica_id": "gpu-node-1"},
        ActionKind.readmit_replica: {"kind": "readmit_replica", "replica_id": "gpu-node-2"},
        ActionKind.warm_replica: {"kind": "warm_replica", "replica_id": "gpu-node-2", "requests": 20},
        ActionKind.emit_report: {
            "kind": "emit_report",
            "topic": "capacity",
            "summary": "Headroom 42 slots on 6 ready replicas.\nNo incidents.",
        },
        ActionKind.request_scale_out: {
            "kind": "request_scale_out",
            "gpu_class": "h100",
            "count": 2,
            "max_hourly_usd": 24.5,
            "rollback": {"action": "scale_in", "after_s": 3600},
            "reason": "queue depth rising for 10 minutes",
        },
        ActionKind.quarantine_replica: {
            "kind": "quarantine_replica",
            "replica_id": "gpu-node-3",
            "reason_code": "error_rate",
            "rollback": {"action": "readmit_replica", "replica_id": "gpu-node-3"},
        },
        ActionKind.wallet_spend: {
            "kind": "wallet_spend",
            "amount_sats": 21000,
            "purpose": "provider_invoice",
            "payee_ref": "payee-acme",
        },
    }
)
