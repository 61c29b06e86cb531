"""Operator settings read from the environment, each failing loudly with the variable's name.

OVERSEER_ENABLED and OVERSEER_MODE are read at every tick and dispatch (kill switch and
advisory mode take effect without a restart); the rest at code-location load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from overseer_dagster.core.health import Thresholds
from pydantic import ValidationError

from overseer_dagster.core.limits import Limits
from overseer_dagster.core.vocabulary import MAX_HOURLY_USD

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


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float,
            maximum: float = float("inf")) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value <= maximum or value == float("inf"):
        bound = f">= {minimum}" if maximum == float("inf") else f"from {minimum} to {maximum}"
        raise ConfigError(f"{name}={raw!r} must be a finite number {bound}")
    return value


@dataclass(frozen=True, slots=True)
class TickSettings:
    cadence_s: float = 60.0
    daily_bound: int = 2000
    lease_ttl_s: float = 300.0
    itl_slo_s: float = 0.1
    stress_reserve_slots: int = 1
    # The hourly ceiling the rule policy's scale-out asks an operator to sign (at most MAX_HOURLY_USD).
    scale_out_max_hourly_usd: float = 12.0
    limits: Limits = field(default_factory=Limits)

    @property
    def scale_out_gpu_class(self) -> str | None:
        """The GPU class the rule policy asks for when it asks for capacity: the first configured, or None."""
        return next(iter(self.limits.gpu_classes), None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TickSettings:
        env = os.environ if env is None else env
        return cls(
            cadence_s=_number(env, "OVERSEER_CADENCE_S", 60.0, minimum=1.0),
            daily_bound=int(_number(env, "OVERSEER_DAILY_BOUND", 2000, minimum=0)),
            itl_slo_s=_number(env, "OVERSEER_ITL_SLO_S", 0.1, minimum=0.001),
            stress_reserve_slots=int(_number(env, "OVERSEER_STRESS_RESERVE", 1, minimum=1)),
            scale_out_max_hourly_usd=_number(env, "OVERSEER_SCALE_OUT_MAX_HOURLY_USD", 12.0, minimum=0.01,
                                             maximum=MAX_HOURLY_USD),
            limits=_limits(env),
        )


def _limits(env: Mapping[str, str]) -> Limits:
    fields = {
        "gpu_classes": ("OVERSEER_GPU_CLASSES", tuple(g for g in env.get("OVERSEER_GPU_CLASSES", "h100,h200,b200").split(",") if g)),
        "max_scale_out_count": ("OVERSEER_MAX_SCALE_OUT", int(_number(env, "OVERSEER_MAX_SCALE_OUT", 8, minimum=1))),
        "payee_refs": ("OVERSEER_PAYEE_REFS", frozenset(p for p in env.get("OVERSEER_PAYEE_REFS", "").split(",") if p)),
    }
    try:
        return Limits(**{name: value for name, (_var, value) in fields.items()})
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = fields[str(first["loc"][0])][0]
        raise ConfigError(f"{variable}: {first['msg']}") from None


def router_url(env: Mapping[str, str] | None = None) -> str | None:
    """Where the router's admin and completion endpoints live (the gateway), or None: no router.

    OVERSEER_ROUTER_URL when set; else the origin of an HTTP(S) OVERSEER_FLEET_SOURCE
    (`snapshot:http://gateway:port/fleet/state` -> `http://gateway:port`), since the gateway that
    serves the routing state is the one that routes.
    """
    from urllib.parse import urlsplit

    env = os.environ if env is None else env
    raw = env.get("OVERSEER_ROUTER_URL", "").strip()
    if raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"OVERSEER_ROUTER_URL={raw!r} must be an http(s) URL such as http://gateway:8080")
        return raw.rstrip("/")
    kind, _, location = env.get("OVERSEER_FLEET_SOURCE", "sample").partition(":")
    if kind == "snapshot" and location.startswith(("http://", "https://")):
        parts = urlsplit(location)
        return f"{parts.scheme}://{parts.netloc}"
    return None


def warm_model(env: Mapping[str, str] | None = None) -> str | None:
    """OVERSEER_WARM_MODEL: the model warm-up requests name; unset: the gateway's first `/v1/models` entry."""
    env = os.environ if env is None else env
    return env.get("OVERSEER_WARM_MODEL", "").strip() or None


def _service_url(env: Mapping[str, str] | None, name: str) -> str | None:
    from urllib.parse import urlsplit

    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={raw!r} must be an http(s) URL")
    return raw.rstrip("/")


def provider_url(env: Mapping[str, str] | None = None) -> str | None:
    """OVERSEER_PROVIDER_URL: the GPU provider approved `request_scale_out` gates call; unset: none."""
    return _service_url(env, "OVERSEER_PROVIDER_URL")


def wallet_url(env: Mapping[str, str] | None = None) -> str | None:
    """OVERSEER_WALLET_URL: the wallet approved `wallet_spend` gates call; unset: none (never defaulted)."""
    return _service_url(env, "OVERSEER_WALLET_URL")


def health_thresholds(env: Mapping[str, str] | None = None) -> Thresholds:
    """Health freshness: OVERSEER_HEALTH_FRESH_CADENCES (default 3) tick cadences make a signal stale."""
    env = os.environ if env is None else env
    tick = TickSettings.from_env(env)
    return Thresholds(
        cadence_s=tick.cadence_s,
        fresh_cadences=_number(env, "OVERSEER_HEALTH_FRESH_CADENCES", 3.0, minimum=1.0),
        itl_slo_s=tick.itl_slo_s,
    )
