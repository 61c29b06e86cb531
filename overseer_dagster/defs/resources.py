"""Resources: the store, the fleet source and the mind, configured from the environment at load."""


from datetime import datetime

import dagster as dg
from sqlalchemy import Engine

from overseer_dagster.adapters import fleet_source
from overseer_dagster.adapters.mind import Mind, RuleMind, UnconfiguredMind
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.store import connect


class StoreResource(dg.ConfigurableResource):
    """The overseer's store. Empty URL: OVERSEER_DATABASE_URL, else SQLite under OVERSEER_HOME."""

    database_url: str = ""

    def engine(self) -> Engine:
        return connect(self.database_url or None)


class FleetResource(dg.ConfigurableResource):
    """Where the fleet's routing state is read from (see adapters.fleet_source.from_spec)."""

    source: str = "sample"

    def snapshot(self, now: datetime) -> FleetSnapshot:
        return fleet_source.from_spec(self.source).snapshot(now)


class MindResource(dg.ConfigurableResource):
    """Which mind proposes: `rule` (built in, deterministic)."""

    mind: str = "rule"

    def get(self) -> Mind:
        if self.mind == "rule":
            return RuleMind()
        return UnconfiguredMind(f"OVERSEER_MIND={self.mind!r} is not a mind this code location knows")
