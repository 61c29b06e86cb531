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
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench("probe", replicas=True))

    for module, register in _plugins():
        register(sub, bsub)
    return parser


def _plugins() -> list[tuple[str, Callable]]:
    """Command groups that live beside their subsystem (lab, stress, gates…), registered cheaply."""
    found = []
    import importlib

    for module in ("overseer_dagster.lab.cli",):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue

        def register(sub, bsub, mod=mod) -> None:  # noqa: ANN001
            mod.add_lab_commands(sub)
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
