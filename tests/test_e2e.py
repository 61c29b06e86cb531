"""End to end, as in production: every piece its own process, driven only through its public APIs.

The lab (`overseer lab up`: 3 replicas x 4 slots, steady external traffic, replica-02 flapping early
on), the stress harness (`overseer stress`), and Dagster as separate processes: a gRPC code server,
`dagster-daemon` and `dagster-webserver` (overseer_dagster.deploy). The test acts only as an
operator would: Dagster's GraphQL API (turn the tick schedule on, check the dispatch sensor, launch
`overseer_tick` runs and an `approve_action` run, list runs and materializations) and the lab's
HTTP APIs (drain a replica through the router admin, read `GET /fleet/state`). The store is only
read, to check the journal.

Dagster's cron has minute granularity, so besides the schedule's own runs the test launches
`overseer_tick` runs through GraphQL, as an operator may (OVERSEER_CADENCE_S=5 lets a tick decide
every 5 s). The schedule must still be ON: it is the enable flag the dispatch sensors read.

Once per backend: SQLite (Dagster under DAGSTER_HOME, the store in a file) and PostgreSQL (Dagster
on a fresh database through dagster.postgres.yaml's storage block, the store in a schema of it).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from dagster_api import IN_PROGRESS, DagsterAPI
from postgres_fixtures import base_url_or_skip, fresh_database, with_schema
from sqlalchemy import Engine, func, select

from overseer_dagster.deploy import Deployment, DeployError, Service, console_script, spawn
from overseer_dagster.store import connect, db, tables

pytestmark = [pytest.mark.daemon, pytest.mark.lab, pytest.mark.timeout(420)]

CADENCE_S = 5
# The test launches a tick this often (when none is queued or running): enough to decide every few
# seconds, few enough that the dispatch runs they cause are not starved on a 2-core machine.
TICK_EVERY_S = 2 * CADENCE_S
TICK_SCHEDULE = "overseer_tick_schedule"
OPERATOR = "e2e-operator"
DRAINED = "replica-01"   # drained by the test through the router admin: the overseer re-admits it
FLAPPING = "replica-02"  # trips the breaker 3+ times: the rule policy asks to quarantine it (gated)
# The flap ends alive; the lab's breaker re-admits it by itself (--auto-readmit), so it is admitted
# with 3+ trips in its window when the overseer looks: a quarantine proposal, which needs approval.
SCENARIO = {"faults": [{"at_s": 1, "replica": FLAPPING, "kind": "flap", "period_s": 4, "duration_s": 30}]}
READY = "lab ready "


@dataclass
class System:
    api: DagsterAPI
    gateway: str
    store: Engine
    deployment: Deployment
    services: list[Service]
    operator_key: Any = None  # an Ed25519 private key registered as OPERATOR, when the gates code is there
    last_launch: float = 0.0

    # --- the lab, over HTTP ---

    def fleet(self) -> dict[str, dict]:
        state = httpx.get(f"{self.gateway}/fleet/state", timeout=5).json()
        return {r["replica_id"]: r for r in state["replicas"]}

    # --- Dagster, over GraphQL ---

    def tick_if_due(self) -> None:
        """Launch an `overseer_tick` run when none is in flight and TICK_EVERY_S has passed since the last one."""
        if time.monotonic() - self.last_launch < TICK_EVERY_S:
            return
        if self.api.runs("overseer_tick", statuses=IN_PROGRESS, limit=5):
            return
        self.api.launch_run("overseer_tick", tags={"overseer/launched_by": "e2e"})
        self.last_launch = time.monotonic()

    def drive(self, condition: Callable[[], Any], timeout_s: float, what: str, *,  # noqa: ANN401
              tick: bool = True) -> Any:
        """Keep the loop ticking (unless `tick` is false) until `condition()` is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if tick:
                self.tick_if_due()
            value = condition()
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"not {what} after {timeout_s:.0f} s\n{self.diagnostics()}")

    def check_alive(self) -> None:
        for s in [*self.services, *self.deployment.services]:
            if not s.alive():
                raise AssertionError(f"{s.name} exited ({s.process.returncode}):\n{s.log_tail(40)}")

    def diagnostics(self) -> str:
        runs = Counter((r["jobName"], r["status"]) for r in self.api.runs())
        return (f"runs: {dict(runs)}\nfleet: {json.dumps(self.fleet(), default=str)[:2000]}\n"
                f"journal: {[(r['phase'], r['kind'], r['state'], r['reason']) for r in journal(self.store)[-30:]]}\n"
                + "\n".join(f"--- {s.name}\n{s.log_tail(15)}" for s in [*self.services, *self.deployment.services]))


def journal(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(tables.decisions).order_by(tables.decisions.c.seq)).mappings()]


def stress_requests(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(tables.ledger)
                            .where(tables.ledger.c.demand_kind == "internal_stress")).scalar_one()


def rows(engine: Engine, table: Any) -> list[dict]:  # noqa: ANN401
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table)).mappings()]


def action_replica(action: dict) -> str | None:
    return json.loads(action["action_json"]).get("replica_id")


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


def _register_operator(root: Path) -> tuple[Any, dict[str, str]]:
    """A test operator's key in a registry the code location reads (OVERSEER_OPERATORS), if the gates code is here."""
    try:
        from overseer_dagster import receipts
    except ImportError:
        return None, {}
    key = receipts.generate_key()
    registry = root / "operators.json"
    receipts.add_to_registry(registry, receipts.registry_entry(OPERATOR, key))
    return key, {receipts.REGISTRY_ENV: str(registry)}


def _quiesce(system: System, timeout_s: float = 60.0) -> None:
    """Stop the daemon (no new runs), then let the runs in flight finish before everything else stops:
    no run worker outlives the test, writing to a store or database that is going away."""
    for service in [s for s in system.deployment.services if s.name == "daemon"]:
        service.stop()
        system.deployment.services.remove(service)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and system.api.runs(statuses=("STARTING", "STARTED", "CANCELING"), limit=5):
        time.sleep(1)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    backend = request.param
    root = tmp_path_factory.mktemp(f"e2e-{backend}")
    with ExitStack() as stack:
        dagster_url = None
        if backend == "postgres":
            database = stack.enter_context(fresh_database(base_url_or_skip(), "overseer_e2e"))
            dagster_url, store_url = database, with_schema(database, "overseer")
        else:
            store_url = f"sqlite:///{root / 'store.db'}"
        store = connect(store_url)  # migrate once, before several processes open it
        stack.callback(lambda: db._engines.pop(store_url, store).dispose())
        operator_key, operator_env = _register_operator(root)
        env = {
            **operator_env, "OVERSEER_DATABASE_URL": store_url, "OVERSEER_HOME": str(root / "home"),
            "OVERSEER_CADENCE_S": str(CADENCE_S), "OVERSEER_ENABLED": "1", "OVERSEER_MODE": "autonomous",
            "OVERSEER_MIND": "rule",
        }
        overseer = console_script("overseer")
        logs = root / "logs"
        scenario = root / "scenario.json"
        scenario.write_text(json.dumps(SCENARIO))
        process_env = {**os.environ, **env}
        lab = spawn("lab", [overseer, "lab", "up", "--replicas", "3", "--slots", "4", "--singleflight",
                            "--auto-readmit", "--traffic", "steady:rate=1", "--scenario", str(scenario),
                            "--database-url", store_url], env=process_env, log_dir=logs, cwd=root)
        stack.callback(lab.stop)
        ready = _wait_for_ready_line(lab)
        ready_file = root / "lab-ready.json"
        ready_file.write_text(json.dumps(ready))
        stress = spawn("stress", [overseer, "stress", "--replicas", str(ready_file), "--database-url", store_url,
                                  "--cadence-s", str(CADENCE_S)], env=process_env, log_dir=logs, cwd=root)
        stack.callback(stress.stop)
        gateway = ready["gateway"]
        deployment = Deployment(root / "dagster", env={
            **env, "OVERSEER_FLEET_SOURCE": f"snapshot:{gateway}/fleet/state", "OVERSEER_ROUTER_URL": gateway,
        }, dagster_database_url=dagster_url)
        stack.enter_context(deployment)  # code server + daemon; stopped (each by its PID) on the way out
        deployment.start_webserver()
        api = DagsterAPI(deployment.webserver_url)
        stack.callback(api.close)
        sut = System(api=api, gateway=gateway, store=store, deployment=deployment, services=[lab, stress],
                     operator_key=operator_key)
        api.start_schedule(TICK_SCHEDULE)  # the enable flag, exactly as the UI's toggle
        yield sut
        _quiesce(sut)
    assert all(not s.alive() for s in [lab, stress, *deployment.services])


def test_ticks_decide_and_autonomous_actions_execute_exactly_once(system: System) -> None:
    api = system.api
    assert api.schedule_status(TICK_SCHEDULE) == "RUNNING"
    assert api.sensor("autonomous_dispatch")["status"] == "RUNNING"

    drained = httpx.post(f"{system.gateway}/fleet/replicas/{DRAINED}/drain", timeout=5)
    assert drained.status_code == 200 and drained.json()["routing_state"] == "draining"

    def readmitted() -> bool:
        succeeded = [r for r in journal(system.store) if r["phase"] == "outcome" and r["state"] == "succeeded"
                     and r["kind"] == "readmit_replica"]
        return bool(succeeded) and system.fleet()[DRAINED]["routing_state"] == "admitted"

    system.drive(readmitted, 150, f"{DRAINED} re-admitted by the overseer")
    readmitted_at = time.monotonic()

    def progressed() -> bool:
        # Ticks ran and decided (runs through GraphQL, their materializations, journal rows); the stress
        # they asked for ran (the harness records each request in the ledger as `internal_stress`); and a
        # sensor that would act twice has had its chance.
        deciding = {r["tick_id"] for r in journal(system.store)
                    if r["phase"] == "decision" and r["state"] in ("queued", "pending_approval")}
        return (time.monotonic() - readmitted_at > 3 * CADENCE_S and len(deciding) >= 2
                and sum(r["status"] == "SUCCESS" for r in api.runs("overseer_tick")) >= 2
                and len(api.materializations("overseer_decision")) >= 2 and stress_requests(system.store) > 0)

    system.drive(progressed, 150, "two deciding ticks, their materializations, and stress requests in the ledger")
    ticks = api.runs("overseer_tick")
    rows_ = journal(system.store)

    # Every autonomous action that succeeded did so exactly once, through exactly one dispatch run.
    dispatch_runs = api.runs("dispatch_action")
    run_keys = [r["tags"].get("dagster/run_key") for r in dispatch_runs]
    assert all(run_keys) and len(run_keys) == len(set(run_keys)), run_keys
    per_action = Counter(r["tags"]["overseer/action_id"] for r in dispatch_runs)
    assert max(per_action.values()) == 1, per_action
    assert not [r for r in [*ticks, *dispatch_runs] if r["status"] == "FAILURE"]
    outcomes = Counter(r["action_id"] for r in rows_ if r["phase"] == "outcome" and r["state"] == "succeeded")
    assert outcomes and max(outcomes.values()) == 1, outcomes
    actions = {a["action_id"]: a for a in rows(system.store, tables.actions)}
    readmits = [a for a in actions.values() if a["kind"] == "readmit_replica" and a["status"] == "succeeded"]
    assert [action_replica(a) for a in readmits] == [DRAINED]
    assert per_action[readmits[0]["action_id"]] == 1
    assert {a["action_id"] for a in actions.values() if a["status"] == "succeeded"} <= set(per_action)
    assert system.fleet()[DRAINED]["routing_state"] == "admitted"


def _pending_quarantine(system: System) -> dict | None:
    fleet = system.fleet()
    for gate in rows(system.store, tables.gates):
        if (gate["kind"] == "quarantine_replica" and gate["state"] == "pending"
                and json.loads(gate["action_json"]).get("replica_id") == FLAPPING
                and fleet[FLAPPING]["routing_state"] == "admitted"):
            return gate
    return None


def _signed_approval(system: System, gate: dict) -> dict[str, str]:
    from overseer_dagster import receipts
    from overseer_dagster.core import approval

    issued_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    message = approval.signed_message(gate_id=gate["gate_id"], action_hash=gate["action_hash"], decision="approve",
                                      operator=OPERATOR, issued_at=issued_at)
    return {"gate_id": gate["gate_id"], "operator": OPERATOR, "decision": "approve", "issued_at": issued_at,
            "signature": receipts.sign(system.operator_key, message), "note": "e2e"}


def test_a_gated_action_waits_for_a_signed_approval_then_executes_once(system: System) -> None:
    api = system.api
    gate = system.drive(lambda: _pending_quarantine(system), 150, f"a pending quarantine gate for {FLAPPING}")
    gated = [a for a in rows(system.store, tables.actions) if a["gate_id"] == gate["gate_id"]]
    assert gated and {a["status"] for a in gated} == {"gated"}

    # It waits: sensors run and ticks decide, but nothing executes it without an approval.
    waited_from = time.time()
    system.drive(lambda: time.time() - waited_from > 3 * CADENCE_S, 60, "waiting")
    assert {a["status"] for a in rows(system.store, tables.actions) if a["gate_id"] == gate["gate_id"]} == {"gated"}
    assert system.fleet()[FLAPPING]["routing_state"] == "admitted"
    assert not [r for r in api.runs("dispatch_action") if r["tags"].get("overseer/kind") == "quarantine_replica"]

    missing = [what for what, there in (("the `approve_action` job", "approve_action" in api.job_names()),
                                        ("overseer_dagster.receipts (operator keys)", system.operator_key is not None))
               if not there]
    if missing:
        pytest.skip(f"approving through GraphQL needs {' and '.join(missing)} in the code location (the approval "
                    "gates work); shown so far: the gated action waits, unexecuted")

    assert api.sensor("approved_dispatch")["status"] == "RUNNING"
    fields = api.op_config_fields("approve_action")
    assert len(fields) == 1, f"approve_action: expected one op taking the signed decision, got {fields}"
    [(op, names)] = fields.items()
    signed = _signed_approval(system, gate)
    approve = api.launch_run("approve_action", {"ops": {op: {"config": {k: signed[k] for k in names if k in signed}}}},
                             tags={"overseer/gate_id": gate["gate_id"]})
    # From here no tick is needed: the approved_dispatch sensor acts on the approval by itself.
    system.drive(lambda: api.run_status(approve) not in IN_PROGRESS, 150, "approve_action finished", tick=False)
    assert api.run_status(approve) == "SUCCESS", system.diagnostics()

    def quarantined() -> bool:
        return system.fleet()[FLAPPING]["routing_state"] == "quarantined"

    def quarantine_runs() -> list[dict]:
        return [r for r in api.runs("dispatch_action") if r["tags"].get("overseer/kind") == "quarantine_replica"]

    system.drive(quarantined, 150, f"{FLAPPING} quarantined after the approval", tick=False)
    # The run that quarantined it finishes after the router has acted (its outcome row, its materialization).
    system.drive(lambda: quarantine_runs() and all(r["status"] not in IN_PROGRESS for r in quarantine_runs()),
                 150, "the quarantine's dispatch run finished", tick=False)
    time.sleep(2 * CADENCE_S)  # a sensor that would act twice has had its chance
    # Once: one succeeded outcome and one dispatch run for the gate; every other proposal that pointed
    # at the same gate is settled without acting.
    succeeded = [r for r in journal(system.store) if r["phase"] == "outcome" and r["state"] == "succeeded"
                 and r["kind"] == "quarantine_replica"]
    assert [r["gate_id"] for r in succeeded] == [gate["gate_id"]], succeeded
    assert [g["state"] for g in rows(system.store, tables.gates) if g["gate_id"] == gate["gate_id"]] == ["executed"]
    on_gate = [a for a in rows(system.store, tables.actions) if a["gate_id"] == gate["gate_id"]]
    assert sorted(a["status"] for a in on_gate) == sorted(["succeeded"] + ["blocked"] * (len(on_gate) - 1)), on_gate
    runs = quarantine_runs()
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS", runs
    keys = [r["tags"].get("dagster/run_key") for r in api.runs("dispatch_action")]
    assert len(keys) == len(set(keys))
