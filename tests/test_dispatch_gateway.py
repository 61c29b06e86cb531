"""Router admin and warm-up over real HTTP (a fake gateway on loopback), and the heal loop end to end:
a replica whose health recovers is back in rotation after one tick, one sensor tick and one dispatch."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
from dispatch_fixtures import Clock, FakeGateway, queue, replica, store_actuators
from http_fixtures import LoopbackServer, closed_port_url

from overseer_dagster import dispatch, settings
from overseer_dagster.adapters.actuators import GatewayWarmUp, HttpRouterAdmin
from overseer_dagster.adapters.fleet_source import SnapshotSource
from overseer_dagster.adapters.mind import RuleMind
from overseer_dagster.core.context import StressStatus
from overseer_dagster.store import actions, journal
from overseer_dagster.tick import run_tick


@pytest.fixture
def gateway():  # noqa: ANN201
    gw = FakeGateway(replicas={"r-0": replica("r-0"), "r-1": replica("r-1", routing_state="draining"),
                               "r-2": replica("r-2", warm=False)})
    with LoopbackServer(gw.app()) as base:
        gw.base = base
        yield gw


def dispatch_now(engine, action_id, base, *, timeout_s=2.0):  # noqa: ANN001, ANN201
    act = store_actuators(engine, router=HttpRouterAdmin(base, timeout_s=timeout_s),
                          warm=GatewayWarmUp(base, timeout_s=timeout_s))
    now = datetime.now(UTC)
    return dispatch.dispatch_action(engine, action_id, run_id="run-1", clock=Clock(now), enabled=True,
                                    mode="autonomous", cadence_s=60, fleet=SnapshotSource(f"{base}/fleet/state"),
                                    actuators=act)


def test_readmit_posts_admit_and_succeeds(engine, gateway) -> None:
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"}, now=datetime.now(UTC))
    result = dispatch_now(engine, action_id, gateway.base)
    assert (result.outcome, result.detail) == ("succeeded", "r-1 is admitted")
    assert gateway.admin_calls == [("r-1", "admit")]
    assert gateway.replicas["r-1"]["routing_state"] == "admitted"


def test_warm_up_pins_the_replica_and_labels_demand_internal(engine, gateway) -> None:
    action_id = queue(engine, {"kind": "warm_replica", "replica_id": "r-2", "requests": 6}, now=datetime.now(UTC))
    assert dispatch_now(engine, action_id, gateway.base).outcome == "succeeded"
    assert len(gateway.completions) == 6
    assert {(c["replica"], c["kind"], c["model"]) for c in gateway.completions} == {("r-2", "internal", "lab-model")}
    assert all(1 <= c["max_tokens"] <= 4 for c in gateway.completions)


def test_warm_up_that_the_gateway_did_not_pin_fails(engine, gateway) -> None:
    gateway.echo_replica = False
    action_id = queue(engine, {"kind": "warm_replica", "replica_id": "r-2", "requests": 2}, now=datetime.now(UTC))
    assert dispatch_now(engine, action_id, gateway.base).reason == "route_not_pinned"


@pytest.mark.parametrize("fault,reason", [
    (("hang", 3), "router_timeout"),
    (("status", 503), "router_error"),
    (("status", 500), "router_error"),
    (("status", 409), "router_refused"),
    (("state", "draining"), "router_state_mismatch"),
])
def test_router_trouble_is_a_failed_outcome_with_a_typed_reason(engine, gateway, fault, reason) -> None:  # noqa: ANN001
    gateway.faults["admit"] = fault
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"}, now=datetime.now(UTC))
    result = dispatch_now(engine, action_id, gateway.base, timeout_s=0.5)
    assert (result.outcome, result.reason) == ("failed", reason)
    row = [r for r in journal.tail(engine) if r["action_id"] == action_id][-1]
    assert (row["phase"], row["state"], row["reason"]) == ("outcome", "failed", reason)
    assert gateway.base not in (row["detail"] or "")  # the gateway's address stays out of the journal


def test_an_unknown_replica_at_the_gateway_is_a_typed_failure(engine, gateway) -> None:
    # The fleet still lists r-1, but the router no longer knows it.
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"}, now=datetime.now(UTC))
    act = store_actuators(engine, router=HttpRouterAdmin(gateway.base))
    del gateway.replicas["r-1"]
    from dispatch_fixtures import StaticFleet, snapshot

    result = dispatch.dispatch_action(
        engine, action_id, run_id="r", clock=Clock(datetime.now(UTC)), enabled=True, mode="autonomous",
        cadence_s=60, fleet=StaticFleet(snapshot(replica("r-1", routing_state="draining", now=datetime.now(UTC)),
                                                 now=datetime.now(UTC))), actuators=act)
    assert (result.outcome, result.reason) == ("failed", "unknown_replica")


def test_an_unreachable_gateway_is_a_typed_failure(engine) -> None:
    from dispatch_fixtures import StaticFleet, snapshot

    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"}, now=datetime.now(UTC))
    now = datetime.now(UTC)
    result = dispatch.dispatch_action(
        engine, action_id, run_id="r", clock=Clock(now), enabled=True, mode="autonomous", cadence_s=60,
        fleet=StaticFleet(snapshot(replica("r-1", routing_state="draining", now=now), now=now)),
        actuators=store_actuators(engine, router=HttpRouterAdmin(closed_port_url())))
    assert (result.outcome, result.reason) == ("failed", "router_unreachable")


def test_without_a_router_router_actions_fail_as_unconfigured(engine) -> None:
    from dispatch_fixtures import StaticFleet, snapshot

    now = datetime.now(UTC)
    action_id = queue(engine, {"kind": "readmit_replica", "replica_id": "r-1"}, now=now)
    result = dispatch.dispatch_action(
        engine, action_id, run_id="r", clock=Clock(now), enabled=True, mode="autonomous", cadence_s=60,
        fleet=StaticFleet(snapshot(replica("r-1", routing_state="draining", now=now), now=now)),
        actuators=store_actuators(engine))
    assert (result.outcome, result.reason) == ("failed", "router_unconfigured")


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"OVERSEER_FLEET_SOURCE": "sample"}, None),
    ({"OVERSEER_FLEET_SOURCE": "snapshot:fleet.json"}, None),
    ({"OVERSEER_FLEET_SOURCE": "snapshot:http://gateway.internal:8080/fleet/state"}, "http://gateway.internal:8080"),
    ({"OVERSEER_FLEET_SOURCE": "snapshot:http://gw:1/fleet/state", "OVERSEER_ROUTER_URL": "https://router:9/"},
     "https://router:9"),
])
def test_router_url_defaults_to_the_fleet_state_origin(env, expected) -> None:  # noqa: ANN001
    assert settings.router_url(env) == expected


def test_router_url_that_is_not_http_fails_naming_the_variable() -> None:
    with pytest.raises(settings.ConfigError, match="OVERSEER_ROUTER_URL"):
        settings.router_url({"OVERSEER_ROUTER_URL": "gateway:8080"})


# --- the heal loop ------------------------------------------------------------------------------------


def test_a_recovered_replica_is_readmitted_within_two_ticks(engine, store_url, gateway, monkeypatch) -> None:
    from test_sensors import evaluate, schedule_state

    from overseer_dagster.definitions import defs
    from overseer_dagster.defs.resources import ActuatorsResource, FleetResource, StoreResource

    source = SnapshotSource(f"{gateway.base}/fleet/state")
    gateway.set("r-1", health="unhealthy")

    def tick():  # noqa: ANN202
        now = datetime.now(UTC)
        return run_tick(engine, now=now, settings=settings.TickSettings(cadence_s=1), enabled=True,
                        mode="autonomous", fleet=source.snapshot(now), fleet_problem=None, demand=None,
                        stress=StressStatus(), mind=RuleMind())

    first = tick()
    assert "readmit_replica" not in {r["kind"] for r in first.rows}  # draining and unhealthy: wait

    gateway.set("r-1", health="healthy")  # the replica recovers
    import time

    time.sleep(1.0)  # one cadence later
    second = tick()
    [readmit] = [r for r in second.rows if r["kind"] == "readmit_replica"]
    assert readmit["state"] == "queued"

    resources = {"store": StoreResource(database_url=store_url), "fleet": FleetResource(source=f"snapshot:{source.location}"),
                 "actuators": ActuatorsResource(router_url=gateway.base)}
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        requests = evaluate(instance, resources).run_requests
        [request] = [r for r in requests if r.tags["overseer/kind"] == "readmit_replica"]
        result = defs.resolve_job_def("dispatch_action").execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags, resources=resources)
    assert result.success
    assert gateway.replicas["r-1"]["routing_state"] == "admitted"
    assert actions.get(engine, readmit["action_id"])["status"] == "succeeded"
    time.sleep(1.0)
    assert "readmit_replica" not in {r["kind"] for r in tick().rows}  # healed: nothing more to do


def test_a_flapping_replica_is_proposed_for_quarantine_but_never_dispatched(engine, store_url, gateway) -> None:
    from test_sensors import evaluate, schedule_state

    from overseer_dagster.defs.resources import FleetResource, StoreResource

    gateway.set("r-0", breaker_trips_30m=3)
    source = SnapshotSource(f"{gateway.base}/fleet/state")
    now = datetime.now(UTC)
    rows = run_tick(engine, now=now, settings=settings.TickSettings(), enabled=True, mode="autonomous",
                    fleet=source.snapshot(now), fleet_problem=None, demand=None, stress=StressStatus(),
                    mind=RuleMind()).rows
    [quarantine] = [r for r in rows if r["kind"] == "quarantine_replica"]
    assert (quarantine["state"], quarantine["authority"]) == ("pending_approval", "gated")
    resources = {"store": StoreResource(database_url=store_url), "fleet": FleetResource(source="sample")}
    with dg.instance_for_test() as instance, schedule_state(instance, running=True):
        result = evaluate(instance, resources)
    assert quarantine["action_id"] not in {r.tags["overseer/action_id"] for r in result.run_requests}
    assert ("r-0", "quarantine") not in gateway.admin_calls
