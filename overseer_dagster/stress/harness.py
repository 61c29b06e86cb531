"""The stress harness: keeps replicas busy with preemptible `internal_stress` requests that yield within a second.

Two loops, independent:
- the fast loop (here, every `interval_s` and on every fresh load reading): allowance per replica from live
  load (`allowance`), cancels the excess at once (closing the stream frees the slot; counted as preempted),
  starts new requests up to the allowance, skips replicas that are backing off (`backoff`);
- the slow loop (the overseer's tick, elsewhere) writes `stress_targets`; the harness reads them every
  `targets_poll_s` off the event loop and follows them with a dead-man (`control`).

If the store, Dagster or the mind is down, the fast loop keeps protecting external users and the dead-man
brings stress to zero. Requests go straight to each replica's OpenAI endpoint, tagged `X-Demand-Kind:
internal_stress` and `user: overseer-stress`; every one ends as a ledger row (`ledger`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from overseer_dagster.core.demand import DemandKind, Outcome, UsageRecord
from overseer_dagster.stress.allowance import STALE_AFTER_S, Allowances, ReplicaLoad, to_cancel, to_launch
from overseer_dagster.stress.backoff import ReplicaBackoff
from overseer_dagster.stress.control import TargetFollower, TargetRead
from overseer_dagster.stress.ledger import LedgerBatcher, Sink
from overseer_dagster.stress.load import LoadError, LoadSource
from overseer_dagster.stress.workload import StressRequest, Workload

log = logging.getLogger(__name__)

DEMAND_KIND_HEADER = "X-Demand-Kind"
_HEADERS = {DEMAND_KIND_HEADER: DemandKind.internal_stress.value}
_SSE_FIELDS = ("event:", "id:", "retry:", ":")
# After yielding, read again soon and a few times: freed slots are taken by queued external requests the
# load source may not show, and those only appear as external in flight a round trip or two later.
FOLLOW_UP_S = 0.02
FOLLOW_UPS = 3
# A pass later than this after the previous one breaks the promise to yield within a second: no stress for
# QUIET_S (the process is starved, or was suspended).
LATE_AFTER_S = 1.0
QUIET_S = 5.0


@dataclass(frozen=True)
class HarnessConfig:
    interval_s: float = 0.25
    reserve: int = 1
    cadence_s: float = 60.0
    stale_after_s: float = STALE_AFTER_S
    targets_poll_s: float = 1.0
    seed: int = 0
    model: str | None = None
    connect_timeout_s: float = 2.0
    # No byte from a replica for this long fails the request (a hung replica).
    read_timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass
class Flight:
    flight_id: int
    replica_id: str
    request: StressRequest
    started_at: float
    task: asyncio.Task[None] | None = None
    # Set when the harness cancels it to yield the slot (or on shutdown): the outcome is `preempted`.
    preempt_reason: str | None = None
    recorded: bool = False


@dataclass
class Tally:
    launched: int = 0
    ok: int = 0
    preempted: int = 0
    refused: int = 0
    errors: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    # (replica_id, reason) -> count
    error_reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    preempt_reasons: Counter[str] = field(default_factory=Counter)


def _wall() -> datetime:
    return datetime.now(UTC)


class StressHarness:
    def __init__(self, replicas: Mapping[str, str], *, load: LoadSource,
                 read_targets: Callable[[datetime], TargetRead], sink: Sink | None = None,
                 config: HarnessConfig | None = None, workload: Workload | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] = _wall,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not replicas:
            raise ValueError("the harness needs at least one replica")
        self.config = cfg = config or HarnessConfig()
        self.replicas = {rid: url.rstrip("/") for rid, url in replicas.items()}
        self.load = load
        self._read_targets = read_targets
        self.clock = clock
        self.wall = wall
        self.workload = workload or Workload(cfg.seed, model=cfg.model)
        self.follower = TargetFollower(cfg.cadence_s)
        self.allowances = Allowances(reserve=cfg.reserve, stale_after_s=cfg.stale_after_s,
                                     ramp_interval_s=cfg.interval_s)
        self.ledger = LedgerBatcher(sink)
        self.loads: dict[str, ReplicaLoad] = {}
        self.inflight: dict[str, dict[int, Flight]] = {rid: {} for rid in self.replicas}
        self.backoff = {rid: ReplicaBackoff(cfg.backoff_base_s, cfg.backoff_max_s) for rid in self.replicas}
        self.tally = Tally()
        self.targets: dict[str, int] = dict.fromkeys(self.replicas, 0)
        self.allowed: dict[str, int] = dict.fromkeys(self.replicas, 0)
        self.load_failures = 0
        self._load_problem: str | None = None
        self._full_until: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._read_soon = asyncio.Event()
        self._follow_ups = 0
        self._last_pass: float | None = None
        self._quiet_until = float("-inf")
        self._transport = transport
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the fast loop --------------------------------------------------------------------------------------

    def own_inflight(self, replica_id: str) -> int:
        return len(self.inflight.get(replica_id, ()))

    def step(self) -> None:
        """One fast-loop pass: allowances from the latest load and targets; cancel the excess; start up to it."""
        now = self.clock()
        if self._last_pass is not None and now - self._last_pass > LATE_AFTER_S:
            # This process was starved: it cannot promise to yield in time, so it holds nothing for a while.
            if now >= self._quiet_until:
                log.warning("stress: the fast loop ran %.1f s late; no stress for %.0f s", now - self._last_pass,
                            QUIET_S)
            self._quiet_until = now + QUIET_S
        self._last_pass = now
        self.targets = self.follower.targets(self.wall(), self.replicas)
        if now < self._quiet_until:
            self.targets = dict.fromkeys(self.replicas, 0)
        self.allowed = self.allowances.update(now, self.loads, self.targets, self.replicas)
        for rid, allowance in self.allowed.items():
            flights = self.inflight[rid]
            if len(flights) > allowance:
                reason = self._why_lower(rid, now, allowance)
                for fid in to_cancel({fid: f.started_at for fid, f in flights.items()}, allowance):
                    self._preempt(flights.pop(fid), reason)
                if reason == "yield_external":
                    # External demand may be queued where we cannot see it: read again as soon as the freed
                    # slots can have been taken, and yield more if they were.
                    self._read_soon.set()
            cap = self.backoff[rid].cap(now)
            if now < self._full_until.get(rid, float("-inf")):
                cap = len(flights) if cap is None else min(cap, len(flights))
            for _ in range(to_launch(allowance, len(flights), cap)):
                self._launch(rid, now)

    def _why_lower(self, rid: str, now: float, allowance: int) -> str:
        if now < self._quiet_until:
            return "harness_late"
        load = self.loads.get(rid)
        if load is None or now - load.observed_at > self.config.stale_after_s:
            return "stale_load"
        if not load.ready:
            return "not_ready"
        return "target_lowered" if allowance >= self.targets.get(rid, 0) else "yield_external"

    def _preempt(self, flight: Flight, reason: str) -> None:
        flight.preempt_reason = reason
        if flight.task is not None:
            flight.task.cancel()

    def _launch(self, rid: str, now: float) -> None:
        flight = Flight(next(self._ids), rid, self.workload.next(rid), now)
        self.inflight[rid][flight.flight_id] = flight
        self.tally.launched += 1
        flight.task = asyncio.get_running_loop().create_task(self._fly(flight))
        self._tasks.add(flight.task)
        flight.task.add_done_callback(lambda task: self._landed(flight, task))

    def _landed(self, flight: Flight, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not flight.recorded:  # cancelled before it ever ran
            self._finish(flight, flight.started_at, Outcome.preempted, flight.preempt_reason or "cancelled",
                         None, None, 0, None, self.config.model)

    # -- one stress request ---------------------------------------------------------------------------------

    async def _fly(self, f: Flight) -> None:
        t0 = self.clock()
        first: float | None = None
        last: float | None = None
        chunks = 0
        usage: dict[str, Any] | None = None
        model: str | None = self.config.model
        done = False
        status: int | None = None
        problem: str | None = None
        try:
            client = self._clients[f.replica_id]
            async with client.stream("POST", "/v1/chat/completions", json=f.request.body, headers=_HEADERS) as resp:
                status = resp.status_code
                if status == 429:
                    pass
                elif status != 200:
                    problem = f"http_{status}"
                elif "text/event-stream" not in resp.headers.get("content-type", ""):
                    problem = "not_event_stream"
                else:
                    async for line in resp.aiter_lines():
                        if not line or line.startswith(_SSE_FIELDS):
                            continue
                        if not line.startswith("data:"):
                            problem = "garbage"
                            break
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                            break
                        try:
                            event = json.loads(data)
                        except ValueError:
                            problem = "garbage"
                            break
                        if not isinstance(event, dict) or "error" in event:
                            problem = "stream_error" if isinstance(event, dict) else "garbage"
                            break
                        choices = event.get("choices")
                        if not isinstance(choices, list):
                            problem = "garbage"
                            break
                        if isinstance(event.get("usage"), dict):
                            usage = event["usage"]
                        if model is None and isinstance(event.get("model"), str):
                            model = event["model"]
                        for choice in choices:
                            delta = choice.get("delta") if isinstance(choice, dict) else None
                            if isinstance(delta, dict) and delta.get("content"):
                                last = self.clock()
                                first = first if first is not None else last
                                chunks += 1
        except asyncio.CancelledError:
            if f.preempt_reason is None:
                f.preempt_reason = "cancelled"
                self._finish(f, t0, Outcome.preempted, "cancelled", first, last, chunks, usage, model)
                raise
            self._finish(f, t0, Outcome.preempted, f.preempt_reason, first, last, chunks, usage, model)
            return
        except httpx.TimeoutException:
            problem = "timeout"
        except httpx.ConnectError:
            problem = "connect_error"
        except httpx.HTTPError:
            problem = "transport_error"
        if status == 429 and problem is None:
            self._full_until[f.replica_id] = self.clock() + self.config.interval_s
            self._finish(f, t0, Outcome.preempted, "refused_full", first, last, chunks, usage, model)
            return
        if problem is None and not done:
            problem = "truncated"
        completion = _int(usage, "completion_tokens", chunks)
        if problem is None and completion == 0:
            problem = "empty_completion"
        if problem is not None:
            self._finish(f, t0, Outcome.failed, problem, first, last, chunks, usage, model)
            return
        self._finish(f, t0, Outcome.ok, None, first, last, chunks, usage, model)

    def _finish(self, f: Flight, t0: float, outcome: Outcome, reason: str | None, first: float | None,
                last: float | None, chunks: int, usage: dict[str, Any] | None, model: str | None) -> None:
        f.recorded = True
        self.inflight[f.replica_id].pop(f.flight_id, None)
        now = self.clock()
        completion = _int(usage, "completion_tokens", chunks)
        # Without usage (a cancelled stream): the prompt was processed once the first token came.
        prompt = _int(usage, "prompt_tokens", f.request.prompt_tokens_est if first is not None else 0)
        itl = None
        if first is not None and last is not None and completion >= 2:
            itl = max(0.0, (last - first) / (completion - 1))
        tally = self.tally
        if outcome is Outcome.ok:
            tally.ok += 1
            self.backoff[f.replica_id].success()
        elif reason == "refused_full":
            tally.refused += 1
        elif outcome is Outcome.preempted:
            tally.preempted += 1
            tally.preempt_reasons[reason or "cancelled"] += 1
        else:
            tally.errors += 1
            tally.error_reasons[(f.replica_id, reason or "error")] += 1
            bo = self.backoff[f.replica_id]
            delay = bo.failure(now, reason or "error")
            log.warning("stress: replica %s answered %s (%d in a row); no stress there for %.1f s",
                        f.replica_id, reason, bo.failures, delay)
        tally.completion_tokens += completion
        tally.prompt_tokens += prompt
        self._wake.set()  # a slot may be free: the next pass comes now, not at the next interval
        self.ledger.add(UsageRecord(
            ts=self.wall(), demand_kind=DemandKind.internal_stress, replica_id=f.replica_id, model=model,
            prompt_tokens=prompt, completion_tokens=completion,
            ttft_s=None if first is None else max(0.0, first - t0), itl_s=itl, latency_s=max(0.0, now - t0),
            outcome=outcome, failure_reason=None if reason is None else reason[:64],
        ))

    # -- the loops ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open one HTTP client per replica and start the ledger writer (`run` does this itself)."""
        cfg = self.config
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        timeout = httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s)
        self._clients = {rid: httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, trust_env=False,
                                                transport=self._transport)
                         for rid, url in self.replicas.items()}
        self.ledger.start()

    async def close(self) -> None:
        """Cancel every stress request (preempted: shutdown), flush the ledger, close the clients."""
        for flights in self.inflight.values():
            for flight in list(flights.values()):
                self._preempt(flight, "shutdown")
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.ledger.aclose()
        await asyncio.gather(*(c.aclose() for c in self._clients.values()), return_exceptions=True)
        await self.load.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Run both inner loops until `stop` is set; then cancel every stress request and flush the ledger."""
        await self.start()
        loop = asyncio.get_running_loop()
        background = [loop.create_task(self._poll_load(stop)), loop.create_task(self._poll_targets(stop))]
        try:
            while not stop.is_set():
                self.step()
                await self._next_pass(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.close()

    async def _next_pass(self, stop: asyncio.Event) -> None:
        """Until a fresh load reading, `interval_s`, or `stop`, whichever comes first."""
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=self.config.interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._wake.clear()

    async def _poll_load(self, stop: asyncio.Event) -> None:
        """A reading every `interval_s`; after the fast loop yielded slots, `FOLLOW_UPS` readings `FOLLOW_UP_S` apart."""
        interval = self.config.interval_s
        while not stop.is_set():
            t = self.clock()
            self._read_soon.clear()
            try:
                self.loads = await self.load.read()
                if self._load_problem is not None:
                    log.info("stress: live load readable again")
                self._load_problem = None
                self._wake.set()
            except LoadError as exc:
                self.load_failures += 1
                if exc.reason != self._load_problem:
                    log.warning("stress: live load unreadable (%s): stress stops where readings go stale",
                                exc.reason)
                self._load_problem = exc.reason
            await asyncio.sleep(max(0.0, FOLLOW_UP_S - (self.clock() - t)))
            if self._read_soon.is_set():
                self._follow_ups = FOLLOW_UPS
            if self._follow_ups > 0:
                self._follow_ups -= 1
                continue
            try:
                async with asyncio.timeout(max(0.0, interval - (self.clock() - t))):
                    await self._read_soon.wait()
            except TimeoutError:
                pass

    async def _poll_targets(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while not stop.is_set():
            now = self.wall()
            try:
                targets, last = await loop.run_in_executor(None, self._read_targets, now)
            except Exception as exc:  # noqa: BLE001 - the store down: keep the last targets until the dead-man
                self.follower.read_failed()
                if not failing:
                    log.warning("stress: targets unreadable (%s); keeping the last ones until the dead-man",
                                type(exc).__name__)
                failing = True
            else:
                self.follower.observe(targets, last, now)
                if failing:
                    log.info("stress: targets readable again")
                failing = False
            await asyncio.sleep(self.config.targets_poll_s)

    # -- report ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        t = self.tally
        now = self.clock()
        return {
            "launched": t.launched, "ok": t.ok, "preempted": t.preempted, "refused": t.refused, "errors": t.errors,
            "completion_tokens": t.completion_tokens, "prompt_tokens": t.prompt_tokens,
            "inflight": {rid: len(f) for rid, f in self.inflight.items()},
            "allowance": dict(self.allowed), "target": dict(self.targets),
            "dead_man": self.follower.dead_man_fired(self.wall()),
            "backing_off": sorted(rid for rid, b in self.backoff.items() if b.cap(now) == 0),
            "errors_by_replica": {f"{rid}:{reason}": n for (rid, reason), n in sorted(t.error_reasons.items())},
            "preempted_by_reason": dict(t.preempt_reasons),
            "load_failures": self.load_failures, "target_read_failures": self.follower.read_failures,
            "ledger_written": self.ledger.written, "ledger_dropped": self.ledger.dropped,
        }


def _int(usage: dict[str, Any] | None, key: str, default: int) -> int:
    if usage is None:
        return default
    value = usage.get(key)
    return value if isinstance(value, int) and value >= 0 else default
