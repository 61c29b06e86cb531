"""`overseer stress`: run the stress harness until interrupted (or for `--duration-s`).

`--replicas` takes a JSON object `{replica_id: base URL}`, the lab's ready line (`lab ready {"gateway": ...,
"replicas": {...}}`, whose gateway is used when `--gateway` is not given), or a file holding either.
Live load comes from the gateway's `GET /fleet/state`; without a gateway, from each replica's `/metrics`
(then `--max-inflight` must give the engine's `max_num_seqs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from typing import Any

from overseer_dagster.core.fleet import REPLICA_ID_PATTERN

log = logging.getLogger("overseer_dagster.stress")
READY_PREFIX = "lab ready"
_REPLICA_ID = re.compile(REPLICA_ID_PATTERN)


class ReplicasError(ValueError):
    pass


def parse_replicas(spec: str) -> tuple[dict[str, str], str | None]:
    """(replica_id -> base URL, gateway URL or None) from JSON, a lab ready line, or a file holding either."""
    text = spec
    if not spec.lstrip().startswith(("{", READY_PREFIX)) and os.path.exists(spec):
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    text = text.strip()
    for line in text.splitlines():
        if line.startswith(READY_PREFIX):
            text = line[len(READY_PREFIX):].strip()
            break
    try:
        data = json.loads(text)
    except ValueError:
        raise ReplicasError("--replicas: expected a JSON object {replica_id: URL}, a 'lab ready' line, "
                            "or a file holding one") from None
    if not isinstance(data, dict):
        raise ReplicasError("--replicas: expected a JSON object")
    gateway = data.get("gateway") if isinstance(data.get("gateway"), str) else None
    replicas: Any = data.get("replicas", data) if "replicas" in data else data
    if not isinstance(replicas, dict) or not replicas:
        raise ReplicasError("--replicas: no replicas given")
    out: dict[str, str] = {}
    for rid, url in replicas.items():
        if not isinstance(rid, str) or not _REPLICA_ID.fullmatch(rid):
            raise ReplicasError(f"--replicas: replica id {rid!r} must match {REPLICA_ID_PATTERN}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ReplicasError(f"--replicas: replica {rid}: the URL must start with http:// or https://")
        out[rid] = url
    return out, gateway


def main(args: argparse.Namespace) -> int:
    from overseer_dagster.cli import UsageError

    try:
        replicas, ready_gateway = parse_replicas(args.replicas)
    except ReplicasError as exc:
        raise UsageError(str(exc)) from None
    gateway = args.gateway or ready_gateway
    if gateway is None and not args.max_inflight:
        raise UsageError("without --gateway, give --max-inflight (the engines' max_num_seqs) to read /metrics")
    if args.interval_ms <= 0 or args.interval_ms > 250:
        raise UsageError("--interval-ms must be within 1..250 (external demand wins within a second)")
    if args.reserve < 1:
        raise UsageError("--reserve must keep at least 1 slot free")
    if args.cadence_s <= 0:
        raise UsageError("--cadence-s must be positive")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request, with its URL: not in our log
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return asyncio.run(_run(args, replicas, gateway))


async def _run(args: argparse.Namespace, replicas: dict[str, str], gateway: str | None) -> int:
    import time

    from overseer_dagster.stress.control import store_reader
    from overseer_dagster.stress.harness import HarnessConfig, StressHarness
    from overseer_dagster.stress.ledger import store_sink
    from overseer_dagster.stress.load import GatewayLoad, MetricsLoad

    config = HarnessConfig(interval_s=args.interval_ms / 1000, reserve=args.reserve, cadence_s=args.cadence_s,
                           seed=args.seed, model=args.model)
    harness: StressHarness
    if gateway is not None:
        load = GatewayLoad(gateway, clock=time.monotonic)
    else:
        load = MetricsLoad(replicas, max_inflight=args.max_inflight, clock=time.monotonic,
                           own_inflight=lambda rid: harness.own_inflight(rid))
    harness = StressHarness(replicas, load=load, read_targets=store_reader(args.database_url),
                            sink=store_sink(args.database_url), config=config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration_s:
        loop.call_later(args.duration_s, stop.set)
    log.info("stress: %d replicas (%s), live load from %s, reserve %d, interval %d ms, dead-man %g s",
             len(replicas), ", ".join(sorted(replicas)), "the gateway" if gateway else "replica /metrics",
             args.reserve, args.interval_ms, 2 * args.cadence_s)
    reporter = loop.create_task(_report(harness, stop, args.report_s))
    try:
        await harness.run(stop)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    sys.stdout.write(json.dumps(harness.stats(), sort_keys=True) + "\n")
    return 0


async def _report(harness: Any, stop: asyncio.Event, every_s: float) -> None:
    while not stop.is_set():
        await asyncio.sleep(every_s)
        s = harness.stats()
        log.info("stress: in flight %d (allowance %d, target %d); ok %d, preempted %d, refused %d, errors %d %s; "
                 "backing off %s; dead-man %s", sum(s["inflight"].values()), sum(s["allowance"].values()),
                 sum(s["target"].values()), s["ok"], s["preempted"], s["refused"], s["errors"],
                 json.dumps(s["errors_by_replica"], sort_keys=True), ",".join(s["backing_off"]) or "none",
                 "fired" if s["dead_man"] else "ok")
