"""Benchmark of proposal validation: valid proposals per second, adversarial inputs, worst 64 KiB input.

Goal (not a test): >= 20,000 valid proposals/s on one core; any 64 KiB input decided in < 5 ms.
Run: `python -m overseer_dagster.bench.validate [seconds]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import MAX_PROPOSAL_BYTES, parse_proposal

LIMITS = Limits(payee_refs=frozenset({"payee-acme"}))

_ACTIONS: list[dict[str, object]] = [
    {"kind": "noop", "reason": "fleet is steady"},
    {"kind": "start_stress", "concurrency": 8, "duration_s": 600, "reason": "headroom above 60 percent"},
    {"kind": "scale_stress", "concurrency": 16, "replica_id": "gpu-node-1"},
    {"kind": "back_off_stress", "factor": 0.5, "replica_id": "gpu-node-2"},
    {"kind": "stop_stress"},
    {"kind": "readmit_replica", "replica_id": "gpu-node-3"},
    {"kind": "warm_replica", "replica_id": "gpu-node-4", "requests": 20},
    {"kind": "emit_report", "topic": "capacity", "summary": "Headroom 42 slots on 6 ready replicas.\nNo incidents."},
    {
        "kind": "request_scale_out",
        "gpu_class": "h100",
        "count": 2,
        "max_hourly_usd": 24.5,
        "rollback": {"action": "scale_in", "after_s": 3600},
        "reason": "queue depth rising for 10 minutes",
    },
    {
        "kind": "quarantine_replica",
        "replica_id": "gpu-node-5",
        "reason_code": "error_rate",
        "rollback": {"action": "readmit_replica", "replica_id": "gpu-node-5"},
    },
    {"kind": "wallet_spend", "amount_sats": 21000, "purpose": "provider_invoice", "payee_ref": "payee-acme"},
]


def valid_proposals() -> list[str]:
    """One proposal per kind, a few mixed ones, and one fenced."""
    singles = [json.dumps({"actions": [a]}) for a in _ACTIONS]
    mixed = [
        json.dumps({"actions": _ACTIONS[0:3]}),
        json.dumps({"actions": _ACTIONS[3:8]}),
        json.dumps({"actions": _ACTIONS[8:11] + _ACTIONS[1:2]}),
    ]
    fenced = "```json\n" + json.dumps({"actions": _ACTIONS[1:3]}, indent=2) + "\n```\n"
    return singles + mixed + [fenced]


def _fill(prefix: str, unit: str, suffix: str) -> str:
    """prefix + unit * n + suffix, as close to 64 KiB of UTF-8 as it gets without exceeding it."""
    room = MAX_PROPOSAL_BYTES - len((prefix + suffix).encode())
    return prefix + unit * (room // len(unit.encode())) + suffix


def adversarial_inputs() -> dict[str, str | bytes]:
    """Inputs of (about) 64 KiB built to be slow or to crash a naive parser."""
    return {
        "open_brackets": "[" * MAX_PROPOSAL_BYTES,
        "nested_objects": _fill("", '{"a":', ""),
        "nested_in_reason": _fill('{"actions":[{"kind":"noop","reason":', "[", ""),
        "huge_int": _fill('{"actions":[{"kind":"noop"}],"n":', "9", "}"),
        "long_float": _fill('{"actions":[{"kind":"back_off_stress","factor":1.', "5", "}]}"),
        "overflowing_floats": _fill("[", "1e308,", "1e999]"),
        "short_floats": _fill("[", "1.5,", "1]"),
        "long_reason": _fill('{"actions":[{"kind":"noop","reason":"', "a", '"}]}'),
        "eight_summaries_ending_in_bidi": json.dumps(
            {"actions": [{"kind": "emit_report", "topic": "health", "summary": "a" * 1999 + "\u202e"}] * 8}
        ),
        "eight_summaries_ending_in_nul": json.dumps(
            {"actions": [{"kind": "emit_report", "topic": "health", "summary": "\u00e9" * 1999 + "\x00"}] * 8}
        ),
        "lone_surrogate_escapes": _fill('{"actions":[{"kind":"noop","reason":"', "\\ud800", '"}]}'),
        "duplicate_keys": _fill("{", '"a":1,', '"a":1}'),
        "many_top_keys": '{"actions":[{"kind":"noop"}],' + ",".join(f'"k{i}":1' for i in range(6400)) + "}",
        "many_extra_keys_in_action": '{"actions":[{"kind":"noop",'
        + ",".join(f'"k{i}":1' for i in range(5800))
        + "}]}",
        "many_actions": _fill('{"actions":[', '{"kind":"noop"},', '{"kind":"noop"}]}'),
        "many_invalid_actions": _fill('{"actions":[', '{"kind":"Noop","x":1},', "1]}"),
        "many_ints_as_actions": _fill('{"actions":[', "1,", "1]}"),
        "many_empty_objects": _fill("[", "{},", "{}]"),
        "whitespace": " " * MAX_PROPOSAL_BYTES,
        "backticks": "`" * MAX_PROPOSAL_BYTES,
        "fenced_prose": _fill("Here is my plan:\n```json\n", " ", '{"actions":[{"kind":"noop"}]}\n```'),
        "invalid_utf8": b"\xff" * MAX_PROPOSAL_BYTES,
        "one_byte_too_many": "a" * (MAX_PROPOSAL_BYTES + 1),
    }


def _rate(fn: Callable[[str | bytes], object], inputs: Sequence[str | bytes], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for item in inputs:
            fn(item)
        done += len(inputs)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def _median_ms(fn: Callable[[str | bytes], object], item: str | bytes, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(item)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(seconds: float = 3.0) -> dict[str, object]:
    def decide(raw: str | bytes) -> object:
        return parse_proposal(raw, LIMITS)

    valid = valid_proposals()
    for text in valid:
        verdict = parse_proposal(text, LIMITS)
        if verdict.verdict != "valid":
            raise RuntimeError(f"bench sample is not valid: {verdict.detail}")
    adversarial = adversarial_inputs()
    for name, raw in adversarial.items():
        if parse_proposal(raw, LIMITS).verdict != "blocked":
            raise RuntimeError(f"adversarial sample {name} is not blocked")

    valid_per_s = _rate(decide, valid, seconds / 2)
    adversarial_per_s = _rate(decide, list(adversarial.values()), seconds / 2)
    worst_name, worst_ms = max(
        ((name, _median_ms(decide, raw, repeats=15)) for name, raw in adversarial.items()),
        key=lambda pair: pair[1],
    )
    return {
        "bench": "validate",
        "valid_per_s": round(valid_per_s),
        "adversarial_per_s": round(adversarial_per_s),
        "worst_64k_ms": round(worst_ms, 3),
        "worst_64k_input": worst_name,
    }


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
