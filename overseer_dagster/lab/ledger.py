"""Ledger writes off the event loop: records are buffered and flushed in batches on an executor thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from overseer_dagster.core.demand import UsageRecord

log = logging.getLogger(__name__)

Sink = Callable[[list[UsageRecord]], None]


def store_sink(database_url: str | None = None) -> Sink:
    """A sink writing to the overseer's store (migrates on connect; None = the store's default database)."""
    from overseer_dagster.store import connect
    from overseer_dagster.store.ledger import record_usage

    engine = connect(database_url)

    def write(records: Sequence[UsageRecord]) -> None:
        record_usage(engine, records)

    return write


class LedgerBuffer:
    """Collects records on the loop; a background task hands a batch to the sink every `flush_interval_s`."""

    def __init__(self, sink: Sink | None, *, flush_interval_s: float = 0.5) -> None:
        self._sink = sink
        self._interval = flush_interval_s
        self._pending: list[UsageRecord] = []
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def add(self, record: UsageRecord) -> None:
        if self._sink is not None:
            self._pending.append(record)

    def start(self) -> None:
        if self._sink is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if not self._pending or self._sink is None:
            return
        batch, self._pending = self._pending, []
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._sink, batch)
            self.written += len(batch)
        except Exception:  # a ledger outage must not take the fleet down
            self.dropped += len(batch)
            log.exception("ledger write of %d records failed; dropped", len(batch))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
