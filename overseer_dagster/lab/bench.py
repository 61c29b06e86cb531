"""`bench lab`: the whole lab under full streaming load, token rate achieved vs configured, and its CPU use.

Load: closed-loop streams through the gateway (one per slot, plus one queued per replica so a freed slot refills at
once), in this same process. Achieved = generation tokens the engines emitted per second over the measured window
(after a warm-up); configured = replicas x slots / step_time(slots). CPU = this process's user+sys time (getrusage),
which includes the load generator.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from overseer_dagster.lab.engine import EngineConfig
from overseer_dagster.lab.runtime import Lab, LabConfig
from overseer_dagster.lab.traffic import run_closed_loop


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def bench_lab(seconds: float = 10.0, *, replicas: int = 16, slots: int = 16, warmup_s: float = 3.0,
                    max_tokens: int = 256, engine: EngineConfig | None = None) -> dict[str, Any]:
    engine = engine or EngineConfig(max_num_seqs=slots)
    configured = replicas * engine.full_token_rate()
    async with Lab(LabConfig(replicas=replicas, engine=engine)) as lab:
        load = asyncio.get_running_loop().create_task(run_closed_loop(
            lab.gateway_url, concurrency=replicas * slots + replicas, duration_s=warmup_s + seconds + 5,
            max_tokens=max_tokens))
        try:
            await asyncio.sleep(warmup_s)
            tokens0, cpu0, t0 = _tokens(lab), _cpu_s(), time.monotonic()
            await asyncio.sleep(seconds)
            tokens1, cpu1, t1 = _tokens(lab), _cpu_s(), time.monotonic()
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
    wall = t1 - t0
    achieved = (tokens1 - tokens0) / wall
    return {
        "replicas": replicas,
        "slots": slots,
        "seconds": round(wall, 3),
        "configured_tokens_per_s": round(configured, 1),
        "achieved_tokens_per_s": round(achieved, 1),
        "ratio": round(achieved / configured, 4),
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "goal_met": achieved / configured >= 0.95,
    }


def _tokens(lab: Lab) -> int:
    return sum(r.engine.metrics.generation_tokens for r in lab.replicas.values())


def format_result(result: dict[str, Any]) -> str:
    return "\n".join([
        f"bench lab: {result['replicas']} replicas x {result['slots']} slots, full streaming load, "
        f"{result['seconds']:.1f} s measured",
        f"  configured token rate: {result['configured_tokens_per_s']:.0f} tok/s",
        f"  achieved token rate:   {result['achieved_tokens_per_s']:.0f} tok/s "
        f"(ratio {result['ratio']:.3f}, goal >= 0.95: {'met' if result['goal_met'] else 'MISSED'})",
        f"  lab process CPU:       {result['cpu_s']:.2f} s user+sys = {result['cpu_cores']:.2f} cores",
    ])
