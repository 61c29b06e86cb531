"""Operator settings read from the environment, each failing loudly with the variable's name.

OVERSEER_ENABLED and OVERSEER_MODE are read at every tick and dispatch (kill switch and
advisory mode take effect without a restart); the rest at code-location load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from overseer_dagster.core.limits import Limits

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(RuntimeError):
    """A setting holds a value the overseer cannot use; the message names the variable."""


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """OVERSEER_ENABLED, the operator's kill switch: unset means enabled."""
    env = os.environ if env is None else env
    raw = env.get("OVERSEER_ENABLED")
    if raw is None:
        return True
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"OVERSEER_ENABLED={raw!r} is not a switch: use one of 1/true/yes/on or 0/false/no/off (any case)"
    )


def mode(env: Mapping[str, str] | None = None) -> str:
    """OVERSEER_MODE: `autonomous` (default) executes autonomous actions; `advisory` records only."""
    env = os.environ if env is None else env
    raw = env.get("OVERSEER_MODE", "autonomous")
    if raw.strip().lower() not in ("autonomous", "advisory"):
        raise ConfigError(f"OVERSEER_MODE={raw!r} must be 'autonomous' or 'advisory'")
    return raw.strip().lower()


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number >= {minimum}")
    return value


@dataclass(frozen=True, slots=True)
class TickSettings:
    cadence_s: float = 60.0
    daily_bound: int = 2000
    lease_ttl_s: float = 300.0
    itl_slo_s: float = 0.1
    stress_reserve_slots: int = 1
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TickSettings:
        env = os.environ if env is None else env
        payees = frozenset(p for p in env.get("OVERSEER_PAYEE_REFS", "").split(",") if p)
        gpu_classes = tuple(g for g in env.get("OVERSEER_GPU_CLASSES", "h100,h200,b200").split(",") if g)
        return cls(
            cadence_s=_number(env, "OVERSEER_CADENCE_S", 60.0, minimum=1.0),
            daily_bound=int(_number(env, "OVERSEER_DAILY_BOUND", 2000, minimum=0)),
            itl_slo_s=_number(env, "OVERSEER_ITL_SLO_S", 0.1, minimum=0.001),
            stress_reserve_slots=int(_number(env, "OVERSEER_STRESS_RESERVE", 1, minimum=1)),
            limits=Limits(
                gpu_classes=gpu_classes,
                max_scale_out_count=int(_number(env, "OVERSEER_MAX_SCALE_OUT", 8, minimum=1)),
                payee_refs=payees,
            ),
        )
