"""Properties of the tick and dispatch machinery as a whole, under any sequence of events (hypothesis).

Properties proved elsewhere, not repeated here:
- the parser never raises and decides the same input the same way twice:
  `tests/test_proposal.py::test_never_raises_on_text`, `..._on_bytes`, `..._on_json_structures`,
  `..._on_python_objects_of_any_shape`, `..._on_mutated_valid_proposals` (`_decided_the_same_twice`);
- the scrubber is idempotent and leaves none of what it found: `tests/test_redact.py::
  test_idempotent_on_any_text`, `test_idempotent_on_dense_punctuation`, `test_planted_secrets_never_survive`.

Here: the parser's context stage (a fleet given) on any proposal naming any replica, and a
`RuleBasedStateMachine` over ticks and dispatch on a SQLite store, with fake actuators that record
every call. Whatever the order of ticks (valid, invalid, gated, rule mind), dispatches (once,
again, concurrently claimed and crashed, under the kill switch or advisory mode), replicas draining
and lease expiries, these hold after every step:

- no action is executed twice (the actuators' call log);
- every tick has at least one journal row;
- the audit chain verifies;
- a gated action never reaches an actuator, and nothing reaches one with the kill switch off or in
  advisory mode;

and at the end, replay re-decides every rule-mind tick to exactly its rows.

Extension point: the approval gates add their rules (approve / reject / expire a gate, dispatch an
approved action) in `TickAndDispatch` under "gate approvals"; `self.gated` holds the gated action ids
each tick opened, and `executed_gated` in `no_gated_action_reaches_an_actuator` is where approved
executions are allowed for.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select, update

from overseer_dagster import dispatch, replay
from overseer_dagster.adapters.actuators import Actuators, StoreReportSink, StoreStressControl, StressWrite
from overseer_dagster.adapters.mind import MindAnswer, RuleMind
from overseer_dagster.core.authority import AUTHORITY
from overseer_dagster.core.context import StressStatus
from overseer_dagster.core.fleet import FleetSnapshot, ReplicaState
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import decide_text
from overseer_dagster.core.vocabulary import ActionKind
from overseer_dagster.settings import TickSettings
from overseer_dagster.store import db, journal
from overseer_dagster.store.tables import actions as actions_table
from overseer_dagster.store.tables import decisions
from overseer_dagster.tick import run_tick
from dispatch_fixtures import NOW

CADENCE_S = 60.0
REPLICAS = ("r-0", "r-1", "r-2")


# --- the parser's context stage, on any replica --------------------------------------------------

_REPLICA_ID = st.sampled_from([*REPLICAS, "r-9", "R-0", "", "r-0 ", "gpu-node-1"])
_ANY_ACTION = st.one_of(
    st.builds(lambda r: {"kind": "readmit_replica", "replica_id": r}, _REPLICA_ID),
    st.builds(lambda r: {"kind": "warm_replica", "replica_id": r, "requests": 2}, _REPLICA_ID),
    st.builds(lambda r: {"kind": "scale_stress", "replica_id": r, "concurrency": 4}, _REPLICA_ID),
    st.builds(lambda r: {"kind": "quarantine_replica", "replica_id": r, "reason_code": "error_rate",
                         "rollback": {"action": "readmit_replica", "replica_id": r}}, _REPLICA_ID),
    st.builds(lambda n: {"kind": "request_scale_out", "gpu_class": "h100", "count": n, "max_hourly_usd": 9.0,
                         "rollback": {"action": "scale_in", "after_s": 600}}, st.integers(-1, 12)),
    st.builds(lambda p: {"kind": "wallet_spend", "amount_sats": 1000, "payee_ref": p,
                         "purpose": "provider_invoice"}, st.sampled_from(["payee-acme", "payee-zz"])),
    st.just({"kind": "noop"}),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANY_ACTION, min_size=0, max_size=9),
       st.lists(st.sampled_from(["admitted", "draining", "quarantined"]), min_size=3, max_size=3),
       st.lists(st.sampled_from(["healthy", "unhealthy", "unknown"]), min_size=3, max_size=3))
def test_in_context_any_proposal_gets_the_same_verdict_twice_and_valid_means_it_fits(
        actions: list[dict], routing: list[str], health: list[str]) -> None:
    snapshot = _snapshot(NOW, dict(zip(REPLICAS, routing, strict=True)), dict(zip(REPLICAS, health, strict=True)))
    limits = Limits(payee_refs=frozenset({"payee-acme"}), max_scale_out_count=4)
    raw = json.dumps({"actions": actions})
    first = decide_text(raw, snapshot, limits)
    assert decide_text(raw, snapshot, limits) == first
    if first.verdict == "valid":
        by_id = {r.replica_id: r for r in snapshot.replicas}
        for action in first.actions:
            replica_id = getattr(action, "replica_id", None)
            assert replica_id is None or replica_id in by_id
            if action.kind == "readmit_replica":
                assert by_id[replica_id].routing_state.value == "draining" and by_id[replica_id].health.value == "healthy"


# --- the tick and dispatch machine ---------------------------------------------------------------


def _snapshot(now: datetime, routing: dict[str, str], health: dict[str, str] | None = None,
              warm: dict[str, bool] | None = None) -> FleetSnapshot:
    at = now.isoformat()
    return FleetSnapshot.model_validate({"observed_at": at, "replicas": [
        {"replica_id": rid, "health": (health or {}).get(rid, "healthy"), "routing_state": routing[rid],
         "warm": (warm or {}).get(rid, True), "inflight": 2, "external_inflight": 2, "max_inflight": 16,
         "observed_at": at} for rid in REPLICAS]})


def _proposal(*actions: dict) -> str:
    return json.dumps({"actions": list(actions)})


_QUARANTINE_R0 = {"kind": "quarantine_replica", "replica_id": "r-0", "reason_code": "error_rate",
                  "rollback": {"action": "readmit_replica", "replica_id": "r-0"}}
_SCALE_OUT = {"kind": "request_scale_out", "gpu_class": "h100", "count": 1, "max_hourly_usd": 12.0,
              "rollback": {"action": "scale_in", "after_s": 3600}}
PROPOSALS = {
    # Autonomous, each kind the dispatcher acts on.
    "start_stress": _proposal({"kind": "start_stress", "concurrency": 4, "duration_s": 180}),
    "scale_and_stop": _proposal({"kind": "scale_stress", "concurrency": 8, "replica_id": "r-0"},
                                {"kind": "stop_stress", "replica_id": "r-2"}),
    "back_off": _proposal({"kind": "back_off_stress", "factor": 0.5}),
    "readmit_r1": _proposal({"kind": "readmit_replica", "replica_id": "r-1"}),
    "warm_r2": _proposal({"kind": "warm_replica", "replica_id": "r-2", "requests": 2}),
    "report": _proposal({"kind": "emit_report", "topic": "capacity", "summary": "3 replicas."}),
    "noop": _proposal({"kind": "noop"}),
    # Gated, alone and next to autonomous actions.
    "quarantine": _proposal(_QUARANTINE_R0),
    "scale_out_and_stress": _proposal(_SCALE_OUT, {"kind": "start_stress", "concurrency": 2, "duration_s": 60}),
    # Invalid: never an action.
    "garbage": "sure, let me scale things up for you",
    "claims_authority": _proposal({**_SCALE_OUT, "approved": True}),
    "unknown_replica": _proposal({"kind": "readmit_replica", "replica_id": "r-9"}),
    "fenced_prose": "Plan:\n```json\n" + _proposal({"kind": "noop"}) + "\n```",
}


class Scripted:
    name = "script"

    def __init__(self, raw: str) -> None:
        self.raw = raw

    def propose(self, ctx: Any) -> MindAnswer:  # noqa: ANN401
        return MindAnswer(raw=self.raw)


class Crash(BaseException):
    """A run worker dying right after its actuator acted: nothing in dispatch catches it."""


class CallLog:
    """Every actuator call, by the action being dispatched; optionally dies right after acting."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.current: str | None = None
        self.crash_after_acting = False

    def record(self, what: str) -> None:
        assert self.current is not None, f"an actuator was called outside a dispatch: {what}"
        self.calls.append((self.current, what))

    def acted(self) -> None:
        if self.crash_after_acting:
            raise Crash


class RecordingStress:
    def __init__(self, log: CallLog, inner: StoreStressControl) -> None:
        self.log, self.inner = log, inner

    def _call(self, verb: str, **kwargs: Any) -> StressWrite:  # noqa: ANN401
        self.log.record(f"stress.{verb}")
        written = getattr(self.inner, verb)(**kwargs)
        self.log.acted()
        return written

    def start(self, **kwargs: Any) -> StressWrite:  # noqa: ANN401
        return self._call("start", **kwargs)

    def scale(self, **kwargs: Any) -> StressWrite:  # noqa: ANN401
        return self._call("scale", **kwargs)

    def back_off(self, **kwargs: Any) -> StressWrite:  # noqa: ANN401
        return self._call("back_off", **kwargs)

    def stop(self, **kwargs: Any) -> StressWrite:  # noqa: ANN401
        return self._call("stop", **kwargs)


class RecordingRouter:
    """The gateway's router admin over the machine's fleet: admit puts a replica back in rotation."""

    def __init__(self, log: CallLog, machine: TickAndDispatch) -> None:
        self.log, self.machine = log, machine

    def _set(self, verb: str, replica_id: str, state: str) -> ReplicaState:
        self.log.record(f"router.{verb}:{replica_id}")
        self.machine.routing[replica_id] = state
        self.log.acted()
        return self.machine.snapshot().replicas[REPLICAS.index(replica_id)]

    def admit(self, replica_id: str) -> ReplicaState:
        return self._set("admit", replica_id, "admitted")

    def drain(self, replica_id: str) -> ReplicaState:
        return self._set("drain", replica_id, "draining")

    def quarantine(self, replica_id: str) -> ReplicaState:
        return self._set("quarantine", replica_id, "quarantined")


class RecordingWarm:
    def __init__(self, log: CallLog, machine: TickAndDispatch) -> None:
        self.log, self.machine = log, machine

    def warm(self, replica_id: str, requests: int) -> int:
        self.log.record(f"warm:{replica_id}")
        self.machine.cold.discard(replica_id)
        self.log.acted()
        return requests


class RecordingReports:
    def __init__(self, log: CallLog, inner: StoreReportSink) -> None:
        self.log, self.inner = log, inner

    def emit(self, **kwargs: Any) -> str:  # noqa: ANN401
        self.log.record("reports.emit")
        out = self.inner.emit(**kwargs)
        self.log.acted()
        return out


class MachineFleet:
    """The fleet source dispatch reads: the machine's fleet, observed now."""

    def __init__(self, machine: TickAndDispatch) -> None:
        self.machine = machine

    def snapshot(self, now: datetime) -> FleetSnapshot:
        return self.machine.snapshot(now)


class TickAndDispatch(RuleBasedStateMachine):
    @initialize()
    def open_store(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="overseer-props-")
        self.url = f"sqlite:///{Path(self._tmp.name) / 'store.db'}"
        self.engine = db.connect(self.url)
        self.now = NOW
        self.routing = {"r-0": "admitted", "r-1": "draining", "r-2": "admitted"}
        self.cold = {"r-2"}
        self.log = CallLog()
        self.actuators = Actuators(
            stress=RecordingStress(self.log, StoreStressControl(self.engine, default_hold_s=3 * CADENCE_S)),
            router=RecordingRouter(self.log, self), warm=RecordingWarm(self.log, self),
            reports=RecordingReports(self.log, StoreReportSink(self.engine)))
        self.fleet = MachineFleet(self)
        self.tick_ids: list[str] = []
        self.queued: list[str] = []  # autonomous action ids the ticks queued
        self.gated: list[str] = []  # gated action ids (their gates are open): see the extension point
        self.runs = 0

    def teardown(self) -> None:
        if not hasattr(self, "engine"):
            return
        try:
            # Every rule-mind tick re-decides to exactly its recorded rows.
            report = replay.replay(self.engine, NOW - timedelta(days=1))
            assert not report.differs, report.public()
        finally:
            db._engines.pop(self.url, None)
            self.engine.dispose()
            self._tmp.cleanup()

    def snapshot(self, now: datetime | None = None) -> FleetSnapshot:
        return _snapshot(now or self.now, self.routing, warm={r: r not in self.cold for r in REPLICAS})

    # --- ticks -----------------------------------------------------------------------------------

    def _tick(self, mind: Any, mode: str = "autonomous") -> None:  # noqa: ANN401
        self.now += timedelta(seconds=CADENCE_S)
        result = run_tick(self.engine, now=self.now, settings=TickSettings(cadence_s=CADENCE_S,
                                                                           limits=Limits(payee_refs=frozenset())),
                          enabled=True, mode=mode, fleet=self.snapshot(), fleet_problem=None, demand=None,
                          stress=StressStatus(), mind=mind)
        self.tick_ids.append(result.tick_id)
        for row in result.rows:
            if row["state"] == "queued":
                self.queued.append(row["action_id"])
            elif row["state"] == "pending_approval":
                self.gated.append(row["action_id"])
            assert row["state"] not in ("queued", "pending_approval") or result.outcome == "decided"

    @rule(name=st.sampled_from(sorted(PROPOSALS)), mode=st.sampled_from(["autonomous", "autonomous", "advisory"]))
    def tick(self, name: str, mode: str) -> None:
        self._tick(Scripted(PROPOSALS[name]), mode)

    @rule()
    def tick_with_the_rule_mind(self) -> None:
        self._tick(RuleMind())

    @rule(replica=st.sampled_from(REPLICAS))
    def breaker_drains(self, replica: str) -> None:
        if self.routing[replica] == "admitted":
            self.routing[replica] = "draining"

    # --- dispatch ----------------------------------------------------------------------------------

    def _dispatch(self, action_id: str, *, enabled: bool = True, mode: str = "autonomous",
                  crash: bool = False) -> dispatch.Dispatched | None:
        self.runs += 1
        before = len(self.log.calls)
        self.log.current, self.log.crash_after_acting = action_id, crash
        try:
            return dispatch.dispatch_action(
                self.engine, action_id, run_id=f"run-{self.runs}", clock=lambda: self.now, enabled=enabled,
                mode=mode, cadence_s=CADENCE_S, fleet=self.fleet, actuators=self.actuators)
        except Crash:
            return None
        finally:
            self.log.current, self.log.crash_after_acting = None, False
            if not enabled or mode == "advisory":
                assert len(self.log.calls) == before, "an actuator was called with the kill switch off or advisory"

    def still_queued(self) -> list[str]:
        """Queued ids still `queued` in the store, in the order the ticks queued them (ids are random)."""
        with self.engine.connect() as conn:
            waiting = set(conn.execute(select(actions_table.c.action_id)
                                       .where(actions_table.c.status == "queued")).scalars())
        return [a for a in self.queued if a in waiting]

    @precondition(lambda self: self.queued and self.still_queued())
    @rule(data=st.data())
    def dispatch_a_queued_action(self, data: st.DataObject) -> None:
        self._dispatch(data.draw(st.sampled_from(self.still_queued()), label="action"))

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def dispatch_the_same_action_again(self, data: st.DataObject) -> None:
        action_id = data.draw(st.sampled_from(self.queued), label="action")
        self._dispatch(action_id)
        second = self._dispatch(action_id)
        assert second is not None and second.outcome == dispatch.NOT_QUEUED

    @precondition(lambda self: self.queued)
    @rule(data=st.data(), enabled=st.booleans())
    def dispatch_while_switched_off_or_advisory(self, data: st.DataObject, enabled: bool) -> None:
        action_id = data.draw(st.sampled_from(self.queued), label="action")
        self._dispatch(action_id, enabled=enabled, mode="autonomous" if not enabled else "advisory")

    @precondition(lambda self: self.queued and self.still_queued())
    @rule(data=st.data())
    def a_run_dies_right_after_acting(self, data: st.DataObject) -> None:
        self._dispatch(data.draw(st.sampled_from(self.still_queued()), label="action"), crash=True)

    @precondition(lambda self: self.gated)
    @rule(data=st.data(), set_queued_by_hand=st.booleans())
    def dispatch_a_gated_action(self, data: st.DataObject, set_queued_by_hand: bool) -> None:
        action_id = data.draw(st.sampled_from(self.gated), label="gated action")
        if set_queued_by_hand:  # someone edits the store: the dispatcher still goes by the authority table
            with self.engine.begin() as conn:
                conn.execute(update(actions_table).where(actions_table.c.action_id == action_id,
                                                         actions_table.c.status == "gated").values(status="queued"))
        self._dispatch(action_id)

    @rule(seconds=st.sampled_from([dispatch.DISPATCH_LEASE_S + 1, 30.0, 400.0]))
    def time_passes_and_the_sensor_sweeps(self, seconds: float) -> None:
        """Leases expire and stale decisions retire: the sweep reads the world and never acts."""
        self.now += timedelta(seconds=seconds)
        before = len(self.log.calls)
        dispatch.due_actions(self.engine, now=self.now, cadence_s=CADENCE_S, fleet=self.fleet)
        assert len(self.log.calls) == before

    # --- gate approvals ------------------------------------------------------------------------------
    # Extension point: approve / reject / expire gates of `self.gated` and dispatch approved actions here.

    # --- invariants ----------------------------------------------------------------------------------

    @invariant()
    def no_action_is_executed_twice(self) -> None:
        if hasattr(self, "log"):
            twice = [a for a, n in Counter(a for a, _ in self.log.calls).items() if n > 1]
            assert not twice, f"executed more than once: {twice}"

    @invariant()
    def every_tick_has_a_journal_row(self) -> None:
        if not getattr(self, "tick_ids", None):
            return
        with self.engine.connect() as conn:
            counts = dict(conn.execute(
                select(decisions.c.tick_id, func.count()).where(decisions.c.phase == "decision")
                .group_by(decisions.c.tick_id)).all())
        assert all(counts.get(t, 0) >= 1 for t in self.tick_ids)

    @invariant()
    def the_audit_chain_verifies(self) -> None:
        if hasattr(self, "engine"):
            report = journal.verify(self.engine)
            assert report.ok, report

    @invariant()
    def no_gated_action_reaches_an_actuator(self) -> None:
        if not hasattr(self, "log"):
            return
        executed_gated: set[str] = set()  # approved gates, once the approval rules exist
        executed = {a for a, _ in self.log.calls}
        assert not (executed & set(self.gated)) - executed_gated
        with self.engine.connect() as conn:
            kinds = dict(conn.execute(select(actions_table.c.action_id, actions_table.c.kind)
                                      .where(actions_table.c.action_id.in_(executed))).all()) if executed else {}
        assert set(kinds) == executed, "an actuator acted for an action no tick queued"
        assert all(AUTHORITY[ActionKind(k)].autonomous for k in kinds.values())


TickAndDispatch.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_tick_and_dispatch = TickAndDispatch.TestCase
