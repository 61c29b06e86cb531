"""Benchmark of proposal validation: valid proposals per second, adversarial inputs, worst 64 KiB input.

Goal (not a test): >= 20,000 valid proposals/s on one core; any 64 KiB input decided in < 5 ms.
`valid_per_s` runs typical proposals; `worst_64k_ms` is the slowest median over the adversarial
inputs and the largest valid proposals (every free-text field at its maximum, scrubbed).
Run: `python -m overseer_dagster.bench.validate [seconds]`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from unittest.mock import patch

from overseer_dagster.core import redact
from overseer_dagster.core.limits import Limits
from overseer_dagster.core.proposal import MAX_PROPOSAL_BYTES, parse_proposal
from overseer_dagster.core.vocabulary import EXAMPLES

LIMITS = Limits(payee_refs=frozenset({"payee-acme"}))

_ACTIONS = [dict(example) for example in EXAMPLES.values()]


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


def large_valid_proposals() -> dict[str, str]:
    """Valid proposals as large as the vocabulary allows: every free-text field at its maximum."""
    words = "Headroom fell on the east pool while queue depth rose; stress backed off, users first. "
    summary, reason = (words * 30)[:2000], (words * 7)[:500]
    report = {"kind": "emit_report", "topic": "incident", "summary": summary, "reason": reason}
    accented = {**report, "summary": ("Überlast östlich, Warteschlange wächst. " * 60)[:2000]}
    # Text that is public-safe but costly to scrub (many `word:` candidates for host:port rules).
    colons = {**report, "summary": ("a:" * 1000), "reason": ("a:" * 250)}
    return {
        "eight_full_reports": json.dumps({"actions": [report] * 8}),
        "eight_full_reports_non_ascii": json.dumps({"actions": [accented] * 8}, ensure_ascii=False),
        "eight_full_reports_of_colons": json.dumps({"actions": [colons] * 8}),
    }


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
            {"actions": [{"kind": "emit_report", "topic": "health", "summary": "a" * 1999 + "\u202e"}] * 8},
            ensure_ascii=False,
        ),
        "eight_summaries_ending_in_nul": json.dumps(
            {"actions": [{"kind": "emit_report", "topic": "health", "summary": "\u00e9" * 1999 + "\x00"}] * 8},
            ensure_ascii=False,
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

    large = large_valid_proposals()
    for name, text in large.items():
        if parse_proposal(text, LIMITS).verdict != "valid":
            raise RuntimeError(f"large valid sample {name} is not valid")

    valid_per_s = _rate(decide, valid, seconds / 2)
    adversarial_per_s = _rate(decide, list(adversarial.values()), seconds / 2)
    worst_name, worst_ms = _worst(decide, {**adversarial, **large})
    # The same, with the scrubber replaced by a no-op: the share of everything but redact.
    with patch.object(redact, "is_public_safe", lambda text: True):
        _, worst_unscrubbed_ms = _worst(decide, {**adversarial, **large})
    return {
        "bench": "validate",
        "valid_per_s": round(valid_per_s),
        "adversarial_per_s": round(adversarial_per_s),
        "worst_64k_ms": round(worst_ms, 3),
        "worst_64k_input": worst_name,
        "worst_64k_ms_without_scrubber": round(worst_unscrubbed_ms, 3),
    }


def _worst(fn: Callable[[str | bytes], object], inputs: dict[str, str | bytes]) -> tuple[str, float]:
    return max(((name, _median_ms(fn, raw, repeats=15)) for name, raw in inputs.items()), key=lambda p: p[1])


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
