"""The emulated vLLM engine of one replica: slots, waiting queue, prefill, decode steps, preemption. No HTTP.

Capacity: `max_num_seqs` sequences run; the rest wait FIFO (by (priority, arrival) with priority preemption on,
as vLLM's priority policy) or, in singleflight mode, are refused. Time: prefill takes
`prefill_base_s + prefill_s_per_token * prompt_tokens`; a decode step takes `step_base_s + step_per_seq_s * running`
and advances every decoding sequence by one token, so a full batch slows everyone. One clock task per engine
(not one timer per sequence) keeps CPU low; a sequence is woken once per `tokens_per_chunk` tokens.
Faults scale the clock (`slow_factor`) or stop it (`hang`).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from dataclasses import dataclass

from overseer_dagster.lab.vllm_metrics import VllmMetrics

WAITING, RUNNING, DONE = 0, 1, 2


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 16
    singleflight: bool = False
    # vLLM's `--scheduling-policy priority`: a better `priority` (lower number) evicts the worst running one.
    priority_preemption: bool = False
    step_base_s: float = 0.02
    step_per_seq_s: float = 0.001
    prefill_base_s: float = 0.002
    prefill_s_per_token: float = 0.0002
    tokens_per_chunk: int = 4
    # Natural output length (tokens) when a request does not run into max_tokens: uniform in [min, max].
    output_tokens_min: int = 16
    output_tokens_max: int = 256
    max_model_len: int = 8192
    # KV capacity in tokens, the denominator of vllm:kv_cache_usage_perc.
    kv_cache_tokens: int = 262_144
    # A late clock catches up at most this many steps, then drops the lag (the lab fell behind: report it).
    max_lag_steps: int = 8

    def step_time(self, running: int) -> float:
        return self.step_base_s + self.step_per_seq_s * running

    def full_token_rate(self) -> float:
        """Tokens/s with every slot decoding."""
        return self.max_num_seqs / self.step_time(self.max_num_seqs)


class Seq:
    """One request inside the engine."""

    __slots__ = ("kind", "priority", "prompt_tokens", "target", "natural_finish", "order", "state",
                 "generated", "sent", "finish", "waiter", "t_arrival", "t_first")

    def __init__(self, *, kind: str, priority: int, prompt_tokens: int, target: int, natural_finish: str,
                 order: int, now: float) -> None:
        self.kind = kind
        self.priority = priority
        self.prompt_tokens = prompt_tokens
        self.target = target
        self.natural_finish = natural_finish
        self.order = order
        self.state = WAITING
        self.generated = 0
        self.sent = 0
        self.finish: str | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.t_arrival = now
        self.t_first: float | None = None

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Engine:
    def __init__(self, config: EngineConfig, *, model: str, seed: int | None = None) -> None:
        self.config = config
        self.running: set[Seq] = set()
        self.waiting: list[Seq] = []
        self._decoding: list[Seq] = []
        self._order = itertools.count()
        self._rng = random.Random(seed)
        self.slow_factor = 1.0
        self._alive = asyncio.Event()
        self._alive.set()
        self._work = asyncio.Event()
        self._clock_task: asyncio.Task[None] | None = None
        self.metrics = VllmMetrics(model, self._gauges)

    # -- lifecycle and faults -------------------------------------------------------------------------

    def start(self) -> None:
        self._clock_task = asyncio.get_running_loop().create_task(self._clock())

    async def close(self) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
            await asyncio.gather(self._clock_task, return_exceptions=True)
            self._clock_task = None

    @property
    def hung(self) -> bool:
        return not self._alive.is_set()

    def set_hung(self, hung: bool) -> None:
        if hung:
            self._alive.clear()
        else:
            self._alive.set()

    async def until_alive(self) -> None:
        if not self._alive.is_set():
            await self._alive.wait()

    # -- requests ----------------------------------------------------------------------------------------

    def new_seq(self, *, kind: str, priority: int, prompt_tokens: int, max_tokens: int | None,
                ignore_eos: bool) -> Seq:
        limit = max_tokens if max_tokens is not None else self.config.max_model_len - prompt_tokens
        natural = self._rng.randint(self.config.output_tokens_min, self.config.output_tokens_max)
        if ignore_eos or natural > limit:
            target, finish = limit, "length"
        else:
            target, finish = natural, "stop"
        return Seq(kind=kind, priority=priority, prompt_tokens=prompt_tokens, target=max(1, target),
                   natural_finish=finish, order=next(self._order), now=asyncio.get_running_loop().time())

    def submit(self, seq: Seq) -> bool:
        """Run or queue `seq`; False when singleflight refuses it (replica full)."""
        if len(self.running) < self.config.max_num_seqs:
            self._run(seq)
            return True
        if self.config.singleflight:
            return False
        if self.config.priority_preemption:
            victim = max(self.running, key=lambda s: (s.priority, s.order))
            if victim.priority > seq.priority:
                self.metrics.preemptions += 1
                self._finish(victim, "abort", promote=False)
                self._run(seq)
                return True
        bisect.insort(self.waiting, seq, key=lambda s: (s.priority, s.order))
        return True

    async def first_token(self, seq: Seq) -> None:
        """Wait for a slot, then prefill; on return the first token exists (or `seq.finish` says why not)."""
        loop = asyncio.get_running_loop()
        while seq.state == WAITING:
            seq.waiter = loop.create_future()
            await seq.waiter
        seq.waiter = None
        if seq.finish is not None:
            return
        cfg = self.config
        await asyncio.sleep((cfg.prefill_base_s + cfg.prefill_s_per_token * seq.prompt_tokens) * self.slow_factor)
        await self.until_alive()
        if seq.finish is not None:  # preempted during prefill
            return
        now = loop.time()
        seq.generated = 1
        seq.t_first = now
        self.metrics.prompt_tokens += seq.prompt_tokens
        self.metrics.generation_tokens += 1
        self.metrics.ttft.observe(now - seq.t_arrival)
        if seq.target <= 1:
            self._finish(seq, seq.natural_finish)
        else:
            self._decoding.append(seq)
            self._work.set()

    async def next_tokens(self, seq: Seq) -> int:
        """Tokens generated since the last call: at least `tokens_per_chunk`, fewer only at the end."""
        tpc = self.config.tokens_per_chunk
        loop = asyncio.get_running_loop()
        while seq.finish is None and seq.generated - seq.sent < tpc:
            seq.waiter = loop.create_future()
            await seq.waiter
        seq.waiter = None
        n = seq.generated - seq.sent
        seq.sent = seq.generated
        return n

    def release(self, seq: Seq) -> None:
        """Free whatever `seq` holds (slot or queue place). Idempotent; call it in a finally."""
        if seq.state == RUNNING:
            self.running.discard(seq)
            if seq in self._decoding:
                self._decoding.remove(seq)
            self._promote()
        elif seq.state == WAITING:
            self.waiting.remove(seq)
        seq.state = DONE

    # -- internals ---------------------------------------------------------------------------------------

    def _run(self, seq: Seq) -> None:
        seq.state = RUNNING
        self.running.add(seq)
        seq._wake()

    def _promote(self) -> None:
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            self._run(self.waiting.pop(0))

    def _finish(self, seq: Seq, reason: str, *, promote: bool = True) -> None:
        seq.finish = reason
        seq.state = DONE
        self.running.discard(seq)
        if seq in self._decoding:
            self._decoding.remove(seq)
        self.metrics.success[reason] += 1
        self.metrics.e2e.observe(asyncio.get_running_loop().time() - seq.t_arrival)
        seq._wake()
        if promote:
            self._promote()

    def _gauges(self) -> tuple[int, int, float]:
        used = sum(s.prompt_tokens + s.generated for s in self.running)
        return len(self.running), len(self.waiting), min(1.0, used / self.config.kv_cache_tokens)

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_t: float | None = None
        last_t = 0.0
        while True:
            if not self._decoding:
                self._work.clear()
                await self._work.wait()
                next_t = None
                continue
            if not self._alive.is_set():
                await self._alive.wait()
                next_t = None
                continue
            now = loop.time()
            step = self.config.step_time(len(self.running)) * self.slow_factor
            if next_t is None:
                next_t, last_t = now, now
            next_t += step
            delay = next_t - now
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if -delay > step * self.config.max_lag_steps:
                    next_t = now
                await asyncio.sleep(0)
            if self._alive.is_set():
                now = loop.time()
                self._advance(now - last_t)
                last_t = now

    def _advance(self, step_s: float) -> None:
        """One decode step for every decoding sequence."""
        decoding = self._decoding
        if not decoding:
            return
        self.metrics.generation_tokens += len(decoding)
        self.metrics.itl.observe(step_s, len(decoding))
        tpc = self.config.tokens_per_chunk
        finished = []
        for seq in decoding:
            seq.generated += 1
            if seq.generated >= seq.target:
                finished.append(seq)
            elif seq.generated - seq.sent >= tpc:
                seq._wake()
        for seq in finished:
            self._finish(seq, seq.natural_finish)
