"""Scenario files, demand profiles, the traffic generator and the ledger buffer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from overseer_dagster.core.demand import DemandKind, UsageRecord
from overseer_dagster.lab.faults import Kill, Slow
from overseer_dagster.lab.ledger import LedgerBuffer
from overseer_dagster.lab.profiles import Sizes, Steady, parse_profile, sine, steady, step_spike, trace
from overseer_dagster.lab.runtime import Lab, fast_lab_config
from overseer_dagster.lab.scenario import ScenarioError, load_scenario, parse_scenario, run_scenario
from overseer_dagster.lab.traffic import TrafficGenerator

pytestmark = pytest.mark.lab


def run(coro: Awaitable[Any], timeout: float = 25.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("doc, message", [
    ({"faults": [{"at_s": 1, "replica": "replica-00", "kind": "kill"},
                 {"at_s": 2, "replica": "replica-00", "kind": "recover"},
                 {"at_s": 3, "replica": "replica-00", "kind": "explode"}]},
     "scenario.json: faults[2].kind: 'explode' is not one of "
     "kill, hang, slow, error_burst, flap, engine_dead, recover"),
    ({"faults": [{"at_s": 1, "replica": "replica-00", "kind": "slow", "factor": "fast"}]},
     "scenario.json: faults[0].factor: Input should be a valid number"),
    ({"faults": [{"at_s": -1, "replica": "replica-00", "kind": "hang"}]},
     "scenario.json: faults[0].at_s: Input should be greater than or equal to 0"),
    ({"faults": [{"at_s": 1, "replica": "replica-00"}]}, "scenario.json: faults[0].kind: kind is required"),
    ({"faults": [{"at_s": 1, "replica": "replica-00", "kind": "error_burst"}]},
     "scenario.json: faults[0]: error_burst needs count or duration_s"),
    ({"traffic": [{"duration_s": 5, "profile": {"kind": "wave"}}]},
     "scenario.json: traffic[0].profile.kind: 'wave' is not one of steady, step_spike, sine, trace"),
    ({"traffic": [{"duration_s": 5, "profile": {"kind": "steady", "rate": -1}}]},
     "scenario.json: traffic[0].profile.rate: Input should be greater than or equal to 0"),
    ({"traffic": [{"profile": {"kind": "steady", "rate": 1}}]},
     "scenario.json: traffic[0]: duration_s is required unless the profile is a trace"),
    ({"traffic": [{"duration_s": 5, "profile": {"kind": "steady", "rate": 1}, "demand_kind": "vip"}]},
     "scenario.json: traffic[0].demand_kind: Input should be"),
    ({"fautls": []}, "scenario.json: fautls: Extra inputs are not permitted"),
    ({"gateway": [{"at_s": 540, "kind": "outage"}]}, "scenario.json: gateway[0].duration_s: Field required"),
    ({"gateway": [{"at_s": 540, "kind": "outage", "duration_s": 0}]},
     "scenario.json: gateway[0].duration_s: Input should be greater than 0"),
    ({"gateway": [{"at_s": 540, "kind": "kill", "duration_s": 240}]},
     "scenario.json: gateway[0].kind: 'kill' is not one of outage"),
    ({"gateway": [{"at_s": 540, "duration_s": 240}]}, "scenario.json: gateway[0].kind: kind is required"),
    ({"gateway": [{"at_s": -5, "kind": "outage", "duration_s": 240}]},
     "scenario.json: gateway[0].at_s: Input should be greater than or equal to 0"),
    ({"gateway": [{"at_s": 5, "kind": "outage", "duration_s": 24, "replica": "replica-00"}]},
     "scenario.json: gateway[0].replica: Extra inputs are not permitted"),
    ({"faults": [{"at_s": 5, "replica": "gateway", "kind": "kill", "duration_s": 24}]},
     'scenario.json: faults[0].replica: the gateway is not a replica: its outage goes in the "gateway" list'),
    ({"faults": [{"at_s": 5, "replica": "replica-00", "kind": "outage", "duration_s": 24}]},
     "scenario.json: faults[0].kind: 'outage' is not one of kill, hang"),
])
def test_bad_scenario_is_refused_naming_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(json.dumps(doc))
    assert str(err.value).startswith(message), str(err.value)


def test_bad_json_names_the_line_and_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "night.json"
    path.write_text('{"faults": [\n  {"at_s": 1,}\n]}')
    with pytest.raises(ScenarioError, match=r"^night\.json:2:"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match=r"^missing\.json: "):
        load_scenario(tmp_path / "missing.json")


def test_unknown_replica_and_bad_trace_are_refused(tmp_path: Path) -> None:
    scenario = parse_scenario(json.dumps({"faults": [{"at_s": 0, "replica": "replica-07", "kind": "kill"}]}))
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.replica: 'replica-07' is not a replica of this lab"):
        scenario.check_replicas(["replica-00", "replica-01"], source="s.json")
    (tmp_path / "t.csv").write_text("t_s,rate\n0,1\n5,abc\n")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"traffic": [{"profile": {"kind": "trace", "path": "t.csv"}}]}))
    with pytest.raises(ScenarioError, match=r"traffic\[0\]\.profile\.path: t\.csv:3: expected two numbers"):
        load_scenario(path)


def test_trace_profile_loads_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("t_s,rate\n0,2\n10,5\n20,0\n")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"traffic": [{"profile": {"kind": "trace", "path": "t.csv"}}]}))
    profile = load_scenario(path).traffic[0].profile
    assert [profile.rate_at(t) for t in (0, 9.9, 10, 19, 20, 30)] == [2, 2, 5, 5, 0, 0]
    assert profile.peak == 5 and profile.end_s == 20
    assert trace(tmp_path / "t.csv") == profile
    assert parse_profile(f"trace:path={tmp_path / 't.csv'}") == profile


def test_profiles() -> None:
    assert steady(3).rate_at(100) == 3
    spike = step_spike(1, 9, at_s=10, hold_s=5)
    assert [spike.rate_at(t) for t in (0, 10, 14.9, 15)] == [1, 9, 9, 1]
    wave = sine(4, 2, period_s=8)
    assert wave.rate_at(2) == pytest.approx(6) and wave.rate_at(6) == pytest.approx(2) and wave.peak == 6
    assert parse_profile("steady:rate=2") == Steady(rate=2)
    assert parse_profile("step_spike:base=1,peak=8,at_s=30,hold_s=20").peak == 8
    with pytest.raises(ValueError):
        parse_profile("steady:rate=fast")
    with pytest.raises(ValueError):
        step_spike(5, 1, at_s=0, hold_s=1)


def test_traffic_generator_is_seeded_and_summarises() -> None:
    async def go() -> tuple[Any, Any]:
        async with Lab(fast_lab_config(2, slots=4)) as lab:
            summaries = []
            for _ in range(2):
                gen = TrafficGenerator(lab.gateway_url, steady(40), duration_s=1.0, seed=5,
                                       prompt_tokens=Sizes(median=50, sigma=0.5),
                                       max_tokens=Sizes(median=20, sigma=0.3))
                summaries.append(await gen.run())
            return summaries[0], summaries[1]

    first, second = run(go())
    assert first.sent == second.sent > 20  # same seed, same arrivals
    assert first.ok == first.sent and first.failed == 0 and first.failures_by_reason == {}
    assert first.ttft_p50_s is not None and first.ttft_p99_s >= first.ttft_p50_s
    assert first.itl_p90_s is not None and first.completion_tokens > 0


def test_traffic_generator_records_typed_failures() -> None:
    async def go() -> Any:
        async with Lab(fast_lab_config(1, slots=1, gateway={"max_queue_wait_s": 0.2})) as lab:
            gen = TrafficGenerator(lab.gateway_url, steady(30), duration_s=0.5, seed=1,
                                   max_tokens=Sizes(median=400, min=400, max=400))
            return await gen.run()

    summary = run(go())
    assert summary.failed > 0 and set(summary.failures_by_reason) == {"queue_timeout"}


def test_scenario_runs_faults_and_traffic() -> None:
    doc = {
        "name": "slow one, kill another",
        "faults": [{"at_s": 0.1, "replica": "replica-00", "kind": "slow", "factor": 2},
                   {"at_s": 0.2, "replica": "replica-01", "kind": "kill"},
                   {"at_s": 0.6, "replica": "replica-01", "kind": "recover"}],
        "traffic": [{"at_s": 0, "duration_s": 1.0, "profile": {"kind": "steady", "rate": 20}, "seed": 3,
                     "max_tokens": {"median": 10}}],
    }
    scenario = parse_scenario(json.dumps(doc))
    assert isinstance(scenario.faults[0].fault, Slow) and isinstance(scenario.faults[1].fault, Kill)
    assert scenario.end_s == 1.0

    async def go() -> Any:
        async with Lab(fast_lab_config(2, slots=4)) as lab:
            summaries = await run_scenario(lab, scenario)
            return summaries, lab.replicas["replica-00"].engine.slow_factor, lab.replicas["replica-01"].killed

    summaries, slow_factor, killed = run(go())
    assert slow_factor == 2 and not killed
    assert len(summaries) == 1 and summaries[0]["sent"] > 5 and summaries[0]["ok"] > 0
    # New requests go around the killed replica; only streams cut mid-way by the kill may fail, and say so.
    assert set(summaries[0]["failures_by_reason"]) <= {"upstream_error"}


def test_scenario_takes_the_gateway_down_and_it_comes_back_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "outage.json"
    path.write_text(json.dumps({
        "faults": [{"at_s": 0.1, "replica": "replica-01", "kind": "kill", "duration_s": 0.3}],
        "gateway": [{"at_s": 0.2, "kind": "outage", "duration_s": 0.6}],
    }))
    scenario = load_scenario(path)
    scenario.check_replicas(["replica-00", "replica-01"], source=path.name)  # the gateway is no replica to check
    assert scenario.gateway[0].duration_s == 0.6 and scenario.end_s == 0.8

    async def go() -> list[tuple[float, bool, bool]]:
        async with Lab(fast_lab_config(2, slots=2)) as lab:
            seen: list[tuple[float, bool, bool]] = []
            t0 = asyncio.get_running_loop().time()
            runner = asyncio.create_task(run_scenario(lab, scenario))
            while asyncio.get_running_loop().time() - t0 < 2.5:
                seen.append((asyncio.get_running_loop().time() - t0, lab.gateway_down,
                             lab.replicas["replica-01"].killed))
                await asyncio.sleep(0.02)
            await runner
            return seen

    seen = run(go())
    down = [t for t, gateway_down, _ in seen if gateway_down]
    # Down from 0.2 s for 0.6 s: never sooner, and, timers running late on a loaded machine, about as long.
    assert down and down[0] > 0.15 and 0.5 < down[-1] - down[0] < 1.6, (down[0], down[-1])
    assert not seen[-1][1] and not seen[-1][2]  # both back by themselves
    assert any(killed for _, _, killed in seen)


def test_ledger_buffer_batches_off_loop_and_survives_a_failing_sink() -> None:
    batches: list[list[UsageRecord]] = []
    record = UsageRecord(ts="2026-01-01T00:00:00Z", demand_kind=DemandKind.external)

    async def go() -> tuple[LedgerBuffer, LedgerBuffer]:
        good = LedgerBuffer(batches.append, flush_interval_s=0.05)
        good.start()
        for _ in range(5):
            good.add(record)
        await asyncio.sleep(0.15)
        good.add(record)
        await good.aclose()  # flushes the rest

        def broken(records: list[UsageRecord]) -> None:
            raise RuntimeError("database down")

        bad = LedgerBuffer(broken, flush_interval_s=0.05)
        bad.start()
        bad.add(record)
        await asyncio.sleep(0.15)
        await bad.aclose()
        return good, bad

    good, bad = run(go())
    assert [len(b) for b in batches] == [5, 1] and good.written == 6
    assert bad.dropped == 1 and bad.written == 0
