"""The vocabulary models on their own: shapes, strict types, ranges, patterns, free text."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from overseer_dagster.core import redact, vocabulary
from overseer_dagster.core.vocabulary import EXAMPLES, Action, ActionKind, Envelope


def validate(action: dict[str, Any]) -> BaseModel:
    return Envelope.model_validate({"actions": [action]}).actions[0]


def blocked_type(action: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        validate(action)
    return info.value.errors()[0]["type"]


def with_(kind: ActionKind, **fields: Any) -> dict[str, Any]:
    return {**EXAMPLES[kind], **fields}


def without(kind: ActionKind, key: str) -> dict[str, Any]:
    return {k: v for k, v in EXAMPLES[kind].items() if k != key}


def action_models() -> list[type[BaseModel]]:
    union = typing.get_args(Action)[0]
    return list(typing.get_args(union))


# --- the vocabulary as a whole ---------------------------------------------------------------


def test_union_tags_are_exactly_the_action_kinds() -> None:
    tags = [m.model_fields["kind"].default for m in action_models()]
    assert sorted(tags) == sorted(k.value for k in ActionKind)
    assert len(tags) == len(set(tags))


def test_every_model_is_strict_frozen_and_forbids_extra_keys() -> None:
    models = [
        m
        for m in vars(vocabulary).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == vocabulary.__name__
    ]
    assert len(models) >= 14  # base, 11 actions, 2 rollbacks, envelope
    for model in models:
        config = model.model_config
        assert (config.get("extra"), config.get("strict"), config.get("frozen")) == ("forbid", True, True), model


def test_there_is_a_valid_example_for_every_kind() -> None:
    assert set(EXAMPLES) == set(ActionKind)
    for kind, example in EXAMPLES.items():
        action = validate(dict(example))
        assert action.kind == kind  # type: ignore[attr-defined]
        assert action.action_kind is kind  # type: ignore[attr-defined]


def test_models_are_frozen() -> None:
    action = validate(dict(EXAMPLES[ActionKind.start_stress]))
    with pytest.raises(ValidationError):
        action.concurrency = 9  # type: ignore[attr-defined]


def test_models_can_be_built_in_code_with_their_kind_defaulted() -> None:
    action = vocabulary.StartStress(concurrency=4, duration_s=60)
    assert action.kind == "start_stress"
    assert validate(action.model_dump(mode="json", exclude_none=True)) == action


# --- envelope --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "error_type"),
    [
        ({}, "missing"),
        ({"actions": []}, "too_short"),
        ({"actions": [{"kind": "noop"}] * 9}, "too_long"),
        ({"actions": {"kind": "noop"}}, "tuple_type"),
        ({"actions": "noop"}, "tuple_type"),
        ({"actions": [{"kind": "noop"}], "extra": 1}, "unexpected_key"),
        ({"Actions": [{"kind": "noop"}]}, "missing"),
        ([{"kind": "noop"}], "model_type"),
        ('{"actions": [{"kind": "noop"}]}', "model_type"),
    ],
)
def test_envelope_is_one_key_actions_with_1_to_8_actions(envelope: Any, error_type: str) -> None:
    with pytest.raises(ValidationError) as info:
        Envelope.model_validate(envelope)
    assert info.value.errors()[0]["type"] == error_type


@pytest.mark.parametrize("count", [1, 8])
def test_envelope_accepts_1_and_8_actions(count: int) -> None:
    assert len(Envelope.model_validate({"actions": [{"kind": "noop"}] * count}).actions) == count


def test_one_invalid_action_invalidates_the_envelope() -> None:
    actions = [dict(EXAMPLES[ActionKind.noop])] * 7 + [with_(ActionKind.start_stress, concurrency=65)]
    with pytest.raises(ValidationError):
        Envelope.model_validate({"actions": actions})


# --- kind ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["Noop", "NOOP", " noop", "noop ", "noop\n", "no\u200bop", "no\u00adop", "\uff4eoop", "start-stress",
     "start_stress\u0301", "", None, 1, ["noop"], {"kind": "noop"}],
)
def test_kind_must_match_exactly(kind: Any) -> None:
    assert blocked_type({"kind": kind}) == "union_tag_invalid"


def test_kind_is_required() -> None:
    assert blocked_type({"reason": "no kind"}) == "union_tag_not_found"


@pytest.mark.parametrize("key", ["approved", "receipt", "gate", "status", "autonomous", "id", "Kind"])
@pytest.mark.parametrize("kind", list(ActionKind))
def test_no_keys_beyond_the_kinds_own(kind: ActionKind, key: str) -> None:
    assert blocked_type(with_(kind, **{key: True})) in ("extra_forbidden", "unexpected_key")


def test_a_key_of_another_kind_is_extra() -> None:
    assert blocked_type(with_(ActionKind.noop, concurrency=8)) in ("extra_forbidden", "unexpected_key")


# --- strict types ----------------------------------------------------------------------------

INT_FIELDS = [
    (ActionKind.start_stress, "concurrency", 1, 64),
    (ActionKind.start_stress, "duration_s", 10, 3600),
    (ActionKind.scale_stress, "concurrency", 1, 64),
    (ActionKind.warm_replica, "requests", 1, 100),
    (ActionKind.request_scale_out, "count", 1, 8),
    (ActionKind.wallet_spend, "amount_sats", 1, 100_000),
]


@pytest.mark.parametrize(("kind", "field", "low", "high"), INT_FIELDS)
def test_int_fields_range_is_inclusive(kind: ActionKind, field: str, low: int, high: int) -> None:
    assert getattr(validate(with_(kind, **{field: low})), field) == low
    assert getattr(validate(with_(kind, **{field: high})), field) == high
    assert blocked_type(with_(kind, **{field: low - 1})) == "greater_than_equal"
    assert blocked_type(with_(kind, **{field: high + 1})) == "less_than_equal"


@pytest.mark.parametrize(("kind", "field", "low", "high"), INT_FIELDS)
@pytest.mark.parametrize("value", ["8", 8.0, True, False, None, [8], 2**70 + 0.5])
def test_int_fields_are_strict(kind: ActionKind, field: str, low: int, high: int, value: Any) -> None:
    # No "8" -> 8, no 8.0 -> 8, and bool is not int.
    assert blocked_type(with_(kind, **{field: value})) == "int_type"


FLOAT_FIELDS = [
    (ActionKind.back_off_stress, "factor", 0.05, 0.95),
    (ActionKind.request_scale_out, "max_hourly_usd", 1e-9, 500),
]


@pytest.mark.parametrize(("kind", "field", "low", "high"), FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["0.5", True, False, None, [0.5]])
def test_number_fields_reject_strings_and_bools(kind: ActionKind, field: str, low: float, high: float,
                                                 value: Any) -> None:
    assert blocked_type(with_(kind, **{field: value})) == "float_type"


@pytest.mark.parametrize(("kind", "field", "low", "high"), FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_number_fields_must_be_finite(kind: ActionKind, field: str, low: float, high: float, value: float) -> None:
    assert blocked_type(with_(kind, **{field: value})) == "finite_number"


def test_number_fields_accept_ints_and_floats() -> None:
    assert validate(with_(ActionKind.request_scale_out, max_hourly_usd=500)).max_hourly_usd == 500  # type: ignore[attr-defined]
    assert validate(with_(ActionKind.request_scale_out, max_hourly_usd=0.01)).max_hourly_usd == 0.01  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "field", "value", "error_type"),
    [
        (ActionKind.back_off_stress, "factor", 0.05, None),
        (ActionKind.back_off_stress, "factor", 0.95, None),
        (ActionKind.back_off_stress, "factor", 0.0499, "greater_than_equal"),
        (ActionKind.back_off_stress, "factor", 0.9501, "less_than_equal"),
        (ActionKind.back_off_stress, "factor", 1, "less_than_equal"),
        (ActionKind.request_scale_out, "max_hourly_usd", 0, "greater_than"),
        (ActionKind.request_scale_out, "max_hourly_usd", 0.0, "greater_than"),
        (ActionKind.request_scale_out, "max_hourly_usd", -1.5, "greater_than"),
        (ActionKind.request_scale_out, "max_hourly_usd", 500.0001, "less_than_equal"),
        (ActionKind.request_scale_out, "max_hourly_usd", 10**400, "float_type"),
    ],
)
def test_number_field_ranges(kind: ActionKind, field: str, value: float, error_type: str | None) -> None:
    if error_type is None:
        assert getattr(validate(with_(kind, **{field: value})), field) == value
    else:
        assert blocked_type(with_(kind, **{field: value})) == error_type


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (ActionKind.start_stress, "concurrency"),
        (ActionKind.start_stress, "duration_s"),
        (ActionKind.scale_stress, "concurrency"),
        (ActionKind.back_off_stress, "factor"),
        (ActionKind.readmit_replica, "replica_id"),
        (ActionKind.warm_replica, "replica_id"),
        (ActionKind.warm_replica, "requests"),
        (ActionKind.emit_report, "topic"),
        (ActionKind.emit_report, "summary"),
        (ActionKind.request_scale_out, "gpu_class"),
        (ActionKind.request_scale_out, "count"),
        (ActionKind.request_scale_out, "max_hourly_usd"),
        (ActionKind.request_scale_out, "rollback"),
        (ActionKind.quarantine_replica, "replica_id"),
        (ActionKind.quarantine_replica, "reason_code"),
        (ActionKind.quarantine_replica, "rollback"),
        (ActionKind.wallet_spend, "amount_sats"),
        (ActionKind.wallet_spend, "purpose"),
        (ActionKind.wallet_spend, "payee_ref"),
    ],
)
def test_required_fields(kind: ActionKind, field: str) -> None:
    assert blocked_type(without(kind, field)) == "missing"


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (ActionKind.start_stress, "replica_id"),
        (ActionKind.scale_stress, "replica_id"),
        (ActionKind.back_off_stress, "replica_id"),
        (ActionKind.stop_stress, "replica_id"),
        *[(kind, "reason") for kind in ActionKind],
    ],
)
def test_optional_fields_may_be_absent_or_null(kind: ActionKind, field: str) -> None:
    assert getattr(validate(without(kind, field)), field) is None
    assert getattr(validate(with_(kind, **{field: None})), field) is None


# --- enumerations and patterns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field", "allowed"),
    [
        (ActionKind.emit_report, "topic", ["capacity", "health", "cost", "incident"]),
        (ActionKind.quarantine_replica, "reason_code",
         ["health_check_failed", "error_rate", "latency_slo", "operator_request"]),
        (ActionKind.wallet_spend, "purpose", ["scale_out_deposit", "provider_invoice"]),
    ],
)
def test_enumerated_fields(kind: ActionKind, field: str, allowed: list[str]) -> None:
    for value in allowed:
        assert getattr(validate(with_(kind, **{field: value})), field) == value
    for value in [allowed[0].upper(), allowed[0] + " ", "other", 1, None]:
        assert blocked_type(with_(kind, **{field: value})) in ("literal_error", "missing")


@pytest.mark.parametrize("replica_id", ["a", "0", "a-b", "gpu-node-12", "a" * 63, "a" + "-" * 61 + "b"])
def test_replica_id_accepted(replica_id: str) -> None:
    assert validate(with_(ActionKind.readmit_replica, replica_id=replica_id)).replica_id == replica_id  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "replica_id",
    ["", "-a", "a-", "A", "gpu_node", "a.b", "a b", "a\n", "\na", "a" * 64, "gpu-\u0430", "10.1.2.3", 7],
)
def test_replica_id_must_fully_match_the_fleet_pattern(replica_id: Any) -> None:
    for kind in (ActionKind.readmit_replica, ActionKind.start_stress, ActionKind.warm_replica):
        assert blocked_type(with_(kind, replica_id=replica_id)) in (
            "string_pattern_mismatch", "string_too_long", "string_type", "missing"
        )


@pytest.mark.parametrize("payee_ref", ["payee-a", "payee-0", "payee-" + "z9" * 8])
def test_payee_ref_accepted(payee_ref: str) -> None:
    assert validate(with_(ActionKind.wallet_spend, payee_ref=payee_ref)).payee_ref == payee_ref  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "payee_ref", ["payee-", "payee-A", "payee_a", "Payee-a", "payee-" + "a" * 17, "payee-a\n", " payee-a", "x-payee-a"]
)
def test_payee_ref_must_fully_match(payee_ref: str) -> None:
    assert blocked_type(with_(ActionKind.wallet_spend, payee_ref=payee_ref)) in (
        "string_pattern_mismatch", "string_too_long"
    )


@pytest.mark.parametrize("gpu_class", ["", "H100", "h100 ", "h_100", "-h100", "h" * 33])
def test_gpu_class_must_be_a_plain_name(gpu_class: str) -> None:
    assert blocked_type(with_(ActionKind.request_scale_out, gpu_class=gpu_class)) in (
        "string_pattern_mismatch", "string_too_long"
    )


# --- rollbacks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rollback", "error_type"),
    [
        ({"action": "scale_in", "after_s": 300}, None),
        ({"action": "scale_in", "after_s": 86400}, None),
        ({"action": "scale_in", "after_s": 299}, "greater_than_equal"),
        ({"action": "scale_in", "after_s": 86401}, "less_than_equal"),
        ({"action": "scale_in", "after_s": 600.0}, "int_type"),
        ({"action": "scale_out", "after_s": 600}, "literal_error"),
        ({"after_s": 600}, None),  # the action defaults to scale_in
        ({"action": "scale_in"}, "missing"),
        ({"action": "scale_in", "after_s": 600, "approved": True}, "unexpected_key"),
        ({"action": "scale_in", "after_s": 600, "x": 1, "y": 2}, "unexpected_key"),
        (None, "model_type"),
        ("scale_in", "model_type"),
    ],
)
def test_scale_out_rollback_is_a_strict_sub_model(rollback: Any, error_type: str | None) -> None:
    action = with_(ActionKind.request_scale_out, rollback=rollback)
    if error_type is None:
        assert validate(action).rollback.action == "scale_in"  # type: ignore[attr-defined]
    else:
        assert blocked_type(action) == error_type


@pytest.mark.parametrize(
    ("rollback", "error_type"),
    [
        ({"action": "readmit_replica", "replica_id": "gpu-node-4"}, "value_error"),
        ({"action": "readmit_replica"}, "missing"),
        ({"action": "scale_in", "replica_id": "gpu-node-3"}, "literal_error"),
        ({"action": "readmit_replica", "replica_id": "gpu-node-3", "x": 1}, "unexpected_key"),
        ({"action": "readmit_replica", "replica_id": "GPU-node-3"}, "string_pattern_mismatch"),
    ],
)
def test_quarantine_rollback_readmits_the_same_replica(rollback: Any, error_type: str) -> None:
    assert blocked_type(with_(ActionKind.quarantine_replica, rollback=rollback)) == error_type


# --- free text -------------------------------------------------------------------------------

FREE_TEXT = [(kind, "reason", 500) for kind in ActionKind] + [(ActionKind.emit_report, "summary", 2000)]


@pytest.mark.parametrize(("kind", "field", "max_length"), FREE_TEXT)
def test_free_text_length(kind: ActionKind, field: str, max_length: int) -> None:
    assert getattr(validate(with_(kind, **{field: "x"})), field) == "x"
    assert getattr(validate(with_(kind, **{field: "é" * max_length})), field) == "é" * max_length
    assert blocked_type(with_(kind, **{field: ""})) == "string_too_short"
    assert blocked_type(with_(kind, **{field: "x" * (max_length + 1)})) == "string_too_long"


@pytest.mark.parametrize("text", ["line one\nline two", "col\tcol", "Grüße, 東京, naïve café", "emoji 🚀 ok"])
def test_free_text_allows_newline_tab_and_unicode(text: str) -> None:
    assert validate(with_(ActionKind.emit_report, summary=text)).summary == text  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "char",
    [
        "\x00", "\x07", "\x1b", "\r", "\x0b", "\x0c", "\x7f", "\x85",  # controls (Cc), \r included
        "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # bidi embeddings and overrides
        "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c",  # bidi isolates and marks
        "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",  # zero-width and format (Cf)
        "\u2028", "\u2029",  # line and paragraph separators
        "\u3164", "\u115f", "\u034f",  # invisible fillers outside Cf
        "\udc80",  # lone surrogate
        "\U000e0041",  # tag character (Cf)
    ],
)
@pytest.mark.parametrize(("kind", "field"), [(ActionKind.noop, "reason"), (ActionKind.emit_report, "summary")])
def test_free_text_rejects_control_format_and_invisible_characters(kind: ActionKind, field: str, char: str) -> None:
    assert blocked_type(with_(kind, **{field: f"all good{char} here"})) in ("value_error", "string_unicode")


def test_free_text_must_be_public_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    # The vocabulary defers to redact.is_public_safe (whatever the scrubber flags, it blocks).
    monkeypatch.setattr(redact, "is_public_safe", lambda text: "FLAGGED" not in text)
    assert blocked_type(with_(ActionKind.emit_report, summary="this is FLAGGED")) == "value_error"
    assert blocked_type(with_(ActionKind.noop, reason="this is FLAGGED")) == "value_error"
    assert validate(with_(ActionKind.noop, reason="this is fine")).reason == "this is fine"  # type: ignore[attr-defined]


_SCRUBBER_READY = bool(redact.findings("replica at 10.1.2.3:8000"))


@pytest.mark.xfail(not _SCRUBBER_READY, reason="NEEDS THE REAL SCRUBBER: core/redact.py is still a stub", strict=True)
@pytest.mark.parametrize(
    "text",
    ["replica at 10.1.2.3:8000 is slow", "key " + "sk-" + "proj-" + "AbCdEfGhIjKlMnOp" + "QrStUvWxYz0123456789abcd" + " leaked"],
)
def test_free_text_with_an_address_or_key_is_blocked__needs_real_scrubber(text: str) -> None:
    assert blocked_type(with_(ActionKind.emit_report, summary=text)) == "value_error"
    assert blocked_type(with_(ActionKind.noop, reason=text)) == "value_error"
