"""Fleet health: one signal per kind, a snapshot, and the figures a report may state.

Pure: readings and `now` in, a `HealthSnapshot` out. A signal is `fresh` only when its reading is
recent and whole. Each public figure names the signals it depends on (`CLAIMS`); a report states
a figure only when all of them are fresh, otherwise it is "unverified" with their reason codes.
Any signal that is not fresh, or any projection blocker, sets `overclaim_blocked`.

Signal `values` are diagnostics (ages, counts of problems), never the figures themselves: a stale
reading must not reach a reader through the back door of its signal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field

from overseer_dagster.core.context import DemandSummary, StressStatus
from overseer_dagster.core.fleet import FleetSnapshot, Health, RoutingState

# A reason code: short, lower-case, optionally with one qualifier (`metrics_missing:itl`).
REASON_CODE_PATTERN = r"[a-z][a-z0-9_]{0,47}(:[a-z0-9_]{1,32})?"
_REASON_CODE = re.compile(REASON_CODE_PATTERN)
ReasonCode = Annotated[str, Field(pattern=f"^(?:{REASON_CODE_PATTERN})$")]
Number = Annotated[float, Field(allow_inf_nan=False)]

# The blocker a failed public projection raises on the snapshot (see core.projection).
PROJECTION = "projection"


def is_reason_code(text: object) -> bool:
    return isinstance(text, str) and _REASON_CODE.fullmatch(text) is not None


def reason_code(text: str | None, fallback: str) -> str:
    """`text` if it is a reason code; else the leading code of a `code: message` text; else `fallback`."""
    if text is None:
        return fallback
    if is_reason_code(text):
        return text
    head = text.split(": ", 1)[0]
    return head if is_reason_code(head) else fallback


class SignalKind(StrEnum):
    fleet = "fleet"
    demand = "demand"
    throughput = "throughput"
    stress = "stress"
    overseer_loop = "overseer_loop"
    mind = "mind"
    dispatch = "dispatch"
    gates = "gates"


class SignalState(StrEnum):
    fresh = "fresh"
    # Current but impaired: unknown replicas, partial telemetry, failed dispatches.
    degraded = "degraded"
    # Too old to vouch for the present.
    stale = "stale"
    # Present but refused: the mind's last proposal was blocked.
    blocked = "blocked"
    unavailable = "unavailable"


class ClaimName(StrEnum):
    ready_replicas = "ready_replicas"
    external_demand = "external_demand"
    throughput = "throughput"
    goodput = "goodput"
    utilisation = "utilisation"


# Which signals each public figure rests on. A figure is stated only when all of them are fresh.
CLAIMS: dict[ClaimName, tuple[SignalKind, ...]] = {
    ClaimName.ready_replicas: (SignalKind.fleet,),
    ClaimName.external_demand: (SignalKind.demand,),
    ClaimName.throughput: (SignalKind.demand, SignalKind.throughput),
    ClaimName.goodput: (SignalKind.demand, SignalKind.throughput),
    # Utilisation counts stress in flight: it means something only while stress is under control.
    ClaimName.utilisation: (SignalKind.fleet, SignalKind.stress),
}

UNITS: dict[ClaimName, str] = {
    ClaimName.ready_replicas: "replicas",
    ClaimName.external_demand: "tokens/min",
    ClaimName.throughput: "tokens/s",
    ClaimName.goodput: "tokens/s",
    ClaimName.utilisation: "fraction",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Model):
    """When a signal stops being fresh. Ages are in seconds; defaults scale with the tick cadence."""

    cadence_s: float = Field(default=60.0, gt=0)
    # A reading older than this many cadences is stale.
    fresh_cadences: float = Field(default=3.0, gt=0)
    # The stress harness's dead-man: targets not refreshed within this many cadences bring stress to zero.
    dead_man_cadences: float = Field(default=2.0, gt=0)
    # How far back dispatch failures and expired gates count.
    window_cadences: float = Field(default=10.0, gt=0)
    # External failure ratio above which demand is degraded.
    failure_ratio: float = Field(default=0.05, ge=0, le=1)
    itl_slo_s: float = Field(default=0.1, gt=0)

    @property
    def fresh_s(self) -> float:
        return self.fresh_cadences * self.cadence_s

    @property
    def dead_man_s(self) -> float:
        return self.dead_man_cadences * self.cadence_s

    @property
    def window_s(self) -> float:
        return self.window_cadences * self.cadence_s


# --- readings from the store -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoopReading:
    """The journal's newest tick row (any outcome) and the newest deciding tick."""

    last_row_at: datetime | None = None
    last_row_state: str | None = None
    last_row_reason: str | None = None
    last_tick_at: datetime | None = None
    last_tick_outcome: str | None = None
    # For a blocked tick: the journal's reason (schema_invalid, context_invalid, ...).
    last_tick_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DispatchReading:
    failed: int = 0
    precondition_failed: int = 0
    queued: int = 0
    oldest_queued_at: datetime | None = None
    expired_leases: int = 0


@dataclass(frozen=True, slots=True)
class GateReading:
    pending: int = 0
    approved: int = 0
    # Pending past their expiry: nobody has swept them.
    pending_overdue: int = 0
    expired_recent: int = 0
    oldest_pending_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoreReadings:
    loop: LoopReading = field(default_factory=LoopReading)
    dispatch: DispatchReading = field(default_factory=DispatchReading)
    gates: GateReading = field(default_factory=GateReading)
    # User (external + unlabeled) tokens/s within the ITL SLO over the demand window (store.ledger.goodput).
    goodput_tokens_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """`fleet` with no `fleet_problem`: this tick's reading. Both: the source failed now (`fleet_problem`) and
    `fleet` is the last reading it gave, kept only to say how old the view is. `fleet` None: none at all."""

    fleet: FleetSnapshot | None
    fleet_problem: str | None
    demand: DemandSummary | None
    stress: StressStatus
    store: StoreReadings


# --- the snapshot --------------------------------------------------------------------------------


class Signal(_Model):
    kind: SignalKind
    state: SignalState
    observed_at: AwareDatetime | None = None
    values: dict[str, Number] = {}
    reasons: tuple[ReasonCode, ...] = ()

    @property
    def fresh(self) -> bool:
        return self.state is SignalState.fresh


class Claim(_Model):
    name: ClaimName
    unit: str
    depends_on: tuple[SignalKind, ...]
    stated: bool
    # None when not stated: an unverified figure has no value to show.
    value: Number | None
    reasons: tuple[ReasonCode, ...] = ()


class ReplicaLine(_Model):
    replica_id: str
    health: Health
    routing_state: RoutingState
    ready: bool
    warm: bool
    unknown_reason: ReasonCode | None = None


class HealthSnapshot(_Model):
    observed_at: AwareDatetime
    thresholds: Thresholds
    signals: tuple[Signal, ...]
    # Every figure as measured, stated or not: private. `claims` decides what may be said.
    figures: dict[ClaimName, Number | None]
    replicas: tuple[ReplicaLine, ...] = ()
    blockers: tuple[ReasonCode, ...] = ()
    # Free text for an operator (problem messages, raw reasons): never projected.
    notes: dict[str, str] = {}

    def signal(self, kind: SignalKind) -> Signal:
        return next(s for s in self.signals if s.kind is kind)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def overclaim_blocked(self) -> bool:
        return bool(self.blockers) or any(not s.fresh for s in self.signals)

    @property
    def claims(self) -> tuple[Claim, ...]:
        out = []
        for name, kinds in CLAIMS.items():
            reasons: list[str] = []
            for kind in kinds:
                sig = self.signal(kind)
                if not sig.fresh:
                    reasons.append(f"{kind.value}:{sig.state.value}")
                    reasons.extend(r for r in sig.reasons if r not in reasons)
            value = self.figures.get(name)
            if not reasons and value is None:
                reasons.append(f"{name.value}:unmeasured")
            stated = not reasons
            out.append(Claim(name=name, unit=UNITS[name], depends_on=kinds, stated=stated,
                             value=value if stated else None, reasons=tuple(reasons)))
        return tuple(out)

    def with_blockers(self, *codes: str) -> HealthSnapshot:
        added = tuple(c for c in codes if c not in self.blockers)
        return self if not added else self.model_copy(update={"blockers": self.blockers + added})


# --- building it ---------------------------------------------------------------------------------


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


_SEVERITY = [SignalState.fresh, SignalState.degraded, SignalState.stale, SignalState.blocked, SignalState.unavailable]


def _signal(kind: SignalKind, observed_at: datetime | None, values: dict[str, float | None],
            problems: list[tuple[SignalState, str]]) -> Signal:
    """The worst state among `problems` (fresh if none), with every problem's reason code."""
    state = max((s for s, _ in problems), key=_SEVERITY.index, default=SignalState.fresh)
    reasons = tuple(dict.fromkeys(code for _, code in problems))
    clean = {k: round(float(v), 3) for k, v in values.items() if v is not None and math.isfinite(v)}
    return Signal(kind=kind, state=state, observed_at=observed_at, values=clean, reasons=reasons)


def _aged(problems: list[tuple[SignalState, str]], age: float | None, limit: float, code: str, t: Thresholds) -> None:
    if age is None:
        return
    if age > limit:
        problems.append((SignalState.stale, code))
    elif age < -t.cadence_s:
        problems.append((SignalState.degraded, "clock_skew"))


def fleet_signal(fleet: FleetSnapshot | None, problem: str | None, now: datetime, t: Thresholds) -> Signal:
    """Routing state. A source that fails with an earlier reading on record leaves the signal `stale` at once
    (the source's code, e.g. `fleet_unreachable`), and `fleet_stale` too once that reading is older than the
    freshness window: never `fresh` on a reading the source could not renew; `unavailable` with none at all."""
    if fleet is None:
        return _signal(SignalKind.fleet, None, {}, [(SignalState.unavailable, reason_code(problem, "fleet_unavailable"))])
    problems: list[tuple[SignalState, str]] = []
    age = _age(now, fleet.observed_at)
    _aged(problems, age, t.fresh_s, "fleet_stale", t)
    if problem is not None:
        problems.append((SignalState.stale, reason_code(problem, "fleet_unavailable")))
    unknown = [r for r in fleet.replicas if r.health is Health.unknown]
    stale_replicas = sum(1 for r in fleet.replicas if (now - r.observed_at).total_seconds() > t.fresh_s)
    if unknown:
        problems.append((SignalState.degraded, "unknown_replicas"))
    if stale_replicas:
        problems.append((SignalState.degraded, "replica_stale"))
    if not fleet.replicas:
        problems.append((SignalState.unavailable, "no_replicas"))
    elif fleet.ready_replicas == 0:
        problems.append((SignalState.degraded, "no_ready_replicas"))
    values = {
        "age_s": age,
        "replicas": len(fleet.replicas),
        "unknown_replicas": len(unknown),
        "stale_replicas": stale_replicas,
        "draining": sum(1 for r in fleet.replicas if r.routing_state is RoutingState.draining),
        "quarantined": sum(1 for r in fleet.replicas if r.routing_state is RoutingState.quarantined),
    }
    return _signal(SignalKind.fleet, fleet.observed_at, values, problems)


def demand_signal(demand: DemandSummary | None, now: datetime, t: Thresholds, problem: str | None = None) -> Signal:
    """The ledger's freshness and external failure rate. While the fleet source cannot be read (`problem`), the
    ledger is not known to be whole either: the router that would record external requests (and refuse them)
    may be the very thing that is down, and "no demand" looks exactly like "demand nobody could record"."""
    if demand is None:
        return _signal(SignalKind.demand, None, {}, [(SignalState.unavailable, "demand_unavailable")])
    problems: list[tuple[SignalState, str]] = []
    if problem is not None:
        problems += [(SignalState.degraded, reason_code(problem, "fleet_unavailable")),
                     (SignalState.degraded, "demand_incomplete")]
    reading_age = _age(now, demand.observed_at)
    _aged(problems, reading_age, t.fresh_s, "demand_stale", t)
    ledger_age = _age(now, demand.last_row_at)
    if ledger_age is None:
        problems.append((SignalState.unavailable, "ledger_empty"))
    else:
        _aged(problems, ledger_age, t.fresh_s, "ledger_stale", t)
    requests, failures = demand.external_requests, demand.external_failures
    if requests and failures / requests > t.failure_ratio:
        problems.append((SignalState.degraded, "external_failures"))
    values = {"age_s": reading_age, "ledger_age_s": ledger_age, "window_s": demand.window_s,
              "external_failures": failures}
    return _signal(SignalKind.demand, demand.observed_at, values, problems)


def throughput_signal(fleet: FleetSnapshot | None, now: datetime, t: Thresholds, problem: str | None = None) -> Signal:
    """Engine telemetry (latency percentiles) of the ready, warm replicas that should be reporting it; as stale as
    the fleet reading it came with when the source could not renew it (`problem`)."""
    if fleet is None:
        return _signal(SignalKind.throughput, None, {}, [(SignalState.unavailable, "telemetry_unavailable")])
    expected = [r for r in fleet.replicas if r.ready and r.warm]
    reporting = [r for r in expected if r.itl_p90_s is not None]
    problems: list[tuple[SignalState, str]] = []
    if problem is not None:
        problems.append((SignalState.stale, reason_code(problem, "fleet_unavailable")))
    if not expected:
        problems.append((SignalState.unavailable, "no_ready_replicas"))
    elif not reporting:
        problems.append((SignalState.unavailable, "telemetry_missing"))
    elif len(reporting) < len(expected):
        problems.append((SignalState.degraded, "telemetry_partial"))
    newest = max((r.observed_at for r in reporting), default=None)
    age = _age(now, newest)
    _aged(problems, age, t.fresh_s, "telemetry_stale", t)
    itl_max = max((r.itl_p90_s for r in reporting if r.itl_p90_s is not None), default=None)
    if itl_max is not None and itl_max > t.itl_slo_s:
        problems.append((SignalState.degraded, "itl_slo_missed"))
    values = {"age_s": age, "replicas_expected": len(expected), "replicas_reporting": len(reporting),
              "itl_p90_max_s": itl_max, "itl_slo_s": t.itl_slo_s}
    return _signal(SignalKind.throughput, newest, values, problems)


def stress_signal(stress: StressStatus, now: datetime, t: Thresholds) -> Signal:
    """Stress targets in force must have been refreshed within the harness's dead-man window."""
    problems: list[tuple[SignalState, str]] = []
    age = _age(now, stress.last_refreshed_at)
    if stress.active:
        if age is None or age > t.dead_man_s:
            problems.append((SignalState.stale, "stress_target_stale"))
    values = {"target_age_s": age, "dead_man_s": t.dead_man_s, "active": int(stress.active),
              "pool_concurrency": stress.pool_concurrency, "replica_targets": len(stress.per_replica)}
    return _signal(SignalKind.stress, stress.last_refreshed_at, values, problems)


def loop_signal(loop: LoopReading, now: datetime, t: Thresholds) -> Signal:
    """The overseer loop is alive when a tick wrote a row recently, and deciding when one decided."""
    problems: list[tuple[SignalState, str]] = []
    row_age = _age(now, loop.last_row_at)
    tick_age = _age(now, loop.last_tick_at)
    if row_age is None:
        problems.append((SignalState.unavailable, "no_tick"))
    else:
        _aged(problems, row_age, t.fresh_s, "loop_stalled", t)
        if loop.last_row_state == "disabled":
            problems.append((SignalState.degraded, "kill_switch"))
        elif tick_age is None or tick_age > t.fresh_s:
            problems.append((SignalState.degraded, "not_deciding"))
        if loop.last_tick_outcome == "tick_error":
            problems.append((SignalState.degraded, "tick_error"))
    values = {"last_tick_age_s": row_age, "last_deciding_tick_age_s": tick_age}
    return _signal(SignalKind.overseer_loop, loop.last_row_at, values, problems)


_MIND_UNAVAILABLE = {"mind_unavailable", "mind_unconfigured"}


def mind_signal(loop: LoopReading, now: datetime, t: Thresholds) -> Signal:
    """The last deciding tick's proposal: valid, blocked, or never given."""
    outcome = loop.last_tick_outcome
    problems: list[tuple[SignalState, str]] = []
    age = _age(now, loop.last_tick_at)
    if outcome is None:
        problems.append((SignalState.unavailable, "no_proposal"))
    elif outcome == "blocked":
        problems.append((SignalState.blocked, reason_code(loop.last_tick_reason, "proposal_blocked")))
    elif outcome in _MIND_UNAVAILABLE:
        problems.append((SignalState.unavailable, outcome))
    elif outcome == "deciding":
        problems.append((SignalState.degraded, "proposal_pending"))
    elif outcome == "skipped":
        # The fleet was unavailable: the mind was not asked.
        problems.append((SignalState.unavailable, "mind_not_asked"))
    elif outcome != "decided":
        problems.append((SignalState.unavailable, reason_code(outcome, "proposal_unknown")))
    if outcome is not None:
        _aged(problems, age, t.fresh_s, "proposal_stale", t)
    values = {"proposal_age_s": age, "proposal_valid": None if outcome is None else int(outcome == "decided")}
    return _signal(SignalKind.mind, loop.last_tick_at, values, problems)


def dispatch_signal(d: DispatchReading, now: datetime, t: Thresholds) -> Signal:
    problems: list[tuple[SignalState, str]] = []
    if d.failed:
        problems.append((SignalState.degraded, "dispatch_failed"))
    if d.expired_leases:
        problems.append((SignalState.degraded, "dispatch_lease_expired"))
    oldest = _age(now, d.oldest_queued_at)
    if oldest is not None and oldest > t.fresh_s:
        problems.append((SignalState.stale, "dispatch_backlog"))
    values = {"failed": d.failed, "precondition_failed": d.precondition_failed, "queued": d.queued,
              "oldest_queued_age_s": oldest, "expired_leases": d.expired_leases, "window_s": t.window_s}
    return _signal(SignalKind.dispatch, now, values, problems)


def gates_signal(g: GateReading, now: datetime, t: Thresholds) -> Signal:
    problems: list[tuple[SignalState, str]] = []
    if g.pending_overdue:
        problems.append((SignalState.stale, "gates_unswept"))
    if g.expired_recent:
        problems.append((SignalState.degraded, "gates_expired"))
    values = {"pending": g.pending, "approved": g.approved, "pending_overdue": g.pending_overdue,
              "expired_recent": g.expired_recent, "oldest_pending_age_s": _age(now, g.oldest_pending_at)}
    return _signal(SignalKind.gates, now, values, problems)


def _figures(inputs: HealthInputs) -> dict[ClaimName, float | None]:
    fleet, demand = inputs.fleet, inputs.demand
    utilisation = None
    if fleet is not None and fleet.capacity:
        utilisation = round(sum(r.inflight for r in fleet.replicas if r.ready) / fleet.capacity, 4)
    goodput = None
    if demand is not None and inputs.store.goodput_tokens_per_s is not None:
        goodput = round(inputs.store.goodput_tokens_per_s, 2)
    return {
        ClaimName.ready_replicas: None if fleet is None else fleet.ready_replicas,
        ClaimName.external_demand: None if demand is None else round(demand.external_tokens_per_min, 1),
        ClaimName.throughput: None if demand is None else round(sum(demand.tokens_per_s(k) for k in demand.by_kind), 2),
        ClaimName.goodput: goodput,
        ClaimName.utilisation: utilisation,
    }


def _replicas(fleet: FleetSnapshot | None) -> tuple[tuple[ReplicaLine, ...], dict[str, str]]:
    if fleet is None:
        return (), {}
    lines, notes = [], {}
    for r in fleet.replicas:
        code = None
        if r.unknown_reason is not None:
            code = reason_code(r.unknown_reason, "unknown_reason_unparsed")
            if code != r.unknown_reason:
                notes[f"replica {r.replica_id} unknown_reason"] = r.unknown_reason
        lines.append(ReplicaLine(replica_id=r.replica_id, health=r.health, routing_state=r.routing_state,
                                 ready=r.ready, warm=r.warm, unknown_reason=code))
    return tuple(lines), notes


def build(inputs: HealthInputs, *, now: datetime, thresholds: Thresholds) -> HealthSnapshot:
    t = thresholds
    signals = (
        fleet_signal(inputs.fleet, inputs.fleet_problem, now, t),
        demand_signal(inputs.demand, now, t, inputs.fleet_problem),
        throughput_signal(inputs.fleet, now, t, inputs.fleet_problem),
        stress_signal(inputs.stress, now, t),
        loop_signal(inputs.store.loop, now, t),
        mind_signal(inputs.store.loop, now, t),
        dispatch_signal(inputs.store.dispatch, now, t),
        gates_signal(inputs.store.gates, now, t),
    )
    replicas, notes = _replicas(inputs.fleet)
    if inputs.fleet_problem:
        notes["fleet_problem"] = inputs.fleet_problem
    if inputs.store.loop.last_row_reason and not is_reason_code(inputs.store.loop.last_row_reason):
        notes["last_tick_reason"] = inputs.store.loop.last_row_reason
    return HealthSnapshot(observed_at=now, thresholds=t, signals=signals, figures=_figures(inputs),
                          replicas=replicas, notes=notes)
