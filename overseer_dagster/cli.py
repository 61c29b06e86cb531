"""The `overseer` command.

Only argparse is imported at module level: `validate-proposal` and `redact` never import Dagster,
so they start fast. Each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence

USAGE_ERROR = 2


class UsageError(Exception):
    """Bad input on the command line or stdin; exit 2 with this message."""


def _read_text(path: str | None) -> str:
    if path in (None, "-"):
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None


def _jsonl(text: str, fields: tuple[str, ...]) -> Iterable[tuple[int, dict | None]]:
    """Each non-blank line as an object with `fields`, or None (the caller reports it and goes on)."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        ok = isinstance(obj, dict) and all(f in obj for f in fields) and isinstance(obj.get(fields[-1]), str)
        yield n, obj if ok else None


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


# --- validate-proposal ---------------------------------------------------------------------------


def cmd_validate_proposal(args: argparse.Namespace) -> int:
    from overseer_dagster.core.fleet import FleetSnapshot
    from overseer_dagster.core.proposal import decide_text

    fleet = None
    if args.context:
        try:
            fleet = FleetSnapshot.model_validate_json(_read_text(args.context))
        except ValueError as exc:
            raise UsageError(f"--context {args.context}: not a fleet snapshot ({str(exc).splitlines()[0]})") from None

    def verdict_of(raw: str) -> dict:
        v = decide_text(raw, fleet)
        return {"verdict": v.verdict, "reason": v.reason, "actions": v.effects()}

    text = _read_text(args.file)
    if not args.jsonl:
        _emit(verdict_of(text))
        return 0
    bad = []
    for n, obj in _jsonl(text, ("id", "raw")):
        if obj is None:
            bad.append(n)
            continue
        _emit({"id": obj["id"], **verdict_of(obj["raw"])})
    if bad:
        lines = ", ".join(map(str, bad[:10])) + ("…" if len(bad) > 10 else "")
        raise UsageError(f'line(s) {lines}: expected a JSON object {{"id": ..., "raw": "<text>"}}')
    return 0


# --- redact ------------------------------------------------------------------------------------


def cmd_redact(args: argparse.Namespace) -> int:
    from overseer_dagster.core.redact import redact

    text = sys.stdin.read()
    if not args.jsonl:
        sys.stdout.write(redact(text))
        return 0
    bad = []
    for n, obj in _jsonl(text, ("id", "text")):
        if obj is None:
            bad.append(n)
            continue
        _emit({"id": obj["id"], "text": redact(obj["text"])})
    if bad:
        raise UsageError(f'line(s) {", ".join(map(str, bad[:10]))}: expected a JSON object {{"id": ..., "text": "<text>"}}')
    return 0


# --- tick --------------------------------------------------------------------------------------


def cmd_tick(args: argparse.Namespace) -> int:
    from overseer_dagster.run import run_tick_once

    rows, ok = run_tick_once()
    if args.json:
        _emit({"success": ok, "rows": rows})
    else:
        for r in rows:
            print(f"{r['state']:<17} {r['reason'] or '':<18} {r['kind'] or '':<20} {r['gate_id'] or ''}".rstrip())
    return 0 if ok else 1


# --- audit -------------------------------------------------------------------------------------


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from overseer_dagster.store import connect, journal

    report = journal.verify(connect())
    if args.json:
        _emit({"ok": report.ok, "rows": report.rows, "broken_seq": report.broken_seq, "problem": report.problem})
    elif report.ok:
        print(f"audit chain intact: {report.rows} rows")
    else:
        print(f"audit chain broken at seq {report.broken_seq}: {report.problem}")
    return 0 if report.ok else 1


# `audit tail`'s table: one line per row, the detail cut at a word (`--json` has it whole).
TAIL_DETAIL_CHARS = 100


def cmd_audit_tail(args: argparse.Namespace) -> int:
    import textwrap

    from overseer_dagster.store import connect, journal

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    for row in map(journal.public, journal.tail(connect(), args.n)):
        if args.json:
            _emit(row)
        else:
            print(f"{row['seq']:>6} {row['created_at'][:19]} {row['phase']:<8} {row['state']:<19} "
                  f"{row['reason'] or '':<22} {row['kind'] or '':<18} "
                  f"{textwrap.shorten(row['detail'] or '', TAIL_DETAIL_CHARS, placeholder=' ...')}".rstrip())
    return 0


# --- replay ------------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from overseer_dagster import replay
    from overseer_dagster.store import connect

    try:
        since = replay.parse_since(args.since, datetime.now(UTC))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = replay.replay(connect(), since)
    if args.json:
        _emit(report.public())
    else:
        sys.stdout.write(replay.render(report))
    return 1 if report.differs else 0


# --- health ------------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from overseer_dagster import settings
    from overseer_dagster.core import projection
    from overseer_dagster.store import connect
    from overseer_dagster.store.health import snapshot_from_store

    snapshot = snapshot_from_store(connect(), datetime.now(UTC), settings.health_thresholds())
    markdown, document = projection.public_report(snapshot)
    if not args.private:
        if args.json:
            _emit(document)
        else:
            sys.stdout.write(markdown)
        return 0
    private = {**snapshot.model_dump(mode="json"), "claims": [c.model_dump(mode="json") for c in snapshot.claims]}
    if args.json:
        _emit(private)
        return 0
    sys.stdout.write("PRIVATE (operator view: figures as measured, free-text notes). Do not publish.\n\n" + markdown)
    sys.stdout.write("\n## Figures as measured\n\n")
    for claim in snapshot.claims:
        measured = snapshot.figures.get(claim.name)
        print(f"- {claim.name.value}: {measured} {claim.unit} ({'stated' if claim.stated else 'unverified'})")
    if snapshot.notes:
        sys.stdout.write("\n## Notes\n\n")
        for key, note in snapshot.notes.items():
            print(f"- {key}: {note}")
    return 0


# --- bench -------------------------------------------------------------------------------------


def _bench(module: str, **kwargs) -> Callable[[argparse.Namespace], int]:  # noqa: ANN003
    def run(args: argparse.Namespace) -> int:
        import importlib

        result = importlib.import_module(f"overseer_dagster.bench.{module}").run(
            **{k: getattr(args, k) for k in kwargs}
        )
        if args.json:
            _emit(result)
        else:
            for key, value in result.items():
                print(f"{key:>24}: {value}")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overseer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate-proposal", help="decide one mind output: valid or blocked, with effects")
    p.add_argument("--file", help="read from this file (default: stdin)")
    p.add_argument("--jsonl", action="store_true", help='each line {"id": ..., "raw": ...}')
    p.add_argument("--context", help="a fleet snapshot JSON file to validate against (default: schema only)")
    p.set_defaults(handler=cmd_validate_proposal)

    p = sub.add_parser("redact", help="stdin to stdout, public-safe")
    p.add_argument("--jsonl", action="store_true", help='each line {"id": ..., "text": ...}')
    p.set_defaults(handler=cmd_redact)

    p = sub.add_parser("tick", help="run one tick in-process through the overseer_tick job")
    p.add_argument("--once", action="store_true", required=True, help="one tick, then exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tick)

    p = sub.add_parser("health", help="the fleet health snapshot and its public report (from the store)")
    p.add_argument("--json", action="store_true", help="the report document as JSON")
    p.add_argument("--private", action="store_true", help="operator view: figures as measured and free-text notes")
    p.set_defaults(handler=cmd_health)

    p = sub.add_parser("demo", help="the lab, the stress harness and Dagster (webserver + daemon) on 127.0.0.1")
    p.add_argument("--port", type=int, default=3000, help="Dagster webserver port (default 3000)")
    p.set_defaults(handler=lambda a: __import__("overseer_dagster.demo", fromlist=["main"]).main(a))

    bench = sub.add_parser("bench", help="benchmarks (medians and ratios; figures go in BENCHMARKS.md)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bsub.add_parser("validate", help="proposals per second, valid and adversarial; worst 64 KiB case")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench("validate", seconds=True))
    p = bsub.add_parser("redact", help="scrubber MiB/s on mixed log text")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench("redact", seconds=True))
    p = bsub.add_parser("probe", help="probe N replicas' /health and /metrics over loopback")
    p.add_argument("--replicas", type=int, default=1000)
    p.add_argument("--server", choices=("process", "thread"), default="process",
                   help="where the stand-in replicas run: a process of their own (default), or a thread of "
                        "the prober's process, sharing its GIL")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench("probe", replicas=True, server=True))
    p = bsub.add_parser("dispatch", help="decision-to-outcome latency through the real Dagster daemon (SQLite)")
    p.add_argument("--actions", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench("dispatch", actions=True))
    p = bsub.add_parser("soak", help="lab, stress and Dagster under injected faults for N minutes; exit 0 only "
                                     "if every check passes")
    p.add_argument("--minutes", type=float, required=True, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault plan and the mind script")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=lambda a: __import__("overseer_dagster.bench.soak", fromlist=["main"]).main(a))
    p = bsub.add_parser("tick", help="one full tick (wall time, peak RSS) by fleet and ledger size, next to a no-op floor")
    p.add_argument("--replicas", default="100,1000,10000", help="comma-separated fleet sizes")
    p.add_argument("--ledger-rows", dest="ledger_rows", default="10000,100000,1000000",
                   help="comma-separated ledger sizes (rows inside the demand window)")
    p.add_argument("--repeats", type=int, default=3, help="ticks per cell; figures are medians (default 3)")
    p.add_argument("--profile", action="store_true", help="also profile one tick per cell (cProfile): top entries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=lambda a: __import__("overseer_dagster.bench.tick", fromlist=["cli"]).cli(a))

    p = sub.add_parser("replay", help="re-decide recorded ticks with the rule policy; exit 1 if any decision differs")
    p.add_argument("--since", required=True, help="a duration before now (30m, 2h, 7d) or an RFC 3339 time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_replay)

    audit = sub.add_parser("audit", help="the journal's hash chain: verify it, or show its newest rows public-safe")
    asub = audit.add_subparsers(dest="audit", required=True, metavar="AUDIT")
    p = asub.add_parser("verify", help="walk the chain; exit 1 naming the first broken row, 0 if intact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit_verify)
    p = asub.add_parser("tail", help="the newest journal rows (public columns, scrubbed)")
    p.add_argument("-n", type=int, default=20, help="how many rows (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_audit_tail)

    p = bsub.add_parser("spike", help="external spike on the lab under four stress arms (no_stress, static, hpa, overseer)")
    p.add_argument("--quick", action="store_true", help="a shorter spike and phases (finishes within 90 s)")
    p.add_argument("--json", action="store_true", help="print the result (keyed by arm) as JSON")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--png", default="spike-timeline.png", help="timeline figure path (default spike-timeline.png)")
    p.set_defaults(handler=lambda a: __import__("overseer_dagster.bench.spike", fromlist=["main"]).main(a))

    p = sub.add_parser("stress", help="the stress harness: preemptible internal load that yields to external demand")
    p.add_argument("--replicas", required=True,
                   help='JSON {replica_id: base URL}, the lab\'s "lab ready {...}" line, or a file holding either')
    p.add_argument("--gateway", help="routing-state oracle base URL (GET /fleet/state); default: the ready line's")
    p.add_argument("--database-url", help="the overseer's store (default: OVERSEER_DATABASE_URL or local SQLite)")
    p.add_argument("--interval-ms", type=int, default=250, help="fast-loop period, at most 250 (default 250)")
    p.add_argument("--reserve", type=int, default=1, help="slots per replica kept free for external arrivals")
    p.add_argument("--cadence-s", type=float, default=60.0,
                   help="the overseer's tick cadence; no target written for 2x this: stress goes to zero")
    p.add_argument("--max-inflight", type=int, default=0, help="engine max_num_seqs (only without a gateway)")
    p.add_argument("--model", help="model name to send (default: none, the server's own)")
    p.add_argument("--seed", type=int, default=0, help="workload seed")
    p.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--report-s", type=float, default=10.0, help="status log period in seconds")
    p.set_defaults(handler=lambda a: __import__("overseer_dagster.stress.cli", fromlist=["main"]).main(a))

    for module, register in _plugins():
        register(sub, bsub)
    return parser


def _plugins() -> list[tuple[str, Callable]]:
    """Command groups that live beside their subsystem (lab, stress, gates…), registered cheaply."""
    found = []
    import importlib

    for module in ("overseer_dagster.lab.cli", "overseer_dagster.operator_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue

        def register(sub, bsub, mod=mod) -> None:  # noqa: ANN001
            for name in ("add_lab_commands", "add_commands"):
                if hasattr(mod, name):
                    getattr(mod, name)(sub)
            mod.add_bench_commands(bsub)

        found.append((module, register))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"overseer {args.command}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
