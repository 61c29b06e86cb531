"""`overseer lab up` and `overseer bench lab` (argparse; wired into `overseer` by `add_*_commands`).

Each subcommand sets `handler` (and `func`, the same): call `args.handler(args)` and exit with its return code.
Standalone:
`python -m overseer_dagster.lab.cli lab up --replicas 4` or `... bench lab --seconds 10`.

`lab up` runs the whole lab in the foreground on loopback ports; once every server answers it prints exactly one
line to stdout, `lab ready {"gateway": URL, "replicas": {replica_id: URL}}`, then runs until SIGINT/SIGTERM and
stops cleanly (exit 0). Logs go to stderr. A bad scenario, profile or database is refused before start (exit 2).

`lab fault TARGET FAULT_JSON --gateway URL` gives a running lab a fault through its control API: TARGET is a
replica id (`{"kind": "kill", "duration_s": 90}`, kinds in `lab/faults.py`) or `gateway`
(`{"kind": "outage", "duration_s": 240}`: the gateway's port closes, then re-binds by itself). It prints what the
lab applied (exit 0); a fault that is not JSON or not valid for the target, or an unknown replica, exits 2 naming
the problem; a lab it cannot reach (not up, or its gateway in an outage) exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("overseer_dagster.lab")


def add_lab_commands(subparsers: Any) -> argparse.ArgumentParser:
    lab = subparsers.add_parser("lab", help="the emulated vLLM fleet (replicas + gateway) on loopback")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    up = lab_sub.add_parser("up", help="run the lab in the foreground until SIGINT/SIGTERM")
    up.add_argument("--replicas", type=_positive_int, default=4, metavar="N", help="replicas (default 4)")
    up.add_argument("--slots", type=_positive_int, default=16, metavar="S", help="max_num_seqs per replica")
    up.add_argument("--singleflight", action="store_true", help="replicas refuse (429) beyond their slots")
    up.add_argument("--priority-preemption", action="store_true",
                    help="engine priority scheduling: a better `priority` evicts the worst running request")
    up.add_argument("--scenario", metavar="FILE", help="timed faults and traffic (JSON; see lab/scenario.py)")
    up.add_argument("--gateway-port", type=int, default=0, metavar="P", help="gateway port (default: ephemeral)")
    up.add_argument("--traffic", metavar="PROFILE",
                    help="open-loop traffic through the gateway, e.g. steady:rate=2 (see lab/profiles.py)")
    up.add_argument("--database-url", metavar="URL", help="ledger database (default: the store's default)")
    up.add_argument("--no-ledger", action="store_true", help="do not write the token-usage ledger")
    up.add_argument("--auto-readmit", action="store_true",
                    help="a replica the health breaker drained returns to rotation once healthy")
    up.set_defaults(handler=_lab_up, func=_lab_up)
    fault = lab_sub.add_parser(
        "fault", help="give a running lab a fault: a replica (kill, hang, slow, ...) or the gateway (outage)",
        description="TARGET is a replica id or `gateway`. Examples: "
                    "replica-01 '{\"kind\": \"kill\", \"duration_s\": 90}'; "
                    "gateway '{\"kind\": \"outage\", \"duration_s\": 240}' (duration_s required: the control "
                    "API lives on the gateway's port, so the lab restores it by itself).")
    fault.add_argument("target", metavar="TARGET", help="a replica id (replica-01) or `gateway`")
    fault.add_argument("fault", metavar="FAULT_JSON", help='e.g. \'{"kind": "kill", "duration_s": 90}\'')
    fault.add_argument("--gateway", required=True, metavar="URL",
                       help="the lab's gateway (the `gateway` of its `lab ready` line)")
    fault.set_defaults(handler=_lab_fault, func=_lab_fault)
    return lab


def add_bench_commands(bench_subparsers: Any) -> argparse.ArgumentParser:
    bench = bench_subparsers.add_parser(
        "lab", help="16 replicas x 16 slots under full streaming load: token rate achieved vs configured, CPU")
    bench.add_argument("--seconds", type=float, default=10.0, metavar="S", help="measured window (default 10)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(handler=_bench_lab, func=_bench_lab)
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overseer-lab")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_lab_commands(sub)
    bench = sub.add_parser("bench", help="benchmarks")
    add_bench_commands(bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _lab_up(args: argparse.Namespace) -> int:
    import asyncio

    from overseer_dagster.lab.profiles import parse_profile
    from overseer_dagster.lab.runtime import replica_ids
    from overseer_dagster.lab.scenario import ScenarioError, load_scenario

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "alembic"):  # a line per request / per migration step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    scenario = profile = sink = None
    try:
        if args.scenario:
            scenario = load_scenario(args.scenario)
            scenario.check_replicas(replica_ids(args.replicas), source=args.scenario.rsplit("/", 1)[-1])
        if args.traffic:
            profile = parse_profile(args.traffic)
    except (ScenarioError, ValueError, OSError) as exc:
        print(f"lab up: {exc}", file=sys.stderr)
        return 2
    if not args.no_ledger:
        try:
            from overseer_dagster.lab.ledger import store_sink

            sink = store_sink(args.database_url)
        except Exception as exc:  # an unusable database is refused before start, with its reason
            print(f"lab up: ledger database: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_serve(args, scenario, profile, sink))


async def _serve(args: argparse.Namespace, scenario: Any, profile: Any, sink: Any) -> int:
    import asyncio
    import signal

    import httpx

    from overseer_dagster.lab.engine import EngineConfig
    from overseer_dagster.lab.gateway import GatewayConfig
    from overseer_dagster.lab.runtime import Lab, LabConfig
    from overseer_dagster.lab.scenario import run_scenario
    from overseer_dagster.lab.traffic import TrafficGenerator
    from overseer_dagster.lab.upstream import BreakerConfig

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    config = LabConfig(
        replicas=args.replicas,
        engine=EngineConfig(max_num_seqs=args.slots, singleflight=args.singleflight,
                            priority_preemption=args.priority_preemption),
        gateway=GatewayConfig(breaker=BreakerConfig(auto_readmit=args.auto_readmit)),
        gateway_port=args.gateway_port,
    )
    lab = Lab(config, ledger_sink=sink)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await lab.start()
        async with httpx.AsyncClient(timeout=5.0) as client:  # "ready" means every server answers
            for url in (lab.gateway_url, *lab.replica_urls.values()):
                (await client.get(url + "/health")).raise_for_status()
        print("lab ready " + json.dumps(lab.ready_info()), flush=True)
        if scenario is not None:
            tasks.append(loop.create_task(run_scenario(lab, scenario)))
        if profile is not None:
            tasks.append(loop.create_task(TrafficGenerator(lab.gateway_url, profile).run(stop)))
        await stop.wait()
        log.info("lab: stopping")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await lab.stop()
    return 0


def _lab_fault(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    import httpx

    from overseer_dagster.lab.faults import GATEWAY, FaultError, parse_fault

    target = args.target
    try:
        fault = parse_fault(target, args.fault)  # refused here, before anything reaches the lab
    except FaultError as exc:
        print(f"lab fault: {target}: {exc}", file=sys.stderr)
        return 2
    base = args.gateway.rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"lab fault: --gateway must be an http(s) URL, got {args.gateway!r}", file=sys.stderr)
        return 2
    path = "/lab/gateway/faults" if target == GATEWAY else f"/lab/replicas/{quote(target, safe='')}/faults"
    try:
        resp = httpx.post(base + path, json=fault.model_dump(mode="json"), timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"lab fault: the lab at {base} did not answer ({type(exc).__name__}): is it up, and its gateway "
              "not in an outage?", file=sys.stderr)
        return 1
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 200 and isinstance(body, dict):
        print(json.dumps(body), flush=True)
        return 0
    error = body.get("error") if isinstance(body, dict) else None
    if resp.status_code == 404 and isinstance(error, dict) and error.get("type") == "unknown_replica":
        print(f"lab fault: {target!r} is not a replica of this lab (nor `{GATEWAY}`)", file=sys.stderr)
        return 2
    message = body.get("message") if isinstance(body, dict) else None
    print(f"lab fault: the lab refused it (HTTP {resp.status_code}): {message or resp.text[:300]}", file=sys.stderr)
    return 2 if 400 <= resp.status_code < 500 else 1


def _bench_lab(args: argparse.Namespace) -> int:
    import asyncio

    from overseer_dagster.lab.bench import bench_lab, format_result

    result = asyncio.run(bench_lab(args.seconds))
    print(json.dumps(result) if args.json else format_result(result), flush=True)
    return 0 if result["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
