"""`overseer bench spike`: an external demand spike on the lab, under four ways of running stress.

The lab (its own process): 4 replicas x 8 slots, singleflight (429 when full), engine preemption off; the
gateway queues an external request for at most `QUEUE_WAIT_S` = 2 s, then fails it (503 `queue_timeout`),
the same in every arm (the lab's default is 30 s, under which nothing fails, only waits). External demand
(this process, seeded, the same in every arm): open-loop Poisson arrivals of fixed-size requests (64 prompt,
24 output tokens) at 20% of the slots, a step to 95% held `hold_s`, back to 20%. A share of the slots is
rate x slot time, with slot time from the engine's own timing model at a full batch (`_service_s`, 0.66 s).

Arms (the harness runs in its own process in each):
- `no_stress`: no stress at all.
- `static`: stress that never yields: 5 per replica (the slack at the base demand: 8 - 1 reserve - 2).
- `hpa`: an HPA-style controller: every 15 s, T <- clamp(round(T + (U* - U) x slots), 0, slots - reserve)
  from slot utilisation U (target U* = 7/8; skipped within HPA's 10% tolerance; no stabilisation window),
  starting from the static 5; the harness holds T blind to live load (no fast loop).
- `overseer`: `overseer stress` (the real command, defaults: 250 ms fast loop on the gateway's `/fleet/state`,
  reserve 1) following the rule policy's target, which the policy writes through the store's stress actuator
  at its production cadence (60 s; its first tick comes before traffic starts).

Each arm starts once its harness has ramped up. Per arm: external requests and failures, TTFT p50/p99 and ITL
p90 (client side, ok requests); slot utilisation in the low-demand phases (all kinds, sampled from each
replica's `/lab/state`; each low phase less its first `SETTLE_S`); stress tokens served (completion tokens
of its ledger rows, ok and preempted) and stress requests preempted (to yield, not at shutdown); yield time
per replica: spike onset until stress there is within its live allowance and stays so for `STABLE_S`, where
the live allowance is slots - reserve - external running there - its share of the external requests waiting
at the gateway (client-side in flight minus running, spread evenly). p50/p99 over the 4 replicas; `never`:
not within the spike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPLICAS, SLOTS, RESERVE = 4, 8, 1
QUEUE_WAIT_S = 2.0
PROMPT_TOKENS, OUTPUT_TOKENS = 64, 24
BASE_SHARE, PEAK_SHARE = 0.20, 0.95
STATIC_STRESS = SLOTS - RESERVE - math.ceil(BASE_SHARE * SLOTS)  # 5
HPA_PERIOD_S, HPA_TOLERANCE = 15.0, 0.1
POLICY_CADENCE_S = 60.0
SETTLE_S = 1.5
STABLE_S = 0.5
SEED = 7
ARMS = ("no_stress", "static", "hpa", "overseer")


@dataclass(frozen=True)
class Phases:
    pre_s: float
    hold_s: float
    post_s: float

    @property
    def at_s(self) -> float:
        return self.pre_s

    @property
    def end_s(self) -> float:
        return self.pre_s + self.hold_s + self.post_s

    def low_windows(self) -> list[tuple[float, float]]:
        spike_end = self.pre_s + self.hold_s
        return [(SETTLE_S, self.pre_s), (spike_end + SETTLE_S, self.end_s)]


QUICK = Phases(pre_s=4.0, hold_s=7.0, post_s=5.0)
FULL = Phases(pre_s=20.0, hold_s=30.0, post_s=20.0)


def _service_s() -> float:
    """Seconds one external request holds a slot in a full replica: prefill, then one decode step per further
    token at a full batch (the engine's own timing model; the lab emulates exactly this)."""
    from overseer_dagster.lab.engine import EngineConfig

    cfg = EngineConfig(max_num_seqs=SLOTS)
    return cfg.prefill_base_s + cfg.prefill_s_per_token * PROMPT_TOKENS + (OUTPUT_TOKENS - 1) * cfg.step_time(SLOTS)


def _rates(service_s: float) -> tuple[float, float]:
    """Arrivals/s for the base and the peak share of the slots (Little: concurrency = rate x service time)."""
    per_s = REPLICAS * SLOTS / service_s
    return BASE_SHARE * per_s, PEAK_SHARE * per_s


# --- the lab and the harness, each in its own process --------------------------------------------------


def _lab_main(conn: Any) -> None:  # noqa: ANN401
    from overseer_dagster.lab.engine import EngineConfig
    from overseer_dagster.lab.gateway import GatewayConfig
    from overseer_dagster.lab.runtime import Lab, LabConfig

    async def main() -> None:
        config = LabConfig(
            replicas=REPLICAS, seed=SEED,
            engine=EngineConfig(max_num_seqs=SLOTS, singleflight=True, priority_preemption=False),
            gateway=GatewayConfig(max_queue_wait_s=QUEUE_WAIT_S),
        )
        async with Lab(config) as lab:
            conn.send(lab.ready_info())
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def _blind_harness_main(replicas: dict[str, str], db_url: str, stop: Any) -> None:  # noqa: ANN401
    """The harness without a fast loop: every replica always reads as idle and fresh, so it holds its target."""
    from overseer_dagster.stress.allowance import ReplicaLoad
    from overseer_dagster.stress.control import store_reader
    from overseer_dagster.stress.harness import HarnessConfig, StressHarness
    from overseer_dagster.stress.ledger import store_sink

    class BlindLoad:
        async def read(self) -> dict[str, ReplicaLoad]:
            now = time.monotonic()
            return {rid: ReplicaLoad(max_inflight=SLOTS, external_inflight=0, observed_at=now) for rid in replicas}

        async def aclose(self) -> None:
            pass

    async def main() -> None:
        harness = StressHarness(replicas, load=BlindLoad(), read_targets=store_reader(db_url),
                                sink=store_sink(db_url), config=HarnessConfig(cadence_s=3600.0, seed=SEED))
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)))
        await harness.run(done)

    asyncio.run(main())


class _Harness:
    """The arm's stress harness process: the real `overseer stress` command, or the blind one."""

    def __init__(self, arm: str, info: dict[str, Any], db_url: str, workdir: Path) -> None:
        self.arm = arm
        self.proc: subprocess.Popen[bytes] | None = None
        self.mp: Any = None
        self.stop_event: Any = None
        self.log_path = workdir / f"{arm}-harness.log"
        if arm == "overseer":
            cmd = [sys.executable, "-m", "overseer_dagster.cli", "stress", "--replicas", json.dumps(info),
                   "--database-url", db_url, "--cadence-s", str(POLICY_CADENCE_S), "--seed", str(SEED),
                   "--reserve", str(RESERVE), "--report-s", "3600"]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        else:
            ctx = multiprocessing.get_context("spawn")
            self.stop_event = ctx.Event()
            self.mp = ctx.Process(target=_blind_harness_main, args=(info["replicas"], db_url, self.stop_event),
                                  daemon=True)
            self.mp.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mp is not None:
            self.stop_event.set()
            self.mp.join(timeout=15)
            if self.mp.is_alive():
                self.mp.kill()


# --- stress control for each arm ------------------------------------------------------------------------


def _write_target(engine: Any, concurrency: int) -> None:  # noqa: ANN401
    from overseer_dagster.store import write_tx
    from overseer_dagster.store.targets import set_target

    now = datetime.now(UTC)
    with write_tx(engine) as conn:
        set_target(conn, replica_id=None, concurrency=concurrency, now=now, expires_at=now + timedelta(hours=1))


async def _fleet(client: Any, gateway: str) -> Any:  # noqa: ANN401
    from overseer_dagster.core.fleet import FleetSnapshot

    resp = await client.get(gateway + "/fleet/state")
    resp.raise_for_status()
    return FleetSnapshot.model_validate_json(resp.content)


async def _policy_tick(engine: Any, client: Any, gateway: str) -> list[str]:  # noqa: ANN401
    """One tick of the rule policy on the live fleet; its stress actions go through the store's actuator."""
    from overseer_dagster.adapters.actuators import StoreStressControl
    from overseer_dagster.core import policy
    from overseer_dagster.core.context import TickContext
    from overseer_dagster.core.proposal import decide_text
    from overseer_dagster.store import targets

    now = datetime.now(UTC)
    fleet = await _fleet(client, gateway)
    ctx = TickContext(now=now, cadence_s=POLICY_CADENCE_S, fleet=fleet, stress=targets.status(engine, now),
                      stress_reserve_slots=RESERVE)
    verdict = decide_text(policy.propose(ctx), fleet)
    control = StoreStressControl(engine, default_hold_s=3 * POLICY_CADENCE_S)
    kinds = []
    for n, action in enumerate(verdict.actions or ()):
        kind = action.kind
        kinds.append(kind)
        action_id = f"bench-{now.timestamp():.3f}-{n}"
        replica_id = getattr(action, "replica_id", None)
        if kind == "start_stress":
            control.start(action_id=action_id, replica_id=replica_id, concurrency=action.concurrency,
                          duration_s=action.duration_s, now=now)
        elif kind == "scale_stress":
            control.scale(action_id=action_id, replica_id=replica_id, concurrency=action.concurrency, now=now)
        elif kind == "back_off_stress":
            control.back_off(action_id=action_id, replica_id=replica_id, factor=action.factor, now=now)
        elif kind == "stop_stress":
            control.stop(action_id=action_id, replica_id=replica_id, now=now)
    return kinds


async def _hpa(engine: Any, client: Any, gateway: str, t0: float, end_s: float) -> list[tuple[float, int]]:  # noqa: ANN401
    loop = asyncio.get_running_loop()
    target = STATIC_STRESS
    u_star = (SLOTS - RESERVE) / SLOTS
    decisions = []
    k = 1
    while (k * HPA_PERIOD_S) < end_s:
        await asyncio.sleep(max(0.0, t0 + k * HPA_PERIOD_S - loop.time()))
        fleet = await _fleet(client, gateway)
        u = sum(r.inflight for r in fleet.replicas) / max(1, fleet.capacity)
        if u == 0 or abs(u / u_star - 1) > HPA_TOLERANCE:
            target = max(0, min(SLOTS - RESERVE, round(target + (u_star - u) * SLOTS)))
            await loop.run_in_executor(None, _write_target, engine, target)
        decisions.append((k * HPA_PERIOD_S, target))
        k += 1
    return decisions


# --- one arm ---------------------------------------------------------------------------------------------


async def _sample(client: Any, replicas: dict[str, str], t0: float, phases: Phases,  # noqa: ANN401
                  stop: asyncio.Event) -> list[tuple[float, dict[str, tuple[int, int, int]]]]:
    """(t, {replica: (running, external running, stress running)}), every 100 ms (25 ms around the onset)."""
    loop = asyncio.get_running_loop()
    out = []

    async def one(url: str) -> tuple[int, int, int] | None:
        try:
            state = (await client.get(url + "/lab/state")).json()
        except Exception:  # noqa: BLE001 - a missed sample is a gap in the timeline, nothing more
            return None
        by_kind = state["running_by_kind"]
        return state["running"], by_kind["external"] + by_kind["unlabeled"], by_kind["internal_stress"]

    while not stop.is_set():
        t = loop.time() - t0
        states = await asyncio.gather(*(one(u) for u in replicas.values()))
        if all(s is not None for s in states):
            out.append((t, dict(zip(replicas, states, strict=True))))
        near_onset = phases.at_s - 0.5 <= t <= phases.at_s + 3.0
        await asyncio.sleep(max(0.0, (0.025 if near_onset else 0.1) - (loop.time() - t0 - t)))
    return out


async def _arm(arm: str, info: dict[str, Any], phases: Phases, workdir: Path, service_s: float) -> dict[str, Any]:
    import httpx

    from overseer_dagster.lab.profiles import Sizes, step_spike
    from overseer_dagster.lab.traffic import TrafficGenerator
    from overseer_dagster.store import connect

    loop = asyncio.get_running_loop()
    gateway, replicas = info["gateway"], info["replicas"]
    db_url = f"sqlite:///{workdir / f'{arm}.db'}"
    engine = connect(db_url)
    client = httpx.AsyncClient(timeout=5.0, trust_env=False)
    controls: list[Any] = []
    try:
        await _idle(client, replicas)
        if arm in ("static", "hpa"):
            _write_target(engine, STATIC_STRESS)
        elif arm == "overseer":
            controls.append(("policy", 0.0, await _policy_tick(engine, client, gateway)))
        harness = _Harness(arm, info, db_url, workdir) if arm != "no_stress" else None
        try:
            if harness is not None:
                await _until_stress(client, replicas)
            base, peak = _rates(service_s)
            traffic = TrafficGenerator(
                gateway, step_spike(base, peak, phases.at_s, phases.hold_s), duration_s=phases.end_s, seed=SEED,
                prompt_tokens=Sizes(median=PROMPT_TOKENS), max_tokens=Sizes(median=OUTPUT_TOKENS),
                request_timeout_s=30.0)
            stop = asyncio.Event()
            t0 = loop.time()
            sampler = loop.create_task(_sample(client, replicas, t0, phases, stop))
            controller = None
            if arm == "hpa":
                controller = loop.create_task(_hpa(engine, client, gateway, t0, phases.end_s))
            elif arm == "overseer":
                controller = loop.create_task(_policy_loop(engine, client, gateway, t0, phases.end_s, controls))
            summary = await traffic.run()
            stop.set()
            samples = await sampler
            if controller is not None:
                controller.cancel()
                result = (await asyncio.gather(controller, return_exceptions=True))[0]
                if arm == "hpa" and isinstance(result, list):
                    controls.extend(("hpa", t, target) for t, target in result)
        finally:
            if harness is not None:
                await loop.run_in_executor(None, harness.stop)
        stress_rows = _stress_rows(engine)
    finally:
        await client.aclose()
        engine.dispose()
    return _measure(arm, phases, traffic.results, summary, samples, stress_rows, controls)


async def _policy_loop(engine: Any, client: Any, gateway: str, t0: float, end_s: float,  # noqa: ANN401
                       controls: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    k = 1
    while k * POLICY_CADENCE_S < end_s:
        await asyncio.sleep(max(0.0, t0 + k * POLICY_CADENCE_S - loop.time()))
        controls.append(("policy", k * POLICY_CADENCE_S, await _policy_tick(engine, client, gateway)))
        k += 1


async def _idle(client: Any, replicas: dict[str, str], timeout_s: float = 20.0) -> None:  # noqa: ANN401
    """Wait until no replica runs anything (the previous arm's requests have drained)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        states = [(await client.get(u + "/lab/state")).json() for u in replicas.values()]
        if all(s["running"] == 0 and s["waiting"] == 0 for s in states):
            return
        await asyncio.sleep(0.1)


async def _until_stress(client: Any, replicas: dict[str, str], timeout_s: float = 8.0) -> None:  # noqa: ANN401
    """Wait until the harness has ramped up on every replica (process start, first target read, ramp)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        states = [(await client.get(u + "/lab/state")).json() for u in replicas.values()]
        if all(s["running_by_kind"]["internal_stress"] >= STATIC_STRESS for s in states):
            return
        await asyncio.sleep(0.1)


def _stress_rows(engine: Any) -> list[dict[str, Any]]:  # noqa: ANN401
    from sqlalchemy import select

    from overseer_dagster.store.tables import ledger

    with engine.connect() as conn:
        rows = conn.execute(select(ledger).where(ledger.c.demand_kind == "internal_stress")).mappings().all()
    return [dict(r) for r in rows]


# --- figures ---------------------------------------------------------------------------------------------


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _measure(arm: str, phases: Phases, results: list[Any], summary: Any, samples: list[Any],  # noqa: ANN401
             stress_rows: list[dict[str, Any]], controls: list[Any]) -> dict[str, Any]:
    capacity = REPLICAS * SLOTS
    windows = phases.low_windows()
    util = [[sum(s[0] for s in states.values()) / capacity for t, states in samples if a <= t < b]
            for a, b in windows]
    yields = _yield_times(phases, samples, _client_inflight(results, [t for t, _ in samples]))
    met = [y for y in yields if y is not None]
    stressed = arm != "no_stress" and bool(yields)
    preempted = [r for r in stress_rows if r["outcome"] == "preempted"
                 and r["failure_reason"] not in ("shutdown", "refused_full")]
    failures = [r for r in results if r.outcome != "ok"]
    return {
        "external_requests": summary.sent,
        "external_failures": summary.failed,
        "failure_reasons": summary.failures_by_reason,
        "ttft_p50_s": _r(summary.ttft_p50_s),
        "ttft_p99_s": _r(summary.ttft_p99_s),
        "itl_p90_s": _r(summary.itl_p90_s, 4),
        "low_demand_utilisation": _r(_mean([u for w in util for u in w])),
        "utilisation_before_after_spike": [_r(_mean(w)) for w in util],
        "stress_tokens": sum(r["completion_tokens"] for r in stress_rows),
        "stress_requests": len(stress_rows),
        "stress_preempted": len(preempted),
        "stress_refused": sum(1 for r in stress_rows if r["failure_reason"] == "refused_full"),
        "stress_failed": sum(1 for r in stress_rows if r["outcome"] == "failed"),
        "yield_s": [_r(y) for y in yields] if stressed else None,
        "yield_p50_s": _r(_quantile(met, 0.5)) if stressed and len(met) == len(yields) else None,
        "yield_p99_s": _r(_quantile(met, 0.99)) if stressed and len(met) == len(yields) else None,
        "yielded_replicas": f"{len(met)}/{len(yields)}" if stressed else None,
        "controls": [list(c) for c in controls],
        "timeline": {
            "t": [round(t, 3) for t, _ in samples],
            "external_running": [sum(s[1] for s in st.values()) for _, st in samples],
            "stress_running": [sum(s[2] for s in st.values()) for _, st in samples],
            "external_inflight_client": _client_inflight(results, [t for t, _ in samples]),
            "failures_at": sorted(round(r.start_s + (r.latency_s or 0.0), 3) for r in failures),
        },
    }


def _yield_times(phases: Phases, samples: list[Any], client_inflight: list[int]) -> list[float | None]:  # noqa: ANN401
    """Per replica: spike onset until its stress is within its live allowance and stays there for `STABLE_S`.

    Live allowance: max(0, slots - reserve - external running there - its share of the external requests
    waiting at the gateway (client-side in flight minus running, spread evenly over the replicas)).
    None: not within the spike.
    """
    spike_end = phases.at_s + phases.hold_s
    out: list[float | None] = []
    for rid in samples[0][1] if samples else ():
        settled_since: float | None = None
        found = None
        for (t, states), inflight in zip(samples, client_inflight, strict=True):
            if t < phases.at_s:
                continue
            if t > spike_end:
                break
            queued = max(0, inflight - sum(s[1] for s in states.values())) / len(states)
            _, external, stress = states[rid]
            within = stress == 0 or stress + external + queued <= SLOTS - RESERVE + 1e-9
            if not within:
                settled_since = None
            elif settled_since is None:
                settled_since = t
            if settled_since is not None and t - settled_since >= STABLE_S:
                found = settled_since - phases.at_s
                break
        out.append(found)
    return out


def _client_inflight(results: list[Any], times: list[float]) -> list[int]:  # noqa: ANN401
    """External requests sent and not yet answered, at each time: running plus queued at the gateway."""
    spans = [(r.start_s, r.start_s + (r.latency_s or 0.0)) for r in results]
    return [sum(1 for a, b in spans if a <= t < b) for t in times]


def _png(result: dict[str, Any], phases: Phases, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ARMS), 1, figsize=(10, 2.4 * len(ARMS)), sharex=True)
    capacity = REPLICAS * SLOTS
    for ax, arm in zip(axes, ARMS, strict=True):
        tl = result[arm]["timeline"]
        ax.axvspan(phases.at_s, phases.at_s + phases.hold_s, color="0.93", lw=0)
        ax.step(tl["t"], tl["external_inflight_client"], where="post", color="tab:blue", lw=1.2,
                label="external in flight (running + queued)")
        ax.step(tl["t"], tl["stress_running"], where="post", color="tab:orange", lw=1.2, label="stress in flight")
        ax.axhline(capacity, color="0.3", ls="--", lw=0.8, label="capacity (slots)")
        ax.plot(tl["failures_at"], [capacity + 2] * len(tl["failures_at"]), "x", color="tab:red", ms=4,
                label="external failure (when it failed)")
        r = result[arm]
        ax.set_title(f"{arm}: {r['external_failures']} external failures, TTFT p99 {r['ttft_p99_s']} s, "
                     f"low-demand utilisation {r['low_demand_utilisation']}", fontsize=9, loc="left")
        ax.set_ylabel("requests")
        ax.set_ylim(0, capacity * 1.6)
    axes[0].legend(loc="upper left", fontsize=7, ncol=2)
    axes[-1].set_xlabel(f"seconds (spike {phases.at_s:g}-{phases.at_s + phases.hold_s:g} s shaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry points ----------------------------------------------------------------------------------------


def run(quick: bool = False, json_path: str | None = None, png_path: str | None = "spike-timeline.png") -> dict:
    phases = QUICK if quick else FULL
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    lab = ctx.Process(target=_lab_main, args=(child,), daemon=True)
    started = time.monotonic()
    lab.start()
    result: dict[str, Any] = {}
    arm_wall: dict[str, float] = {}
    try:
        if not parent.poll(60):
            raise RuntimeError("the lab did not start within 60 s")
        info = parent.recv()
        service_s = _service_s()
        with tempfile.TemporaryDirectory(prefix="overseer-spike-") as tmp:
            for arm in ARMS:
                t = time.monotonic()
                result[arm] = asyncio.run(_arm(arm, info, phases, Path(tmp), service_s))
                arm_wall[arm] = round(time.monotonic() - t, 1)
    finally:
        try:
            parent.send("stop")
        except (BrokenPipeError, OSError):
            pass
        lab.join(timeout=15)
        if lab.is_alive():
            lab.kill()
    base, peak = _rates(service_s)
    result["setup"] = {
        "replicas": REPLICAS, "slots": SLOTS, "reserve": RESERVE, "singleflight": True, "engine_preemption": False,
        "gateway_max_queue_wait_s": QUEUE_WAIT_S, "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS,
        "service_s": round(service_s, 3), "base_rate_per_s": round(base, 2), "peak_rate_per_s": round(peak, 2),
        "base_share": BASE_SHARE, "peak_share": PEAK_SHARE, "phases_s": [phases.pre_s, phases.hold_s, phases.post_s],
        "static_stress": STATIC_STRESS, "hpa_period_s": HPA_PERIOD_S, "policy_cadence_s": POLICY_CADENCE_S,
        "quick": quick, "cpus": os.cpu_count(), "arm_wall_s": arm_wall,
    }
    result["goals"] = _goals(result)
    if png_path:
        _png(result, phases, png_path)
    for arm in ARMS:  # the samples behind the figure stay out of the JSON
        del result[arm]["timeline"]
    result["setup"]["wall_s"] = round(time.monotonic() - started, 1)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _goals(result: dict[str, Any]) -> dict[str, Any]:
    o, s, n = result["overseer"], result["static"], result["no_stress"]
    ratio = None if not (o["ttft_p99_s"] and n["ttft_p99_s"]) else round(o["ttft_p99_s"] / n["ttft_p99_s"], 3)
    return {
        "overseer_no_external_failures": o["external_failures"] == 0,
        "static_has_external_failures": s["external_failures"] > 0,
        "ttft_p99_ratio_vs_no_stress": ratio,
        "ttft_p99_within_1_25x": ratio is not None and ratio <= 1.25,
        "low_demand_utilisation_at_least_0_85": (o["low_demand_utilisation"] or 0) >= 0.85,
        "yield_p99_within_1s": o["yield_p99_s"] is not None and o["yield_p99_s"] <= 1.0,
    }


def table(result: dict[str, Any]) -> str:
    cols = [("arm", 10), ("ext req", 8), ("ext fail", 8), ("TTFT p50", 9), ("TTFT p99", 9), ("ITL p90", 8),
            ("low util", 8), ("stress tok", 10), ("preempted", 9), ("yield p50", 9), ("yield p99", 9)]
    lines = ["  ".join(f"{name:>{w}}" for name, w in cols)]

    def f(v: Any, w: int) -> str:  # noqa: ANN401
        return f"{'-' if v is None else v:>{w}}"

    for arm in ARMS:
        r = result[arm]
        no_yield = arm != "no_stress" and r["yield_p99_s"] is None
        values = [arm, r["external_requests"], r["external_failures"], r["ttft_p50_s"], r["ttft_p99_s"],
                  r["itl_p90_s"], r["low_demand_utilisation"], r["stress_tokens"], r["stress_preempted"],
                  "never" if no_yield else r["yield_p50_s"], "never" if no_yield else r["yield_p99_s"]]
        lines.append("  ".join(f(v, w) for v, (_, w) in zip(values, cols, strict=True)))
    lines.append("goals: " + ", ".join(f"{k}={v}" for k, v in result["goals"].items()))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result = run(quick=args.quick, json_path=args.out, png_path=args.png)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(table(result))
    return 0
