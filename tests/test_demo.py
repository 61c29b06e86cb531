"""`make demo`'s scripted walkthrough: the lab scenario it hands over, and the timeline it prints."""

from __future__ import annotations

import json

import pytest

from overseer_dagster import demo
from overseer_dagster.lab.profiles import parse_profile
from overseer_dagster.lab.runtime import replica_ids
from overseer_dagster.lab.scenario import parse_scenario


def test_the_demo_scenario_is_a_valid_lab_scenario_for_its_four_replicas() -> None:
    scenario = parse_scenario(json.dumps(demo.SCENARIO), source="demo scenario")
    scenario.check_replicas(replica_ids(demo.REPLICAS), source="demo scenario")
    assert demo.REPLICAS == 4
    assert [f.replica for f in scenario.faults] == [demo.FLAPPING, demo.KILLED] and demo.FLAPPING != demo.KILLED
    kill = scenario.faults[1]
    assert kill.fault.kind == "kill" and kill.fault.duration_s == demo.KILL_FOR_S  # recovers by itself
    [outage] = scenario.gateway
    assert outage.duration_s > 3 * demo.CADENCE_S  # longer than the freshness window: the fleet signal goes stale
    assert parse_profile(demo.TRAFFIC).peak == 12


def test_the_scripted_events_are_ordered_and_do_not_overlap() -> None:
    spans = [
        (demo.FLAP_AT_S, demo.FLAP_AT_S + demo.FLAP_FOR_S),
        (demo.SPIKE_AT_S, demo.SPIKE_AT_S + demo.SPIKE_HOLD_S),
        (demo.KILL_AT_S, demo.KILL_AT_S + demo.KILL_FOR_S),
        (demo.OUTAGE_AT_S, demo.OUTAGE_AT_S + demo.OUTAGE_FOR_S),
    ]
    assert spans == sorted(spans)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end < start
    # The killed replica is back, and re-admitted by the next tick, at least two cadences before the outage.
    assert demo.KILL_AT_S + demo.KILL_FOR_S + 2 * demo.CADENCE_S <= demo.OUTAGE_AT_S
    # The gateway is back, and the next ticks have cleared the block, within the ~15 minute walkthrough.
    assert demo.OUTAGE_AT_S + demo.OUTAGE_FOR_S + 2 * demo.CADENCE_S <= demo.WALKTHROUGH_END_S <= 15 * 60
    times = [e.at_s for e in demo.TIMELINE]
    assert times == sorted(times) and {s for span in spans for s in span} <= set(times)


def test_each_event_is_announced_once_when_its_time_comes() -> None:
    announced: set[int] = set()
    assert demo.due_events(10, announced) == []
    first = demo.due_events(demo.FLAP_AT_S + 1, announced)
    assert [e.at_s for e in first] == [demo.FLAP_AT_S] and demo.FLAPPING in first[0].text
    late = demo.due_events(demo.KILL_AT_S + demo.KILL_FOR_S, announced)  # a slow start catches up, in order
    assert [e.at_s for e in late] == [demo.FLAP_AT_S + demo.FLAP_FOR_S, demo.SPIKE_AT_S,
                                      demo.SPIKE_AT_S + demo.SPIKE_HOLD_S, demo.KILL_AT_S,
                                      demo.KILL_AT_S + demo.KILL_FOR_S]
    assert "readmit_replica" in late[-1].text and "dispatch_action" in late[-1].text
    assert demo.due_events(demo.KILL_AT_S + demo.KILL_FOR_S + 5, announced) == []
    rest = demo.due_events(10_000, announced)
    assert [e.at_s for e in rest] == [demo.OUTAGE_AT_S, demo.OUTAGE_AT_S + demo.OUTAGE_FOR_S, demo.WALKTHROUGH_END_S]
    assert "stale" in rest[0].text and "unverified" in rest[0].text
    assert len(announced) == len(demo.TIMELINE)


def test_the_banner_prints_the_timeline_where_to_look_and_the_commands_to_do_it_by_hand() -> None:
    banner = demo._banner_timeline("http://127.0.0.1:41234")
    for clock in (" 5:00", " 6:30", " 9:00", "13:00"):
        assert clock in banner
    for where in ("overseer audit tail", "overseer health", "fleet_health", "dispatch_action"):
        assert where in banner
    assert ("overseer lab fault replica-02 '{\"kind\": \"kill\", \"duration_s\": 90}' "
            "--gateway http://127.0.0.1:41234") in banner
    assert ("overseer lab fault gateway '{\"kind\": \"outage\", \"duration_s\": 240}' "
            "--gateway http://127.0.0.1:41234") in banner


@pytest.mark.parametrize("command", [0, 1])
def test_the_printed_fault_commands_parse(command: int) -> None:
    import shlex

    from overseer_dagster.cli import build_parser

    argv = shlex.split(demo._fault_commands("http://127.0.0.1:41234")[command])
    assert argv[0] == "overseer"
    args = build_parser().parse_args(argv[1:])
    assert args.gateway == "http://127.0.0.1:41234" and json.loads(args.fault)["duration_s"] > 0


def test_every_process_the_demo_starts_shares_the_store_the_cli_reads(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The demo's processes run in OVERSEER_HOME/demo: with OVERSEER_HOME unset they would each open a
    `.overseer` store of their own there, and `overseer audit tail` would show nothing they did."""
    from overseer_dagster.store import overseer_home

    monkeypatch.delenv("OVERSEER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    env = demo.deployment(overseer_home() / "demo").process_env
    assert env["OVERSEER_HOME"] == str(tmp_path / ".overseer")
