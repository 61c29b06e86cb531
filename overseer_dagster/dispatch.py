"""Dispatch: each queued autonomous action happens once, and every step is a journal row.

`dispatch_action` is one `dispatch_action` run: refuse what may not act (stored JSON no longer valid,
a gated kind, kill switch, advisory mode, a stale decision), claim the action (queued -> dispatching,
a compare-and-set: of two runs only one wins), re-check its precondition on a fresh read of the
fleet, call the actuator, record the outcome. Outcome and journal row are written in one transaction.

`due_actions` is what the `autonomous_dispatch` sensor calls: it retires stale decisions, fails actions
whose run ended without claiming them (`failed: run_never_started`), reconciles claims whose lease expired
(a run that crashed between acting and recording) by reading the world, never by acting again, and
returns the actions to launch runs for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine

from overseer_dagster.adapters.actuators import ActuatorError, Actuators
from overseer_dagster.adapters.fleet_source import FleetSource, FleetSourceError
from overseer_dagster.core.authority import AUTHORITY
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.preconditions import decision_stale, effect_in_fleet, needs_fleet, refusal
from overseer_dagster.core.redact import redact
from overseer_dagster.core.vocabulary import (
    Action,
    ActionKind,
    BackOffStress,
    EmitReport,
    ReadmitReplica,
    ScaleStress,
    StartStress,
    StopStress,
    WarmReplica,
)
from overseer_dagster.store import actions, journal, reports, targets, write_tx

# How long a claim holds. An action that is still `dispatching` after this is reconciled.
DISPATCH_LEASE_S = 120.0
# The longest an actuator may take (warm-up's deadline plus margin): a claim with less lease left
# than this does not act, so a reconciler can never record "failed" while a slow run still acts.
ACT_BUDGET_S = 60.0
# The outcome of a run that found nothing to do (the action was not queued): recorded nowhere.
NOT_QUEUED = "not_queued"
# A run is launched within seconds of an action being queued and claims it soon after. Only an action still
# queued this long is worth asking Dagster about: did its run end without claiming it?
RUN_CHECK_AFTER_S = 10.0
# Why an action whose run ended before claiming it failed. Its run key is spent: it is never retried.
NEVER_STARTED = "run_never_started"

_ACTION: TypeAdapter[Action] = TypeAdapter(Action)
# Kinds whose effect shows in the fleet; every other kind's effect is a row in the store.
_FLEET_EFFECT = frozenset({ActionKind.readmit_replica.value, ActionKind.warm_replica.value})

Clock = Callable[[], datetime]
# Given action ids, those whose dispatch runs have all ended (the sensor asks the Dagster instance).
EndedRuns = Callable[[list[str]], set[str]]


@dataclass(frozen=True, slots=True)
class Dispatched:
    """What happened to one action. `recorded`: this call wrote the outcome (it won the compare-and-set)."""

    action_id: str
    outcome: str
    reason: str | None = None
    detail: str | None = None
    kind: str | None = None
    recorded: bool = False
    report: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """The sensor's view: queued actions to launch, and what the sweep settled on the way."""

    actions: list[dict]
    settled: list[Dispatched] = field(default_factory=list)


# --- one action --------------------------------------------------------------------------------


def dispatch_action(
    engine: Engine,
    action_id: str,
    *,
    run_id: str,
    clock: Clock,
    enabled: bool,
    mode: str,
    cadence_s: float,
    fleet: FleetSource,
    actuators: Actuators,
) -> Dispatched:
    row = actions.get(engine, action_id)
    if row is None or row["status"] != "queued":
        status = row["status"] if row else "unknown"
        return Dispatched(action_id, NOT_QUEUED, detail=f"the action is {status}, not queued: nothing to do",
                          kind=row["kind"] if row else None)
    now = clock()
    action, invalid = _stored_action(row)
    if invalid is not None:
        return _record(engine, row, "blocked", invalid, now=now, expected="queued")
    if not enabled:
        return _record(engine, row, "blocked", ("kill_switch", "OVERSEER_ENABLED is off"), now=now, expected="queued")
    if mode == "advisory":
        return _record(engine, row, "advisory", ("advisory_mode", "OVERSEER_MODE is advisory: executing nothing"),
                       now=now, expected="queued")
    if decision_stale(row["updated_at"], now, cadence_s):
        return _record(engine, row, "precondition_failed", _stale(row, now), now=now, expected="queued")

    with write_tx(engine) as conn:
        claimed = actions.claim(conn, action_id, run_id=run_id, now=now, lease_s=DISPATCH_LEASE_S)
        if claimed:
            journal.append(conn, [_entry(row, "dispatching", None, f"claimed by run {run_id}", now)])
    if not claimed:
        return Dispatched(action_id, NOT_QUEUED, detail="another run claimed it first: nothing to do", kind=row["kind"])
    lease_until = now + timedelta(seconds=DISPATCH_LEASE_S)

    snapshot, problem = _read(fleet, clock()) if needs_fleet(action.kind) else (None, None)
    refused = refusal(action, snapshot, now=clock(), cadence_s=cadence_s, fleet_problem=problem)
    if refused is not None:
        return _record(engine, row, "precondition_failed", (refused.reason, refused.detail), now=clock())
    if clock() + timedelta(seconds=ACT_BUDGET_S) > lease_until:
        return _record(engine, row, "failed", ("lease_expired", "too little lease left to act safely"), now=clock())
    try:
        detail, report = _act(action, action_id, actuators, clock())
    except ActuatorError as exc:
        return _record(engine, row, "failed", (exc.reason, str(exc)), now=clock())
    except Exception as exc:  # a bug, not a typed failure: record it, then fail the run loudly
        _record(engine, row, "failed", ("actuator_error", type(exc).__name__), now=clock())
        raise
    return _record(engine, row, "succeeded", (None, detail), now=clock(), report=report)


def _stored_action(row: dict) -> tuple[Action, None] | tuple[None, tuple[str, str]]:
    """The stored action, re-validated: the row may have been edited since the tick validated it."""
    try:
        action = _ACTION.validate_json(row["action_json"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return None, ("stored_action_invalid", f"stored action JSON no longer validates: {where}: {first['msg']}")
    if action.kind != row["kind"]:
        return None, ("stored_action_invalid", f"stored action is {action.kind} but the row says {row['kind']}")
    # Authority comes from the table, never from the row.
    if not AUTHORITY[action.action_kind].autonomous:
        return None, ("not_autonomous", f"{action.kind} needs an approved gate")
    return action, None


def _stale(row: dict, now: datetime) -> tuple[str, str]:
    age = int((now - row["updated_at"]).total_seconds())
    return "decision_stale", f"queued {age} s ago: the fleet it was decided on is gone"


def _read(fleet: FleetSource, now: datetime) -> tuple[FleetSnapshot | None, str | None]:
    try:
        return fleet.snapshot(now), None
    except FleetSourceError as exc:
        return None, f"{exc.reason}: {exc}"


def _act(action: Action, action_id: str, act: Actuators, now: datetime) -> tuple[str, dict[str, str] | None]:
    """Call the actuator for `action`; returns a public-safe detail and, for a report, its content."""
    match action:
        case StartStress():
            w = act.stress.start(action_id=action_id, replica_id=action.replica_id, concurrency=action.concurrency,
                                 duration_s=action.duration_s, now=now)
        case ScaleStress():
            w = act.stress.scale(action_id=action_id, replica_id=action.replica_id, concurrency=action.concurrency,
                                 now=now)
        case BackOffStress():
            w = act.stress.back_off(action_id=action_id, replica_id=action.replica_id, factor=action.factor, now=now)
        case StopStress():
            w = act.stress.stop(action_id=action_id, replica_id=action.replica_id, now=now)
        case ReadmitReplica():
            state = act.router.admit(action.replica_id)
            return f"{state.replica_id} is {state.routing_state.value}", None
        case WarmReplica():
            done = act.warm.warm(action.replica_id, action.requests)
            return f"{done} warm-up completions on {action.replica_id}", None
        case EmitReport():
            summary = act.reports.emit(action_id=action_id, topic=action.topic, now=now)  # the verified report
            return f"{action.topic} report stored", {"topic": action.topic, "summary": summary}
        case _:
            return "nothing to do", None
    if w.already_done:
        return "stress targets already written by this action", None
    scopes = ", ".join(f"{scope or 'pool'}={c}" for scope, c in w.concurrency.items())
    return f"stress targets: {scopes}", None


def _entry(row: dict, state: str, reason: str | None, detail: str | None, now: datetime) -> journal.Entry:
    return journal.Entry(
        phase="outcome", state=state, created_at=now, tick_id=row["tick_id"], reason=reason,
        detail=redact(detail) if detail else None, kind=row["kind"], authority=row["authority"],
        action_id=row["action_id"], gate_id=row["gate_id"],
    )


def _record(engine: Engine, row: dict, outcome: str, why: tuple[str | None, str | None], *, now: datetime,
            expected: str = "dispatching", report: dict[str, str] | None = None) -> Dispatched:
    """The outcome in `actions` and its journal row, in one transaction, if the compare-and-set holds."""
    reason, detail = why
    with write_tx(engine) as conn:
        won = actions.finish(conn, row["action_id"], status=outcome, reason=reason, now=now, expected=expected)
        if won:
            journal.append(conn, [_entry(row, outcome, reason, detail, now)])
    return Dispatched(row["action_id"], outcome, reason, redact(detail) if detail else None, row["kind"],
                      recorded=won, report=report)


# --- the sensor's sweep --------------------------------------------------------------------------


def due_actions(engine: Engine, *, now: datetime, cadence_s: float, fleet: FleetSource,
                ended_runs: EndedRuns | None = None) -> Due:
    """Queued actions to launch, after retiring stale decisions, failing those whose run ended without claiming
    them, and reconciling expired claims.

    Reads only the store, except when a claim's lease has expired (rare): then it reads the fleet once; and
    `ended_runs` is asked only about actions queued over RUN_CHECK_AFTER_S ago.
    """
    settled: list[Dispatched] = []
    due = []
    for row in actions.queued(engine):
        if decision_stale(row["updated_at"], now, cadence_s):
            settled.append(_record(engine, row, "precondition_failed", _stale(row, now), now=now, expected="queued"))
        else:
            due.append(row)
    if ended_runs is not None:
        unstarted = _unstarted(due, now, ended_runs)
        why = (NEVER_STARTED, "its dispatch run ended without claiming it; the run key is spent: the next tick "
               "decides afresh")
        for row in unstarted:
            settled.append(_record(engine, row, "failed", why, now=now, expected="queued"))
        gone = {row["action_id"] for row in unstarted}
        due = [row for row in due if row["action_id"] not in gone]
    expired = actions.expired_leases(engine, now)
    if expired:
        settled.extend(reconcile(engine, expired, now=now, fleet=fleet))
    return Due(due, [s for s in settled if s.recorded])


def _unstarted(rows: list[dict], now: datetime, ended_runs: EndedRuns) -> list[dict]:
    """Queued rows whose run ended without claiming them: a run worker that never launched, a run canceled or
    failed before its claim. Dagster would skip the same run key if the sensor asked again, so the action
    would sit queued until judged stale; a queued action and an ended run prove it never started."""
    overdue = [r["action_id"] for r in rows if (now - r["updated_at"]).total_seconds() >= RUN_CHECK_AFTER_S]
    ended = ended_runs(overdue) if overdue else set()
    return [r for r in rows if r["action_id"] in ended]


def reconcile(engine: Engine, rows: list[dict], *, now: datetime, fleet: FleetSource) -> list[Dispatched]:
    """Settle claims whose lease expired: `succeeded` if the effect is visible, else `failed: lease_expired`."""
    snapshot: FleetSnapshot | None = None
    problem: str | None = None
    if any(r["kind"] in _FLEET_EFFECT for r in rows):
        snapshot, problem = _read(fleet, now)
    out = []
    for row in rows:
        action, _ = _stored_action(row)
        if action is not None and _effect_visible(engine, action, row["action_id"], snapshot):
            why = ("reconciled", "the claim's lease expired; its effect is visible")
            out.append(_record(engine, row, "succeeded", why, now=now))
        else:
            unseen = f"; the fleet could not be read ({problem})" if problem and row["kind"] in _FLEET_EFFECT else ""
            why = ("lease_expired", f"the claim's lease expired and its effect is not visible{unseen}")
            out.append(_record(engine, row, "failed", why, now=now))
    return out


def _effect_visible(engine: Engine, action: Action, action_id: str, fleet: FleetSnapshot | None) -> bool:
    kind = action.action_kind
    if kind is ActionKind.noop:
        return True
    if kind is ActionKind.emit_report:
        return reports.for_action(engine, action_id) is not None
    if kind.value in _FLEET_EFFECT:
        return fleet is not None and effect_in_fleet(action, fleet)
    with engine.connect() as conn:
        return targets.written_by(conn, action_id) > 0
