"""The operator's commands: `overseer operator keygen`, `overseer gates`, `overseer approve | reject |
rollback`, and `overseer bench approval` (wired into `overseer` by `add_commands` / `add_bench_commands`).

`approve`, `reject` and `rollback` read the gate from the store (to show what is being signed and to
sign its current action hash), sign with the operator's private key, and submit the `approve_action`
(or `rollback_action`) run through Dagster's GraphQL API, then wait for its verdict. With
`--print-config` they print the run config for the Launchpad instead. The private key never leaves
this process: only the signature goes into the run config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_DAGSTER = "http://127.0.0.1:3000"
WAIT_S = 120.0


class CommandError(Exception):
    """Exit 1 with this message (a refusal, a failed run, an unreachable Dagster)."""


def add_commands(sub: Any) -> None:  # noqa: ANN401
    operator = sub.add_parser("operator", help="operator keys for signing approvals")
    osub = operator.add_subparsers(dest="operator_command", required=True, metavar="COMMAND")
    p = osub.add_parser("keygen", help="make an Ed25519 key pair; print the operator registry entry")
    p.add_argument("--name", required=True, help="the operator's name, [a-z][a-z0-9._-]{0,63}")
    p.add_argument("--out", default=".", help="directory for NAME.pem (mode 0600; default: the current one)")
    p.add_argument("--registry", help="also add the entry to this JSON registry file (created if missing)")
    p.set_defaults(handler=_run(cmd_keygen))

    p = sub.add_parser("gates", help="open gates, public-safe: kind, target, age, expiry, action hash prefix")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run(cmd_gates))

    for name, decision, text in (("approve", "approve", "approve a pending gate (signed)"),
                                 ("reject", "reject", "reject a pending gate (signed)"),
                                 ("rollback", "rollback", "roll back an executed gate, e.g. re-admit a quarantined "
                                                          "replica (signed)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("gate_id")
        p.add_argument("--key", help="the operator's private key (PEM, from `overseer operator keygen`)")
        p.add_argument("--operator", help="the operator's registered name")
        p.add_argument("--note", default="", help="a short public-safe note recorded with the decision")
        p.add_argument("--dagster", default=None,
                       help=f"the Dagster webserver (default OVERSEER_DAGSTER_URL or {DEFAULT_DAGSTER})")
        p.add_argument("--print-config", action="store_true", help="print the Launchpad run config YAML; submit nothing")
        p.add_argument("--no-wait", action="store_true", help="submit and exit without waiting for the verdict")
        p.add_argument("--from-config", metavar="FILE",
                       help="submit a run config printed earlier by --print-config, as it is (no key needed; "
                            "submitting one twice shows that a signed decision counts once)")
        p.set_defaults(handler=_run(cmd_sign), decision=decision)


def add_bench_commands(bsub: Any) -> None:  # noqa: ANN401
    p = bsub.add_parser("approval", help="approval run to executed outcome, through the real daemon (SQLite)")
    p.add_argument("--gates", type=int, default=12)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run(cmd_bench_approval))


def _run(fn: Any) -> Any:  # noqa: ANN401
    def handler(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CommandError as exc:
            print(f"overseer {args.command}: {exc}", file=sys.stderr)
            return 1

    return handler


# --- keygen ----------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    from overseer_dagster.cli import UsageError
    from overseer_dagster.core.approval import is_operator_name
    from overseer_dagster.receipts import RegistryError, add_to_registry, generate_key, registry_entry, write_private_key

    if not is_operator_name(args.name):
        raise UsageError("--name must match [a-z][a-z0-9._-]{0,63}")
    path = Path(args.out) / f"{args.name}.pem"
    if path.exists():
        raise UsageError(f"{path.name} already exists in {args.out}: not overwriting a key")
    key = generate_key()
    write_private_key(key, path)
    entry = registry_entry(args.name, key)
    if args.registry:
        try:
            add_to_registry(Path(args.registry), entry)
        except RegistryError as exc:
            raise CommandError(str(exc)) from None
    print(f"private key written to {path} (mode 0600): keep it on this machine", file=sys.stderr)
    print("add this entry to the operator registry (OVERSEER_OPERATORS, default OVERSEER_HOME/operators.json):",
          file=sys.stderr)
    print(json.dumps(entry))
    return 0


# --- gates -----------------------------------------------------------------------------------------


def cmd_gates(args: argparse.Namespace) -> int:
    from overseer_dagster.approvals import open_gates_view
    from overseer_dagster.core.approval import target_text
    from overseer_dagster.store import connect

    view = open_gates_view(connect(), datetime.now(UTC))
    if args.json:
        sys.stdout.write(json.dumps(view.value) + "\n")
        return 0
    gates = view.value.get("gates") or []
    if not gates:
        print("no open gates")
        return 0
    print(f"{'gate':<36}  {'kind':<18}  {'state':<8}  {'age':>6}  {'expires':>7}  {'hash':<12}  target")
    for g in gates:
        print(f"{g.get('gate_id')!s:<36}  {g.get('kind')!s:<18}  {g.get('state')!s:<8}  "
              f"{_mins(g.get('age_s')):>6}  {_mins(g.get('expires_in_s')):>7}  {g.get('action_hash_prefix')!s:<12}  "
              f"{target_text(g)}")
    return 0


def _mins(seconds: object) -> str:
    return f"{seconds // 60}m" if isinstance(seconds, int) else str(seconds)


# --- approve / reject / rollback --------------------------------------------------------------------


def signed_config(*, gate: dict, decision: str, operator: str, key_path: Path, note: str,
                  now: datetime | None = None) -> dict[str, str]:
    """The run config fields of a signed decision on `gate` (its current action hash)."""
    from overseer_dagster.core.approval import signed_message
    from overseer_dagster.receipts import load_private_key, sign

    key = load_private_key(key_path)
    issued_at = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = signed_message(gate_id=gate["gate_id"], action_hash=gate["action_hash"], decision=decision,
                             operator=operator, issued_at=issued_at)
    fields = {"gate_id": gate["gate_id"], "operator": operator, "decision": decision, "issued_at": issued_at,
              "signature": sign(key, message), "note": note}
    if decision == "rollback":  # the job itself is the decision
        del fields["decision"]
    return fields


def run_config_for(decision: str, fields: dict[str, str]) -> tuple[str, dict]:
    """(job name, run config) for a signed decision."""
    if decision == "rollback":
        return "rollback_action", {"ops": {"run_rollback": {"config": fields}}}
    return "approve_action", {"ops": {"record_approval": {"config": fields}}}


def cmd_sign(args: argparse.Namespace) -> int:
    import os

    from overseer_dagster.cli import UsageError
    from overseer_dagster.core.approval import HASH_PREFIX, target_text
    from overseer_dagster.approvals import gate_view
    from overseer_dagster.receipts import KeyFileError
    from overseer_dagster.store import connect, gates

    url = args.dagster or os.environ.get("OVERSEER_DAGSTER_URL") or DEFAULT_DAGSTER
    if args.from_config:
        return _submit_printed(args, url)
    if not args.key or not args.operator:
        raise UsageError("--key and --operator are required (or --from-config FILE)")
    engine = connect()
    gate = gates.get(engine, args.gate_id)
    if gate is None:
        raise UsageError(f"no gate {args.gate_id} in the store (see `overseer gates`)")
    try:
        fields = signed_config(gate=gate, decision=args.decision, operator=args.operator, key_path=Path(args.key),
                               note=args.note)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    job, run_config = run_config_for(args.decision, fields)
    view = gate_view(gate, datetime.now(UTC))
    print(f"{args.decision} gate {gate['gate_id']}: {gate['kind']} {target_text(view)} "
          f"(state {gate['state']}, action hash {gate['action_hash'][:HASH_PREFIX]}) as {args.operator}",
          file=sys.stderr)
    if args.print_config:
        import yaml

        print(f"# Launchpad of job `{job}`: paste this run config (signed; good for 10 minutes)", file=sys.stderr)
        sys.stdout.write(yaml.safe_dump(run_config, sort_keys=False))
        return 0
    return _verdict(args, *submit(url, job, run_config, wait=not args.no_wait))


def _submit_printed(args: argparse.Namespace, url: str) -> int:
    import yaml

    from overseer_dagster.cli import UsageError

    try:
        run_config = yaml.safe_load(Path(args.from_config).read_text())
        [(op, body)] = run_config["ops"].items()
        gate_id = body["config"]["gate_id"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        raise UsageError(f"{args.from_config}: not a run config printed by --print-config") from None
    job = {"record_approval": "approve_action", "run_rollback": "rollback_action"}.get(op)
    if job is None or gate_id != args.gate_id:
        raise UsageError(f"{args.from_config}: not a signed decision on gate {args.gate_id}")
    return _verdict(args, *submit(url, job, run_config, wait=not args.no_wait))


def _verdict(args: argparse.Namespace, run_id: str, status: str | None, message: str | None) -> int:
    if status is None:
        print(f"submitted run {run_id}")
        return 0
    if status == "SUCCESS":
        print(f"{args.decision}: recorded (run {run_id})")
        return 0
    raise CommandError(f"{message or 'the run failed'} (run {run_id}, {status})")


def submit(url: str, job: str, run_config: dict, *, wait: bool, timeout_s: float = WAIT_S) -> tuple[str, str | None,
                                                                                                     str | None]:
    """Launch `job` on the Dagster at `url`; (run id, final status or None, failure message)."""
    from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
    from gql.transport.exceptions import TransportConnectionFailed

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"--dagster must be an http(s) URL such as {DEFAULT_DAGSTER}")
    try:  # the client asks the server for its schema as it is made
        client = DagsterGraphQLClient(parts.hostname, port_number=parts.port, use_https=parts.scheme == "https",
                                      path_prefix=parts.path.rstrip("/"), timeout=60)
    except Exception as exc:  # noqa: BLE001 - connection trouble of any kind
        raise CommandError(f"Dagster at {url} is unreachable ({type(exc).__name__})") from None
    try:
        run_id = client.submit_job_execution(job, run_config=run_config)
    except DagsterGraphQLClientError as exc:
        cause = exc.__cause__
        if isinstance(cause, (TransportConnectionFailed, ConnectionError, OSError)) or (
                cause is not None and type(cause).__module__.startswith("requests")):
            raise CommandError(f"Dagster at {url} is unreachable ({type(cause).__name__})") from None
        first = (str(exc).strip().splitlines() or ["no reason given"])[0][:300]
        raise CommandError(f"Dagster refused the run: {first}") from None
    except Exception as exc:  # noqa: BLE001 - connection trouble of any kind
        raise CommandError(f"Dagster at {url} is unreachable ({type(exc).__name__})") from None
    if not wait:
        return run_id, None, None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return run_id, status, None if status == "SUCCESS" else _failure(client, run_id)
        time.sleep(0.5)
    raise CommandError(f"run {run_id} did not finish within {timeout_s:.0f} s")


_FAILURE_QUERY = """
query RunFailure($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename ... on ExecutionStepFailureEvent { failureMetadata { label description } error { message } } } }
  }
}
"""


def _failure(client: Any, run_id: str) -> str | None:  # noqa: ANN401
    """The step failure's description (the op's `dg.Failure`), if Dagster tells."""
    try:
        data = client._execute(_FAILURE_QUERY, {"runId": run_id})  # noqa: SLF001 - the client's own transport
        for event in data["logsForRun"].get("events") or []:
            if event.get("__typename") == "ExecutionStepFailureEvent":
                meta = event.get("failureMetadata") or {}
                return meta.get("description") or (event.get("error") or {}).get("message")
    except Exception:  # noqa: BLE001 - only a nicer message is lost
        return None
    return None


# --- bench -------------------------------------------------------------------------------------------


def cmd_bench_approval(args: argparse.Namespace) -> int:
    from overseer_dagster.bench.approval import run

    result = run(gates=args.gates)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
    return 0 if result.get("meets_goal") else 1
