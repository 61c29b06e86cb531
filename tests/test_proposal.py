"""From raw mind output to a verdict: size, fences, strict JSON, vocabulary, limits, fleet context."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from overseer_dagster.core.fleet import REPLICA_ID_PATTERN, FleetSnapshot, Health, ReplicaState, RoutingState
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import (
    MAX_JSON_FLOATS,
    MAX_JSON_OBJECTS,
    MAX_PROPOSAL_BYTES,
    UNEXPECTED_FAILURE,
    Verdict,
    decide_text,
    parse_proposal,
    validate_in_context,
)
from overseer_dagster.core.vocabulary import EXAMPLES, ActionKind

LIMITS = Limits(payee_refs=frozenset({"payee-acme", "payee-b2"}))
NOOP = '{"actions":[{"kind":"noop"}]}'


def example(kind: ActionKind, **fields: Any) -> dict[str, Any]:
    return {**EXAMPLES[kind], **fields}


def proposal(*actions: dict[str, Any]) -> str:
    return json.dumps({"actions": list(actions)})


def parse(raw: Any, limits: Limits = LIMITS) -> Verdict:
    return parse_proposal(raw, limits)


def assert_blocked(verdict: Verdict, detail: str, reason: str = "schema_invalid") -> None:
    assert verdict.verdict == "blocked", verdict
    assert verdict.reason == reason
    assert verdict.actions == ()
    assert verdict.detail is not None and detail in verdict.detail, verdict.detail


def assert_sane(verdict: Verdict) -> None:
    """What every verdict, for any input, must look like."""
    assert isinstance(verdict, Verdict)
    if verdict.verdict == "valid":
        assert verdict.reason is None and verdict.detail is None and 1 <= len(verdict.actions) <= 8
    else:
        assert verdict.reason in ("schema_invalid", "context_invalid")
        assert verdict.detail and verdict.detail != UNEXPECTED_FAILURE
        assert len(verdict.detail) <= 300
        assert not any(unicodedata.category(c)[0] == "C" for c in verdict.detail), verdict.detail


# --- stage 1: size and encoding --------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_exactly_64_kib_is_accepted(as_bytes: bool) -> None:
    text = NOOP + " " * (MAX_PROPOSAL_BYTES - len(NOOP))
    assert parse(text.encode() if as_bytes else text).verdict == "valid"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_one_byte_over_64_kib_is_blocked(as_bytes: bool) -> None:
    text = NOOP + " " * (MAX_PROPOSAL_BYTES - len(NOOP) + 1)
    assert_blocked(parse(text.encode() if as_bytes else text), "larger than 65536 bytes")


def test_size_is_counted_in_utf8_bytes_not_characters() -> None:
    text = json.dumps({"actions": [{"kind": "noop"}], "pad": "é" * 33000}, ensure_ascii=False)
    assert len(text) < MAX_PROPOSAL_BYTES < len(text.encode())
    assert_blocked(parse(text), "larger than 65536 bytes")


@pytest.mark.parametrize("raw", ["[" * (MAX_PROPOSAL_BYTES + 1), b"9" * 10_000_000, "x" * 10_000_000])
def test_size_is_capped_before_parsing(raw: str | bytes) -> None:
    assert_blocked(parse(raw), "larger than 65536 bytes")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b'{"actions":[{"kind":"noop","reason":"caf\xe9"}]}',  # Latin-1
        b"\xc0\xaf",  # overlong encoding
        b"\xed\xa0\x80",  # encoded surrogate
        '{"actions":[{"kind":"noop"}]}'.encode("utf-16"),
    ],
)
def test_bytes_must_be_utf8(raw: bytes) -> None:
    assert_blocked(parse(raw), "not valid UTF-8")


def test_str_with_a_lone_surrogate_is_blocked() -> None:
    assert_blocked(parse('{"actions":[{"kind":"noop","reason":"a\ud800"}]}'), "lone surrogate")


@pytest.mark.parametrize("raw", ["\ufeff" + NOOP, ("\ufeff" + NOOP).encode(), b"\xef\xbb\xbf" + NOOP.encode()])
def test_a_leading_byte_order_mark_is_blocked(raw: str | bytes) -> None:
    assert_blocked(parse(raw), "byte-order mark")


def test_bytes_and_bytearray_are_accepted_like_str() -> None:
    assert parse(NOOP.encode()) == parse(bytearray(NOOP.encode())) == parse(NOOP)


@pytest.mark.parametrize(
    "raw", [None, 0, 1.5, True, [], {}, {"actions": [{"kind": "noop"}]}, memoryview(NOOP.encode()), object()]
)
def test_anything_but_text_is_blocked_not_raised(raw: Any) -> None:
    assert_blocked(parse(raw), "proposal must be text")


# --- stage 2: one enclosing code fence -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"```json\n{NOOP}\n```",
        f"```\n{NOOP}\n```",
        f"\n\n  ```json\n{NOOP}\n```\n\n",
        f"```json  \n{NOOP}\n```",
        f"```json\r\n{NOOP}\r\n```\r\n",
        f"```json\n{json.dumps(json.loads(NOOP), indent=2)}\n   ```",
        f"```json\n\n{NOOP}\n\n```",
    ],
)
def test_one_fence_enclosing_the_whole_output_is_stripped(raw: str) -> None:
    assert parse(raw) == parse(NOOP)
    assert parse(raw).verdict == "valid"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (f"Here is my plan:\n```json\n{NOOP}\n```", "prose around a code fence"),
        (f"```json\n{NOOP}\n```\nLet me know!", "enclose the whole output"),
        (f"```json\n{NOOP}\n```\n```json\n{NOOP}\n```", "more than one code fence"),
        (f"```json\n{NOOP}\n```\n\n```", "more than one code fence"),
        (f"Plan A\n```json\n{NOOP}\n```\nPlan B\n```json\n{NOOP}\n```", "prose around a code fence"),
        (f"```JSON\n{NOOP}\n```", "must open with ``` or ```json"),
        (f"```python\n{NOOP}\n```", "must open with ``` or ```json"),
        (f"```json {NOOP}\n```", "must open with ``` or ```json"),
        (f"```{NOOP}```", "must open with ``` or ```json"),
        (f"```json\n{NOOP}```", "closing code fence must be alone on its line"),
        (f"```json\n{NOOP}\n", "enclose the whole output"),
        (f"````json\n{NOOP}\n````", "must open with ``` or ```json"),
        (f"~~~json\n{NOOP}\n~~~", "not valid JSON"),
        (f"{NOOP}\n```", "prose around a code fence"),
        ("```json\n```", "not valid JSON"),
        ("``````", "must open with ``` or ```json"),
    ],
)
def test_anything_but_one_enclosing_fence_is_blocked(raw: str, detail: str) -> None:
    assert_blocked(parse(raw), detail)


# --- stage 3: strict JSON --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ('{"actions":[{"kind":"noop"}],"actions":[{"kind":"noop"}]}', "duplicate key 'actions'"),
        ('{"actions":[{"kind":"noop","kind":"noop"}]}', "duplicate key 'kind'"),
        ('{"actions":[{"kind":"noop","reason":"a","reason":"b"}]}', "duplicate key 'reason'"),
        (
            '{"actions":[{"kind":"request_scale_out","gpu_class":"h100","count":1,"max_hourly_usd":1,'
            '"rollback":{"action":"scale_in","after_s":600,"after_s":300}}]}',
            "duplicate key 'after_s'",
        ),
        ('{"actions":[{"kind":"noop","x\\u0000":1,"x\\u0000":2}]}', "duplicate key '<key not shown>'"),
        ('{"actions":[{"kind":"back_off_stress","factor":NaN}]}', "NaN is not a JSON number"),
        ('{"actions":[{"kind":"back_off_stress","factor":Infinity}]}', "Infinity is not a JSON number"),
        ('{"actions":[{"kind":"back_off_stress","factor":-Infinity}]}', "-Infinity is not a JSON number"),
        ('{"actions":[{"kind":"back_off_stress","factor":1e400}]}', "overflows to infinity"),
        ('{"actions":[{"kind":"back_off_stress","factor":-1e400}]}', "overflows to infinity"),
        ('{"actions":[{"kind":"noop"}],"x":' + "1" * 400 + ".0}", "overflows to infinity"),
        ('{"actions":[{"kind":"noop","reason":' + "[" * 100_00 + "]" * 100_00 + "}]}", "nested too deeply"),
        ("[" * MAX_PROPOSAL_BYTES, "nested too deeply"),
        ('{"actions":[{"kind":"start_stress","concurrency":' + "9" * 5000 + ',"duration_s":60}]}', "too many digits"),
        (NOOP + " trailing", "Extra data"),
        (NOOP + NOOP, "Extra data"),
        (NOOP + "\n" + NOOP, "Extra data"),
        ("{'actions':[{'kind':'noop'}]}", "not valid JSON"),
        ('{"actions":[{"kind":"noop",}]}', "not valid JSON"),
        ('{"actions":[{"kind":"noop"}] // comment\n}', "not valid JSON"),
        ('{"actions":[{"kind":"noop","reason":"a\nb"}]}', "not valid JSON"),  # raw control char in a string
        ("", "not valid JSON"),
        ("   ", "not valid JSON"),
    ],
)
def test_strict_json(raw: str, detail: str) -> None:
    assert_blocked(parse(raw), detail)


def test_whitespace_around_the_document_is_fine() -> None:
    assert parse(f" \r\n\t{NOOP}\n\t ").verdict == "valid"


@pytest.mark.parametrize("raw", [json.dumps(NOOP), json.dumps(json.dumps(NOOP)), json.dumps("```json\n" + NOOP + "\n```")])
def test_a_json_string_is_never_decoded_twice(raw: str) -> None:
    assert_blocked(parse(raw), 'proposal: must be a JSON object with exactly one key, "actions"')


def test_the_largest_valid_proposal_fits_the_json_budgets() -> None:
    # 8 actions, each with a rollback object and a float: 17 objects, 8 floats.
    big = proposal(*[example(ActionKind.request_scale_out, max_hourly_usd=1.5)] * 8)
    assert MAX_JSON_OBJECTS == 17 and MAX_JSON_FLOATS == 8
    assert parse(big).verdict == "valid"


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (json.dumps({"actions": [{"kind": "noop"}], "x": [{}] * MAX_JSON_OBJECTS}), "too many JSON objects"),
        (json.dumps({"actions": [{"kind": "noop"}], "x": [0.5] * (MAX_JSON_FLOATS + 1)}), "too many non-integer"),
    ],
)
def test_past_the_json_budgets_the_parse_stops(raw: str, detail: str) -> None:
    assert_blocked(parse(raw), detail)


# --- stage 4: vocabulary, through the parser -------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "detail"),
    [
        (
            [{"kind": "noop"}, {"kind": "noop"}, example(ActionKind.start_stress, concurrency=65)],
            "actions[2].concurrency: must be <= 64",
        ),
        ([example(ActionKind.start_stress, concurrency="8")], "actions[0].concurrency: must be an integer"),
        ([example(ActionKind.start_stress, concurrency=8.0)], "actions[0].concurrency: must be an integer"),
        ([example(ActionKind.start_stress, concurrency=True)], "actions[0].concurrency: must be an integer"),
        ([example(ActionKind.back_off_stress, factor=True)], "actions[0].factor: must be a finite number"),
        ([example(ActionKind.back_off_stress, factor="0.5")], "actions[0].factor: must be a finite number"),
        ([example(ActionKind.back_off_stress, factor=0.96)], "actions[0].factor: must be <= 0.95"),
        ([example(ActionKind.request_scale_out, max_hourly_usd=0)], "actions[0].max_hourly_usd: must be > 0"),
        ([{"kind": "Noop"}], "actions[0].kind: must be one of 'noop', "),
        ([{"kind": "noop "}], "actions[0].kind: must be one of"),
        ([{"reason": "no kind"}], "actions[0].kind: required"),
        ([{"kind": "noop", "approved": True}], "actions[0].approved: unexpected key"),
        ([example(ActionKind.start_stress, gate="open")], "actions[0].gate: unexpected key"),
        # A key that looks like a token is not echoed into the (public) detail.
        ([{"kind": "noop", "".join(["sOaK", "t0k", "Qx8Lm3"]): 1}], "actions[0].<key not shown>: unexpected key"),
        ([["noop"]], "actions[0]: must be a JSON object"),
        ([example(ActionKind.emit_report, topic="weather")], "actions[0].topic: must be 'capacity', 'health'"),
        ([example(ActionKind.emit_report, summary="")], "actions[0].summary: must have at least 1 character"),
        ([example(ActionKind.noop, reason="x" * 501)], "actions[0].reason: must have at most 500 characters"),
        ([example(ActionKind.noop, reason="ok\u202eko")], "actions[0].reason: contains a forbidden"),
        ([example(ActionKind.noop, reason="ok\rko")], "actions[0].reason: contains a forbidden"),
        ([example(ActionKind.warm_replica, replica_id="-x")], "actions[0].replica_id: must match [a-z0-9]"),
        ([example(ActionKind.wallet_spend, payee_ref="acme")], "actions[0].payee_ref: must match payee-"),
        (
            [example(ActionKind.request_scale_out, rollback={"action": "scale_in", "after_s": 10})],
            "actions[0].rollback.after_s: must be >= 300",
        ),
        (
            [example(ActionKind.request_scale_out, rollback={"action": "drop_everything", "after_s": 600})],
            "actions[0].rollback.action: must be 'scale_in'",
        ),
        (
            [example(ActionKind.quarantine_replica, rollback={"action": "readmit_replica", "replica_id": "other"})],
            "actions[0]: rollback.replica_id must equal replica_id",
        ),
        ([], "actions: must hold at least 1 item"),
        ([{"kind": "noop"}] * 9, "actions: must hold at most 8 items"),
    ],
)
def test_vocabulary_errors_are_named_precisely(actions: list[Any], detail: str) -> None:
    assert_blocked(parse(proposal(*actions)), detail)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ("{}", "actions: required"),
        ('{"actions":{}}', "actions: must be a JSON array"),
        ('{"actions":[{"kind":"noop"}],"mode":"yolo"}', "mode: unexpected key"),
        ("[]", 'proposal: must be a JSON object with exactly one key, "actions"'),
        ("null", 'proposal: must be a JSON object with exactly one key, "actions"'),
        ("8", 'proposal: must be a JSON object with exactly one key, "actions"'),
    ],
)
def test_envelope_errors(raw: str, detail: str) -> None:
    assert_blocked(parse(raw), detail)


def test_one_invalid_action_blocks_the_whole_proposal() -> None:
    actions = [dict(EXAMPLES[k]) for k in list(ActionKind)[:7]] + [example(ActionKind.warm_replica, requests=0)]
    assert_blocked(parse(proposal(*actions)), "actions[7].requests: must be >= 1")


@pytest.mark.parametrize(
    "raw",
    [
        proposal({"kind": "CANARY"}),
        proposal({"kind": "noop", "reason": "CANARY\u202e"}),
        proposal({"kind": "noop", "reason": "x" * 501 + "CANARY"}),
        proposal({"kind": "noop", "CANARY key!": 1}),
        proposal({"kind": "noop", "reason": "ok"}, {"kind": "noop", "x" * 40 + "CANARY": 1}),
        proposal(example(ActionKind.start_stress, concurrency="CANARY")),
        proposal(example(ActionKind.readmit_replica, replica_id="CANARY")),
        proposal(example(ActionKind.wallet_spend, payee_ref="payee-canary")),
        proposal(example(ActionKind.request_scale_out, gpu_class="canary")),
        '{"actions":[{"kind":"noop","CANARY-1":1,"CANARY-1":1}]}',
        '"CANARY"',
        "CANARY " + NOOP,
        NOOP + " CANARY",
        "```json\n" + NOOP + "\n```\nCANARY",
        '{"actions":[{"kind":"noop","reason":"CANARY',
    ],
)
def test_detail_never_echoes_input_values(raw: str) -> None:
    verdict = decide_text(raw, FLEET, Limits())
    assert verdict.verdict == "blocked"
    assert "canary" not in (verdict.detail or "").lower(), verdict.detail


# --- limits: configured vocabulary (schema) and configured context ---------------------------


@pytest.mark.parametrize(
    ("limits", "actions", "detail"),
    [
        (Limits(gpu_classes=("h100",)), [example(ActionKind.request_scale_out, gpu_class="b200")],
         "actions[0].gpu_class: must be one of the offered GPU classes (h100)"),
        (Limits(), [{"kind": "noop"}, example(ActionKind.request_scale_out, gpu_class="a100")],
         "actions[1].gpu_class: must be one of the offered GPU classes (h100, h200, b200)"),
        (Limits(max_actions_per_tick=2), [{"kind": "noop"}] * 3, "actions: must hold at most 2 items (configured)"),
    ],
)
def test_configured_vocabulary_is_schema(limits: Limits, actions: list[Any], detail: str) -> None:
    raw = proposal(*actions)
    assert_blocked(parse(raw, limits), detail)
    assert_blocked(decide_text(raw, None, limits), detail)
    assert_blocked(decide_text(raw, FLEET, limits), detail)


@pytest.mark.parametrize(
    ("limits", "actions", "detail"),
    [
        (Limits(max_scale_out_count=3), [{"kind": "noop"}, example(ActionKind.request_scale_out, count=4)],
         "actions[1].count: must be <= 3 (configured fleet maximum)"),
        (Limits(max_scale_out_count=0), [example(ActionKind.request_scale_out, count=1)],
         "actions[0].count: must be <= 0"),
        (Limits(), [example(ActionKind.wallet_spend)], "actions[0].payee_ref: not a registered payee"),
        (Limits(payee_refs=frozenset({"payee-other"})), [example(ActionKind.noop), example(ActionKind.wallet_spend)],
         "actions[1].payee_ref: not a registered payee"),
    ],
)
def test_fleet_maximum_and_payee_registry_are_context(limits: Limits, actions: list[Any], detail: str) -> None:
    raw = proposal(*actions)
    parsed = parse(raw, limits)
    assert parsed.verdict == "valid"
    assert decide_text(raw, None, limits) == parsed
    assert_blocked(validate_in_context(parsed, FLEET, limits), detail, reason="context_invalid")
    assert_blocked(decide_text(raw, FLEET, limits), detail, reason="context_invalid")


@pytest.mark.parametrize(
    "limits",
    [
        Limits(max_scale_out_count=3),
        Limits(gpu_classes=("b200",)),
        Limits(payee_refs=frozenset({"payee-acme"}), max_actions_per_tick=3),
    ],
)
def test_within_the_limits_is_valid(limits: Limits) -> None:
    actions = [example(ActionKind.request_scale_out, count=3, gpu_class=limits.gpu_classes[0])]
    if limits.payee_refs:
        actions += [example(ActionKind.wallet_spend), {"kind": "noop"}]
    assert decide_text(proposal(*actions), FLEET, limits).verdict == "valid"


@pytest.mark.parametrize(
    "fields",
    [
        {"max_scale_out_count": 9},
        {"max_scale_out_count": -1},
        {"max_actions_per_tick": 0},
        {"max_actions_per_tick": 9},
        {"payee_refs": frozenset({"acme"})},
        {"gpu_classes": ("H100",)},
        {"unknown": 1},
    ],
)
def test_limits_reject_impossible_configuration(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Limits(**fields)


def test_limits_defaults() -> None:
    limits = Limits()
    assert limits.gpu_classes == ("h100", "h200", "b200")
    assert (limits.max_scale_out_count, limits.payee_refs, limits.max_actions_per_tick) == (8, frozenset(), 8)
    with pytest.raises(ValidationError):
        limits.max_scale_out_count = 2  # type: ignore[misc]


# --- the verdict -----------------------------------------------------------------------------


def test_effects_list_kind_and_effect_in_order() -> None:
    verdict = parse(proposal({"kind": "noop"}, example(ActionKind.warm_replica), example(ActionKind.wallet_spend)))
    assert verdict.effects() == [
        {"kind": "noop", "effect": "none"},
        {"kind": "warm_replica", "effect": "execute"},
        {"kind": "wallet_spend", "effect": "pending_gate"},
    ]
    assert parse("nope").effects() == []


@pytest.mark.parametrize(
    "fields",
    [
        {"verdict": "valid"},
        {"verdict": "valid", "reason": "schema_invalid", "actions": parse(NOOP).actions},
        {"verdict": "blocked"},
        {"verdict": "blocked", "reason": "schema_invalid", "actions": parse(NOOP).actions},
        {"verdict": "maybe", "reason": "x"},
    ],
)
def test_verdict_is_consistent(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Verdict(**fields)


def test_verdict_is_frozen_and_serialisable() -> None:
    verdict = parse(proposal(example(ActionKind.request_scale_out)))
    with pytest.raises(ValidationError):
        verdict.verdict = "blocked"  # type: ignore[misc]
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


# --- stage 6: fleet context ------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _replica(replica_id: str, health: Health, state: RoutingState) -> ReplicaState:
    return ReplicaState(
        replica_id=replica_id, health=health, routing_state=state, inflight=0, max_inflight=4, observed_at=NOW
    )


FLEET = FleetSnapshot(
    observed_at=NOW,
    replicas=(
        _replica("r-admitted", Health.healthy, RoutingState.admitted),
        _replica("r-admitted-sick", Health.unhealthy, RoutingState.admitted),
        _replica("r-draining", Health.healthy, RoutingState.draining),
        _replica("r-draining-sick", Health.unhealthy, RoutingState.draining),
        _replica("r-draining-unknown", Health.unknown, RoutingState.draining),
        _replica("r-quarantined", Health.healthy, RoutingState.quarantined),
    ),
)


def quarantine(replica_id: str) -> dict[str, Any]:
    rollback = {"action": "readmit_replica", "replica_id": replica_id}
    return example(ActionKind.quarantine_replica, replica_id=replica_id, rollback=rollback)


@pytest.mark.parametrize(
    ("action", "detail"),
    [
        (example(ActionKind.readmit_replica, replica_id="r-draining"), None),
        (example(ActionKind.readmit_replica, replica_id="r-admitted"), "needs a replica out of rotation (draining)"),
        (example(ActionKind.readmit_replica, replica_id="r-quarantined"), "cannot readmit a quarantined replica"),
        (example(ActionKind.readmit_replica, replica_id="r-draining-sick"), "needs a healthy replica, not unhealthy"),
        (example(ActionKind.readmit_replica, replica_id="r-draining-unknown"), "needs a healthy replica, not unknown"),
        (example(ActionKind.readmit_replica, replica_id="r-gone"), "no such replica"),
        (quarantine("r-admitted"), None),
        (quarantine("r-admitted-sick"), None),
        (quarantine("r-draining"), "needs a replica in rotation (admitted), not draining"),
        (quarantine("r-quarantined"), "needs a replica in rotation (admitted), not quarantined"),
        (quarantine("r-gone"), "no such replica"),
        (example(ActionKind.warm_replica, replica_id="r-draining"), None),
        (example(ActionKind.warm_replica, replica_id="r-gone"), "no such replica"),
        *[
            (example(kind, replica_id=replica_id), detail)
            for kind in (
                ActionKind.start_stress, ActionKind.scale_stress, ActionKind.back_off_stress, ActionKind.stop_stress
            )
            for replica_id, detail in (("r-admitted", None), ("r-gone", "no such replica"))
        ],
        *[(example(kind), None) for kind in ActionKind if kind not in (
            ActionKind.readmit_replica, ActionKind.warm_replica, ActionKind.quarantine_replica, ActionKind.stop_stress,
            ActionKind.scale_stress,
        )],
    ],
)
def test_fleet_context(action: dict[str, Any], detail: str | None) -> None:
    parsed = parse(proposal({"kind": "noop"}, action))
    assert parsed.verdict == "valid", parsed.detail
    verdict = validate_in_context(parsed, FLEET, LIMITS)
    if detail is None:
        assert verdict == parsed
    else:
        assert_blocked(verdict, detail, reason="context_invalid")
        assert verdict.detail.startswith("actions[1].replica_id: ")  # type: ignore[union-attr]


def test_first_fleet_violation_is_reported_and_blocks_everything() -> None:
    raw = proposal(
        example(ActionKind.readmit_replica, replica_id="r-draining"),
        quarantine("r-quarantined"),
        example(ActionKind.warm_replica, replica_id="r-gone"),
    )
    verdict = decide_text(raw, FLEET, LIMITS)
    assert_blocked(verdict, "actions[1].replica_id: quarantine_replica needs", reason="context_invalid")


def test_a_blocked_verdict_passes_through_context_unchanged() -> None:
    blocked = parse("not json")
    assert validate_in_context(blocked, FLEET, LIMITS) is blocked


def test_decide_text_checks_the_fleet_only_when_given() -> None:
    raw = proposal(example(ActionKind.readmit_replica, replica_id="r-gone"))
    assert decide_text(raw, None, LIMITS).verdict == "valid"
    assert_blocked(decide_text(raw, FLEET, LIMITS), "no such replica", reason="context_invalid")
    assert decide_text("nope", FLEET, LIMITS) == parse("nope")


# --- properties ------------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéüßøñç東京日本"
_WORDS = st.text(alphabet=_LETTERS, min_size=1, max_size=10)


def _free_text(max_length: int) -> st.SearchStrategy[str]:
    # Words and separators: no digits or long tokens a scrubber could mistake for an address or key.
    part = st.tuples(_WORDS, st.sampled_from([" ", "\n", "\t", ", ", ". "]))
    return st.lists(part, min_size=1, max_size=max_length // 12).map(lambda ps: "".join(w + s for w, s in ps))


_REPLICA_IDS = st.from_regex(rf"\A{REPLICA_ID_PATTERN}\Z", fullmatch=True)
_OPTIONAL = {"reason": st.none() | _free_text(500)}


def _action(kind: str, required: dict[str, Any], optional: dict[str, Any] | None = None) -> st.SearchStrategy:
    return st.fixed_dictionaries({"kind": st.just(kind), **required}, optional={**_OPTIONAL, **(optional or {})})


def _quarantine(replica_id: str) -> st.SearchStrategy:
    return _action(
        "quarantine_replica",
        {
            "replica_id": st.just(replica_id),
            "reason_code": st.sampled_from(["health_check_failed", "error_rate", "latency_slo", "operator_request"]),
            "rollback": st.just({"action": "readmit_replica", "replica_id": replica_id}),
        },
    )


ACTION_STRATEGIES: dict[ActionKind, st.SearchStrategy] = {
    ActionKind.noop: _action("noop", {}),
    ActionKind.start_stress: _action(
        "start_stress",
        {"concurrency": st.integers(1, 64), "duration_s": st.integers(10, 3600)},
        {"replica_id": st.none() | _REPLICA_IDS},
    ),
    ActionKind.scale_stress: _action(
        "scale_stress", {"concurrency": st.integers(1, 64)}, {"replica_id": st.none() | _REPLICA_IDS}
    ),
    ActionKind.back_off_stress: _action(
        "back_off_stress", {"factor": st.floats(0.05, 0.95)}, {"replica_id": st.none() | _REPLICA_IDS}
    ),
    ActionKind.stop_stress: _action("stop_stress", {}, {"replica_id": st.none() | _REPLICA_IDS}),
    ActionKind.readmit_replica: _action("readmit_replica", {"replica_id": _REPLICA_IDS}),
    ActionKind.warm_replica: _action("warm_replica", {"replica_id": _REPLICA_IDS, "requests": st.integers(1, 100)}),
    ActionKind.emit_report: _action(
        "emit_report",
        {"topic": st.sampled_from(["capacity", "health", "cost", "incident"]), "summary": _free_text(2000)},
    ),
    ActionKind.request_scale_out: _action(
        "request_scale_out",
        {
            "gpu_class": st.sampled_from(LIMITS.gpu_classes),
            "count": st.integers(1, 8),
            "max_hourly_usd": st.integers(1, 500) | st.floats(0, 500, exclude_min=True),
            "rollback": st.fixed_dictionaries({"action": st.just("scale_in"), "after_s": st.integers(300, 86400)}),
        },
    ),
    ActionKind.quarantine_replica: _REPLICA_IDS.flatmap(_quarantine),
    ActionKind.wallet_spend: _action(
        "wallet_spend",
        {
            "amount_sats": st.integers(1, 100_000),
            "purpose": st.sampled_from(["scale_out_deposit", "provider_invoice"]),
            "payee_ref": st.sampled_from(sorted(LIMITS.payee_refs)),
        },
    ),
}
VALID_PROPOSALS = st.lists(st.one_of(*ACTION_STRATEGIES.values()), min_size=1, max_size=8).map(
    lambda actions: {"actions": actions}
)


def test_the_strategy_covers_every_kind() -> None:
    assert set(ACTION_STRATEGIES) == set(ActionKind)


def _without_nones(action: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in action.items() if v is not None}


@settings(max_examples=300)
@given(VALID_PROPOSALS)
def test_every_valid_proposal_round_trips(generated: dict[str, Any]) -> None:
    first = parse(json.dumps(generated))
    assert first.verdict == "valid", first.detail
    dumped = [a.model_dump(mode="json") for a in first.actions]
    assert [_without_nones(a) for a in dumped] == [_without_nones(a) for a in generated["actions"]]
    again = parse(json.dumps({"actions": dumped}))
    assert again == first
    fenced = "```json\n" + json.dumps({"actions": dumped}, indent=2, ensure_ascii=False) + "\n```\n"
    assert parse(fenced) == first


@pytest.mark.parametrize("kind", list(ActionKind))
def test_each_kinds_example_round_trips(kind: ActionKind) -> None:
    first = parse(proposal(dict(EXAMPLES[kind])))
    assert first.verdict == "valid", first.detail
    assert parse(json.dumps({"actions": [a.model_dump(mode="json") for a in first.actions]})) == first


_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
_JSONISH = st.recursive(
    _JSON_SCALARS, lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=40
)


def _decided_the_same_twice(raw: Any) -> None:
    first = parse(raw)
    assert_sane(first)
    assert parse(raw) == first


@given(st.text())
def test_never_raises_on_text(raw: str) -> None:
    _decided_the_same_twice(raw)


@given(st.binary())
def test_never_raises_on_bytes(raw: bytes) -> None:
    _decided_the_same_twice(raw)


@given(_JSONISH)
def test_never_raises_on_json_structures(value: Any) -> None:
    _decided_the_same_twice(json.dumps(value))
    _decided_the_same_twice(json.dumps({"actions": value}))
    _decided_the_same_twice(json.dumps({"actions": [value]}))


@given(_JSONISH)
def test_never_raises_on_python_objects_of_any_shape(value: Any) -> None:
    _decided_the_same_twice(value)


@given(VALID_PROPOSALS, st.data())
def test_never_raises_on_mutated_valid_proposals(generated: dict[str, Any], data: st.DataObject) -> None:
    actions = generated["actions"]
    index = data.draw(st.integers(0, len(actions) - 1))
    key = data.draw(st.sampled_from([*actions[index], "approved", "kind", "x"]))
    actions[index] = {**actions[index], key: data.draw(_JSONISH)}
    raw = json.dumps(generated)
    _decided_the_same_twice(raw)
    _decided_the_same_twice("```json\n" + raw + "\n```")
    _decided_the_same_twice(raw.encode())
    verdict = parse(raw)
    if key in ("approved", "x"):
        assert verdict.verdict == "blocked"
        if verdict.detail.startswith("actions"):  # not a JSON-level problem (NaN, budgets) first
            assert verdict.detail == f"actions[{index}].{key}: unexpected key"
