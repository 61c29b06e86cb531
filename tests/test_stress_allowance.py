"""The stress harness's fast loop, deterministic: allowances, cancellation, backoff and the dead-man on a fake clock.

Stress requests go to fake replicas behind an in-process httpx transport; time for the fast loop is a
fake monotonic clock the tests advance by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from overseer_dagster.core.demand import DemandKind, Outcome, UsageRecord
from overseer_dagster.core.fleet import FleetSnapshot, Health, ReplicaState, RoutingState
from overseer_dagster.stress.allowance import Allowances, ReplicaLoad, ceiling, to_cancel, to_launch
from overseer_dagster.stress.backoff import ReplicaBackoff
from overseer_dagster.stress.control import Target, TargetFollower
from overseer_dagster.stress.harness import HarnessConfig, StressHarness
from overseer_dagster.stress.load import loads_from_snapshot
from overseer_dagster.stress.workload import STRESS_USER, Workload

WALL = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


# --- allowance ------------------------------------------------------------------------------------


def load(external: int, *, at: float = 100.0, slots: int = 8, ready: bool = True) -> ReplicaLoad:
    return ReplicaLoad(max_inflight=slots, external_inflight=external, observed_at=at, ready=ready)


def test_ceiling_keeps_the_reserve_and_external_demand_first() -> None:
    assert ceiling(load(0), 64, reserve=1, now=100.0) == 7
    assert ceiling(load(2), 64, reserve=1, now=100.0) == 5
    assert ceiling(load(2), 3, reserve=1, now=100.0) == 3  # the target bounds it
    assert ceiling(load(2), 64, reserve=2, now=100.0) == 4
    assert ceiling(load(8), 64, reserve=1, now=100.0) == 0  # never negative


def test_stale_missing_or_unready_readings_allow_no_stress() -> None:
    assert ceiling(load(0, at=100.0), 7, reserve=1, now=101.0) == 7  # one second old: still fresh
    assert ceiling(load(0, at=100.0), 7, reserve=1, now=101.01) == 0
    assert ceiling(None, 7, reserve=1, now=100.0) == 0
    assert ceiling(load(0, ready=False), 7, reserve=1, now=100.0) == 0


def test_allowance_falls_at_once_and_climbs_back_by_a_step_per_interval() -> None:
    clock = FakeClock()
    a = Allowances(reserve=1, step=1, ramp_interval_s=0.25)
    seen = []
    for _ in range(8):
        seen.append(a.update(clock(), {"r": load(1, at=clock())}, {"r": 7})["r"])
        clock.advance(0.25)
    assert seen == [1, 2, 3, 4, 5, 6, 6, 6]  # 8 slots - 1 reserve - 1 external
    # A spike: seven external requests there -> zero at once, not one slot per interval.
    assert a.update(clock(), {"r": load(7, at=clock())}, {"r": 7})["r"] == 0
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(2, at=clock())}, {"r": 7})["r"] == 1
    clock.advance(0.1)  # within the interval: no faster than one step per interval
    assert a.update(clock(), {"r": load(2, at=clock())}, {"r": 7})["r"] == 1
    clock.advance(0.15)
    assert a.update(clock(), {"r": load(2, at=clock())}, {"r": 7})["r"] == 2


def test_the_default_ramp_is_two_slots_per_interval() -> None:
    clock = FakeClock()
    a = Allowances(reserve=1)
    seen = []
    for _ in range(5):
        seen.append(a.update(clock(), {"r": load(0, at=clock())}, {"r": 7})["r"])
        clock.advance(0.25)
    assert seen == [2, 4, 6, 7, 7]


def test_stress_does_not_grow_where_external_demand_holds_half_the_slots() -> None:
    clock = FakeClock()
    a = Allowances(reserve=1, step=1)
    a.update(clock(), {"r": load(1, at=clock())}, {"r": 7})
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(1, at=clock())}, {"r": 7})["r"] == 2
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(4, at=clock())}, {"r": 7})["r"] == 1  # a rise into the band halves it
    for _ in range(4):  # 4 of 7 usable slots external, steady: room for 3, but no growth
        clock.advance(0.25)
        assert a.update(clock(), {"r": load(4, at=clock())}, {"r": 7})["r"] == 1
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(3, at=clock())}, {"r": 7})["r"] == 2  # below half again: it grows


def test_rising_external_demand_above_half_the_slots_halves_stress() -> None:
    clock = FakeClock()
    a = Allowances(reserve=1)
    for _ in range(4):
        a.update(clock(), {"r": load(0, at=clock())}, {"r": 7})
        clock.advance(0.25)
    assert a.current("r") == 7
    # External rises to 4 of 8: the ceiling says 3, and each further rise halves what is left.
    assert a.update(clock(), {"r": load(4, at=clock())}, {"r": 7})["r"] == 3
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(5, at=clock())}, {"r": 7})["r"] == 1
    # The same reading seen again (a pass between readings) is not a new rise.
    assert a.update(clock(), {"r": load(5, at=clock() - 0.25)}, {"r": 7})["r"] == 1
    clock.advance(0.25)
    assert a.update(clock(), {"r": load(5, at=clock())}, {"r": 7})["r"] == 1  # steady: holds


def test_allowance_follows_a_lowered_target_at_once() -> None:
    clock = FakeClock()
    a = Allowances(reserve=1)
    for _ in range(4):
        a.update(clock(), {"r": load(0, at=clock())}, {"r": 7})
        clock.advance(0.25)
    assert a.current("r") == 7
    assert a.update(clock(), {"r": load(0, at=clock())}, {"r": 2})["r"] == 2


def test_the_reserve_is_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="reserve"):
        Allowances(reserve=0)


def test_the_newest_requests_are_cancelled_first() -> None:
    started = {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}
    assert to_cancel(started, 4) == []
    assert to_cancel(started, 2) == ["d", "b"]
    assert sorted(to_cancel(started, 0)) == ["a", "b", "c", "d"]
    assert to_cancel(started, -1) == sorted(started, key=started.get, reverse=True)


def test_launches_fill_the_allowance_within_a_backoff_cap() -> None:
    assert to_launch(5, 2) == 3
    assert to_launch(5, 6) == 0
    assert to_launch(5, 0, cap=1) == 1
    assert to_launch(5, 1, cap=1) == 0
    assert to_launch(5, 0, cap=0) == 0


def test_queued_external_requests_count_as_pressure_on_the_replica() -> None:
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    state = ReplicaState(replica_id="r-0", health=Health.healthy, routing_state=RoutingState.admitted,
                         inflight=6, max_inflight=8, external_inflight=2, stress_inflight=4, queue_depth=3,
                         observed_at=now - timedelta(milliseconds=400))
    drained = state.model_copy(update={"replica_id": "r-1", "routing_state": RoutingState.draining})
    loads = loads_from_snapshot(FleetSnapshot(observed_at=now, replicas=(state, drained)), mono_now=50.0,
                                wall_now=now + timedelta(milliseconds=100))
    assert loads["r-0"].external_inflight == 5
    assert loads["r-0"].observed_at == pytest.approx(49.5)  # back-dated by the reading's own age
    assert not loads["r-1"].ready


# --- backoff ---------------------------------------------------------------------------------------


def test_a_failing_replica_is_backed_off_exponentially_then_probed_one_at_a_time() -> None:
    b = ReplicaBackoff(base_s=0.5, max_s=4.0)
    assert b.cap(0.0) is None
    assert [b.failure(0.0, "http_500") for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.cap(3.9) == 0
    assert b.cap(4.0) == 1  # half-open: one probe
    b.success()
    assert b.cap(4.0) is None
    assert b.reasons == {"http_500": 5}


# --- targets and the dead-man ----------------------------------------------------------------------


def test_a_per_replica_target_overrides_the_pool_wide_one() -> None:
    f = TargetFollower(cadence_s=60)
    later = WALL + timedelta(minutes=3)
    f.observe({None: Target(5, later), "r-1": Target(2, later)}, WALL, WALL)
    assert f.targets(WALL + timedelta(seconds=10), ["r-0", "r-1"]) == {"r-0": 5, "r-1": 2}


def test_an_expired_target_is_zero() -> None:
    f = TargetFollower(cadence_s=60)
    f.observe({None: Target(5, WALL + timedelta(seconds=30))}, WALL, WALL)
    assert f.targets(WALL + timedelta(seconds=31), ["r-0"]) == {"r-0": 0}


def test_the_dead_man_zeroes_stress_two_cadences_after_the_last_write() -> None:
    f = TargetFollower(cadence_s=60)
    f.observe({None: Target(5, WALL + timedelta(hours=1))}, WALL, WALL)
    assert f.targets(WALL + timedelta(seconds=120), ["r-0"]) == {"r-0": 5}
    assert f.targets(WALL + timedelta(seconds=121), ["r-0"]) == {"r-0": 0}
    assert f.dead_man_fired(WALL + timedelta(seconds=121))


def test_without_any_target_ever_written_there_is_no_stress() -> None:
    f = TargetFollower(cadence_s=60)
    f.observe({}, None, WALL)
    assert f.targets(WALL, ["r-0"]) == {"r-0": 0}


def test_losing_the_store_keeps_the_last_target_until_the_dead_man() -> None:
    f = TargetFollower(cadence_s=60)
    f.observe({None: Target(5, WALL + timedelta(hours=1))}, WALL, WALL)
    f.read_failed()
    f.read_failed()
    assert f.targets(WALL + timedelta(seconds=90), ["r-0"]) == {"r-0": 5}
    assert f.targets(WALL + timedelta(seconds=121), ["r-0"]) == {"r-0": 0}
    assert f.read_failures == 2


# --- the workload ----------------------------------------------------------------------------------


def test_the_workload_is_seeded_streaming_and_tagged() -> None:
    a, b = Workload(seed=7), Workload(seed=7)
    first = [a.next("r-0").body for _ in range(20)]
    assert first == [b.next("r-0").body for _ in range(20)]
    shapes = Counter(Workload(seed=7).next("r-0").shape for _ in range(1))
    assert set(shapes) <= {"synthetic", "coding"}
    for body in first:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["user"] == STRESS_USER


def test_coding_sessions_share_a_long_prefix_and_grow_turn_by_turn() -> None:
    w = Workload(seed=1)
    coding = [r for r in (w.next("r-0") for _ in range(40)) if r.shape == "coding"]
    assert len(coding) >= 4
    prefixes = {r.body["messages"][0]["content"] for r in coding}
    assert len(prefixes) <= 2 and all(len(p) > 4000 for p in prefixes)
    assert len(coding[1].body["messages"]) > len(coding[0].body["messages"])  # multi-turn


def test_synthetic_requests_have_a_fixed_shape() -> None:
    w = Workload(seed=3)
    synthetic = [r for r in (w.next("r-0") for _ in range(40)) if r.shape == "synthetic"]
    assert len({json.dumps(r.body, sort_keys=True) for r in synthetic}) == 1
    assert synthetic[0].body["ignore_eos"] is True


# --- the harness: cancellation, preemption and backoff on a fake clock ------------------------------


class FakeReplicas:
    """Replicas behind an httpx transport: each stress stream stays open until it is closed or `tokens` end."""

    def __init__(self, *, tokens: int = 1000, answers: dict[str, str] | None = None) -> None:
        self.tokens = tokens
        self.answers = answers or {}  # replica host -> "ok" | "http_500" | "garbage"
        self.open: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.kinds: list[str] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.requests[host] += 1
        self.kinds.append(request.headers.get("X-Demand-Kind", ""))
        body = json.loads(request.content)
        assert body["user"] == STRESS_USER
        answer = self.answers.get(host, "ok")
        if answer == "http_500":
            return httpx.Response(500, json={"object": "error", "message": "boom"})
        if answer == "garbage":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"<html>nope</html>\n")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._stream(host))

    async def _stream(self, host: str) -> AsyncIterator[bytes]:
        self.open[host] += 1
        try:
            for _ in range(self.tokens):
                chunk = {"model": "m", "choices": [{"index": 0, "delta": {"content": " tok"}}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                await asyncio.sleep(0.005)
            usage = {"model": "m", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": self.tokens}}
            yield b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
        finally:
            self.open[host] -= 1  # the client closed the stream: the slot is free


class FakeLoad:
    def __init__(self) -> None:
        self.loads: dict[str, ReplicaLoad] = {}

    async def read(self) -> dict[str, ReplicaLoad]:
        return dict(self.loads)

    async def aclose(self) -> None:
        pass


def make_harness(fake: FakeReplicas, clock: FakeClock, *, replicas: tuple[str, ...] = ("r-0",),
                 target: int = 7) -> tuple[StressHarness, list[UsageRecord]]:
    rows: list[UsageRecord] = []
    harness = StressHarness(
        {rid: f"http://{rid}.invalid" for rid in replicas}, load=FakeLoad(),
        read_targets=lambda now: ({}, None), sink=rows.extend,
        config=HarnessConfig(interval_s=0.25, reserve=1, cadence_s=60, backoff_base_s=0.5, backoff_max_s=8.0),
        clock=clock, wall=lambda: WALL, transport=fake.transport(),
    )
    harness.follower.observe({None: Target(target, WALL + timedelta(hours=1))}, WALL, WALL)
    return harness, rows


async def settle(rounds: int = 5) -> None:
    """Let stream tasks connect, or notice their cancellation and close."""
    for _ in range(rounds):
        await asyncio.sleep(0.01)


def see(harness: StressHarness, clock: FakeClock, external: dict[str, int]) -> None:
    harness.loads = {rid: load(n, at=clock()) for rid, n in external.items()}


def test_a_spike_cancels_the_excess_stress_at_once_and_counts_it_preempted() -> None:
    async def scenario() -> None:
        fake, clock = FakeReplicas(), FakeClock()
        harness, rows = make_harness(fake, clock)
        await harness.start()
        for _ in range(8):  # ramp up to 8 - 1 reserve - 1 external
            see(harness, clock, {"r-0": 1})
            harness.step()
            clock.advance(0.25)
            await settle()
        assert fake.open["r-0.invalid"] == 6 and harness.own_inflight("r-0") == 6
        see(harness, clock, {"r-0": 4})  # external demand arrives: 8 - 1 - 4 = 3 allowed
        harness.step()
        assert harness.own_inflight("r-0") == 3  # in the same pass, not slot by slot
        await settle()
        assert fake.open["r-0.invalid"] == 3  # the streams were closed: the slots are free
        see(harness, clock, {"r-0": 7})
        harness.step()
        await settle()
        assert fake.open["r-0.invalid"] == 0
        await harness.close()
        assert harness.tally.errors == 0
        assert harness.tally.preempted == 6  # three, then three more; shutdown had nothing left
        preempted = [r for r in rows if r.outcome is Outcome.preempted]
        assert len(preempted) == 6 and all(r.failure_reason == "yield_external" for r in preempted)
        assert all(r.demand_kind is DemandKind.internal_stress for r in rows)
        assert set(fake.kinds) == {"internal_stress"}

    asyncio.run(scenario())


def test_a_stale_reading_stops_stress_without_failures() -> None:
    async def scenario() -> None:
        fake, clock = FakeReplicas(), FakeClock()
        harness, rows = make_harness(fake, clock)
        await harness.start()
        for _ in range(3):  # ramp: two slots per interval
            see(harness, clock, {"r-0": 0})
            harness.step()
            clock.advance(0.25)
            await settle()
        assert harness.own_inflight("r-0") == 6
        for _ in range(4):  # passes on time, but no new reading: after a second it is stale
            harness.step()
            clock.advance(0.25)
        harness.step()
        await settle()
        assert fake.open["r-0.invalid"] == 0
        await harness.close()
        assert {r.failure_reason for r in rows} == {"stale_load"} and len(rows) == harness.tally.launched
        assert harness.tally.errors == 0

    asyncio.run(scenario())


def test_the_dead_man_brings_stress_to_zero() -> None:
    async def scenario() -> None:
        fake, clock = FakeReplicas(), FakeClock()
        harness, rows = make_harness(fake, clock)
        await harness.start()
        for _ in range(3):
            see(harness, clock, {"r-0": 0})
            harness.step()
            clock.advance(0.25)
            await settle()
        assert harness.own_inflight("r-0") == 6
        harness.wall = lambda: WALL + timedelta(seconds=121)  # two cadences with no target written
        see(harness, clock, {"r-0": 0})
        harness.step()
        await settle()
        assert fake.open["r-0.invalid"] == 0 and harness.stats()["dead_man"]
        await harness.close()
        assert [r.failure_reason for r in rows] == ["target_lowered"] * 6

    asyncio.run(scenario())


@pytest.mark.parametrize("answer", ["http_500", "garbage"])
def test_a_replica_answering_errors_or_garbage_is_backed_off_not_hammered(answer: str) -> None:
    async def scenario() -> None:
        fake = FakeReplicas(tokens=3, answers={"r-1.invalid": answer})
        clock = FakeClock()
        harness, rows = make_harness(fake, clock, replicas=("r-0", "r-1"))
        await harness.start()
        for _ in range(40):  # ten seconds of fast-loop passes
            see(harness, clock, {"r-0": 0, "r-1": 0})
            harness.step()
            clock.advance(0.25)
            await settle(2)
        await harness.close()
        bad = fake.requests["r-1.invalid"]
        # Backoff 0.5, 1, 2, 4, 8 s after each failure, one probe at a time: a handful, not 7 slots x 40 passes.
        assert 3 <= bad <= 6
        assert harness.tally.errors == bad
        reason = "http_500" if answer == "http_500" else "garbage"
        assert harness.stats()["errors_by_replica"] == {f"r-1:{reason}": bad}
        assert fake.requests["r-0.invalid"] > 20  # the healthy replica kept its stress
        failed = [r for r in rows if r.outcome is Outcome.failed]
        assert {r.replica_id for r in failed} == {"r-1"}

    asyncio.run(scenario())


def test_completed_stress_is_recorded_with_tokens_ttft_and_itl() -> None:
    async def scenario() -> None:
        fake, clock = FakeReplicas(tokens=5), FakeClock()
        harness, rows = make_harness(fake, clock, target=1)
        await harness.start()
        see(harness, clock, {"r-0": 0})
        harness.step()
        for _ in range(10):
            await settle()
        await harness.close()
        ok = [r for r in rows if r.outcome is Outcome.ok]
        assert ok, rows
        first = ok[0]
        assert (first.replica_id, first.prompt_tokens, first.completion_tokens, first.model) == ("r-0", 10, 5, "m")
        assert first.ttft_s is not None and first.itl_s is not None and first.latency_s is not None

    asyncio.run(scenario())


def test_a_starved_fast_loop_drops_its_stress_and_pauses() -> None:
    async def scenario() -> None:
        fake, clock = FakeReplicas(), FakeClock()
        harness, rows = make_harness(fake, clock)
        await harness.start()
        for _ in range(3):
            see(harness, clock, {"r-0": 0})
            harness.step()
            clock.advance(0.25)
            await settle()
        assert harness.own_inflight("r-0") == 6
        clock.advance(1.0)  # the process did not run for over a second; a fresh reading arrives at once
        see(harness, clock, {"r-0": 0})
        harness.step()
        await settle()
        assert fake.open["r-0.invalid"] == 0
        for _ in range(4):  # it stays quiet for a while, fresh readings or not
            clock.advance(0.25)
            see(harness, clock, {"r-0": 0})
            harness.step()
        assert harness.own_inflight("r-0") == 0
        for _ in range(20):  # five seconds of passes on time: then it ramps again
            clock.advance(0.25)
            see(harness, clock, {"r-0": 0})
            harness.step()
        assert harness.own_inflight("r-0") > 0
        await harness.close()
        assert [r.failure_reason for r in rows if r.failure_reason != "shutdown"] == ["harness_late"] * 6

    asyncio.run(scenario())
