"""PrometheusSource against a small fake Prometheus on loopback that answers canned API JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web
from http_fixtures import LoopbackServer, closed_port_url

from overseer_dagster.adapters.prometheus_source import PrometheusSource
from overseer_dagster.core.fleet import FleetSnapshot, Health, RoutingState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()

# label value (an address, as `instance` usually is) -> replica id
REPLICA_IDS = {
    "10.0.0.1:8000": "a",
    "10.0.0.2:8000": "b",
    "10.0.0.3:8000": "down",
    "10.0.0.4:8000": "stale",
    "10.0.0.5:8000": "no-waiting",
    "10.0.0.6:8000": "absent",
}


def vector(values: dict[str, float], label: str = "instance") -> dict:
    result = [{"metric": {label: k}, "value": [T, repr(v)]} for k, v in values.items()]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


# Which canned answer a query gets, by what it asks for.
ANSWERS = {
    "up": vector({"10.0.0.1:8000": 1, "10.0.0.2:8000": 1, "10.0.0.3:8000": 0, "10.0.0.4:8000": 1,
                  "10.0.0.5:8000": 1, "10.9.9.9:8000": 1}),
    "running": vector({"10.0.0.1:8000": 6, "10.0.0.2:8000": 30, "10.0.0.4:8000": 1, "10.0.0.5:8000": 2,
                       "10.9.9.9:8000": 99}),
    "waiting": vector({"10.0.0.1:8000": 2, "10.0.0.2:8000": 5, "10.0.0.4:8000": 0}),
    "sampled_at": vector({"10.0.0.1:8000": T - 15, "10.0.0.2:8000": T - 119, "10.0.0.4:8000": T - 121,
                          "10.0.0.5:8000": T - 15}),
}  # fmt: skip


def kind(query: str) -> str:
    if "timestamp(" in query:
        return "sampled_at"
    if "(up)" in query:
        return "up"
    return "running" if "running" in query else "waiting"


@dataclass
class FakePrometheus:
    """Serves `answers` by query kind; `raw`, when set, is sent instead (status, body)."""

    answers: dict[str, dict] = field(default_factory=lambda: dict(ANSWERS))
    raw: tuple[int, str] | None = None
    queries: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def query(request: web.Request) -> web.Response:
            self.queries.append(request.query["query"])
            if self.raw is not None:
                return web.Response(status=self.raw[0], text=self.raw[1], content_type="application/json")
            return web.json_response(self.answers[kind(request.query["query"])])

        app = web.Application()
        app.router.add_get("/api/v1/query", query)
        return app


@pytest.fixture
def prometheus() -> Iterator[tuple[FakePrometheus, str]]:
    fake = FakePrometheus()
    with LoopbackServer(fake.app()) as base_url:
        yield fake, base_url


MAX_INFLIGHT = {"a": 16, "b": 64, "down": 16, "stale": 16, "no-waiting": 16, "absent": 16}


def snapshot(base_url: str, **kwargs: float) -> FleetSnapshot:
    return PrometheusSource(base_url, REPLICA_IDS, MAX_INFLIGHT, **kwargs).snapshot(NOW)


def test_replicas_from_prometheus(prometheus: tuple[FakePrometheus, str]) -> None:
    fake, base_url = prometheus
    fleet = snapshot(base_url)
    assert [r.replica_id for r in fleet.replicas] == list(REPLICA_IDS.values())
    states = {r.replica_id: (r.health, r.unknown_reason) for r in fleet.replicas}
    assert states == {
        "a": (Health.healthy, None),
        "b": (Health.healthy, None),  # 119 s old: within stale_after_s
        "down": (Health.unknown, "scrape_failed"),
        "stale": (Health.unknown, "stale"),  # 121 s old
        "no-waiting": (Health.unknown, "metrics_missing:requests_waiting"),
        "absent": (Health.unknown, "absent"),
    }
    a, b = fleet.replica("a"), fleet.replica("b")
    assert a and b
    assert (a.inflight, a.queue_depth, b.inflight, b.queue_depth) == (8, 2, 35, 5)
    assert fleet.ready_replicas == 2
    assert fleet.headroom == (16 - 8) + (64 - 35)
    assert all(r.routing_state is RoutingState.admitted and r.observed_at == NOW for r in fleet.replicas)
    assert len(fake.queries) == 4 and all("by (instance)" in q for q in fake.queries)
    # Sample times, not the evaluation time: timestamp() of a bare selector.
    assert any("timestamp(vllm:num_requests_running)" in q for q in fake.queries)


def test_label_values_never_leave_the_adapter(prometheus: tuple[FakePrometheus, str]) -> None:
    _, base_url = prometheus
    assert "10.0." not in snapshot(base_url).model_dump_json()


def test_staleness_threshold_is_configurable(prometheus: tuple[FakePrometheus, str]) -> None:
    _, base_url = prometheus
    fleet = snapshot(base_url, stale_after_s=300)
    stale = fleet.replica("stale")
    assert stale is not None and stale.health is Health.healthy


def test_another_replica_label(prometheus: tuple[FakePrometheus, str]) -> None:
    fake, base_url = prometheus
    fake.answers = {k: vector({"pod-7": 1 if k == "up" else 3 if k != "sampled_at" else T}, "pod") for k in ANSWERS}
    fleet = PrometheusSource(base_url, {"pod-7": "p7"}, 8, replica_label="pod").snapshot(NOW)
    p7 = fleet.replica("p7")
    assert p7 is not None and (p7.health, p7.inflight) == (Health.healthy, 6)
    assert all("by (pod)" in q for q in fake.queries)


@pytest.mark.parametrize(
    "raw",
    [
        (400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})),
        (200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}})),
        (200, "{not json"),
        (200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"instance": "10.0.0.1:8000"}, "value": [T, "lots"]}]}})),
        (503, "<html>Service Unavailable</html>"),
    ],
)  # fmt: skip
def test_an_unusable_answer_makes_every_replica_unknown(
    prometheus: tuple[FakePrometheus, str], raw: tuple[int, str]
) -> None:
    fake, base_url = prometheus
    fake.raw = raw
    fleet = snapshot(base_url)
    assert {(r.health, r.unknown_reason) for r in fleet.replicas} == {(Health.unknown, "prometheus_error")}
    assert fleet.headroom == 0


def test_an_unreachable_prometheus_makes_every_replica_unknown() -> None:
    fleet = snapshot(closed_port_url(), timeout_s=1.0)
    assert {r.unknown_reason for r in fleet.replicas} == {"prometheus_error"}


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        PrometheusSource("http://p.invalid", {"x": "Not An Id"}, 8)
    with pytest.raises(ValueError):
        PrometheusSource("http://p.invalid", {"x": "a", "y": "a"}, 8)
    with pytest.raises(ValueError):
        PrometheusSource("http://p.invalid", {"x": "a", "y": "b"}, {"a": 8})
    with pytest.raises(ValueError):
        PrometheusSource("http://p.invalid", {"x": "a"}, 8, replica_label="not a label")
