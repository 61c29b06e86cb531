"""Replay: re-decide every recorded tick from what it stored, and name each decision that differs.

Each deciding tick stores its context (`ticks.context_json`, what the mind saw) and its decision inputs
(`ticks.decision_inputs_json`: mode, the daily bound and the autonomous actions already counted that
day, the limits). For a tick whose mind was the rule policy, replay runs the same path again, from
those records only: `core.policy.propose` -> `core.proposal.decide_text` -> `core.decide.rows_for`,
and compares the rows it gets with the tick's recorded journal decision rows, position by position,
on (state, reason, kind, action_json). It also checks the stored context against the digest the tick
and its rows recorded: an edited context is named even when the decision it leads to is unchanged.

A tick decided by another mind is `not_replayable: mind=<name>` (its answer came from outside); one
recorded before decision inputs were stored is `not_replayable: decision_inputs_not_recorded`
(replay does not guess the mode or the day's count).

Output is public-safe: codes, kinds and digests, never an action's JSON or the context's values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine

from overseer_dagster.core import policy
from overseer_dagster.core.context import TickContext, digest_of
from overseer_dagster.core.decide import Row, rows_for, tick_row
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import decide_text
from overseer_dagster.store import journal
from overseer_dagster.store import ticks as store_ticks

COMPARED = ("state", "reason", "kind", "action_json")
REPLAYABLE_MIND = "rule"
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """`2h`, `90m`, `1.5d` (before `now`) or an RFC 3339 time with its offset. ValueError says which form."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNIT_S[relative.group(2)])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(f"--since {text!r}: use a duration before now (30m, 2h, 7d) or an RFC 3339 time with "
                         "its offset (2026-12-03T12:00:00Z)")
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    mode: str
    autonomous_today: int
    daily_bound: int
    limits: Limits

    @classmethod
    def from_json(cls, text: str) -> DecisionInputs:
        data = json.loads(text)
        return cls(mode=data["mode"], autonomous_today=int(data["autonomous_today"]),
                   daily_bound=int(data["daily_bound"]), limits=Limits.model_validate(data["limits"]))


@dataclass
class TickReplay:
    tick_id: str
    started_at: datetime
    status: str  # matched | differs | not_replayable
    reason: str | None = None
    differences: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tick_id": self.tick_id, "started_at": self.started_at.isoformat(),
                               "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.differences:
            out["differences"] = self.differences
        return out


@dataclass
class Report:
    since: datetime
    ticks: list[TickReplay]

    def count(self, status: str) -> int:
        return sum(1 for t in self.ticks if t.status == status)

    @property
    def differs(self) -> bool:
        return any(t.status == "differs" for t in self.ticks)

    def public(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "ticks": len(self.ticks), "matched": self.count("matched"),
            "differs": self.count("differs"), "not_replayable": self.count("not_replayable"),
            "results": [t.public() for t in self.ticks if t.status != "matched"],
        }


def replay(engine: Engine, since: datetime) -> Report:
    """Every tick that stored a context since `since`, re-decided and compared with its journal rows."""
    results = []
    for tick in store_ticks.iter_contexts_since(engine, since):
        recorded = [r for r in journal.for_tick(engine, tick["tick_id"]) if r["phase"] == "decision"]
        results.append(replay_tick(tick, recorded))
    return Report(since, results)


def replay_tick(tick: dict[str, Any], recorded: list[dict[str, Any]]) -> TickReplay:
    """One tick: its stored row of `ticks` and its recorded decision rows, in journal order."""
    out = TickReplay(tick["tick_id"], tick["started_at"], "matched")
    if tick.get("mind") != REPLAYABLE_MIND:
        out.status, out.reason = "not_replayable", f"mind={tick.get('mind')}"
        return out
    if not tick.get("decision_inputs_json"):
        out.status, out.reason = "not_replayable", "decision_inputs_not_recorded"
        return out
    context_json = tick["context_json"]
    digest = digest_of(context_json)
    if digest != tick.get("context_digest"):
        out.differences.append({"what": "context_digest", "detail": "the stored context does not match the digest "
                                "the tick recorded (edited after the tick)",
                                "recorded": _short(tick.get("context_digest")), "replayed": _short(digest)})
    if any(r["context_digest"] != tick.get("context_digest") for r in recorded):
        out.differences.append({"what": "context_digest", "detail": "a decision row names a different context"})
    try:
        ctx = TickContext.model_validate_json(context_json)
        inputs = DecisionInputs.from_json(tick["decision_inputs_json"])
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        out.status, out.reason = "differs", "stored_inputs_invalid"
        out.differences.append({"what": "stored_inputs", "detail": _error_code(exc)})
        return out
    out.differences.extend(compare(recorded, decide(ctx, inputs)))
    if out.differences:
        out.status = "differs"
    return out


def decide(ctx: TickContext, inputs: DecisionInputs) -> list[Row]:
    """The rule mind's decision for `ctx`, exactly as `tick.run_tick` reaches it."""
    if ctx.fleet is None:
        return [tick_row("skipped", "fleet_unavailable", ctx.fleet_problem)]
    raw = policy.propose(ctx)
    verdict = decide_text(raw, ctx.fleet, inputs.limits)
    return rows_for(verdict, ctx.fleet, now=ctx.now, mode=inputs.mode,  # type: ignore[arg-type]
                    autonomous_today=inputs.autonomous_today, daily_bound=inputs.daily_bound, raw=raw)


def compare(recorded: list[dict[str, Any]], replayed: Iterable[Row]) -> list[dict[str, Any]]:
    """Each position where the recorded and replayed rows differ on COMPARED (a missing row counts)."""
    replayed = list(replayed)
    diffs = []
    for index in range(max(len(recorded), len(replayed))):
        before = _fields(recorded[index]) if index < len(recorded) else None
        after = _fields(replayed[index]) if index < len(replayed) else None
        if before == after:
            continue
        fields = COMPARED if before is None or after is None else tuple(k for k in COMPARED if before[k] != after[k])
        diffs.append({"what": "decision", "row": index, "fields": list(fields),
                      "recorded": _shown(before), "replayed": _shown(after)})
    return diffs


def _fields(row: dict[str, Any] | Row) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    return {k: get(k) for k in COMPARED}


def _shown(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A compared row, public-safe: codes as they are, the private action JSON as a digest prefix."""
    if row is None:
        return None
    action = row["action_json"]
    return {"state": row["state"], "reason": row["reason"], "kind": row["kind"],
            "action_sha256": _short(hashlib.sha256(action.encode()).hexdigest()) if action is not None else None}


def _short(digest: str | None) -> str | None:
    return digest[:12] if digest else None


def _error_code(exc: Exception) -> str:
    """Where a stored input fails to parse, never its value (the context is private)."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        return f"context {'.'.join(str(p) for p in first['loc']) or '(root)'}: {first['type']}"
    return f"decision inputs: {type(exc).__name__}"


def render(report: Report) -> str:
    """The report as lines for a terminal."""
    lines = [f"replayed {len(report.ticks)} tick(s) since {report.since.isoformat()}: {report.count('matched')} "
             f"matched, {report.count('differs')} differ, {report.count('not_replayable')} not replayable"]
    for t in report.ticks:
        if t.status == "not_replayable":
            lines.append(f"  {t.started_at.isoformat()} {t.tick_id} not_replayable: {t.reason}")
        elif t.status == "differs":
            lines.append(f"  {t.started_at.isoformat()} {t.tick_id} DIFFERS{': ' + t.reason if t.reason else ''}")
            for d in t.differences:
                if d["what"] == "decision":
                    lines.append(f"    row {d['row']} ({', '.join(d['fields'])}): recorded {_row_text(d['recorded'])}"
                                 f" / replayed {_row_text(d['replayed'])}")
                else:
                    lines.append(f"    {d['what']}: {d['detail']}")
    return "\n".join(lines) + "\n"


def _row_text(row: dict[str, Any] | None) -> str:
    if row is None:
        return "(no row)"
    parts = [row["state"], row["reason"], row["kind"], row["action_sha256"] and f"action {row['action_sha256']}"]
    return " ".join(p for p in parts if p)
