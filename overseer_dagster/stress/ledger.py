"""Stress telemetry to the ledger: one `internal_stress` row per request, written in batches off the hot loop.

Records are buffered on the event loop and handed to the sink (a blocking store write) on an executor thread
every `flush_interval_s`. A failed write keeps the batch for the next try, up to `max_pending` records; beyond
that the oldest are dropped and counted. The store being down never slows the fast loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from overseer_dagster.core.demand import UsageRecord

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[UsageRecord]], None]


def store_sink(database_url: str | None) -> Sink:
    """Writes to the overseer's store; connects (and migrates) on the first write, so a down store is retried."""
    engine = None

    def write(records: Sequence[UsageRecord]) -> None:
        nonlocal engine
        from overseer_dagster.store import connect
        from overseer_dagster.store.ledger import record_usage

        if engine is None:
            engine = connect(database_url)
        record_usage(engine, records)

    return write


class LedgerBatcher:
    def __init__(self, sink: Sink | None, *, flush_interval_s: float = 1.0, max_pending: int = 20_000) -> None:
        self._sink = sink
        self._interval = flush_interval_s
        self._max = max_pending
        self._pending: list[UsageRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.written = 0
        self.dropped = 0
        self.write_failures = 0

    def add(self, record: UsageRecord) -> None:
        if self._sink is None:
            return
        self._pending.append(record)
        if len(self._pending) > self._max:
            over = len(self._pending) - self._max
            del self._pending[:over]
            self.dropped += over

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
        except Exception as exc:  # noqa: BLE001 - a ledger outage must not stop stress accounting
            self.write_failures += 1
            if not self._failing:
                log.warning("stress ledger write failed (%s); keeping %d records for the next try",
                            type(exc).__name__, len(batch))
            self._failing = True
            self._pending[:0] = batch
            if len(self._pending) > self._max:
                over = len(self._pending) - self._max
                del self._pending[:over]
                self.dropped += over
            return
        if self._failing:
            log.info("stress ledger writes recovered")
        self._failing = False
        self.written += len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()
