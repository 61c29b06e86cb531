"""The public-safe projection: the one way a value leaves the store for a public surface.

Public surfaces (Dagster metadata, Dagster logs, run tags, the CLI by default, the health report,
the text of `emit_report`) are readable by more people than the store. Each has an allowlist of
typed fields (`SURFACES`). A value is projected field by field: an unlisted field is dropped, a
value of the wrong type is withheld, and every string that survives passes the scrubber
(core.redact). Fails closed: whatever is dropped or withheld counts, the value becomes `MARKER`,
and the projection carries the `projection` blocker, which makes a health snapshot
`overclaim_blocked`.

Free text (problem messages, journal details, mind output) has no type here: it never leaves.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from overseer_dagster.core import redact
from overseer_dagster.core.demand import DemandKind
from overseer_dagster.core.fleet import REPLICA_ID_PATTERN, Health, RoutingState
from overseer_dagster.core.health import (
    PROJECTION,
    ClaimName,
    HealthSnapshot,
    SignalKind,
    SignalState,
    is_reason_code,
)
from overseer_dagster.core.approval import GATE_STATES, HASH_PREFIX, OPERATOR_NAME_PATTERN, Decision, Refusal
from overseer_dagster.core.vocabulary import GPU_CLASS_PATTERN, PAYEE_REF_PATTERN, ActionKind

MARKER = "[withheld]"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_REPLICA_ID = re.compile(REPLICA_ID_PATTERN)
# Metadata keys built from signal and value names: `fleet_age_s`, `dispatch_failed`.
_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")


class _Rejected(Exception):
    pass


# --- field types ---------------------------------------------------------------------------------


class Spec:
    """A field type: `project` returns the public value or raises _Rejected. None is always allowed."""

    def project(self, value: Any) -> Any:  # noqa: ANN401
        raise NotImplementedError


class Number(Spec):
    def project(self, value: Any) -> int | float:  # noqa: ANN401
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        raise _Rejected


class Flag(Spec):
    def project(self, value: Any) -> bool:  # noqa: ANN401
        if isinstance(value, bool):
            return value
        raise _Rejected


@dataclass(frozen=True)
class Matching(Spec):
    """A string that fully matches one pattern (reason codes, replica ids, uuids)."""

    pattern: re.Pattern[str]

    def project(self, value: Any) -> str:  # noqa: ANN401
        if isinstance(value, str) and self.pattern.fullmatch(value):
            return value
        raise _Rejected


class Code(Spec):
    def project(self, value: Any) -> str:  # noqa: ANN401
        if is_reason_code(value):
            return value
        raise _Rejected


class Timestamp(Spec):
    def project(self, value: Any) -> str:  # noqa: ANN401
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        raise _Rejected


@dataclass(frozen=True)
class OneOf(Spec):
    values: frozenset[str]

    def project(self, value: Any) -> str:  # noqa: ANN401
        if isinstance(value, str) and value in self.values:
            return str(value)
        raise _Rejected


def one_of(values: Iterable[str]) -> OneOf:
    return OneOf(frozenset(str(v) for v in values))


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    max_items: int = 1000


@dataclass(frozen=True)
class MapOf(Spec):
    key: Spec
    value: Spec


@dataclass(frozen=True)
class Record(Spec):
    fields: Mapping[str, Spec]
    # Keys not in `fields` that match this pattern take this type (numeric metadata per signal).
    extra: tuple[re.Pattern[str], Spec] | None = None


REPLICA_ID = Matching(_REPLICA_ID)
UUID = Matching(_UUID)
CODE = Code()
NUMBER = Number()
FLAG = Flag()
TIMESTAMP = Timestamp()
ACTION_KIND = one_of(ActionKind)
ROW_STATE = one_of(("disabled", "skipped", "blocked", "queued", "pending_approval", "no_action", "advisory",
                    "succeeded", "failed", "precondition_failed", "dispatching"))
AUTHORITY = one_of(("autonomous", "gated"))
OPERATOR = Matching(re.compile(OPERATOR_NAME_PATTERN))
HASH_PREFIX_SPEC = Matching(re.compile(rf"[0-9a-f]{{{HASH_PREFIX}}}"))
GATE = Record({
    "gate_id": UUID, "kind": ACTION_KIND, "risky_kind": one_of(("provider_call", "fleet_mutation", "wallet_spend")),
    "state": one_of(GATE_STATES), "created_at": TIMESTAMP, "expires_at": TIMESTAMP, "age_s": NUMBER,
    "expires_in_s": NUMBER, "action_hash_prefix": HASH_PREFIX_SPEC, "replica_id": REPLICA_ID,
    "gpu_class": Matching(re.compile(GPU_CLASS_PATTERN)), "count": NUMBER, "max_hourly_usd": NUMBER,
    "amount_sats": NUMBER, "payee_ref": Matching(re.compile(PAYEE_REF_PATTERN)),
    "purpose": one_of(("scale_out_deposit", "provider_invoice")),
})


# --- projecting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Projection:
    value: Any
    # Paths of what was dropped or withheld (built from allowlisted names and indices only).
    withheld: tuple[str, ...] = ()

    @property
    def blockers(self) -> tuple[str, ...]:
        return (PROJECTION,) if self.withheld else ()


@dataclass
class _Walk:
    withheld: list[str] = field(default_factory=list)
    # The scrubber's verdict per distinct string: a report repeats the same keys and codes for every replica.
    _flagged: dict[str, bool] = field(default_factory=dict)

    def flagged(self, text: str) -> bool:
        verdict = self._flagged.get(text)
        if verdict is None:
            verdict = self._flagged[text] = bool(redact.findings(text))
        return verdict

    def scalar(self, spec: Spec, value: Any, path: str) -> Any:  # noqa: ANN401
        if value is None:
            return None
        try:
            out = spec.project(value)
        except _Rejected:
            self.withheld.append(path)
            return MARKER
        if isinstance(out, str) and self.flagged(out):
            self.withheld.append(path)
            return MARKER
        return out

    def walk(self, spec: Spec, value: Any, path: str) -> Any:  # noqa: ANN401
        if isinstance(spec, Record):
            if not isinstance(value, Mapping):
                return self.scalar(_Never(), value, path)
            out = {}
            for key, item in value.items():
                sub = spec.fields.get(key) if isinstance(key, str) else None
                if sub is None and spec.extra and isinstance(key, str) and spec.extra[0].fullmatch(key):
                    sub = spec.extra[1]
                if sub is None or self.flagged(key):
                    self.withheld.append(f"{path}.<unlisted>")
                    continue
                out[key] = self.walk(sub, item, f"{path}.{key}")
            return out
        if isinstance(spec, ListOf):
            if value is None:
                return None
            if not isinstance(value, (list, tuple)) or len(value) > spec.max_items:
                return self.scalar(_Never(), value, path)
            return [self.walk(spec.item, item, f"{path}[{i}]") for i, item in enumerate(value)]
        if isinstance(spec, MapOf):
            if not isinstance(value, Mapping):
                return self.scalar(_Never(), value, path)
            out = {}
            for key, item in value.items():
                public_key = self.scalar(spec.key, key, f"{path}.<key>")
                if public_key is MARKER or public_key is None:
                    continue
                out[public_key] = self.walk(spec.value, item, f"{path}.{public_key}")
            return out
        return self.scalar(spec, value, path)


class _Never(Spec):
    def project(self, value: Any) -> Any:  # noqa: ANN401
        raise _Rejected


def project(spec: Spec, value: Any, path: str = "$") -> Projection:  # noqa: ANN401
    walk = _Walk()
    return Projection(walk.walk(spec, value, path), tuple(walk.withheld))


# --- surfaces ------------------------------------------------------------------------------------

_COUNTS = {f"actions_{s}": NUMBER for s in ("queued", "pending_approval", "no_action", "advisory")}
TICK_ROW = Record({
    "seq": NUMBER, "created_at": TIMESTAMP, "state": ROW_STATE, "reason": CODE, "kind": ACTION_KIND,
    "authority": AUTHORITY, "gate_id": UUID, "action_id": UUID,
})

SURFACES: dict[str, Record] = {
    # Dagster materialization metadata, per asset.
    "fleet_state": Record({
        "replicas": NUMBER, "ready_replicas": NUMBER, "headroom": NUMBER, "unknown_replicas": NUMBER,
        "external_inflight": NUMBER, "stress_inflight": NUMBER, "fleet_problem": CODE,
    }),
    "external_demand": Record({"external_tokens_per_min": NUMBER, "external_requests": NUMBER,
                               "external_failures": NUMBER}),
    "fleet_throughput": Record({
        **{f"tokens_per_s_{k.value}": NUMBER for k in DemandKind}, "tokens_per_s_all": NUMBER,
        **{f"goodput_tokens_per_s_{k.value}": NUMBER for k in DemandKind}, "goodput_tokens_per_s_all": NUMBER,
    }),
    "overseer_decision": Record({
        "tick_id": UUID, "outcome": CODE, "rows": NUMBER, "blocked": NUMBER, "skipped": NUMBER, **_COUNTS,
        "decided": ListOf(Record({"state": ROW_STATE, "kind": ACTION_KIND, "reason": CODE, "gate_id": UUID})),
    }),
    "fleet_health": Record(
        {"status": one_of(("healthy", "unverified")), "overclaim_blocked": NUMBER, "signals_not_fresh": NUMBER,
         **{f"{s.value}_state": one_of(SignalState) for s in SignalKind},
         **{c.value: NUMBER for c in ClaimName}},
        extra=(_KEY, NUMBER),
    ),
    # Fields Dagster log lines are built from (see `line`).
    "log": Record({
        "tick_id": UUID, "action_id": UUID, "outcome": CODE, "reason": CODE, "kind": ACTION_KIND,
        "states": MapOf(ROW_STATE, NUMBER), "status": one_of(("healthy", "unverified")),
        "not_fresh": ListOf(one_of(SignalKind)), "count": NUMBER,
        "gate_id": UUID, "operator": OPERATOR, "decision": one_of(Decision),
    }),
    # The `dispatch_action` op's output metadata.
    "dispatch": Record({"action_id": UUID, "kind": ACTION_KIND, "outcome": CODE, "reason": CODE, "recorded": FLAG}),
    # Run tags our code sets (dispatch and rollback runs).
    "run_tags": Record({"overseer/tick_id": UUID, "overseer/action_id": UUID, "overseer/kind": ACTION_KIND,
                        "overseer/gate_id": UUID}),
    # `approval_receipts` materializations (one per recorded decision) and the approval ops' output.
    "approval_receipts": Record({
        "gate_id": UUID, "kind": ACTION_KIND, "risky_kind": GATE.fields["risky_kind"], "operator": OPERATOR,
        "decision": one_of(Decision), "receipt_id_prefix": HASH_PREFIX_SPEC, "action_hash_prefix": HASH_PREFIX_SPEC,
        "outcome": CODE, "reason": one_of(Refusal),
    }),
    # `approval_gates` materializations and `overseer gates`: the open gates.
    "approval_gates": Record({"open_gates": NUMBER, "pending": NUMBER, "approved": NUMBER, "gates": ListOf(GATE)}),
    # `overseer tick --once` (and its --json).
    "tick_rows": Record({"success": FLAG, "rows": ListOf(TICK_ROW)}),
}

SIGNAL = Record({
    "kind": one_of(SignalKind), "state": one_of(SignalState), "observed_at": TIMESTAMP,
    "values": MapOf(Matching(_KEY), NUMBER), "reasons": ListOf(CODE),
})
CLAIM = Record({
    "name": one_of(ClaimName), "unit": one_of(("replicas", "tokens/min", "tokens/s", "fraction")),
    "stated": FLAG, "value": NUMBER, "depends_on": ListOf(one_of(SignalKind)), "reasons": ListOf(CODE),
})
REPLICA = Record({
    "replica_id": REPLICA_ID, "health": one_of(Health), "routing_state": one_of(RoutingState), "ready": FLAG,
    "warm": FLAG, "unknown_reason": CODE,
})
SURFACES["report"] = Record({
    "observed_at": TIMESTAMP, "status": one_of(("healthy", "unverified")), "overclaim_blocked": FLAG,
    "cadence_s": NUMBER, "fresh_s": NUMBER, "claims": ListOf(CLAIM), "signals": ListOf(SIGNAL),
    "replicas": ListOf(REPLICA), "replicas_shown": FLAG, "blockers": ListOf(CODE),
})


def surface(name: str, values: Mapping[str, Any]) -> Projection:
    """`values` projected onto one surface's allowlist."""
    return project(SURFACES[name], values, name)


def line(template: str, **fields: Any) -> Projection:  # noqa: ANN401
    """A log line: a fixed template filled with fields projected onto the `log` allowlist, then scrubbed whole."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    projected = project(SURFACES["log"], {k: v for k, v in fields.items() if k in names}, "log")
    values = {k: _inline(projected.value.get(k)) for k in names}
    text = template.format(**values)
    if redact.findings(text):
        return Projection(MARKER, (*projected.withheld, "log.<line>"))
    return Projection(text, projected.withheld)


def _inline(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


# --- the health report -----------------------------------------------------------------------------


def _status(blocked: bool) -> str:
    return "unverified" if blocked else "healthy"


def _document(snapshot: HealthSnapshot) -> dict[str, Any]:
    """The report's fields, before projection. Unstated claims carry no value."""
    fleet = snapshot.signal(SignalKind.fleet)
    # Per-replica lines describe a current reading only; a stale or missing one shows none.
    show_replicas = fleet.state in (SignalState.fresh, SignalState.degraded)
    return {
        "observed_at": snapshot.observed_at,
        "status": _status(snapshot.overclaim_blocked),
        "overclaim_blocked": snapshot.overclaim_blocked,
        "cadence_s": snapshot.thresholds.cadence_s,
        "fresh_s": snapshot.thresholds.fresh_s,
        "claims": [
            {"name": c.name.value, "unit": c.unit, "stated": c.stated, "value": c.value,
             "depends_on": [k.value for k in c.depends_on], "reasons": list(c.reasons)}
            for c in snapshot.claims
        ],
        "signals": [
            {"kind": s.kind.value, "state": s.state.value, "observed_at": s.observed_at, "values": dict(s.values),
             "reasons": list(s.reasons)}
            for s in snapshot.signals
        ],
        "replicas": _replica_list(snapshot) if show_replicas else [],
        "replicas_shown": show_replicas,
        "blockers": list(snapshot.blockers),
    }


def _replica_list(snapshot: HealthSnapshot) -> Any:  # noqa: ANN401
    # A list longer than the surface allows is withheld unread: no need to dump thousands of replicas for that.
    if len(snapshot.replicas) > SURFACES["report"].fields["replicas"].max_items:
        return snapshot.replicas
    return [r.model_dump(mode="python") for r in snapshot.replicas]


def report_document(snapshot: HealthSnapshot) -> tuple[HealthSnapshot, dict[str, Any]]:
    """The public document of `snapshot`, and the snapshot with any projection blocker added."""
    projected = project(SURFACES["report"], _document(snapshot), "report")
    doc = projected.value
    if not projected.withheld:
        return snapshot, doc
    snapshot = snapshot.with_blockers(*projected.blockers)
    for claim in doc.get("claims", []):
        if claim.get("value") == MARKER:
            claim.update(stated=False, value=None, reasons=[*claim.get("reasons", []), PROJECTION])
    doc.update(status=_status(True), overclaim_blocked=True, blockers=list(snapshot.blockers))
    return snapshot, doc


_CLAIM_LABELS = {
    "ready_replicas": "Ready replicas", "external_demand": "External demand", "throughput": "Throughput",
    "goodput": "Goodput (external, within ITL SLO)", "utilisation": "Utilisation (ready slots in use)",
}


def _number(value: Any) -> str:  # noqa: ANN401
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _markdown(doc: Mapping[str, Any]) -> str:
    blocked = doc.get("overclaim_blocked", True)
    out = [f"# Fleet health: {doc.get('status', 'unverified')}", ""]
    out.append(f"Observed {doc.get('observed_at')}; a signal is fresh within {_number(doc.get('fresh_s'))} s "
               f"(tick cadence {_number(doc.get('cadence_s'))} s).")
    not_fresh = [s["kind"] for s in doc.get("signals", []) if s.get("state") != "fresh"]
    if blocked:
        why = ", ".join(not_fresh + list(doc.get("blockers", []))) or "-"
        out.append(f"Overclaim blocked: figures resting on a signal that is not fresh are unverified ({why}).")
    out += ["", "## Figures", "", "| figure | value | status |", "| --- | --- | --- |"]
    for c in doc.get("claims", []):
        label = _CLAIM_LABELS.get(c.get("name"), c.get("name"))
        if c.get("stated"):
            out.append(f"| {label} | {_number(c.get('value'))} {c.get('unit')} | verified |")
        else:
            out.append(f"| {label} | unverified | {', '.join(c.get('reasons', [])) or '-'} |")
    out += ["", "## Signals", "", "| signal | state | observed | reasons |", "| --- | --- | --- | --- |"]
    for s in doc.get("signals", []):
        out.append(f"| {s.get('kind')} | {s.get('state')} | {s.get('observed_at') or '-'} | "
                   f"{', '.join(s.get('reasons', [])) or '-'} |")
    replicas = doc.get("replicas")
    if doc.get("replicas_shown") and not isinstance(replicas, list):
        # The projection withheld the whole list (e.g. more replicas than the surface allows): a marker, not rows.
        out += ["", "Replica list withheld: it did not pass the public-safety projection."]
    elif doc.get("replicas_shown"):
        out += ["", "## Replicas", "", "| replica | health | routing | ready | note |", "| --- | --- | --- | --- | --- |"]
        for r in replicas:
            out.append(f"| {r.get('replica_id')} | {r.get('health')} | {r.get('routing_state')} | "
                       f"{'yes' if r.get('ready') else 'no'} | {r.get('unknown_reason') or '-'} |")
    else:
        out += ["", "Replica list withheld: the fleet reading is not current."]
    return "\n".join(out) + "\n"


_WITHHELD_REPORT = "# Fleet health: unverified\n\nReport withheld: its text did not pass the public-safety check (projection).\n"


def public_report(snapshot: HealthSnapshot) -> tuple[str, dict[str, Any]]:
    """(Markdown, JSON document) for public surfaces; fails closed on any scrubber hit."""
    _, doc = report_document(snapshot)
    markdown = _markdown(doc)
    if redact.findings(markdown):
        doc.update(status=_status(True), overclaim_blocked=True,
                   blockers=sorted({*doc.get("blockers", []), PROJECTION}))
        return _WITHHELD_REPORT, doc
    return markdown, doc


def health_values(snapshot: HealthSnapshot) -> dict[str, Any]:
    """For the `fleet_health` surface: numbers per signal (for plots), the status, each figure only when stated."""
    snapshot, doc = report_document(snapshot)
    values: dict[str, Any] = {
        "status": doc["status"],
        "overclaim_blocked": int(doc["overclaim_blocked"]),
        "signals_not_fresh": sum(1 for s in snapshot.signals if not s.fresh),
    }
    for s in snapshot.signals:
        values[f"{s.kind.value}_state"] = s.state.value
        values.update({f"{s.kind.value}_{k}": v for k, v in s.values.items()})
    values.update({c.name.value: c.value for c in snapshot.claims if c.stated})
    return values


TOPICS = one_of(("capacity", "health", "cost", "incident"))


def emit_report_text(topic: str, snapshot: HealthSnapshot) -> Projection:
    """The public text of an `emit_report` action: the topic and the health report's figures.

    The mind's own summary is free text (it may state figures the signals cannot vouch for): it stays
    in the journal's private action, and the published text states only what the snapshot verifies.
    """
    projected_topic = project(TOPICS, topic, "emit_report.topic")
    markdown, doc = public_report(snapshot)
    text = f"Report topic: {projected_topic.value}\n\n{markdown}"
    withheld = projected_topic.withheld + (("emit_report.report",) if PROJECTION in doc["blockers"] else ())
    return Projection(text, withheld)
