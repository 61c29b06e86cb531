"""Chaos soak: `overseer bench soak --minutes N [--seed S] [--json]`.

An autonomous controller is trusted only as far as it has been tried under faults. This runs the whole
system as in production, each piece its own process on 127.0.0.1: the lab (`overseer lab up`: 4 replicas
x 8 slots, external traffic through its gateway the whole time), the stress harness (`overseer stress`),
and Dagster (gRPC code server, daemon, webserver: `deploy.Deployment`, SQLite storage), with the
overseer's store on SQLite. The tick schedule is ON (the enable flag the dispatch sensors read; its cron
has minute granularity), and the soak launches an `overseer_tick` run every cadence (OVERSEER_CADENCE_S)
through the webserver's GraphQL API, as an operator may.

For N minutes it injects faults from a seeded RNG (the same seed gives the same plan; what the system
does with it depends on timing):

- replicas, through the lab's fault API on the gateway: kill, hang, slowdown, flapping. One replica at
  a time, and only while two others are admitted and healthy: the soak never takes every replica down,
  so a request finding no admitted replica is the product's doing, not the injection's;
- the mind (`OVERSEER_MIND=script:FILE`, generated): rule-like answers (start/scale/back off/stop
  stress, readmit, reports, a gated scale-out), garbage on a fifth of ticks (some carrying planted fake
  secrets), `{"unavailable": "timeout"}` and stalls past OVERSEER_MIND_TIMEOUT_S;
- the store: a competing writer holds SQLite's write lock (BEGIN IMMEDIATE on its own connection) for
  a few seconds;
- Dagster: the daemon is killed (SIGKILL by its PID) in the middle of a dispatch (an action queued for
  the sensor, claimed, or its run in flight), then restarted;
- the gateway restarts (the lab's `outage` fault, `POST /lab/gateway/faults`): its port closes for 3-8 s
  (3-5 s in a short soak), so requests in flight fail (`gateway_down`) and new ones cannot connect, the
  router admin, `/fleet/state` and the provider with them; then it re-binds the same port by itself, its
  routing state intact. Once in a short soak, every 150-250 s in a longer one, never two at once, each
  fired while a replica fault is under way (so no replica fault waits for it; after 20 s, anyway);
- the operator: a gated scale-out is approved with a signed receipt, and the same approval is submitted
  twice (a double click); a replica the breaker took out of rotation and that stays healthy for 20 s is
  re-admitted through the router admin (the scripted mind's readmits are guesses), racing the overseer's.

Then it checks, prints and returns: external failures (0, from the ledger; a stream cut by a replica the
soak killed, hung or flapped mid-response is attributed to the injection, so is a request the gateway's
restart cut (`gateway_down`) or refused (`connect_error`) within that restart's window, and a client that
left while the soak stopped the lab to the teardown; every other failure counts), actions executed
more than once (0: journal and actuator-side evidence), gated actions executed without an effective
receipt (0), finished tick runs without a journal row (0), the audit chain verifies, and no planted
secret on any public surface (every Dagster event of every run, run tags and config, compute logs and
Dagster's own storage files, the health report files, `overseer audit tail` and `overseer health`).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

CADENCE_S = 5
REPLICAS = 4
SLOTS = 8
TRAFFIC = "steady:rate=2"
MIND_TIMEOUT_S = 2
# The harness's dead-man is two of its cadences without a target write; the scripted mind writes
# stress targets about every fourth tick, so the harness is told a longer cadence than the tick's.
STRESS_CADENCE_S = 3 * CADENCE_S
TICK_JOB = "overseer_tick"
DISPATCH_JOB = "dispatch_action"
TICK_SCHEDULE = "overseer_tick_schedule"
LOCATION = "overseer_dagster"
REPOSITORY = "__repository__"
OPERATOR = "soak-operator"
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
# Replica faults whose stream cuts are the injection's doing (a dead or stalled replica mid-response).
CUTTING_FAULTS = ("kill", "flap", "hang")
# A replica out of rotation this long while healthy is re-admitted by the soak's operator, so the
# fleet keeps enough admitted replicas for the next fault (the scripted mind's readmits are guesses).
OPERATOR_READMIT_AFTER_S = 20.0
# After the chaos window: ticks go on (faults off) this long, then every run and action must finish.
SETTLE_S = 40.0
SETTLE_SHORT_S = 15.0
# Tick runs the soak keeps in flight at most (queued ones included): beyond it, a launch waits.
MAX_TICKS_IN_FLIGHT = 3
DRAIN_TIMEOUT_S = 150.0
# Gateway restarts: how long its port stays closed (a short soak, then a longer one).
GATEWAY_DOWN_S = (3.0, 8.0)
GATEWAY_DOWN_SHORT_S = (3.0, 5.0)
# A planned restart waits this long at most for a replica fault under way (the soak waits for that one to
# clear anyway, so the restart delays no replica fault); then it goes anyway.
GATEWAY_WAIT_FOR_REPLICA_FAULT_S = 20.0
# Failures only a gateway outage produces: in flight when it closed (the lab gateway's reason), or refused
# at connect (the lab traffic client's reason). Attributed to a restart the soak injected when the moment
# the request failed falls within that restart's window, widened by GATEWAY_GRACE_S on each side.
GATEWAY_CUT_REASONS = ("gateway_down", "connect_error")
# The window is measured here (from before the fault request to the first answer after the re-bind), the
# moment a request failed by the lab (wall clock at the request's start plus its loop-clock latency, read
# when the cancelled handler finishes): 1 s covers that handler running late on a loaded event loop and the
# clocks' granularity; outages are minutes apart, so it pulls in nothing else.
GATEWAY_GRACE_S = 1.0


# --- planted secrets -----------------------------------------------------------------------------


def planted_secrets() -> dict[str, str]:
    """Fake secrets of each kind, assembled from parts at run time so no file holds one whole."""
    ip = ".".join(["10", "77", "31", "9"])
    token = "".join(["sOaK", "fAkE", "t0k", "Qx8", "Lm3", "Zr7", "Vn2"])
    host = ".".join(["inference-3", "corp", "internal"])
    return {
        "ip": ip,
        "ip_message": f"upstream {ip}:8443 refused",
        "origin": "https" + "://" + host + ":9000/v1",
        "host": host,
        "bearer": "Bearer " + token,
        "token": token,
        "vendor_key": "sk" + "-" + "live" + "-" + "9f8e7d6c5b" * 4,
        "prompt": "PROMPT-" + "summarise the soak operator's private notes",
    }


def _needles(secrets: dict[str, str]) -> dict[str, str]:
    """The strings a scan looks for: each secret's distinctive core (a wrapper may be scrubbed alone)."""
    return {k: secrets[k] for k in ("ip", "host", "token", "vendor_key", "prompt")}


# --- the mind script -----------------------------------------------------------------------------


def _envelope(*actions: dict) -> str:
    return json.dumps({"actions": list(actions)}, separators=(",", ":"))


def mind_script(rng: random.Random, entries: int, replica_ids: list[str],
                secrets: dict[str, str]) -> list[tuple[str, Any]]:
    """(category, entry) pairs: rule-like answers, garbage (a fifth), timeouts and stalls.

    Categories: `valid`, `gated` (a scale-out the operator may approve), `leaky_valid` (a valid action
    whose free-text reason carries a planted prompt: queued, executed, and published nowhere),
    `garbage`, `garbage_secret`, `timeout`, `stall`. A short soak decides only a handful of times, so
    the script opens with one entry of each category; the rest is drawn at random.
    """
    stress = {"kind": "start_stress", "concurrency": 2, "duration_s": 60, "reason": "fill idle slots"}
    out: list[tuple[str, Any]] = [
        ("valid", _envelope(stress)),
        ("timeout", {"unavailable": "timeout"}),
        ("garbage_secret", _garbage(rng, secrets, leaky=True)[1]),
        ("gated", _scale_out()),
        ("leaky_valid", _envelope({"kind": "stop_stress", "reason": secrets["prompt"]})),
        ("garbage", _garbage(rng, secrets, leaky=False)[1]),
        ("valid", _envelope({**stress, "concurrency": 3})),
        ("stall", {"delay_s": MIND_TIMEOUT_S + 1}),
    ]
    readmit_turn = 0
    while len(out) < entries:
        u = rng.random()
        if u < 0.20:
            out.append(_garbage(rng, secrets))
        elif u < 0.27:
            out.append(("timeout", {"unavailable": "timeout"}))
        elif u < 0.30:
            out.append(("stall", {"delay_s": MIND_TIMEOUT_S + 1}))
        else:
            v = rng.random()
            if v < 0.30:
                rid = replica_ids[readmit_turn % len(replica_ids)]
                readmit_turn += 1
                out.append(("valid", _envelope({"kind": "readmit_replica", "replica_id": rid,
                                                "reason": "health recovered after a breaker trip"})))
            elif v < 0.55:
                out.append(("valid", _envelope({"kind": "start_stress", "concurrency": rng.randint(1, 4),
                                                "duration_s": rng.choice((30, 45, 60, 90)),
                                                "reason": "fill idle slots while external demand leaves headroom"})))
            elif v < 0.62:
                out.append(("valid", _envelope({"kind": "scale_stress", "concurrency": rng.randint(1, 5),
                                                "replica_id": rng.choice(replica_ids)})))
            elif v < 0.70:
                out.append(("valid", _envelope({"kind": "back_off_stress", "factor": 0.5,
                                                "reason": "external demand is rising"})))
            elif v < 0.80:
                if rng.random() < 0.4:
                    out.append(("leaky_valid", _envelope({"kind": "stop_stress", "reason": secrets["prompt"]})))
                else:
                    out.append(("valid", _envelope({"kind": "stop_stress", "reason": "no slack below the knee"})))
            elif v < 0.86:
                out.append(("valid", _envelope({"kind": "emit_report", "topic": "capacity",
                                                "summary": "Soak: replicas under injected faults; stress follows."})))
            elif v < 0.92:
                out.append(("gated", _scale_out()))
            else:
                out.append(("valid", _envelope({"kind": "noop", "reason": "fleet is steady"})))
    return out


def _scale_out() -> str:
    return _envelope({"kind": "request_scale_out", "gpu_class": "h100", "count": 1, "max_hourly_usd": 12.0,
                      "reason": "queue depth rising", "rollback": {"action": "scale_in", "after_s": 300}})


def _garbage(rng: random.Random, s: dict[str, str], leaky: bool | None = None) -> tuple[str, str]:
    plain = [
        "I think we should probably add some stress, maybe?",
        '{"actions": [{"kind": "start_stress", "concurrency": 4',
        '{"actions": [{"kind": "launch_missiles"}]}',
        '{"actions": [{"kind": "start_stress", "concurrency": 4, "duration_s": 60, "approved": true}]}',
        '{"actions": []}',
        "null",
        '{"actions": [{"kind": "stop_stress"}], "authority": "autonomous"}',
    ]
    leaky_answers = [
        f"Sure! Connect to {s['ip_message']} with {s['bearer']} and run stress.",
        _envelope({"kind": "emit_report", "topic": "health", "summary": f"endpoint {s['origin']} is slow"}),
        _envelope({"kind": "stop_stress", "reason": f"rotate {s['vendor_key']}"}),
        json.dumps({"actions": [{"kind": "noop", s["token"]: s["ip"]}]}),
        f"```json\n{{\"actions\": [{{\"kind\": \"noop\"}}]}}\n``` {s['vendor_key']} {s['origin']}",
    ]
    if leaky if leaky is not None else rng.random() < 0.5:
        return "garbage_secret", rng.choice(leaky_answers)
    return "garbage", rng.choice(plain)


# --- the fault plan ------------------------------------------------------------------------------


@dataclass
class ReplicaFault:
    kind: str
    body: dict[str, Any]
    duration_s: float


def replica_fault(rng: random.Random, kind: str, *, short: bool = False) -> ReplicaFault:
    """One fault; `short` (a soak of two minutes or less) keeps every kind within one minute."""
    scale = 0.6 if short else 1.0
    if kind == "kill":
        d = rng.uniform(6, 12) * scale
        return ReplicaFault(kind, {"kind": "kill", "duration_s": round(d, 1)}, d)
    if kind == "hang":
        d = rng.uniform(5, 9) * scale
        return ReplicaFault(kind, {"kind": "hang", "duration_s": round(d, 1)}, d)
    if kind == "slow":
        d = rng.uniform(10, 20) * scale
        return ReplicaFault(kind, {"kind": "slow", "factor": rng.choice((3, 4, 6)), "duration_s": round(d, 1)}, d)
    d = rng.uniform(8, 14) * scale
    return ReplicaFault(kind, {"kind": "flap", "period_s": 2, "duration_s": round(d, 1)}, d)


def infra_plan(rng: random.Random, window_s: float) -> list[tuple[float, str]]:
    """(at_s, kind) for the store lock and the daemon kill: at least one of each, more in longer soaks."""
    plan = [(window_s * rng.uniform(0.15, 0.3), "db_lock"), (window_s * rng.uniform(0.35, 0.55), "daemon_kill")]
    t = plan[0][0]
    while True:
        t += rng.uniform(50, 90)
        if t > window_s - 10:
            break
        plan.append((t, "db_lock"))
    t = plan[1][0]
    while True:
        t += rng.uniform(120, 180)
        if t > window_s - 25:
            break
        plan.append((t, "daemon_kill"))
    return sorted(plan)


def gateway_plan(rng: random.Random, window_s: float) -> list[tuple[float, float]]:
    """(at_s, down_s) of the gateway restarts: one in a short soak (two minutes or less), one every 150-250 s
    in a longer one, each planned to end 10 s before the window does (waiting for a replica fault under way
    included: a restart with no room left is dropped when due)."""
    short = window_s <= 120
    lo, hi = GATEWAY_DOWN_SHORT_S if short else GATEWAY_DOWN_S
    plan: list[tuple[float, float]] = []
    at = window_s * rng.uniform(0.2, 0.4)
    while True:
        down = rng.uniform(lo, hi)
        if at + down > window_s - 10:
            break
        plan.append((at, down))
        if short:
            break
        at += rng.uniform(150, 250)
    return plan


# --- the soak ------------------------------------------------------------------------------------


_STARTED = {"t": time.monotonic()}


def _log(message: str) -> None:
    print(f"soak [{time.monotonic() - _STARTED['t']:4.0f} s] {message}", file=sys.stderr, flush=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class FaultRecord:
    kind: str
    target: str | None
    start: datetime
    end: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class Soak:
    def __init__(self, root: Path, minutes: float, seed: int) -> None:
        self.root = root
        self.window_s = max(30.0, minutes * 60.0)
        self.seed = seed
        self.rng = random.Random(seed)
        self.secrets = planted_secrets()
        self.store_path = root / "store.db"
        self.store_url = f"sqlite:///{self.store_path}"
        self.home = root / "home"
        self.faults: list[FaultRecord] = []
        self.faults_lock = threading.Lock()
        self.notes: list[str] = []
        self.launched: list[str] = []
        self.launch_errors = 0
        self.launch_skipped_busy = 0
        self.approvals: list[dict[str, Any]] = []
        self.operator_readmits = 0
        self.draining_since: dict[str, float] = {}
        self.replica_busy_until = 0.0
        # Set while a gateway restart is under way (from its fault request until the gateway answers again).
        self.gateway_out = threading.Event()
        self.gateway_thread: threading.Thread | None = None
        self.gateway_back_at = -math.inf  # monotonic: when the last restart ended
        self.fleet: dict[str, dict] = {}
        self.fleet_at = 0.0  # monotonic: when `fleet` was read
        self.seen_replicas: set[str] = set()
        self.replica_ids: list[str] = []
        self.threads: list[threading.Thread] = []
        self.services: list[Any] = []
        self.deployment: Any = None
        self.gql: Any = None
        self.operator_key: Any = None
        self.env: dict[str, str] = {}
        self.overseer = "overseer"
        self.script: list[tuple[str, Any]] = []
        self.chaos_started: datetime | None = None
        self.teardown_at: datetime | None = None
        self.chaos_ends = 0.0
        self.instance: Any = None
        self.stopping = threading.Event()

    # --- setup ---

    def start(self) -> None:
        from overseer_dagster.deploy import Deployment, console_script, spawn
        from overseer_dagster.store import connect

        self.engine = connect(self.store_url)  # migrate once, before several processes open it
        self.overseer = console_script("overseer")
        replica_ids = [f"replica-{i:02d}" for i in range(REPLICAS)]
        per_minute = math.ceil(60 / (CADENCE_S * 0.9)) + 2  # launched and scheduled ticks, with margin
        self.script = mind_script(random.Random(self.seed + 1), int(self.window_s / 60 * per_minute) + 60,
                                  replica_ids, self.secrets)
        script_file = self.root / "mind-script.jsonl"
        script_file.write_text("\n".join(json.dumps(entry) for _, entry in self.script) + "\n")
        registry_env = self._register_operator()
        self.env = env = {
            **registry_env,
            "OVERSEER_DATABASE_URL": self.store_url, "OVERSEER_HOME": str(self.home),
            "OVERSEER_CADENCE_S": str(CADENCE_S), "OVERSEER_ENABLED": "1", "OVERSEER_MODE": "autonomous",
            "OVERSEER_MIND": f"script:{script_file}", "OVERSEER_MIND_TIMEOUT_S": str(MIND_TIMEOUT_S),
        }
        self.deployment = Deployment(self.root / "dagster", env=env)
        process_env = self.deployment.process_env
        logs = self.root / "logs"
        lab = spawn("lab", [self.overseer, "lab", "up", "--replicas", str(REPLICAS), "--slots", str(SLOTS),
                            "--singleflight", "--traffic", TRAFFIC, "--database-url", self.store_url],
                    env=process_env, log_dir=logs, cwd=self.root)
        self.services.append(lab)
        ready = _wait_for_ready_line(lab)
        self.gateway = ready["gateway"]
        self.replica_ids = sorted(ready["replicas"])
        ready_file = self.root / "lab-ready.json"
        ready_file.write_text(json.dumps(ready))
        self.services.append(spawn("stress", [
            self.overseer, "stress", "--replicas", str(ready_file), "--database-url", self.store_url,
            "--cadence-s", str(STRESS_CADENCE_S), "--seed", str(self.seed)], env=process_env, log_dir=logs,
            cwd=self.root))
        process_env.update({"OVERSEER_FLEET_SOURCE": f"snapshot:{self.gateway}/fleet/state",
                            "OVERSEER_ROUTER_URL": self.gateway, "OVERSEER_PROVIDER_URL": self.gateway})
        self.env["OVERSEER_FLEET_SOURCE"] = process_env["OVERSEER_FLEET_SOURCE"]
        self.deployment.start_code_server()
        # The daemon and the webserver start side by side: each waits on its own readiness.
        _together(self.deployment.start_daemon, self.deployment.start_webserver)
        self._start_schedule()
        from dagster_graphql import DagsterGraphQLClient

        host_port = self.deployment.webserver_url.removeprefix("http://")
        host, port = host_port.rsplit(":", 1)
        self.gql = DagsterGraphQLClient(host, port_number=int(port), timeout=30)
        self.instance = self.deployment.instance()

    def _start_schedule(self) -> None:
        """Turn the tick schedule on through the webserver, exactly as the UI's toggle does."""
        import httpx

        query = """mutation($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) {
            __typename ... on ScheduleStateResult { scheduleState { status } } ... on PythonError { message } } }"""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": TICK_SCHEDULE}
        body = httpx.post(f"{self.deployment.webserver_url}/graphql", timeout=60,
                          json={"query": query, "variables": {"selector": selector}}).json()
        result = (body.get("data") or {}).get("startSchedule") or {}
        if result.get("__typename") != "ScheduleStateResult":
            raise RuntimeError(f"could not turn {TICK_SCHEDULE} on: {result.get('message') or body.get('errors')}")

    def _register_operator(self) -> dict[str, str]:
        try:
            from overseer_dagster import receipts
        except ImportError:
            return {}
        self.operator_key = receipts.generate_key()
        registry = self.root / "operators.json"
        receipts.add_to_registry(registry, receipts.registry_entry(OPERATOR, self.operator_key))
        return {receipts.REGISTRY_ENV: str(registry)}

    # --- the chaos window ---

    def chaos(self) -> None:
        t0 = time.monotonic()
        self.chaos_started = _utcnow()
        self.chaos_ends = t0 + self.window_s
        infra = infra_plan(self.rng, self.window_s)
        # Its own RNG from the seed: the other faults' plan for a seed is what it was before gateway restarts.
        gateway = gateway_plan(random.Random(self.seed + 2), self.window_s)
        kinds = ["kill", "hang", "slow", "flap"]
        self.rng.shuffle(kinds)  # every kind once first, then at random
        short = self.window_s <= 120
        next_replica_fault = min(8.0, self.window_s * 0.08)
        next_tick = 0.0
        last_report = 0.0
        while (now := time.monotonic() - t0) < self.window_s:
            self._check_alive()
            self._sample_fleet()
            if now >= next_tick:
                self._launch_tick()
                next_tick = now + CADENCE_S + self.rng.uniform(0, 1)
            if infra and now >= infra[0][0]:
                _, kind = infra.pop(0)
                # Drawn here, in order, so a seed gives the same plan whatever the threads do.
                if kind == "db_lock":
                    hold = self.rng.uniform(3, 6)
                    self._spawn_thread(lambda hold=hold: self._db_lock(hold))
                else:
                    down = self.rng.uniform(2, 5)
                    self._spawn_thread(lambda down=down: self._daemon_kill(down))
            # No replica fault while the gateway is down: its fault API is on the gateway's port, and the
            # fleet view the safety rule reads is stale until read again once the gateway answers.
            if (now >= next_replica_fault and time.monotonic() >= self.replica_busy_until
                    and not self.gateway_out.is_set() and self.fleet_at > self.gateway_back_at):
                kind = kinds.pop(0) if kinds else self.rng.choice(("kill", "hang", "slow", "flap"))
                if self._replica_fault(replica_fault(self.rng, kind, short=short)):
                    next_replica_fault = now + (self.rng.uniform(1, 3) if short else self.rng.uniform(4, 10))
                else:
                    kinds.insert(0, kind)  # no safe target now: try again shortly
                    next_replica_fault = now + 3
            if gateway and now >= gateway[0][0] and not self.gateway_out.is_set():
                at, down = gateway[0]
                # Fired while a replica fault is under way with time to spare, so no replica fault waits for it.
                under_way = time.monotonic() + down + 1 <= self.replica_busy_until
                if under_way or now >= at + GATEWAY_WAIT_FOR_REPLICA_FAULT_S:
                    gateway.pop(0)
                    if now + down <= self.window_s - 10:
                        self.gateway_out.set()
                        self.gateway_thread = self._spawn_thread(lambda down=down: self._gateway_restart(down))
                    else:
                        self.notes.append(f"gateway restart planned at {at:.0f} s dropped: no room left at {now:.0f} s")
            self._operator()
            if now - last_report >= 30:
                last_report = now
                _log(f"t={now:.0f}s ticks launched {len(self.launched)}, faults {len(self.faults)}, "
                     f"admitted {sum(r['routing_state'] == 'admitted' for r in self.fleet.values())}/{len(self.fleet)}")
            time.sleep(1.0)

    def settle(self) -> None:
        """Faults off; keep ticking a little, then wait for every run and action to finish (bounded)."""
        if self.gateway_thread is not None:  # the recoveries below go through the gateway's port
            self.gateway_thread.join(timeout=60)
        for rid in self.replica_ids:
            self._post_fault(rid, {"kind": "recover"})
        for t in self.threads:
            t.join(timeout=90)
        t0 = time.monotonic()
        next_tick = 0.0
        while time.monotonic() - t0 < (SETTLE_SHORT_S if self.window_s <= 120 else SETTLE_S):
            self._check_alive()
            self._sample_fleet()
            self._operator()
            if time.monotonic() - t0 >= next_tick:
                self._launch_tick()
                next_tick = time.monotonic() - t0 + CADENCE_S
            time.sleep(1.0)
        # What is in flight now must finish; the schedule keeps ticking meanwhile (it is the enable flag),
        # so runs and actions that start later are left to the teardown and counted as such.
        runs = {r.run_id for r in self._in_flight_runs()}
        open_actions = {a["action_id"] for a in self._open_actions()}
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            runs &= {r.run_id for r in self._in_flight_runs()}
            # An action still queued after its dispatch run finished will not move again (its run key is
            # spent): stranded, reported with the results, not waited for.
            open_actions &= {a["action_id"] for a in self._open_actions()} - self._spent_actions()
            if not runs and not open_actions:
                return
            time.sleep(2.0)
        self.notes.append(f"{len(runs)} runs and {len(open_actions)} actions still in flight after "
                          f"{DRAIN_TIMEOUT_S:.0f} s of settling")

    # --- ticks, fleet, operator ---

    def _launch_tick(self) -> None:
        recent = [r for r in self._runs(TICK_JOB, IN_FLIGHT)
                  if r.tags.get("overseer/launched_by") == "soak"]
        if len(recent) >= MAX_TICKS_IN_FLIGHT:
            self.launch_skipped_busy += 1
            return
        try:
            run_id = self.gql.submit_job_execution(TICK_JOB, repository_location_name=LOCATION,
                                                   repository_name=REPOSITORY,
                                                   tags={"overseer/launched_by": "soak"})
            self.launched.append(run_id)
        except Exception as exc:  # noqa: BLE001 - a busy webserver is part of the weather: count it, go on
            self.launch_errors += 1
            if self.launch_errors <= 3:
                _log(f"tick launch failed: {type(exc).__name__}")

    def _runs(self, job: str | None = None, statuses: tuple[str, ...] | None = None) -> list[Any]:
        import dagster as dg

        filters = dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus[s] for s in statuses]
                                if statuses else None)
        return list(self.instance.get_runs(filters=filters))

    def _in_flight_runs(self) -> list[Any]:
        return self._runs(None, IN_FLIGHT)

    def _open_actions(self) -> list[dict]:
        from sqlalchemy import select

        from overseer_dagster.store.tables import actions

        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(actions.c.action_id, actions.c.status).where(actions.c.status.in_(("queued", "dispatching")))
            ).mappings()]

    def _spent_actions(self) -> set[str]:
        return {r.tags["overseer/action_id"] for r in self._runs(DISPATCH_JOB, FINISHED)
                if "overseer/action_id" in r.tags}

    def _sample_fleet(self) -> None:
        import httpx

        try:
            state = httpx.get(f"{self.gateway}/fleet/state", timeout=3).json()
        except Exception:  # noqa: BLE001 - a slow gateway: keep the last view
            return
        self.fleet = {r["replica_id"]: r for r in state["replicas"]}
        self.fleet_at = time.monotonic()
        self.seen_replicas.update(self.fleet)
        now = time.monotonic()
        for rid, r in self.fleet.items():
            if r["routing_state"] == "draining" and r["health"] == "healthy":
                self.draining_since.setdefault(rid, now)
            else:
                self.draining_since.pop(rid, None)

    def _operator(self) -> None:
        """The soak's operator: re-admit a replica left out of rotation; approve a gated scale-out."""
        import httpx

        now = time.monotonic()
        admitted = sum(r["routing_state"] == "admitted" for r in self.fleet.values())
        for rid, since in list(self.draining_since.items()):
            if now - since > OPERATOR_READMIT_AFTER_S and admitted < len(self.fleet):
                try:
                    httpx.post(f"{self.gateway}/fleet/replicas/{rid}/admit", timeout=5)
                    self.operator_readmits += 1
                    self.draining_since.pop(rid, None)
                except httpx.HTTPError:
                    pass
        if self.operator_key is None:
            return
        # Approve up to `wanted` gates; a round whose runs all failed (a busy code server refuses to start
        # them) is tried again, as an operator would, up to three rounds per approval wanted.
        wanted = 1 if self.window_s <= 120 else 2
        if self._approvals_recorded() >= wanted or len(self.approvals) >= 3 * wanted:
            return
        for round_ in self.approvals:
            for run_id in round_["runs"]:
                run = self.instance.get_run_by_id(run_id)
                if run is not None and run.status.value in IN_FLIGHT:
                    return  # the last round has not been decided yet
        gate = self._pending_gate("request_scale_out")
        if gate is not None:
            self._approve(gate)

    def _approvals_recorded(self) -> int:
        from sqlalchemy import func, select

        from overseer_dagster.store.tables import receipts

        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(receipts)
                                .where(receipts.c.operator == OPERATOR, receipts.c.decision == "approve")).scalar_one()

    def _pending_gate(self, kind: str) -> dict | None:
        from sqlalchemy import select

        from overseer_dagster.store.tables import gates

        with self.engine.connect() as conn:
            row = conn.execute(select(gates).where(gates.c.kind == kind, gates.c.state == "pending")
                               .order_by(gates.c.created_at.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    def _approve(self, gate: dict) -> None:
        """Sign an approval and submit it twice (a double click): one receipt, one execution."""
        from overseer_dagster import receipts
        from overseer_dagster.core import approval

        issued_at = _utcnow().isoformat(timespec="seconds").replace("+00:00", "Z")
        message = approval.signed_message(gate_id=gate["gate_id"], action_hash=gate["action_hash"],
                                          decision="approve", operator=OPERATOR, issued_at=issued_at)
        config = {"gate_id": gate["gate_id"], "operator": OPERATOR, "decision": "approve", "issued_at": issued_at,
                  "signature": receipts.sign(self.operator_key, message), "note": "soak"}
        runs = []
        for _ in range(2):
            try:
                runs.append(self.gql.submit_job_execution(
                    "approve_action", repository_location_name=LOCATION, repository_name=REPOSITORY,
                    run_config={"ops": {"record_approval": {"config": config}}},
                    tags={"overseer/launched_by": "soak", "overseer/gate_id": gate["gate_id"]}))
            except Exception as exc:  # noqa: BLE001
                self.notes.append(f"approve_action submit failed: {type(exc).__name__}")
        self.approvals.append({"gate_id": gate["gate_id"], "runs": runs})
        with self.faults_lock:
            self.faults.append(FaultRecord("double_approval", None, _utcnow(), _utcnow()))

    # --- faults ---

    def _spawn_thread(self, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def _post_fault(self, rid: str, body: dict) -> bool:
        import httpx

        try:
            return httpx.post(f"{self.gateway}/lab/replicas/{rid}/faults", json=body, timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def _replica_fault(self, fault: ReplicaFault) -> bool:
        """Fault one admitted, healthy replica, only while two others stay admitted and healthy (a slowdown
        takes nothing out of rotation: one other is enough)."""
        well = [rid for rid in self.replica_ids if (r := self.fleet.get(rid)) is not None
                and r["routing_state"] == "admitted" and r["health"] == "healthy"]
        if len(well) < (2 if fault.kind == "slow" else 3):
            return False
        rid = self.rng.choice(well)
        start = _utcnow()
        if not self._post_fault(rid, fault.body):
            return False
        with self.faults_lock:
            self.faults.append(FaultRecord(f"replica_{fault.kind}", rid, start,
                                           start + timedelta(seconds=fault.duration_s), dict(fault.body)))
        # The next replica fault waits for this one to clear, and for the breaker to settle.
        self.replica_busy_until = time.monotonic() + fault.duration_s + 4
        return True

    def _db_lock(self, hold: float) -> None:
        """A competing writer: its own connection holds SQLite's write lock for `hold` seconds."""
        conn = sqlite3.connect(self.store_path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            start = _utcnow()
            time.sleep(hold)
            conn.execute("COMMIT")
            with self.faults_lock:
                self.faults.append(FaultRecord("db_lock", None, start, _utcnow(), {"hold_s": round(hold, 1)}))
        except sqlite3.Error as exc:
            self.notes.append(f"db lock not taken: {type(exc).__name__}")
        finally:
            conn.close()

    def _daemon_kill(self, down: float) -> None:
        """SIGKILL the daemon by its PID in the middle of a dispatch (an action queued for the sensor, claimed,
        or its run starting; waiting for one until the chaos window ends), then restart it."""
        deadline = self.chaos_ends
        mid_dispatch = False
        while time.monotonic() < deadline and not self.stopping.is_set():
            if self._open_actions() or self._runs(DISPATCH_JOB, IN_FLIGHT):
                mid_dispatch = True
                break
            time.sleep(0.2)
        daemons = [s for s in self.deployment.services if s.name == "daemon" and s.alive()]
        if not daemons:
            self.notes.append("daemon kill skipped: no live daemon")
            return
        daemon = daemons[-1]
        start = _utcnow()
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.process.wait(10)
        time.sleep(down)
        try:
            if self.stopping.is_set():
                raise RuntimeError("the soak is stopping")
            self.deployment.start_daemon()
            restarted = True
        except Exception as exc:  # noqa: BLE001 - reported; the checks will show what it cost
            restarted = False
            self.notes.append(f"daemon restart failed: {type(exc).__name__}")
        with self.faults_lock:
            self.faults.append(FaultRecord("daemon_kill", None, start, _utcnow(),
                                           {"mid_dispatch": mid_dispatch, "restarted": restarted}))

    def _gateway_restart(self, down: float) -> None:
        """The gateway restarts: its port closes for `down` s (requests in flight fail `gateway_down`, new ones
        cannot connect), then it re-binds by itself, its routing state intact. The window recorded runs from
        just before the fault request (the lab answers it, then closes) to the first answer after the re-bind."""
        import httpx

        start = _utcnow()
        try:
            try:
                resp = httpx.post(f"{self.gateway}/lab/gateway/faults",
                                  json={"kind": "outage", "duration_s": round(down, 1)}, timeout=10)
            except httpx.ConnectError:
                self.notes.append("gateway restart not injected: the gateway refused the connection")
                return
            except httpx.HTTPError:
                resp = None  # no answer: it may have gone down all the same
            if resp is not None and resp.status_code != 200:
                self.notes.append(f"gateway restart refused by the lab: HTTP {resp.status_code}")
                return
            answered = time.monotonic()
            went_down = self._await_gateway(up=False, within_s=5.0)
            if resp is None and not went_down:
                self.notes.append("gateway restart: the fault request got no answer and the gateway stayed up")
                return
            # It closes after answering and stays closed `down` s: no use asking before (a down unseen from
            # here, on a slow machine, must not end the window early).
            time.sleep(max(0.0, answered + down - 0.5 - time.monotonic()))
            back = self._await_gateway(up=True, within_s=30.0)
            end = _utcnow()
            if not back:
                self.notes.append(f"gateway not back {(end - start).total_seconds():.0f} s after a {down:.1f} s "
                                  "outage" + (" (the soak was stopping)" if self.stopping.is_set() else ""))
            with self.faults_lock:
                self.faults.append(FaultRecord("gateway_restart", "gateway", start, end,
                                               {"down_s": round(down, 1), "down_observed": went_down, "back": back}))
        finally:
            self.gateway_back_at = time.monotonic()
            self.gateway_out.clear()

    def _await_gateway(self, *, up: bool, within_s: float) -> bool:
        """Whether the gateway answered `/health` (up) or refused the connection (down) within `within_s`."""
        import httpx

        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                state = "up" if httpx.get(f"{self.gateway}/health", timeout=1.0).status_code == 200 else None
            except httpx.ConnectError:
                state = "down"
            except httpx.HTTPError:
                state = None  # reset or slow: neither yet
            if state == ("up" if up else "down"):
                return True
            time.sleep(0.2)
        return False

    def _check_alive(self) -> None:
        for s in self.services:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited ({s.process.returncode}):\n{s.log_tail(30)}")

    # --- teardown ---

    def stop(self) -> None:
        """The daemon first (nothing new launches), then the runs it launched finish (bounded), then the rest:
        no run worker outlives the processes it reports to."""
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)
        if self.deployment is not None:
            for service in self.deployment.services:
                if service.name == "daemon":
                    service.stop()
            deadline = time.monotonic() + 60
            try:
                while self._runs(None, ("STARTING", "STARTED")) and time.monotonic() < deadline:
                    time.sleep(1.0)
            except Exception:  # noqa: BLE001 - no instance (the soak failed to start) or unreadable: stop anyway
                pass
        # Each process by its own PID, side by side (each waits for its own exit).
        others = self.deployment.services if self.deployment is not None else []
        _together(*(service.stop for service in [*others, *self.services]))
        if self.deployment is not None:
            self.deployment.stop()
        if self.instance is not None:
            self.instance.dispose()
        stragglers = _processes_mentioning(self.root, wait_s=60)
        if stragglers:
            self.notes.append(f"{len(stragglers)} processes still ran under the soak's directory after its "
                              f"teardown (run workers outliving their code server); pids {stragglers}")


def _processes_mentioning(root: Path, wait_s: float) -> list[int]:
    """PIDs whose command line names `root` (run workers of our instance), after waiting up to `wait_s` for
    them to exit by themselves. Only reported: they are not ours to signal."""
    needle = str(root).encode()
    ours = _ancestors()  # a caller whose own command line names the directory is not a straggler
    deadline = time.monotonic() + wait_s
    while True:
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (proc / "cmdline").read_bytes() and int(proc.name) not in ours:
                    pids.append(int(proc.name))
            except OSError:
                continue
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(1.0)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _together(*calls: Callable[[], Any]) -> None:
    """Run `calls` in threads side by side; raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def call(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(fn,), daemon=True) for fn in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]


def _wait_for_ready_line(lab: Any, timeout_s: float = 90.0) -> dict:  # noqa: ANN401
    from overseer_dagster.deploy import DeployError

    prefix = "lab ready "
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lab.alive():
            raise DeployError(f"the lab exited before it was ready:\n{lab.log_tail()}")
        for line in lab.log_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return json.loads(line[len(prefix):])
        time.sleep(0.2)
    raise DeployError(f"the lab was not ready after {timeout_s:.0f} s:\n{lab.log_tail()}")


# --- the checks ----------------------------------------------------------------------------------


def _rows(engine: Any, table: Any, *where: Any) -> list[dict]:  # noqa: ANN401
    from sqlalchemy import select

    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]


def check_external(engine: Any, since: datetime, faults: list[FaultRecord],  # noqa: ANN401
                   teardown_at: datetime | None = None) -> dict:
    """External and unlabeled requests that failed, from the ledger; a stream cut on a replica the soak
    killed, hung or flapped at that moment is the injection's doing, so is a request the gateway's restart
    cut or refused (`GATEWAY_CUT_REASONS`) at a moment within that restart's window (give or take
    GATEWAY_GRACE_S), and a client that left because the soak was stopping the lab is the teardown's; every
    other failure counts.

    A row's `ts` is when the request started (the lab's gateway stamps its arrival) and `latency_s` how long
    it lasted, so it failed at `ts + latency_s`: that moment, not the start, is what falls in a window.
    """
    from overseer_dagster.store.tables import ledger

    rows = _rows(engine, ledger, ledger.c.ts >= since, ledger.c.demand_kind.in_(("external", "unlabeled")))
    windows = defaultdict(list)
    for f in faults:
        if f.target and f.kind.removeprefix("replica_") in CUTTING_FAULTS and f.end is not None:
            windows[f.target].append((f.start - timedelta(seconds=1), f.end + timedelta(seconds=3)))
    grace = timedelta(seconds=GATEWAY_GRACE_S)
    outages = [(f.start - grace, f.end + grace) for f in faults if f.kind == "gateway_restart" and f.end is not None]
    failed = [r for r in rows if r["outcome"] == "failed"]
    injected, gateway, teardown, counted = [], [], [], []
    for r in failed:
        start = r["ts"]
        end = start + timedelta(seconds=r["latency_s"] or 0.0)
        cut = r["failure_reason"] == "upstream_error" and r["replica_id"] and any(
            s <= end and start <= e for s, e in windows.get(r["replica_id"], ()))
        down = r["failure_reason"] in GATEWAY_CUT_REASONS and any(s <= end <= e for s, e in outages)
        left = (r["failure_reason"] == "client_disconnect" and teardown_at is not None
                and end >= teardown_at - timedelta(seconds=1))
        (injected if cut else gateway if down else teardown if left else counted).append(r)
    return {
        "ok": not counted,
        "value": len(counted),
        "requests": len(rows),
        "failed_total": len(failed),
        "cut_by_injected_replica_death": len(injected),
        "cut_by_injected_gateway_restart": len(gateway),
        "cut_by_teardown": len(teardown),
        "counted_by_reason": dict(Counter(r["failure_reason"] or "unknown" for r in counted)),
        **({"counted": [{"at_s": round((r["ts"] - since).total_seconds(), 1), "replica_id": r["replica_id"],
                         "reason": r["failure_reason"], "latency_s": round(r["latency_s"] or 0.0, 2)}
                        for r in counted[:10]]} if counted else {}),
    }


def check_exactly_once(engine: Any, instance: Any, joined_replicas: int = 0) -> dict:  # noqa: ANN401
    """More than one `succeeded` row or claim per action, and the actuators' side: stress targets written
    in more than one write, more than one report, or more replicas joining the fleet than the executed
    scale-outs asked for (`joined_replicas`: ids seen beyond the lab's own)."""
    from overseer_dagster.store.tables import actions, decisions, reports, stress_targets

    outcomes = _rows(engine, decisions, decisions.c.phase == "outcome")
    succeeded = Counter(r["action_id"] for r in outcomes if r["state"] == "succeeded" and r["action_id"])
    claims = Counter(r["action_id"] for r in outcomes if r["state"] == "dispatching" and r["action_id"])
    # Actuator side: the stress rows an action wrote come from one write (one transaction, one instant).
    batches: dict[str, set] = defaultdict(set)
    for r in _rows(engine, stress_targets, stress_targets.c.action_id.is_not(None)):
        batches[r["action_id"]].add(r["created_at"])
    report_rows = Counter(r["action_id"] for r in _rows(engine, reports, reports.c.action_id.is_not(None)))
    # Dagster side: one dispatch run per action (run key), whatever the sensor and the daemon went through.
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(job_name=DISPATCH_JOB))
    per_action = Counter(r.tags.get("overseer/action_id") for r in runs if r.tags.get("overseer/action_id"))
    scaled = sum(json.loads(a["action_json"]).get("count", 0) for a in _rows(
        engine, actions, actions.c.kind == "request_scale_out", actions.c.status == "succeeded"))
    twice = {
        "provider_replicas": [f"{joined_replicas} joined for {scaled} asked"] if joined_replicas > scaled else [],
        "succeeded_rows": sorted(a for a, n in succeeded.items() if n > 1),
        "claims": sorted(a for a, n in claims.items() if n > 1),
        "stress_target_writes": sorted(a for a, s in batches.items() if len(s) > 1),
        "reports": sorted(a for a, n in report_rows.items() if n > 1),
    }
    value = len(set().union(*twice.values()))
    return {"ok": value == 0, "value": value, "actions_succeeded": len(succeeded),
            "replicas_joined_by_scale_out": joined_replicas,
            "dispatch_runs": len(runs), "dispatch_runs_per_action_max": max(per_action.values(), default=0),
            **{f"more_than_once_{k}": v for k, v in twice.items() if v}}


def check_gated(engine: Any) -> dict:  # noqa: ANN401
    from sqlalchemy import inspect

    from overseer_dagster.store import tables

    if "receipts" not in inspect(engine).get_table_names() or not hasattr(tables, "receipts"):
        return {"ok": True, "value": "not_applicable",
                "why": "the store has no receipts table: gated kinds cannot execute at all without the gates work"}
    decisions, receipts_t, actions = tables.decisions, tables.receipts, tables.actions
    gated_ids = {a["action_id"] for a in _rows(engine, actions, actions.c.authority == "gated")}
    outcomes = _rows(engine, decisions, decisions.c.phase == "outcome")
    # Executed (or tried): claimed for dispatch, or an acting outcome.
    executed = {r["action_id"] for r in outcomes if r["action_id"] in gated_ids
                and r["state"] in ("dispatching", "succeeded", "failed")}
    consumed = Counter(r["consumed_by_action"] for r in _rows(engine, receipts_t)
                       if r["consumed_by_action"] and r["decision"] == "approve")
    bad = sorted(a for a in executed if consumed.get(a, 0) != 1)
    gates = tables.gates
    gate_states = Counter(g["state"] for g in _rows(engine, gates))
    return {"ok": not bad, "value": len(bad), "gated_actions": len(gated_ids), "gated_executed": len(executed),
            "receipts": sum(consumed.values()), "gate_states": dict(gate_states),
            **({"without_one_receipt": bad} if bad else {})}


def tick_runs(instance: Any) -> list[dict]:  # noqa: ANN401
    """Every overseer_tick run: status, launcher, its tick id (overseer_decision's metadata) and failed step."""
    import dagster as dg

    out = []
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=TICK_JOB)):
        tick_id, failed_steps, started = None, [], False
        if run.status.value in FINISHED:
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                started = started or event.event_type == dg.DagsterEventType.RUN_START
                if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                    mat = entry.asset_materialization
                    if mat is not None and mat.asset_key.to_user_string() == "overseer_decision" and "tick_id" in mat.metadata:
                        tick_id = mat.metadata["tick_id"].value
                elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
                    failed_steps.append(event.step_key)
        out.append({"run_id": run.run_id, "status": run.status.value, "tick_id": tick_id, "failed_steps": failed_steps,
                    "started": started,
                    "by": "schedule" if run.tags.get("dagster/schedule_name") else run.tags.get("overseer/launched_by")})
    return out


def check_ticks(engine: Any, runs: list[dict]) -> dict:  # noqa: ANN401
    from overseer_dagster.store.tables import decisions, ticks

    journal_ticks = Counter(r["tick_id"] for r in _rows(engine, decisions, decisions.c.tick_id.is_not(None)))
    tick_rows = _rows(engine, ticks)
    silent_tick_rows = [t["tick_id"] for t in tick_rows if journal_ticks.get(t["tick_id"], 0) == 0]
    finished = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE")]
    silent_runs = []
    for r in finished:
        if r["tick_id"] is not None:
            if journal_ticks.get(r["tick_id"], 0) == 0:
                silent_runs.append(r["run_id"])
        elif r["status"] == "SUCCESS" or any(s != "overseer_decision" for s in r["failed_steps"]):
            # No tick id: the tick never reached its journal (a run that failed inside overseer_decision
            # has journaled `tick_error` first; one that failed upstream of it has journaled nothing).
            silent_runs.append(r["run_id"])
    value = len(silent_tick_rows) + len(silent_runs)
    return {"ok": value == 0, "value": value, "tick_rows": len(tick_rows),
            "finished_runs": len(finished), "unfinished_runs": sum(r["status"] not in FINISHED for r in runs),
            # Runs whose worker never started (the launch failed): no tick ran, so no row is owed.
            "runs_never_started": sum(r["status"] == "FAILURE" and not r["started"] for r in runs),
            **({"silent_tick_rows": silent_tick_rows[:10]} if silent_tick_rows else {}),
            **({"silent_runs": [{k: r[k] for k in ("run_id", "status", "failed_steps")} for r in runs
                                if r["run_id"] in set(silent_runs)][:10]} if silent_runs else {})}


def check_secrets(instance: Any, dagster_home: Path, overseer_home: Path, cli_outputs: dict[str, str],  # noqa: ANN401
                  needles: dict[str, str]) -> dict:
    """Every public surface, scanned for every planted secret."""
    from dagster._serdes import serialize_value

    hits: list[str] = []
    scanned = Counter()

    def scan(surface: str, text: str) -> None:
        scanned[surface] += 1
        hits.extend(f"{name} in {surface}" for name, needle in needles.items() if needle in text)

    for run in instance.get_runs():
        events = "\n".join(serialize_value(e) for e in instance.all_logs(run.run_id))
        scan("dagster_events", events)
        scan("run_tags_and_config", json.dumps(dict(run.tags)) + json.dumps(run.run_config, default=str))
    # Compute logs (the UI shows them) and Dagster's own storage, bytes and all.
    for path in sorted(p for p in dagster_home.rglob("*") if p.is_file()):
        scan("dagster_storage_files", path.read_bytes().decode("utf-8", errors="replace"))
    reports = overseer_home / "reports"
    for path in sorted(reports.rglob("*") if reports.exists() else []):
        if path.is_file():
            scan("health_report_files", path.read_text(errors="replace"))
    for name, text in cli_outputs.items():
        scan(name, text)
    unique = sorted(set(hits))
    return {"ok": not unique, "value": len(unique), "surfaces_scanned": dict(scanned),
            **({"found": unique} if unique else {})}


def _cli_outputs(overseer: str, env: dict[str, str], commands: dict[str, list[str]]) -> dict[str, str]:
    """Each `overseer` command's stdout and stderr, the commands run side by side."""
    procs = {name: subprocess.Popen([overseer, *args], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name, args in commands.items()}
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out[name] = proc.communicate()[0]
    return out


# --- summary -------------------------------------------------------------------------------------


def _fault_counts(soak: Soak) -> dict[str, Any]:
    counts: dict[str, Any] = dict(Counter(f.kind for f in soak.faults))
    kills = [f for f in soak.faults if f.kind == "daemon_kill"]
    counts["daemon_kill_mid_dispatch"] = sum(bool(f.detail.get("mid_dispatch")) for f in kills)
    counts["db_lock_held_s"] = round(sum(f.detail.get("hold_s", 0) for f in soak.faults if f.kind == "db_lock"), 1)
    used = _mind_entries_used(soak)
    mind = Counter(category for category, _ in soak.script[:used])
    counts["mind_entries_used"] = used
    counts["mind_garbage"] = mind["garbage"] + mind["garbage_secret"]
    counts["mind_garbage_with_secret"] = mind["garbage_secret"]
    counts["mind_valid_with_planted_prompt"] = mind["leaky_valid"]
    counts["mind_timeout"] = mind["timeout"] + mind["stall"]
    restarts = [f for f in soak.faults if f.kind == "gateway_restart"]
    counts["gateway_restart"] = len(restarts)
    counts["gateway_down_s"] = round(sum((f.end - f.start).total_seconds() for f in restarts if f.end), 1)
    return counts


def _mind_entries_used(soak: Soak) -> int:
    try:
        return int(json.loads((soak.home / "mind-script.pos").read_text())["next"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _tick_summary(engine: Any, runs: list[dict]) -> dict:  # noqa: ANN401
    from overseer_dagster.store.tables import decisions, ticks

    by = Counter((r["by"] or "other", r["status"]) for r in runs)
    tick_outcomes = Counter(t["outcome"] for t in _rows(engine, ticks))
    skipped = Counter(r["reason"] for r in _rows(engine, decisions, decisions.c.phase == "decision",
                                                   decisions.c.state == "skipped"))
    return {"runs": len(runs), "runs_by_launcher_status": {f"{k[0]}:{k[1]}": v for k, v in sorted(by.items())},
            "deciding_ticks_by_outcome": dict(tick_outcomes), "skipped_rows_by_reason": dict(skipped)}


def _action_summary(engine: Any, instance: Any) -> dict:  # noqa: ANN401
    """Actions by outcome, and the stranded ones: still queued or gated-approved at the end although their
    one dispatch run (the run key is the action's or the gate's) finished without ever starting."""
    import dagster as dg

    from overseer_dagster.store.tables import actions

    rows = _rows(engine, actions)
    never_started = set()
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=DISPATCH_JOB, statuses=[dg.DagsterRunStatus.FAILURE])):
        started = any(e.dagster_event is not None and e.dagster_event.event_type == dg.DagsterEventType.RUN_START
                      for e in instance.all_logs(run.run_id))
        if not started and "overseer/action_id" in run.tags:
            never_started.add(run.tags["overseer/action_id"])
    stranded = [r["action_id"] for r in rows if r["action_id"] in never_started
                and r["status"] in ("queued", "gated", "dispatching")]
    return {"total": len(rows), "by_status": dict(Counter(r["status"] for r in rows)),
            "dispatch_runs_never_started": len(never_started),
            "stranded_by_a_run_that_never_started": len(stranded),
            "succeeded_by_kind": dict(Counter(r["kind"] for r in rows if r["status"] == "succeeded")),
            "failed_reasons": dict(Counter(r["outcome_reason"] for r in rows if r["status"] == "failed")),
            "precondition_failed_reasons": dict(Counter(r["outcome_reason"] for r in rows
                                                        if r["status"] == "precondition_failed"))}


def run(minutes: float, seed: int = 0, json_out: bool = False, workdir: Path | None = None) -> dict:
    """Run the soak for `minutes` of faults; print the checks (or JSON); return the result.

    Its state lives in a temporary directory, removed afterwards; given `workdir`, there, and kept.
    """
    load_start = os.getloadavg()
    started = _STARTED["t"] = time.monotonic()
    started_at = _utcnow()
    # Cleanup errors are ignored here and the directory removed once more below: a SQLite file a straggler
    # re-creates must not turn a finished soak into a traceback.
    with tempfile.TemporaryDirectory(prefix="overseer-soak-", ignore_cleanup_errors=True) as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        soak = Soak(root, minutes, seed)
        error = None
        try:
            _log("starting the lab, the stress harness and Dagster")
            soak.start()
            _log(f"ready after {time.monotonic() - started:.0f} s; chaos for {soak.window_s:.0f} s (seed {seed})")
            soak.chaos()
            _log("settling: faults off, waiting for runs and actions to finish")
            soak.settle()
        except Exception as exc:  # noqa: BLE001 - a crash of the soak itself is a failed result, with its cause
            error = f"{type(exc).__name__}: {exc}"
            _log(f"aborted: {error}")
        finally:
            soak.teardown_at = _utcnow()
            _log("stopping every process the soak started")
            soak.stop()
        _log("checking")
        try:
            result = _evaluate(soak, started_at, error)
        except Exception as exc:  # noqa: BLE001 - the checks could not run: a failed result, with its cause
            result = {"minutes": soak.window_s / 60, "seed": seed, "cadence_s": CADENCE_S, "passed": False,
                      "checks": {}, "error": error or f"checking failed: {type(exc).__name__}: {exc}"}
        result.update({"wall_s": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
                       "load_avg_start": [round(x, 2) for x in load_start],
                       "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
        soak = None  # noqa: F841 - drop our last references to its engines and instance before the cleanup
        gc.collect()
    shutil.rmtree(tmp, ignore_errors=True)
    if json_out:
        print(json.dumps(result, default=str), flush=True)
    else:
        print(format_result(result), flush=True)
    return result


def _evaluate(soak: Soak, started_at: datetime, error: str | None) -> dict:
    from overseer_dagster.store import db, journal

    base = {"minutes": soak.window_s / 60, "seed": soak.seed, "cadence_s": CADENCE_S}
    if soak.deployment is None or not soak.env:
        return {**base, "passed": False, "checks": {}, "error": error or "the soak did not start"}
    engine = db.connect(soak.store_url)
    cli = _cli_outputs(soak.overseer, soak.env, {
        "overseer_audit_tail": ["audit", "tail", "-n", "1000000"], "overseer_health": ["health"],
        "overseer_health_json": ["health", "--json"]})
    try:
        with soak.deployment.instance() as instance:
            runs = tick_runs(instance)
            # Each approval was submitted twice: one run records the receipt, the other is refused.
            approval_runs = dict(Counter(
                run.status.value for a in soak.approvals for run_id in a["runs"]
                if (run := instance.get_run_by_id(run_id)) is not None))
            chain = journal.verify(engine)
            checks = {
                "external_failures": check_external(engine, started_at, soak.faults, soak.teardown_at),
                "actions_executed_more_than_once": check_exactly_once(
                    engine, instance, len(soak.seen_replicas - set(soak.replica_ids))),
                "gated_executed_without_effective_receipt": check_gated(engine),
                "ticks_without_a_row": check_ticks(engine, runs),
                "audit_chain_verifies": {"ok": chain.ok, "value": chain.rows if chain.ok else chain.broken_seq,
                                         **({} if chain.ok else {"problem": chain.problem})},
                "planted_secrets_on_public_surfaces": check_secrets(
                    instance, soak.deployment.home, soak.home, cli, _needles(soak.secrets)),
            }
            action_summary = _action_summary(engine, instance)
        return {
            **base,
            "passed": error is None and all(c["ok"] for c in checks.values()),
            "checks": checks,
            "faults": _fault_counts(soak),
            # Seconds from the soak's start; replica ids are lab names (public-safe).
            "timeline": [{"at_s": round((f.start - started_at).total_seconds(), 1), "kind": f.kind, "target": f.target,
                          "for_s": round((f.end - f.start).total_seconds(), 1) if f.end else None}
                         for f in sorted(soak.faults, key=lambda f: f.start)],
            "replicas_joined": sorted(soak.seen_replicas - set(soak.replica_ids)),
            "ticks": {"launched_by_soak": len(soak.launched), "launch_errors": soak.launch_errors,
                      "launch_skipped_busy": soak.launch_skipped_busy, **_tick_summary(engine, runs)},
            "actions": action_summary,
            "operator": {"readmits": soak.operator_readmits, "approval_rounds": len(soak.approvals),
                         "approval_runs_by_status": approval_runs},
            **({"error": error} if error else {}),
            **({"notes": soak.notes} if soak.notes else {}),
        }
    finally:
        db._engines.pop(soak.store_url, None)
        engine.dispose()


def format_result(result: dict) -> str:
    lines = [f"chaos soak: {result['minutes']} min, seed {result['seed']}, cadence {result['cadence_s']} s, "
             f"{result['wall_s']} s wall, load average {result['load_avg_start'][0]} -> {result['load_avg_end'][0]} "
             f"({result['cpus']} cpus)"]
    for name, check in result["checks"].items():
        extra = {k: v for k, v in check.items() if k not in ("ok", "value")}
        lines.append(f"  [{'PASS' if check['ok'] else 'FAIL'}] {name}: {check['value']}  {json.dumps(extra, default=str)}")
    for key in ("faults", "ticks", "actions", "operator"):
        if key in result:
            lines.append(f"  {key}: {json.dumps(result[key], default=str)}")
    for key in ("error", "notes"):
        if key in result:
            lines.append(f"  {key}: {result[key]}")
    lines.append("PASSED" if result["passed"] else "FAILED")
    return "\n".join(lines)


def main(args: Any) -> int:  # noqa: ANN401 - argparse.Namespace
    result = run(args.minutes, seed=args.seed, json_out=args.json)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    from overseer_dagster import cli

    sys.exit(cli.main(["bench", "soak", *sys.argv[1:]]))
