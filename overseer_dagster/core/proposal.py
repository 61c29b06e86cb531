"""From a mind's raw output to a verdict: parse, validate against the vocabulary, then in context.

`parse_proposal` never raises. Whatever it is given, it returns a `Verdict`: `valid` with the
actions, or `blocked` with a reason code and a short public-safe detail that names the problem
without echoing the input (values are never shown; a key is shown only when it is a short
identifier). Stages, in order:

1. Size: at most 64 KiB of UTF-8, checked before anything is parsed. Bytes must be UTF-8;
   a str must be encodable as UTF-8 (no lone surrogates); no leading byte-order mark.
2. Code fence: LLMs often wrap JSON in Markdown. Exactly one fence enclosing the WHOLE output
   is stripped: an opening line of three backticks, optionally followed by `json` (lowercase,
   nothing else but spaces), and a closing line of three backticks; only whitespace may surround
   it. Prose before or after the fence, a second fence, or backticks inside it block.
3. Strict JSON: one document, only whitespace after it; duplicate keys at any depth, NaN and
   +/-Infinity, numbers that overflow to infinity (1e400), nesting deeper than the interpreter's
   recursion limit and integers beyond Python's digit limit all block. A JSON string is never
   decoded a second time: a top-level string is simply not an object. The parse also stops past
   17 objects or 8 non-integer numbers, more than any valid proposal holds, so that no 64 KiB
   input costs more than a couple of milliseconds.
4. Vocabulary (`core.vocabulary.Envelope`): `{"actions": [...]}` with 1 to 8 strict actions;
   one invalid action blocks the whole proposal. The configured parts of the vocabulary are
   checked here too: at most `Limits.max_actions_per_tick` actions, and `request_scale_out.gpu_class`
   one of `Limits.gpu_classes`. Reason: `schema_invalid`.
5. Context (`validate_in_context`, run by `decide_text` when a fleet snapshot is given): whether
   the proposal fits the world. Every `replica_id` exists in the snapshot; `readmit_replica` only
   for a healthy replica drained out of rotation (a quarantined one returns only through its
   quarantine rollback); `quarantine_replica` only for a replica in rotation;
   `request_scale_out.count` within `Limits.max_scale_out_count`; `wallet_spend` only to a
   registered payee. The first violation, in action order, blocks the whole proposal.
   Reason: `context_invalid`.

Split: what a proposal may *say* (vocabulary, including its configured enumerations) is schema;
whether it fits the fleet, the configured fleet maximum and the payee registry is context.
"""

from __future__ import annotations

import json
import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import ErrorDetails

from overseer_dagster.core import redact
from overseer_dagster.core.authority import effect_of
from overseer_dagster.core.fleet import FleetSnapshot, Health, ReplicaState, RoutingState
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.vocabulary import (
    MAX_ACTIONS,
    Action,
    ActionKind,
    Envelope,
    QuarantineReplica,
    ReadmitReplica,
    RequestScaleOut,
    WalletSpend,
)

MAX_PROPOSAL_BYTES = 64 * 1024
SCHEMA_INVALID = "schema_invalid"
CONTEXT_INVALID = "context_invalid"
# Detail of the last-resort guard; tests assert no input ever reaches it.
UNEXPECTED_FAILURE = "proposal could not be processed"

_FENCE = "```"
_JSON_WHITESPACE = " \t\n\r"
_MAX_DETAIL = 300


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Literal["valid", "blocked"]
    # Reason code when blocked: `schema_invalid` or `context_invalid`.
    reason: str | None = None
    # Short, public-safe message naming the problem, e.g. "actions[2].concurrency: must be <= 64".
    detail: str | None = None
    actions: tuple[Action, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Verdict:
        if self.verdict == "valid" and (self.reason is not None or not self.actions):
            raise ValueError("a valid verdict has actions and no reason")
        if self.verdict == "blocked" and (self.reason is None or self.actions):
            raise ValueError("a blocked verdict has a reason and no actions")
        return self

    @classmethod
    def valid(cls, actions: tuple[Action, ...]) -> Verdict:
        return cls(verdict="valid", actions=actions)

    @classmethod
    def blocked(cls, reason: str, detail: str) -> Verdict:
        return cls(verdict="blocked", reason=reason, detail=detail)

    def effects(self) -> list[dict[str, str]]:
        return [{"kind": a.kind, "effect": effect_of(a.kind).value} for a in self.actions]


class _Blocked(Exception):
    def __init__(self, detail: str, reason: str = SCHEMA_INVALID) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


# --- entry points -----------------------------------------------------------------------------


def parse_proposal(raw: str | bytes, limits: Limits = Limits()) -> Verdict:
    """Parse and validate a mind's raw output against the vocabulary and the limits. Never raises."""
    try:
        obj = _load_json(_unfence(_as_text(raw)))
        envelope = _validate_envelope(obj)
        violation = _configured_vocabulary_violation(envelope.actions, limits)
        if violation:
            return Verdict.blocked(SCHEMA_INVALID, violation)
        return Verdict.valid(envelope.actions)
    except _Blocked as blocked:
        return Verdict.blocked(blocked.reason, blocked.detail)
    except Exception:  # the contract is "never raises"; tests assert no input gets here
        return Verdict.blocked(SCHEMA_INVALID, UNEXPECTED_FAILURE)


def validate_in_context(verdict: Verdict, fleet: FleetSnapshot, limits: Limits) -> Verdict:
    """Check a valid verdict against the fleet and the limits; the first violation blocks it whole."""
    if verdict.verdict != "valid":
        return verdict
    replicas = {r.replica_id: r for r in fleet.replicas}
    for index, action in enumerate(verdict.actions):
        violation = _context_violation(action, replicas, limits)
        if violation:
            return Verdict.blocked(CONTEXT_INVALID, f"actions[{index}].{violation}")
    return verdict


def decide_text(raw: str | bytes, fleet: FleetSnapshot | None, limits: Limits = Limits()) -> Verdict:
    """Parse, then validate in context when a fleet snapshot is given."""
    verdict = parse_proposal(raw, limits)
    return verdict if fleet is None else validate_in_context(verdict, fleet, limits)


# --- stage 1: size and encoding ---------------------------------------------------------------


def _as_text(raw: object) -> str:
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_PROPOSAL_BYTES:
            raise _Blocked(f"proposal is larger than {MAX_PROPOSAL_BYTES} bytes")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _Blocked("proposal is not valid UTF-8") from None
    elif isinstance(raw, str):
        if len(raw) > MAX_PROPOSAL_BYTES:  # every character is at least one byte
            raise _Blocked(f"proposal is larger than {MAX_PROPOSAL_BYTES} bytes")
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise _Blocked("proposal is not encodable as UTF-8 (lone surrogate)") from None
        if size > MAX_PROPOSAL_BYTES:
            raise _Blocked(f"proposal is larger than {MAX_PROPOSAL_BYTES} bytes")
        text = raw
    else:
        raise _Blocked(f"proposal must be text (str or bytes), not {type(raw).__name__}")
    if text.startswith("\ufeff"):
        raise _Blocked("proposal starts with a byte-order mark")
    return text


# --- stage 2: one enclosing code fence --------------------------------------------------------


def _unfence(text: str) -> str:
    body = text.strip(_JSON_WHITESPACE)
    if not body.startswith(_FENCE):
        return text
    if len(body) < 2 * len(_FENCE) or not body.endswith(_FENCE):
        raise _Blocked("a code fence must enclose the whole output (text after the closing fence)")
    inner = body[len(_FENCE) : -len(_FENCE)]
    opener, newline, content = inner.partition("\n")
    if opener.startswith("json"):
        opener = opener[len("json") :]
    if not newline or opener.strip(" \t\r"):
        raise _Blocked("a code fence must open with ``` or ```json alone on its line")
    if _FENCE in content:
        raise _Blocked("more than one code fence (or backticks inside the fence)")
    if content and not content.rstrip(" \t").endswith("\n"):
        raise _Blocked("the closing code fence must be alone on its line")
    return content


# --- stage 3: strict JSON ---------------------------------------------------------------------


# A valid proposal holds at most 17 objects (the envelope, 8 actions, 8 rollbacks) and 8 floats
# (no action has two float fields). Stopping the parse past these budgets keeps the worst
# 64 KiB input cheap; it never blocks a proposal that would otherwise be valid.
MAX_JSON_OBJECTS = 1 + 2 * MAX_ACTIONS
MAX_JSON_FLOATS = MAX_ACTIONS


def _reject_constant(name: str) -> float:
    raise _Blocked(f"{name} is not a JSON number")


def _load_json(text: str) -> object:
    objects = floats = 0

    def object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        nonlocal objects
        objects += 1
        if objects > MAX_JSON_OBJECTS:
            raise _Blocked(f"too many JSON objects for a proposal (at most {MAX_JSON_OBJECTS})")
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise _Blocked(f"duplicate key '{_key_name(duplicate)}' in a JSON object")
        return obj

    def finite_float(literal: str) -> float:
        nonlocal floats
        floats += 1
        if floats > MAX_JSON_FLOATS:
            raise _Blocked(f"too many non-integer numbers for a proposal (at most {MAX_JSON_FLOATS})")
        value = float(literal)
        if not math.isfinite(value):
            raise _Blocked("a number is out of range (overflows to infinity)")
        return value

    decoder = json.JSONDecoder(
        object_pairs_hook=object_without_duplicates,
        parse_constant=_reject_constant,
        parse_float=finite_float,
    )
    try:
        return decoder.decode(text)  # rejects extra data after the document
    except json.JSONDecodeError as error:
        if _FENCE in text:
            raise _Blocked("prose around a code fence: the fence must enclose the whole output") from None
        raise _Blocked(f"not valid JSON: {error.msg} (line {error.lineno} column {error.colno})") from None
    except RecursionError:
        raise _Blocked("JSON is nested too deeply") from None
    except ValueError:  # int() digit limit
        raise _Blocked("a JSON integer has too many digits") from None


# --- stage 4: vocabulary ----------------------------------------------------------------------


def _validate_envelope(obj: object) -> Envelope:
    try:
        return Envelope.model_validate(obj)
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        raise _Blocked(_describe(first)) from None


_KINDS = frozenset(ActionKind)
# Lowercase words only, as every field of the vocabulary (and every authority claim worth naming) is:
# a key with digits or capitals may be a token the mind smuggles into the public journal detail.
_SAFE_KEY = re.compile(r"[a-z_][a-z_]{0,31}")


def _key_name(key: str) -> str:
    """A key from the input, shown only when it is a short lowercase word (never raw text or a token)."""
    if _SAFE_KEY.fullmatch(key) and redact.is_public_safe(key):
        return key
    return "<key not shown>"


def _location(loc: tuple[int | str, ...], error_type: str) -> str:
    parts = list(loc)
    # Drop the discriminator tag pydantic inserts after the action index: actions.0.start_stress.x
    if len(parts) > 2 and parts[0] == "actions" and isinstance(parts[1], int) and parts[2] in _KINDS:
        del parts[2]
    if error_type == "extra_forbidden" and parts and isinstance(parts[-1], str):
        parts[-1] = _key_name(parts[-1])
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        parts.append("kind")
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "proposal"


def _describe(error: ErrorDetails) -> str:
    kind, ctx, loc = error["type"], error.get("ctx", {}), error["loc"]
    if kind == "unexpected_key":  # raised by the vocabulary's key-flood guard, key in ctx
        kind, loc = "extra_forbidden", (*loc, str(ctx.get("key")))
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        message = 'must be a JSON object with exactly one key, "actions"'
    else:
        message = _MESSAGES.get(kind, "is invalid ({type})").format_map(_Context(ctx, type=kind))
    return f"{_location(loc, kind)}: {message}"[:_MAX_DETAIL]


class _Context(dict[str, object]):
    """Error context for message templates: readable patterns, and "?" for anything missing."""

    def __init__(self, ctx: dict[str, object], **extra: object) -> None:
        super().__init__(ctx, **extra)
        if isinstance(self.get("pattern"), str):
            self["pattern"] = str(self["pattern"]).removeprefix("^(?:").removesuffix(")$")

    def __missing__(self, key: str) -> str:
        return "?"


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unexpected key",
    "union_tag_invalid": "must be one of {expected_tags} (exact spelling)",
    "union_tag_not_found": "required (the action kind)",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "tuple_type": "must be a JSON array",
    "too_short": "must hold at least {min_length} item(s)",
    "too_long": "must hold at most {max_length} items",
    "int_type": "must be an integer (not a string, float or boolean)",
    "float_type": "must be a finite number (not a string or boolean)",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode (no lone surrogates)",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "literal_error": "must be {expected}",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "value_error": "{error}",
}


# --- configured vocabulary (schema) and context ----------------------------------------------


def _configured_vocabulary_violation(actions: tuple[Action, ...], limits: Limits) -> str | None:
    if len(actions) > limits.max_actions_per_tick:
        return f"actions: must hold at most {limits.max_actions_per_tick} items (configured)"
    for index, action in enumerate(actions):
        if isinstance(action, RequestScaleOut) and action.gpu_class not in limits.gpu_classes:
            offered = ", ".join(limits.gpu_classes) or "none"
            return f"actions[{index}].gpu_class: must be one of the offered GPU classes ({offered})"
    return None


def _context_violation(action: Action, replicas: dict[str, ReplicaState], limits: Limits) -> str | None:
    """The first rule `action` breaks, as "<field>: <rule>", or None."""
    if isinstance(action, RequestScaleOut) and action.count > limits.max_scale_out_count:
        return f"count: must be <= {limits.max_scale_out_count} (configured fleet maximum)"
    if isinstance(action, WalletSpend) and action.payee_ref not in limits.payee_refs:
        return "payee_ref: not a registered payee"
    replica_id = getattr(action, "replica_id", None)
    if replica_id is None:
        return None
    replica = replicas.get(replica_id)
    if replica is None:
        return "replica_id: no such replica in the fleet snapshot"
    state, health = replica.routing_state, replica.health
    if isinstance(action, ReadmitReplica):
        if state is RoutingState.quarantined:
            return "replica_id: readmit_replica cannot readmit a quarantined replica (only its quarantine rollback can)"
        if state is not RoutingState.draining:
            return f"replica_id: readmit_replica needs a replica out of rotation (draining), not {state}"
        if health is not Health.healthy:
            return f"replica_id: readmit_replica needs a healthy replica, not {health}"
    if isinstance(action, QuarantineReplica) and state is not RoutingState.admitted:
        return f"replica_id: quarantine_replica needs a replica in rotation (admitted), not {state}"
    return None
