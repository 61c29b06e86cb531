"""`overseer stress` input handling, and the spike benchmark's yield-time definition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overseer_dagster import cli
from overseer_dagster.bench import spike
from overseer_dagster.stress.cli import ReplicasError, parse_replicas

READY = {"gateway": "http://127.0.0.1:9000", "replicas": {"replica-00": "http://127.0.0.1:9001"}}


def test_replicas_from_json_a_ready_line_or_a_file(tmp_path: Path) -> None:
    assert parse_replicas('{"r-0": "http://127.0.0.1:1"}') == ({"r-0": "http://127.0.0.1:1"}, None)
    line = "lab ready " + json.dumps(READY)
    assert parse_replicas(line) == (READY["replicas"], READY["gateway"])
    f = tmp_path / "ready.txt"
    f.write_text("some log line\n" + line + "\n")
    assert parse_replicas(str(f)) == (READY["replicas"], READY["gateway"])


@pytest.mark.parametrize("spec, message", [
    ('{"Replica_0": "http://127.0.0.1:1"}', "must match"),
    ('{"r-0": "127.0.0.1:1"}', "http://"),
    ("{}", "no replicas"),
    ("not json", "expected a JSON object"),
])
def test_bad_replicas_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ReplicasError, match=message):
        parse_replicas(spec)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    replicas = json.dumps(READY["replicas"])
    args = ["stress", "--replicas", replicas, "--gateway", READY["gateway"], "--interval-ms", "500"]
    assert cli.main(args) == cli.USAGE_ERROR
    assert "--interval-ms" in capsys.readouterr().err
    assert cli.main(["stress", "--replicas", replicas]) == cli.USAGE_ERROR  # no gateway, no --max-inflight
    assert "--max-inflight" in capsys.readouterr().err


def test_yield_time_is_onset_until_stress_is_within_its_live_allowance_for_half_a_second() -> None:
    phases = spike.Phases(pre_s=1.0, hold_s=3.0, post_s=1.0)
    # (t, {replica: (running, external running, stress running)}), client-side external in flight.
    samples, inflight = [], []
    for i in range(40):
        t = i * 0.1
        if t < 1.0:  # before the spike: 2 external, 5 stress each
            states = {"a": (7, 2, 5), "b": (7, 2, 5)}
        elif t < 1.5:  # the spike arrives; replica a holds its stress for 0.5 s, b yields at once
            states = {"a": (8, 3, 5), "b": (8, 8, 0)}
        else:
            states = {"a": (8, 8, 0), "b": (8, 8, 0)}
        samples.append((t, states))
        inflight.append(sum(s[1] for s in states.values()) + (6 if 1.0 <= t < 1.5 else 0))  # 6 queued
    yields = spike._yield_times(phases, samples, inflight)
    assert yields == [pytest.approx(0.5), pytest.approx(0.0)]


def test_stress_that_never_yields_has_no_yield_time() -> None:
    phases = spike.Phases(pre_s=1.0, hold_s=2.0, post_s=1.0)
    samples = [(i * 0.1, {"a": (8, 3, 5)}) for i in range(40)]
    assert spike._yield_times(phases, samples, [9] * 40) == [None]
