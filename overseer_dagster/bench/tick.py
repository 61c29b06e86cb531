"""How one full tick scales: the `overseer_tick` job (every asset) against fleets and ledgers of many sizes.

For each (replicas R, ledger rows N): a SQLite store holding N ledger rows inside the demand window and
a fleet snapshot file with R replicas (`snapshot:<path>`); then each repeat runs one tick in a fresh
process (so its peak RSS is that tick's), next to the same job built from no-op assets of the same
names, dependencies and checks: the floor Dagster itself costs. Figures are medians over the repeats.

- `tick_s`: wall time of `execute_in_process` of the job (the code location already imported, as in a
  run worker); `tick_cpu_s`: the CPU time it took (far steadier than wall time while other work shares
  the cores); `process_s`: the whole child, interpreter start and imports included.
- `peak_rss_mib`: the child's VmHWM (peak resident set) after the run.
- `steps_s`: each step's wall time (median); `--profile`: one more tick per cell under cProfile, its
  costliest functions by cumulative time (`profile_top`).

Goals (not tests): 10,000 replicas with 1,000,000 ledger rows in <= 3 s and <= 1 GiB; at 1,000
replicas <= 1.5x the floor. The demand window is the cadence, set to one hour here so a slow machine
cannot age rows out of it between setup and the last repeat; every repeat starts from a copy of the
same store, so ticks never skip on the cadence bound and the journal never grows between repeats.
Run: `overseer bench tick [--replicas 100,1000,10000] [--ledger-rows 10000,100000,1000000] [--profile] [--json]`.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

CADENCE_S = 3600.0
# Ledger rows are spread over this many seconds before setup: well inside the one-hour window.
LEDGER_SPREAD_S = 600.0
GOAL_S = 3.0
GOAL_RSS_MIB = 1024.0
GOAL_FLOOR_RATIO = 1.5
_KINDS = ("external", "unlabeled", "internal", "own_capacity", "internal_stress")
_KIND_WEIGHTS = (0.55, 0.05, 0.1, 0.05, 0.25)


# --- setup ---------------------------------------------------------------------------------------


def fleet_snapshot(replicas: int, now: datetime, seed: int = 0) -> dict:
    """A fleet of `replicas`: mostly ready and busy, a few draining, unhealthy, cold or flapping."""
    rng = random.Random(seed)
    stamp = now.isoformat()
    out = []
    for i in range(replicas):
        roll = rng.random()
        health, routing, warm, trips = "healthy", "admitted", True, 0
        if roll < 0.01:
            routing = "draining"
        elif roll < 0.02:
            health = "unhealthy"
        elif roll < 0.025:
            warm = False
        elif roll < 0.03:
            trips = 3
        elif roll < 0.035:
            health = "unknown"
        external = rng.randint(0, 6)
        stress = rng.randint(0, 4)
        out.append({
            "replica_id": f"r-{i}", "health": health, "routing_state": routing, "warm": warm,
            "inflight": external + stress, "max_inflight": 16, "external_inflight": external,
            "stress_inflight": stress, "queue_depth": 0, "ttft_p50_s": 0.08, "ttft_p99_s": 0.4,
            "itl_p50_s": 0.02, "itl_p90_s": round(0.02 + rng.random() * 0.02, 4),
            "breaker_trips_30m": trips, "observed_at": stamp,
        })
    return {"observed_at": stamp, "replicas": out}


def _sqlite_time(t: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime stores (naive UTC), so bulk rows compare like the store's own.
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_store(home: Path, rows: int, now: datetime, seed: int = 0) -> Path:
    """A migrated store under `home` with `rows` ledger rows in (now - LEDGER_SPREAD_S, now]; returns its file."""
    import numpy as np

    from overseer_dagster.store import db

    # The file a child with OVERSEER_HOME set to a copy of `home` opens by default.
    url = f"sqlite:///{home / 'overseer.db'}"
    engine = db.connect(url)
    rng = np.random.default_rng(seed)
    # Vectorised columns, then one executemany on the DBAPI connection: no ORM, no per-row Python objects.
    offsets = np.sort(rng.uniform(0.0, LEDGER_SPREAD_S, rows))[::-1]
    base = now.timestamp()
    ts = [_sqlite_time(datetime.fromtimestamp(base - o, UTC)) for o in offsets.tolist()]
    kinds = rng.choice(np.array(_KINDS), size=rows, p=_KIND_WEIGHTS).tolist()
    replica = [f"r-{i}" for i in rng.integers(0, 1000, rows).tolist()]
    prompt = rng.integers(20, 2000, rows).tolist()
    completion = rng.integers(1, 800, rows).tolist()
    ttft = np.round(rng.gamma(2.0, 0.05, rows), 4).tolist()
    itl = np.round(rng.gamma(4.0, 0.012, rows), 4).tolist()
    latency = np.round(rng.gamma(3.0, 1.0, rows), 3).tolist()
    outcome = rng.choice(np.array(["ok", "failed", "preempted"]), size=rows, p=(0.97, 0.01, 0.02)).tolist()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        cur.executemany(
            "INSERT INTO ledger (ts, demand_kind, replica_id, model, prompt_tokens, completion_tokens, ttft_s, "
            "itl_s, latency_s, outcome) VALUES (?, ?, ?, 'bench-model', ?, ?, ?, ?, ?, ?)",
            zip(ts, kinds, replica, prompt, completion, ttft, itl, latency, outcome, strict=True),
        )
        cur.execute("COMMIT")
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cur.close()
    finally:
        raw.close()
    db._engines.pop(url, None)
    engine.dispose()
    return Path(url.removeprefix("sqlite:///"))


# --- one tick, in the child --------------------------------------------------------------------


def floor_definitions():  # noqa: ANN201 - dagster is imported here, in the child only
    """The tick's asset graph with no-op bodies: same names, dependencies, group, checks and job."""
    import dagster as dg

    group = "overseer_tick"

    @dg.asset(name="fleet_state", group_name=group)
    def fleet_state():  # noqa: ANN202 - dagster is a local import here
        return dg.MaterializeResult()

    @dg.asset(name="external_demand", group_name=group)
    def external_demand():  # noqa: ANN202 - dagster is a local import here
        return dg.MaterializeResult()

    @dg.asset(name="fleet_throughput", group_name=group, deps=[external_demand])
    def fleet_throughput():  # noqa: ANN202 - dagster is a local import here
        return dg.MaterializeResult()

    @dg.asset(name="overseer_decision", group_name=group, deps=[fleet_state, external_demand, fleet_throughput])
    def overseer_decision():  # noqa: ANN202 - dagster is a local import here
        return dg.MaterializeResult()

    @dg.asset(name="fleet_health", group_name=group,
              deps=[overseer_decision, fleet_throughput, fleet_state, external_demand],
              check_specs=[dg.AssetCheckSpec("overclaim_blocked", asset="fleet_health")])
    def fleet_health():  # noqa: ANN202 - dagster is a local import here
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(check_name="overclaim_blocked", passed=True)])

    @dg.asset_check(asset=overseer_decision, name="loop_fresh")
    def loop_fresh():  # noqa: ANN202
        return dg.AssetCheckResult(passed=True)

    job = dg.define_asset_job("overseer_tick", selection=dg.AssetSelection.groups(group),
                              executor_def=dg.in_process_executor)
    return dg.Definitions(assets=[fleet_state, external_demand, fleet_throughput, overseer_decision, fleet_health],
                          asset_checks=[loop_fresh], jobs=[job])


def _peak_rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(variant: str, profile: str | None = None) -> dict:
    """One tick of `variant` (`real` or `floor`) in this process; the figures as a dict."""
    started = time.perf_counter()
    import dagster as dg

    if variant == "real":
        from overseer_dagster.definitions import defs
    else:
        defs = floor_definitions()
    job = defs.resolve_job_def("overseer_tick")
    # Both variants run with the import-time heap frozen, as the code location freezes it (definitions.py).
    gc.freeze()
    imported = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        tick_s, tick_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        if profile:
            profiler.disable()
            profiler.dump_stats(profile)
        steps = _steps(instance.all_logs(result.run_id))
    outcome = None
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        if "outcome" in meta:
            outcome = meta["outcome"].value
    return {"success": result.success, "outcome": outcome, "tick_s": tick_s, "tick_cpu_s": tick_cpu_s,
            "import_s": imported - started,
            "process_s": time.perf_counter() - started, "peak_rss_kib": _peak_rss_kib(), "steps_s": steps}


def _steps(entries) -> dict[str, float]:  # noqa: ANN001 - dagster EventLogEntry records of one run
    """Each step's wall time, from its start event to its success or failure event."""
    started: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in started:
            out[event.step_key] = round(entry.timestamp - started[event.step_key], 4)
    return out


# --- the parent ----------------------------------------------------------------------------------


def _spawn(variant: str, template: Path, snapshot: Path, work: Path, profile: str | None = None) -> dict:
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copyfile(template, home / template.name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OVERSEER_", "DAGSTER_")) or k in ("OVERSEER_ENABLED",)}
    env.update(OVERSEER_HOME=str(home), OVERSEER_FLEET_SOURCE=f"snapshot:{snapshot}",
               OVERSEER_CADENCE_S=str(int(CADENCE_S)), OVERSEER_ENABLED="1")
    cmd = [sys.executable, "-m", "overseer_dagster.bench.tick", "--child", variant]
    if profile:
        cmd += ["--profile", profile]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"bench tick child ({variant}) exited {done.returncode}: {done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["spawn_s"] = wall
    return figures


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _sizes(text: str | list[int] | tuple[int, ...]) -> list[int]:
    if isinstance(text, str):
        return [int(p.replace("_", "")) for p in text.split(",") if p.strip()]
    return list(text)


def profile_top(path: str, limit: int = 12) -> list[dict]:
    """The costliest functions of a profiled tick by cumulative time: ours, the database driver, serialisation."""
    import pstats

    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    ours = ("overseer_dagster", "sqlite3", "pickle", "serdes", "json/encoder", "pydantic")
    rows = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.items():
        where = file
        if not any(part in where or part in name for part in ours):
            continue
        # Relative names only: no machine path in the figures.
        short = re.sub(r"^.*?(site-packages/|/lib/python3\.\d+/|/overseer_dagster/)", "", where)
        rows.append({"function": f"{short}:{line}({name})", "calls": calls, "cumtime_s": round(cumtime, 3),
                     "tottime_s": round(tottime, 3)})
    rows.sort(key=lambda r: r["cumtime_s"], reverse=True)
    return rows[:limit]


def run(replicas: str | list[int] = "100,1000,10000", ledger_rows: str | list[int] = "10000,100000,1000000",
        repeats: int = 3, profile: bool = False) -> dict:
    now = datetime.now(UTC)
    cells = []
    with tempfile.TemporaryDirectory(prefix="overseer-bench-tick-") as tmp:
        root = Path(tmp)
        for rows in _sizes(ledger_rows):
            t0 = time.perf_counter()
            template = build_store(root / f"store-{rows}", rows, datetime.now(UTC))
            setup_s = time.perf_counter() - t0
            for n in _sizes(replicas):
                snapshot = root / f"fleet-{n}.json"
                snapshot.write_text(json.dumps(fleet_snapshot(n, datetime.now(UTC))), encoding="utf-8")
                real, floor = [], []
                for _ in range(repeats):
                    # Interleaved, so a burst of load from other processes hits both alike.
                    real.append(_spawn("real", template, snapshot, root / "run"))
                    floor.append(_spawn("floor", template, snapshot, root / "run"))
                if not all(r["success"] for r in real):
                    raise RuntimeError(f"the tick failed at {n} replicas, {rows} ledger rows")
                profiled = None
                if profile:  # one more tick under cProfile, not counted in the figures
                    stats = str(root / f"tick-{n}-{rows}.prof")
                    _spawn("real", template, snapshot, root / "run", profile=stats)
                    profiled = profile_top(stats)
                tick_s, floor_s = _median(real, "tick_s"), _median(floor, "tick_s")
                rss, floor_rss = _median(real, "peak_rss_kib") / 1024, _median(floor, "peak_rss_kib") / 1024
                cells.append({
                    "replicas": n, "ledger_rows": rows, "outcome": real[-1]["outcome"],
                    "tick_s": round(tick_s, 3), "floor_tick_s": round(floor_s, 3),
                    "ratio_to_floor": round(tick_s / floor_s, 2),
                    # CPU time moves far less than wall time when other work shares the cores.
                    "tick_cpu_s": round(_median(real, "tick_cpu_s"), 3),
                    "floor_tick_cpu_s": round(_median(floor, "tick_cpu_s"), 3),
                    "cpu_ratio_to_floor": round(_median(real, "tick_cpu_s") / _median(floor, "tick_cpu_s"), 2),
                    "process_s": round(_median(real, "process_s"), 3),
                    "floor_process_s": round(_median(floor, "process_s"), 3),
                    "peak_rss_mib": round(rss, 1), "floor_peak_rss_mib": round(floor_rss, 1),
                    "ledger_setup_s": round(setup_s, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "steps_s": {step: round(statistics.median(r["steps_s"].get(step, 0.0) for r in real), 3)
                                for step in real[0]["steps_s"]},
                    **({"profile_top": profiled} if profiled is not None else {}),
                })
    return {"repeats": repeats, "cells": cells, "goals": _goals(cells)}


def _goals(cells: list[dict]) -> dict:
    def cell(n: int, rows: int | None = None) -> list[dict]:
        return [c for c in cells if c["replicas"] == n and (rows is None or c["ledger_rows"] == rows)]

    out: dict = {}
    big = cell(10_000, 1_000_000)
    if big:
        c = big[0]
        out["10k_replicas_1m_rows"] = {"tick_s": c["tick_s"], "tick_cpu_s": c["tick_cpu_s"],
                                        "peak_rss_mib": c["peak_rss_mib"],
                                        "goal": f"<= {GOAL_S} s and <= {GOAL_RSS_MIB:.0f} MiB",
                                        "met": c["tick_s"] <= GOAL_S and c["peak_rss_mib"] <= GOAL_RSS_MIB}
    thousand = cell(1_000)
    if thousand:
        worst = max(c["ratio_to_floor"] for c in thousand)
        out["1k_replicas_vs_floor"] = {"worst_ratio": worst,
                                       "worst_cpu_ratio": max(c["cpu_ratio_to_floor"] for c in thousand),
                                       "goal": f"<= {GOAL_FLOOR_RATIO}x the floor", "met": worst <= GOAL_FLOOR_RATIO}
    return out


def render(result: dict) -> str:
    """The cells as a table, then the goals."""
    head = (f"{'replicas':>8} {'ledger rows':>11} {'tick s':>7} {'floor s':>7} {'ratio':>6} {'cpu s':>6} "
            f"{'floor cpu':>9} {'ratio':>6} {'RSS MiB':>8} {'floor MiB':>9} {'load 1m':>7}")
    lines = [head]
    for c in result["cells"]:
        lines.append(f"{c['replicas']:>8} {c['ledger_rows']:>11} {c['tick_s']:>7.3f} {c['floor_tick_s']:>7.3f} "
                     f"{c['ratio_to_floor']:>6.2f} {c['tick_cpu_s']:>6.3f} {c['floor_tick_cpu_s']:>9.3f} "
                     f"{c['cpu_ratio_to_floor']:>6.2f} {c['peak_rss_mib']:>8.1f} {c['floor_peak_rss_mib']:>9.1f} "
                     f"{c['load_avg_1m']:>7.2f}")
    for name, goal in result["goals"].items():
        lines.append(f"{name}: {'met' if goal['met'] else 'MISSED'} ({goal['goal']}; "
                     + ", ".join(f"{k} {v}" for k, v in goal.items() if k not in ("goal", "met")) + ")")
    return "\n".join(lines) + "\n"


def cli(args) -> int:  # noqa: ANN001 - the `overseer bench tick` namespace
    result = run(args.replicas, args.ledger_rows, args.repeats, profile=args.profile)
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write(render(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m overseer_dagster.bench.tick")
    parser.add_argument("--child", choices=("real", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="(with --child) write cProfile stats of the run to this file")
    parser.add_argument("--replicas", default="100,1000,10000")
    parser.add_argument("--ledger-rows", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.profile)))
        return 0
    print(json.dumps(run(args.replicas, args.ledger_rows, args.repeats, profile=bool(args.profile)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
