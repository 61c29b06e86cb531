"""Resources: the store, the fleet source and the mind, configured from the environment at load."""

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

from overseer_dagster import settings
from overseer_dagster.adapters import fleet_source
from overseer_dagster.adapters.actuators import Actuators, from_settings
from overseer_dagster.adapters import script_mind
from overseer_dagster.adapters.mind import Mind, RuleMind, UnconfiguredMind
from overseer_dagster.adapters.openai_mind import OpenAIMind
from overseer_dagster.adapters.script_mind import ScriptMind
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.settings import ConfigError
from overseer_dagster.store import connect
from overseer_dagster.store.db import overseer_home


class StoreResource(dg.ConfigurableResource):
    """The overseer's store. Empty URL: OVERSEER_DATABASE_URL, else SQLite under OVERSEER_HOME."""

    database_url: str = ""

    def engine(self) -> Engine:
        return connect(self.database_url or None)


class FleetResource(dg.ConfigurableResource):
    """Where the fleet's routing state is read from (see adapters.fleet_source.from_spec)."""

    source: str = "sample"

    def snapshot(self, now: datetime) -> FleetSnapshot:
        return fleet_source.from_spec(self.source, home=overseer_home()).snapshot(now)


class MindResource(dg.ConfigurableResource):
    """Which mind proposes: `rule` (built in, deterministic), `openai` (an OpenAI-compatible server)
    or `script:FILE` (replays FILE in order, for tests and demos; see adapters.script_mind)."""

    # `script:FILE`, the base URL and the key are set as dg.EnvVar: the UI shows the variable's name,
    # never a path, URL or secret.
    mind: str = "rule"
    base_url: str = ""
    model: str = ""
    api_key: str | None = None
    timeout_s: float = 20.0
    max_tokens: int = 1024

    @classmethod
    def from_env(cls) -> "MindResource":
        return cls(
            mind=(dg.EnvVar("OVERSEER_MIND") if os.environ.get("OVERSEER_MIND", "").startswith("script:")
                  else os.environ.get("OVERSEER_MIND", "rule")),
            base_url=dg.EnvVar("OVERSEER_MIND_BASE_URL") if os.environ.get("OVERSEER_MIND_BASE_URL") else "",
            model=os.environ.get("OVERSEER_MIND_MODEL", ""),
            # Optional: a local server may need no key.
            api_key=dg.EnvVar("OVERSEER_MIND_API_KEY") if os.environ.get("OVERSEER_MIND_API_KEY") else None,
            timeout_s=_positive(os.environ, "OVERSEER_MIND_TIMEOUT_S", 20.0),
            max_tokens=int(_positive(os.environ, "OVERSEER_MIND_MAX_TOKENS", 1024)),
        )

    def get(self) -> Mind:
        mind, base_url = _resolved(self.mind) or "", _resolved(self.base_url) or ""
        if mind == "rule":
            return RuleMind()
        if mind == "openai":
            missing = [name for name, value in (("OVERSEER_MIND_BASE_URL", base_url),
                                                ("OVERSEER_MIND_MODEL", self.model)) if not value]
            if missing:
                return UnconfiguredMind(f"OVERSEER_MIND=openai needs {' and '.join(missing)}")
            if not base_url.startswith(("http://", "https://")):
                return UnconfiguredMind("OVERSEER_MIND_BASE_URL must be an http(s) URL")
            try:
                limits = settings.TickSettings.from_env().limits
            except ConfigError as exc:
                return UnconfiguredMind(str(exc))
            return OpenAIMind(base_url, self.model, _resolved(self.api_key), timeout_s=self.timeout_s,
                              max_tokens=self.max_tokens, limits=limits)
        if mind.startswith("script:"):
            if not mind.removeprefix("script:"):
                return UnconfiguredMind("OVERSEER_MIND=script:FILE needs a file")
            return ScriptMind(Path(mind.removeprefix("script:")).expanduser(),
                              overseer_home() / script_mind.STATE_FILE, timeout_s=self.timeout_s)
        return UnconfiguredMind(f"OVERSEER_MIND={mind!r} is not a mind this code location knows")


def _resolved(value: str | None) -> str | None:
    # Inside a run Dagster has resolved EnvVar fields; outside one (a direct call) resolve them here.
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a positive number")
    return value


class ActuatorsResource(dg.ConfigurableResource):
    """The overseer's hands: the store (stress targets, reports) and the gateway, when one is configured.

    Empty fields are read from the environment when the actuators are built (so no gateway address
    shows in the UI): OVERSEER_ROUTER_URL, defaulting to the origin of an http(s) OVERSEER_FLEET_SOURCE,
    and OVERSEER_WARM_MODEL. No router: router and warm-up actions fail with `router_unconfigured`.
    """

    router_url: str = ""
    warm_model: str = ""

    def build(self, engine: Engine, *, cadence_s: float) -> Actuators:
        return from_settings(engine, router_url=self.router_url or settings.router_url(),
                             warm_model=self.warm_model or settings.warm_model(), cadence_s=cadence_s)
