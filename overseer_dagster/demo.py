"""`make demo`: the overseer running against the lab, as an operator would run it.

Starts, each as its own process on 127.0.0.1 with default signal handling: the lab (replicas,
gateway and external traffic with a spike), the stress harness, and Dagster (a gRPC code server,
the daemon and the webserver) with the overseer wired to the lab gateway and the tick schedule
turned on. Ctrl-C stops everything it started, each by its own PID.

Gates: a DEMO operator key pair and registry are generated at every start under
OVERSEER_HOME/demo/operator (never committed: OVERSEER_HOME is ignored), plus a key that is not
registered. One lab replica flaps early on; the rule policy then proposes quarantining it, which
opens a gate; the demo prints the exact `overseer approve` command for it (and a wrong-key one).

The walkthrough (`TIMELINE`, times from the moment the lab is ready; the lab's scenario plays it):
the flapping replica (quarantine gate); an external traffic spike (stress yields); a replica killed for
90 s that recovers by itself (the gateway's breaker drains it, it comes back healthy but draining, the
overseer re-admits it once: one `readmit_replica`, one `dispatch_action` run); and a gateway outage
longer than three cadences (the fleet signal goes stale, the report says "unverified" for ready
replicas and throughput; the gateway comes back on the same port and the next ticks clear it). The
banner prints the timeline and where to look; the loop prints a line as each event starts and ends.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from overseer_dagster.deploy import Deployment, DeployError, Service, console_script, spawn
from overseer_dagster.receipts import add_to_registry, generate_key, registry_entry, write_private_key
from overseer_dagster.store import connect, overseer_home

READY = "lab ready "
REPLICAS = 4
CADENCE_S = 60  # the tick schedule's cadence (every minute)
# External traffic: a low base with a spike a few minutes in, so stress visibly yields and returns.
SPIKE_AT_S, SPIKE_HOLD_S = 180, 60
TRAFFIC = f"step_spike:base=1.5,peak=12,at_s={SPIKE_AT_S},hold_s={SPIKE_HOLD_S}"
# One replica flaps early: enough breaker trips (3 in 30 minutes) for the rule policy to propose its quarantine.
FLAPPING = "replica-03"
FLAP_AT_S, FLAP_FOR_S = 20, 40
# One replica dies and comes back by itself: drained by the breaker, then re-admitted once by the overseer.
KILLED = "replica-01"
KILL_AT_S, KILL_FOR_S = 300, 90
# The gateway goes away for longer than three cadences: the fleet signal goes stale, then clears.
OUTAGE_AT_S, OUTAGE_FOR_S = 540, 240
WALKTHROUGH_END_S = 900
SCENARIO = {
    "name": "the demo walkthrough: a flapping replica (quarantine gate), a killed replica (drain and "
            "re-admission), a gateway outage (a stale fleet signal)",
    "faults": [
        {"at_s": FLAP_AT_S, "replica": FLAPPING, "kind": "flap", "period_s": 5, "duration_s": FLAP_FOR_S},
        {"at_s": KILL_AT_S, "replica": KILLED, "kind": "kill", "duration_s": KILL_FOR_S},
    ],
    "gateway": [{"at_s": OUTAGE_AT_S, "kind": "outage", "duration_s": OUTAGE_FOR_S}],
}
DEMO_OPERATOR = "demo-operator"


@dataclass(frozen=True)
class Event:
    at_s: float
    text: str


TIMELINE = (
    Event(FLAP_AT_S, f"{FLAPPING} starts flapping (dead/alive every 5 s for {FLAP_FOR_S} s): the gateway's breaker "
                     "trips; in a few ticks its quarantine waits for your approval (the command is printed here)"),
    Event(FLAP_AT_S + FLAP_FOR_S, f"{FLAPPING} stops flapping"),
    Event(SPIKE_AT_S, f"external traffic spikes (1.5 -> 12 requests/s for {SPIKE_HOLD_S} s): stress yields its slots"),
    Event(SPIKE_AT_S + SPIKE_HOLD_S, "the spike is over: stress climbs back"),
    Event(KILL_AT_S, f"{KILLED} is killed for {KILL_FOR_S} s: the breaker drains it within seconds "
                     "(`overseer health`: draining; the fleet_health asset's report and fleet_draining)"),
    Event(KILL_AT_S + KILL_FOR_S, f"{KILLED} is back: healthy but still draining until admitted; the next tick "
                                  "proposes readmit_replica and autonomous_dispatch runs ONE dispatch_action "
                                  "(`overseer audit tail`: queued, dispatching, succeeded; the UI's Runs)"),
    Event(OUTAGE_AT_S, f"the lab's gateway goes down for {OUTAGE_FOR_S} s (/fleet/state, /v1 and the router admin "
                       "refuse connections; the replicas keep running): the next tick finds the fleet unreachable, "
                       "the fleet signal goes stale and the report says unverified for ready replicas and "
                       "throughput (`overseer health`, fleet_health); stress stops on its stale view"),
    Event(OUTAGE_AT_S + OUTAGE_FOR_S, "the gateway is back on the same port, routing state intact: the next ticks "
                                      "read the fleet again and the report states its figures (`overseer health`)"),
    Event(WALKTHROUGH_END_S, "the scripted walkthrough is over; the overseer keeps running until Ctrl-C"),
)


def _clock(at_s: float) -> str:
    return f"{int(at_s) // 60:2d}:{int(at_s) % 60:02d}"


def due_events(elapsed_s: float, announced: set[int]) -> list[Event]:
    """The timeline's events whose time has come and that were not announced yet (marked announced)."""
    due = [i for i, e in enumerate(TIMELINE) if e.at_s <= elapsed_s and i not in announced]
    announced.update(due)
    return [TIMELINE[i] for i in due]


def _fault_commands(gateway: str) -> list[str]:
    kill = json.dumps({"kind": "kill", "duration_s": KILL_FOR_S})
    outage = json.dumps({"kind": "outage", "duration_s": OUTAGE_FOR_S})
    return [f"overseer lab fault replica-02 {shlex.quote(kill)} --gateway {gateway}",
            f"overseer lab fault gateway {shlex.quote(outage)} --gateway {gateway}"]


def _banner_timeline(gateway: str) -> str:
    lines = ["  timeline          (mm:ss from the lab's start; a line is printed here as each event happens)"]
    for e in TIMELINE:
        lines += textwrap.wrap(e.text, width=108, initial_indent=f"    {_clock(e.at_s)}  ", subsequent_indent=" " * 11)
    lines += [
        "  where to look     `overseer audit tail` (the journal: decisions, dispatches, outcomes), `overseer health`",
        "                    (signals and the public report), the UI's fleet_health asset (report, plots, the",
        "                    overclaim_blocked check) and the runs of dispatch_action (one per executed action)",
        "  by hand           " + _fault_commands(gateway)[0],
        "                    " + _fault_commands(gateway)[1],
        "                    (an outage needs duration_s: the lab's control API is on the gateway's port)",
    ]
    return "\n".join(lines) + "\n"


def _demo_operator(root: Path) -> tuple[Path, Path, Path]:
    """A fresh DEMO key pair, its registry, and a key nobody registered: (key, wrong key, registry)."""
    keys = root / "operator"
    shutil.rmtree(keys, ignore_errors=True)
    key, wrong = keys / f"{DEMO_OPERATOR}.pem", keys / "not-registered.pem"
    private = generate_key()
    write_private_key(private, key)
    write_private_key(generate_key(), wrong)
    registry = keys / "operators.json"
    add_to_registry(registry, registry_entry(DEMO_OPERATOR, private))
    (keys / "README").write_text("DEMO operator keys, generated by `make demo` at every start. Not for production.\n")
    return key, wrong, registry


def _announce_gates(seen: set[str], *, key: Path, wrong: Path, dagster_url: str) -> None:
    """Print the exact commands for each gate that opened since the last call."""
    from datetime import UTC, datetime

    from overseer_dagster.approvals import open_gates_view
    from overseer_dagster.core.approval import target_text

    try:
        view = open_gates_view(connect(), datetime.now(UTC))
    except Exception:  # noqa: BLE001 - a busy store: try again on the next loop
        return
    for gate in view.value.get("gates") or []:
        gate_id = gate.get("gate_id")
        if gate_id in seen or gate.get("state") != "pending":
            continue
        seen.add(gate_id)
        approve = f"overseer approve {gate_id} --key {key} --operator {DEMO_OPERATOR} --dagster {dagster_url}"
        print(
            f"\ngate {gate_id} is pending: {gate.get('kind')} {target_text(gate)} "
            f"(action hash {gate.get('action_hash_prefix')})\n"
            f"  it does nothing until approved. See it with `overseer gates` or the approval_gates asset.\n"
            f"  approve it:       {approve}\n"
            f"  a wrong key:      overseer approve {gate_id} --key {wrong} --operator {DEMO_OPERATOR} "
            f"--dagster {dagster_url}   (refused: bad_signature)\n"
            f"  replay one:       {approve} --print-config > approval.yaml\n"
            f"                    overseer approve {gate_id} --from-config approval.yaml --dagster {dagster_url}"
            f"   (twice: the second is refused, replayed)\n"
            f"  after it ran:     overseer rollback {gate_id} --key {key} --operator {DEMO_OPERATOR} "
            f"--dagster {dagster_url}\n",
            flush=True,
        )


def _announce_events(started: float, announced: set[int]) -> None:
    for event in due_events(time.monotonic() - started, announced):
        print(f"[{_clock(event.at_s)}] {event.text}", flush=True)


def _wait_for_ready_line(lab: Service, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lab.alive():
            raise DeployError(f"the lab exited before it was ready:\n{lab.log_tail()}")
        for line in lab.log_path.read_text(errors="replace").splitlines():
            if line.startswith(READY):
                return json.loads(line[len(READY):])
        time.sleep(0.2)
    raise DeployError(f"the lab was not ready after {timeout_s:.0f} s:\n{lab.log_tail()}")


def deployment(root: Path) -> Deployment:
    """Dagster's processes for the demo. Every process the demo starts runs in `root`, so each is told
    OVERSEER_HOME outright: they share the store `overseer audit tail` and `overseer health` read, rather
    than each defaulting to a `.overseer` of its own working directory."""
    return Deployment(root, env={"OVERSEER_HOME": str(overseer_home())})


def main(args: argparse.Namespace) -> int:
    root = overseer_home() / "demo"
    logs = root / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    connect()  # migrate the store once, before several processes open it
    overseer = console_script("overseer")
    services: list[Service] = []
    dagster = deployment(root)
    key, wrong_key, registry = _demo_operator(root)
    scenario = root / "scenario.json"
    scenario.write_text(json.dumps(SCENARIO))
    try:
        lab = spawn("lab", [overseer, "lab", "up", "--replicas", str(REPLICAS), "--slots", "8", "--singleflight",
                            "--traffic", TRAFFIC, "--scenario", str(scenario)],
                    env=dagster.process_env, log_dir=logs, cwd=root)
        services.append(lab)
        ready = _wait_for_ready_line(lab)
        started = time.monotonic()  # the scenario's and the traffic's time zero (within a poll of the ready line)
        gateway = ready["gateway"]
        ready_file = root / "lab-ready.json"
        ready_file.write_text(json.dumps(ready))
        services.append(spawn("stress", [overseer, "stress", "--replicas", str(ready_file)],
                              env=dagster.process_env, log_dir=logs, cwd=root))

        dagster.process_env.update({
            "OVERSEER_FLEET_SOURCE": f"snapshot:{gateway}/fleet/state",
            "OVERSEER_ROUTER_URL": gateway,
            # Gated actions: the demo operator's registry; the lab's provider and wallet (on the gateway).
            "OVERSEER_OPERATORS": str(registry),
            "OVERSEER_PROVIDER_URL": gateway,
            "OVERSEER_WALLET_URL": gateway,
            "OVERSEER_PAYEE_REFS": "payee-lab",
        })
        dagster.start()
        dagster.start_webserver(port=args.port)
        dagster.start_schedule("overseer_tick_schedule")
        print(
            f"\noverseer demo is running\n"
            f"  Dagster UI        {dagster.webserver_url}  (overseer_tick_schedule is ON: it is the enable flag)\n"
            f"  lab gateway       {gateway}/fleet/state\n"
            f"  store             {connect().url.render_as_string(hide_password=True)}\n"
            f"  logs              {logs}\n"
            f"  try               overseer audit tail | overseer gates | overseer health\n"
            f"  demo operator     {DEMO_OPERATOR}, key {key} (a DEMO key, made at this start)\n"
            f"  gates             {FLAPPING} flaps from {FLAP_AT_S} s on; in a few ticks its quarantine waits for\n"
            f"                    your approval, and the exact `overseer approve` command is printed here.\n"
            f"{_banner_timeline(gateway)}"
            f"Ctrl-C stops everything the demo started.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        announced: set[str] = set()
        events: set[int] = set()
        while all(s.alive() for s in services + dagster.services):
            _announce_events(started, events)
            _announce_gates(announced, key=key, wrong=wrong_key, dagster_url=dagster.webserver_url)
            time.sleep(2)
        dead = [s.name for s in services + dagster.services if not s.alive()]
        print(f"stopping: {', '.join(dead)} exited (see {logs})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo…", flush=True)
        return 0
    except DeployError as exc:
        print(f"overseer demo: {exc}", file=sys.stderr)
        return 1
    finally:
        dagster.stop()
        for service in reversed(services):
            service.stop()
