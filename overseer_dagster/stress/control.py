"""The slow loop's orders as the harness follows them: stress targets from the store, with a dead-man.

`TargetFollower` is pure, with `now` (aware UTC) passed in; `store_reader` does the blocking store read. The overseer writes `stress_targets` rows (pool-wide: replica_id
NULL, or per replica; the newest unexpired row per scope wins). A per-replica target overrides the pool-wide
one for that replica. Dead-man: when no target has been written for `2 * cadence_s`, every target is zero.
When the store cannot be read, the last targets read stay in force until they expire or the dead-man fires,
whichever comes first; then zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

DEAD_MAN_CADENCES = 2


@dataclass(frozen=True, slots=True)
class Target:
    concurrency: int
    expires_at: datetime


class TargetFollower:
    def __init__(self, cadence_s: float) -> None:
        if cadence_s <= 0:
            raise ValueError("cadence_s must be positive")
        self.cadence_s = cadence_s
        self._targets: dict[str | None, Target] = {}
        self._last_refreshed: datetime | None = None
        self.last_read_at: datetime | None = None
        self.read_failures = 0

    def observe(self, targets: Mapping[str | None, Target], last_refreshed: datetime | None, now: datetime) -> None:
        """A successful read of the store: the active target per scope and when a target was last written."""
        self._targets = dict(targets)
        self._last_refreshed = last_refreshed
        self.last_read_at = now

    def read_failed(self) -> None:
        """The store could not be read: keep what we had."""
        self.read_failures += 1

    def dead_man_fired(self, now: datetime) -> bool:
        last = self._last_refreshed
        return last is None or now - last > timedelta(seconds=DEAD_MAN_CADENCES * self.cadence_s)

    def targets(self, now: datetime, replica_ids: Iterable[str]) -> dict[str, int]:
        """The stress concurrency in force per replica."""
        ids = list(replica_ids)
        if self.dead_man_fired(now):
            return dict.fromkeys(ids, 0)
        live = {scope: t.concurrency for scope, t in self._targets.items() if t.expires_at > now}
        pool = live.get(None, 0)
        return {rid: live.get(rid, pool) for rid in ids}


# --- reading the store ------------------------------------------------------------------------------------

TargetRead = tuple[dict[str | None, Target], datetime | None]


def store_reader(database_url: str | None) -> Callable[[datetime], TargetRead]:
    """A blocking reader of the store's active targets and when one was last written (run it off the loop).

    It connects on first use and again after a failure, so a store that comes back is picked up.
    """
    engine = None

    def read(now: datetime) -> TargetRead:
        nonlocal engine
        from overseer_dagster.store import connect
        from overseer_dagster.store import targets as store_targets

        if engine is None:
            engine = connect(database_url)
        try:
            active = store_targets.active(engine, now)
            last = store_targets.last_refreshed(engine)
        except Exception:
            engine = None
            raise
        return {scope: Target(t.concurrency, t.expires_at) for scope, t in active.items()}, last

    return read
