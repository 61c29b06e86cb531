"""Configured limits a proposal is checked against (beyond the fixed vocabulary)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from overseer_dagster.core.vocabulary import GPU_CLASS_PATTERN, MAX_ACTIONS, PAYEE_REF_PATTERN

_GpuClass = Annotated[str, Field(pattern=rf"^(?:{GPU_CLASS_PATTERN})$")]
_PayeeRef = Annotated[str, Field(pattern=rf"^(?:{PAYEE_REF_PATTERN})$")]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # GPU classes request_scale_out may ask for.
    gpu_classes: tuple[_GpuClass, ...] = ("h100", "h200", "b200")
    # The configured fleet maximum for request_scale_out.count (the vocabulary caps it at 8).
    max_scale_out_count: int = Field(default=8, ge=0, le=8)
    # Pre-registered payees wallet_spend may pay; empty: every wallet_spend is blocked.
    payee_refs: frozenset[_PayeeRef] = frozenset()
    max_actions_per_tick: int = Field(default=MAX_ACTIONS, ge=1, le=MAX_ACTIONS)
