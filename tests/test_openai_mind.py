"""The LLM mind over real HTTP, and the scripted mind: what a tick records for each kind of answer.

The OpenAI-compatible server is the lab's scripted endpoint (`lab.script_mind`) on 127.0.0.1, so
these tests also hold the endpoint and `OVERSEER_MIND=script:FILE` to the same script format.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from aiohttp import web
from http_fixtures import LoopbackServer, closed_port_url

from overseer_dagster.adapters import openai_mind
from overseer_dagster.adapters.mind import MindAnswer, UnconfiguredMind
from overseer_dagster.adapters.openai_mind import PROMPT_VERSION, OpenAIMind, envelope_schema, public_context
from overseer_dagster.adapters.script_mind import ScriptMind
from overseer_dagster.core import redact
from overseer_dagster.core.context import StressStatus, TickContext
from overseer_dagster.core.fleet import FleetSnapshot
from overseer_dagster.core.mind_script import ScriptError, parse_script
from overseer_dagster.defs import assets
from overseer_dagster.defs.jobs import overseer_tick
from overseer_dagster.defs.resources import FleetResource, MindResource, StoreResource
from overseer_dagster.lab.script_mind import STATE, ScriptState, script_mind_app
from overseer_dagster.settings import TickSettings
from overseer_dagster.store import connect, journal
from overseer_dagster.tick import run_tick

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
STOP_AND_WARM = json.dumps({"actions": [
    {"kind": "stop_stress", "reason": "testing"},
    {"kind": "warm_replica", "replica_id": "r-1", "requests": 4},
]})
# Planted where a careless fleet source could put them; built here, nothing real.
PLANTED_URL = "http://10.23.45.67:8000/health"
PLANTED_IP = "192.168.77.12"
PLANTED_KEY = "sk-" + "Fake" * 6
PLANTED = re.compile("|".join(re.escape(s) for s in (PLANTED_URL, PLANTED_IP, PLANTED_KEY)))


def fleet(unknown_reason: str | None = None) -> FleetSnapshot:
    replicas = [
        {"replica_id": f"r-{i}", "health": "healthy", "routing_state": "admitted", "inflight": 0,
         "max_inflight": 16, "observed_at": NOW.isoformat()}
        for i in range(3)
    ]
    if unknown_reason is not None:
        replicas[2].update(health="unknown", unknown_reason=unknown_reason)
    return FleetSnapshot.model_validate({"observed_at": NOW.isoformat(), "replicas": replicas})


def context(snapshot: FleetSnapshot | None = None) -> TickContext:
    return TickContext(now=NOW, cadence_s=60, fleet=snapshot or fleet())


def tick(engine, mind, snapshot: FleetSnapshot | None = None) -> list[dict]:  # noqa: ANN001
    return run_tick(engine, now=NOW, settings=TickSettings(), enabled=True, mode="autonomous",
                    fleet=snapshot or fleet(), fleet_problem=None, demand=None, stress=StressStatus(),
                    mind=mind).rows


@contextmanager
def scripted_server(*entries: object, structured_output: bool = True) -> Iterator[tuple[str, ScriptState]]:
    """The lab's scripted endpoint serving `entries`; yields (base URL with /v1, its state)."""
    app = script_mind_app(json.dumps(list(entries)), structured_output=structured_output)
    with LoopbackServer(app) as base:
        yield f"{base}/v1", app[STATE]


@contextmanager
def raw_server(body: bytes, status: int = 200) -> Iterator[str]:
    """A server answering every chat completion with exactly `body`."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    with LoopbackServer(app) as base:
        yield f"{base}/v1"


def state_of(row: dict) -> tuple:
    return row["state"], row["reason"], row["detail"]


# --- the answer goes through the tick's parser ------------------------------------------------


def test_answer_is_parsed_by_the_tick_into_queued_rows(engine) -> None:
    with scripted_server(STOP_AND_WARM) as (url, server):
        rows = tick(engine, OpenAIMind(url, "overseer-test"))
    assert [(r["state"], r["kind"]) for r in rows] == [("queued", "stop_stress"), ("queued", "warm_replica")]
    [request] = server.requests
    assert request["model"] == "overseer-test"
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "overseer_actions", "schema": envelope_schema(), "strict": False},
    }
    system, user = request["messages"]
    assert system["role"] == "system" and PROMPT_VERSION in system["content"]


def test_garbage_answer_text_is_one_blocked_row_not_an_exception(engine) -> None:
    with scripted_server("Sure! I would scale out: ```json\n{\"actions\": []}\n``` hope that helps") as (url, _):
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert (row["state"], row["reason"]) == ("blocked", "schema_invalid")


def test_an_answer_asking_for_authority_is_blocked_like_any_minds(engine) -> None:
    raw = json.dumps({"actions": [{"kind": "stop_stress", "approved": True}]})
    with scripted_server(raw) as (url, _):
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert (row["state"], row["reason"]) == ("blocked", "schema_invalid")


# --- the prompt carries only the public-safe context ------------------------------------------


def _planted_fleet() -> FleetSnapshot:
    return fleet(unknown_reason=f"probe {PLANTED_URL} via {PLANTED_IP} key={PLANTED_KEY}")


def _sent_text(server: ScriptState) -> str:
    return json.dumps(server.requests) + json.dumps(server.authorizations)


def test_prompt_is_the_vocabulary_and_the_scrubbed_context_only(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # A scrubber that knows the planted strings proves every context string goes through it.
    monkeypatch.setattr(redact, "redact", lambda text: PLANTED.sub("[redacted]", text))
    snapshot = _planted_fleet()
    with scripted_server(STOP_AND_WARM) as (url, server):
        tick(engine, OpenAIMind(url, "m"), snapshot)
    sent = _sent_text(server)
    assert not PLANTED.search(sent)
    assert "[redacted]" in sent
    system, user = server.requests[0]["messages"]
    assert system["content"] == openai_mind.SYSTEM_PROMPT
    context_json = user["content"].split("\n")[1]
    assert json.loads(context_json) == public_context(context(snapshot))
    assert set(json.loads(context_json)) == set(TickContext.model_fields)


def test_request_carries_no_url_address_or_key_from_the_context(engine) -> None:
    with scripted_server(STOP_AND_WARM) as (url, server):
        tick(engine, OpenAIMind(url, "m"), _planted_fleet())
    sent = _sent_text(server)
    for planted in (PLANTED_URL, PLANTED_IP, PLANTED_KEY, "10.23.45.67"):
        assert planted not in sent


def test_a_clean_context_reaches_the_mind_unchanged() -> None:
    ctx = context()
    assert public_context(ctx) == ctx.model_dump(mode="json")


def test_authorization_header_only_when_a_key_is_configured() -> None:
    key = f"test-{uuid.uuid4().hex}"
    with scripted_server(STOP_AND_WARM, STOP_AND_WARM) as (url, server):
        OpenAIMind(url, "m", api_key=key).propose(context())
        OpenAIMind(url, "m").propose(context())
    assert server.authorizations == [f"Bearer {key}", None]
    assert key not in json.dumps(server.requests)
    assert key not in repr(OpenAIMind(url, "m", api_key=key))


# --- structured output and retries ------------------------------------------------------------


def test_server_refusing_response_format_gets_the_request_again_without_it_and_never_again() -> None:
    with scripted_server(STOP_AND_WARM, '{"actions":[{"kind":"noop"}]}', structured_output=False) as (url, server):
        mind = OpenAIMind(url, "m")
        assert mind.propose(context()) == MindAnswer(raw=STOP_AND_WARM)
        assert mind.propose(context()).raw == '{"actions":[{"kind":"noop"}]}'
    assert server.refused == 1  # the first request only: the mind remembers
    assert all("response_format" not in r for r in server.requests)


def test_a_400_about_something_else_is_not_retried() -> None:
    body = json.dumps({"object": "error", "message": "model 'm' does not exist", "code": 400}).encode()
    with raw_server(body, status=400) as url:
        answer = OpenAIMind(url, "m").propose(context())
    assert answer == MindAnswer(raw=None, unavailable="mind_unavailable", detail="http_400")


def test_answer_cut_off_by_the_token_limit_is_asked_once_more_with_double_the_tokens() -> None:
    with scripted_server({"unavailable": "truncated"}, STOP_AND_WARM) as (url, server):
        answer = OpenAIMind(url, "m", max_tokens=300).propose(context())
    assert answer.raw == STOP_AND_WARM
    assert [r["max_tokens"] for r in server.requests] == [300, 600]


def test_answer_cut_off_twice_is_unavailable(engine) -> None:
    with scripted_server({"unavailable": "truncated"}, {"unavailable": "truncated"}, STOP_AND_WARM) as (url, server):
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert state_of(row) == ("skipped", "mind_unavailable", "truncated")
    assert len(server.requests) == 2


# --- failures are skipped ticks, never exceptions ---------------------------------------------


@pytest.mark.parametrize("entry", [{"unavailable": "timeout"}, {"delay_s": 30}])
def test_timeout_is_a_skipped_tick(engine, entry: dict) -> None:
    with scripted_server(entry) as (url, _):
        [row] = tick(engine, OpenAIMind(url, "m", timeout_s=0.5))
    assert state_of(row) == ("skipped", "mind_unavailable", "timeout")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_error_is_a_skipped_tick(engine, status: int) -> None:
    with scripted_server({"unavailable": f"http_{status}"}) as (url, _):
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert state_of(row) == ("skipped", "mind_unavailable", f"http_{status}")


@pytest.mark.parametrize("body", [
    b'{"choices": [',
    b"<html>bad gateway</html>",
    b"[]",
    b'{"choices": []}',
    b'{"choices": [{"message": "hi"}]}',
    b'{"choices": [{"message": {"content": 42}, "finish_reason": "stop"}]}',
    b'{"choices": [{"message": {"content": "x"}, "finish_reason": 7}]}',
    b"[" * 100_000,
])
def test_malformed_response_body_is_a_skipped_tick(engine, body: bytes) -> None:
    with raw_server(body) as url:
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert state_of(row) == ("skipped", "mind_unavailable", "malformed_response")


def test_malformed_body_from_the_scripted_endpoint_is_a_skipped_tick(engine) -> None:
    with scripted_server({"unavailable": "malformed_response"}) as (url, _):
        [row] = tick(engine, OpenAIMind(url, "m"))
    assert state_of(row) == ("skipped", "mind_unavailable", "malformed_response")


def test_unreachable_server_is_a_skipped_tick(engine) -> None:
    [row] = tick(engine, OpenAIMind(closed_port_url() + "/v1", "m"))
    assert state_of(row) == ("skipped", "mind_unavailable", "connect_error")


def test_oversized_response_is_refused() -> None:
    with raw_server(b" " * (openai_mind.MAX_RESPONSE_BYTES + 1)) as url:
        answer = OpenAIMind(url, "m").propose(context())
    assert answer.detail == "response_too_large"


def test_null_content_is_an_empty_answer() -> None:
    with raw_server(b'{"choices": [{"message": {"content": null}, "finish_reason": "stop"}]}') as url:
        assert OpenAIMind(url, "m").propose(context()).detail == "empty_answer"


# --- the scripted mind ------------------------------------------------------------------------


def write_script(path: Path, *entries: object, jsonl: bool = True) -> Path:
    text = "\n".join(json.dumps(e) for e in entries) if jsonl else json.dumps(list(entries))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_script_mind_advances_across_separate_instances(tmp_path: Path) -> None:
    script = write_script(tmp_path / "mind.jsonl", STOP_AND_WARM, "garbage", {"unavailable": "timeout"})
    state = tmp_path / "home" / "mind-script.pos"
    answers = [ScriptMind(script, state).propose(context()) for _ in range(4)]
    assert answers == [
        MindAnswer(raw=STOP_AND_WARM),
        MindAnswer(raw="garbage"),
        MindAnswer(raw=None, unavailable="mind_unavailable", detail="timeout"),
        MindAnswer(raw=None, unavailable="mind_unavailable", detail="script_exhausted"),
    ]


def test_editing_the_script_starts_it_again(tmp_path: Path) -> None:
    state = tmp_path / "mind-script.pos"
    script = write_script(tmp_path / "mind.json", "first", "second", jsonl=False)
    assert ScriptMind(script, state).propose(context()).raw == "first"
    write_script(script, "new first", jsonl=False)
    assert ScriptMind(script, state).propose(context()).raw == "new first"


def test_script_delays_play_out_against_the_mind_timeout(tmp_path: Path) -> None:
    slept: list[float] = []
    script = write_script(tmp_path / "mind.jsonl", {"delay_s": 30}, {"delay_s": 2, "answer": "late"}, {"delay_s": 1})
    mind = ScriptMind(script, tmp_path / "pos", timeout_s=5, sleep=slept.append)
    assert [mind.propose(context()) for _ in range(3)] == [
        MindAnswer(raw=None, unavailable="mind_unavailable", detail="timeout"),
        MindAnswer(raw="late"),
        MindAnswer(raw=None, unavailable="mind_unavailable", detail="http_504"),
    ]
    assert slept == [5, 2, 1]


def test_missing_or_invalid_script_is_unconfigured_without_naming_the_path(tmp_path: Path) -> None:
    missing = ScriptMind(tmp_path / "nope.jsonl", tmp_path / "pos").propose(context())
    assert missing.unavailable == "mind_unconfigured" and str(tmp_path) not in (missing.detail or "")
    bad = write_script(tmp_path / "bad.jsonl", "ok", {"answer": "x", "unavailable": "timeout"})
    invalid = ScriptMind(bad, tmp_path / "pos").propose(context())
    assert invalid.unavailable == "mind_unconfigured" and "line 2" in (invalid.detail or "")


@pytest.mark.parametrize("text,problem", [
    ("", "no entries"),
    ('"ok"\n{"unavailable": "Timeout!"}\n', "line 2"),
    ('"ok"\n[1]\n', "line 2"),
    ('["ok", 5]', "entry 1"),
    ('{"delay_s": -1}', "line 1"),
    ('{"answer": "x", "extra": 1}', "line 1"),
    ("not json", "line 1"),
])
def test_script_format_errors_name_the_entry(text: str, problem: str) -> None:
    with pytest.raises(ScriptError, match=problem):
        parse_script(text)


def test_scripted_mind_and_scripted_endpoint_answer_alike(tmp_path: Path) -> None:
    entries = [STOP_AND_WARM, "garbage", {"unavailable": "http_503"}, {"unavailable": "malformed_response"},
               {"unavailable": "timeout"}, {"delay_s": 0.05, "answer": "late"}, {"delay_s": 0.05}]
    script = write_script(tmp_path / "mind.jsonl", *entries)
    in_process = ScriptMind(script, tmp_path / "pos", timeout_s=0.5, sleep=lambda s: None)
    with scripted_server(*entries) as (url, _):
        over_http = OpenAIMind(url, "m", timeout_s=0.5)
        for _ in entries:
            assert in_process.propose(context()) == over_http.propose(context())
        # Past the end neither cycles: in process the script is exhausted, over HTTP the endpoint answers 503.
        assert in_process.propose(context()).detail == "script_exhausted"
        assert over_http.propose(context()).detail == "http_503"


# --- the resource and the code location -------------------------------------------------------


@pytest.mark.parametrize("env,variable", [
    ({"OVERSEER_MIND": "openai"}, "OVERSEER_MIND_BASE_URL and OVERSEER_MIND_MODEL"),
    ({"OVERSEER_MIND": "openai", "OVERSEER_MIND_BASE_URL": "http://127.0.0.1:9/v1"}, "OVERSEER_MIND_MODEL"),
    ({"OVERSEER_MIND": "openai", "OVERSEER_MIND_MODEL": "m"}, "OVERSEER_MIND_BASE_URL"),
    ({"OVERSEER_MIND": "script:"}, "script:FILE"),
    ({"OVERSEER_MIND": "openai", "OVERSEER_MIND_BASE_URL": "http://127.0.0.1:9/v1", "OVERSEER_MIND_MODEL": "m",
      "OVERSEER_MAX_SCALE_OUT": "many"}, "OVERSEER_MAX_SCALE_OUT"),
])
def test_openai_mind_without_its_variables_is_a_skipped_tick_naming_them(
    engine, monkeypatch: pytest.MonkeyPatch, env: dict, variable: str
) -> None:
    for name in ("OVERSEER_MIND_BASE_URL", "OVERSEER_MIND_MODEL", "OVERSEER_MIND_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mind = MindResource.from_env().get()
    assert isinstance(mind, UnconfiguredMind)
    [row] = tick(engine, mind)
    assert row["state"] == "skipped" and row["reason"] == "mind_unconfigured" and variable in row["detail"]


def _run_tick_job(mind: MindResource, store_url: str) -> list[dict]:
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([assets]),
        jobs=[overseer_tick],
        resources={"store": StoreResource(database_url=store_url), "fleet": FleetResource(source="sample"),
                   "mind": mind},
    )
    result = defs.resolve_job_def("overseer_tick").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [tick_id] = [e.materialization.metadata["tick_id"].value for e in result.get_asset_materialization_events()
                 if "tick_id" in e.materialization.metadata]
    return journal.for_tick(connect(store_url), tick_id)


def test_tick_job_replays_the_script_across_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = json.dumps({"actions": [{"kind": "warm_replica", "replica_id": "vllm-3", "requests": 4}]})
    script = write_script(tmp_path / "mind.jsonl", warm, "not a proposal")
    monkeypatch.setenv("OVERSEER_MIND", f"script:{script}")
    assert str(script) not in repr(MindResource.from_env())  # the UI shows the variable's name, not the path
    # Each run its own store (no cadence wait); the script position lives in OVERSEER_HOME.
    first = _run_tick_job(MindResource.from_env(), f"sqlite:///{tmp_path / 'a.db'}")
    second = _run_tick_job(MindResource.from_env(), f"sqlite:///{tmp_path / 'b.db'}")
    assert [(r["state"], r["kind"]) for r in first] == [("queued", "warm_replica")]
    assert [(r["state"], r["reason"]) for r in second] == [("blocked", "schema_invalid")]


def test_tick_job_asks_the_openai_mind_with_the_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"test-{uuid.uuid4().hex}"
    warm = json.dumps({"actions": [{"kind": "warm_replica", "replica_id": "vllm-3", "requests": 4}]})
    with scripted_server(warm) as (url, server):
        monkeypatch.setenv("OVERSEER_MIND", "openai")
        monkeypatch.setenv("OVERSEER_MIND_BASE_URL", url)
        monkeypatch.setenv("OVERSEER_MIND_MODEL", "overseer-test")
        monkeypatch.setenv("OVERSEER_MIND_API_KEY", key)
        mind = MindResource.from_env()
        # The resource (what the UI shows) holds the variables' names, not the key or the URL.
        assert key not in repr(mind) and url not in repr(mind)
        rows = _run_tick_job(mind, f"sqlite:///{tmp_path / 'store.db'}")
    assert [(r["state"], r["kind"]) for r in rows] == [("queued", "warm_replica")]
    assert server.authorizations == [f"Bearer {key}"]


def _told_limits(request: dict) -> dict:
    """The limits block of the user message the mind received."""
    lines = request["messages"][1]["content"].split("\n")
    return json.loads(lines[lines.index(openai_mind.LIMITS_HEADER) + 1])


def test_tick_job_tells_the_openai_mind_the_limits_its_proposals_are_held_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = json.dumps({"actions": [{"kind": "warm_replica", "replica_id": "vllm-3", "requests": 4}]})
    with scripted_server(warm) as (url, server):
        for name, value in (("OVERSEER_MIND", "openai"), ("OVERSEER_MIND_BASE_URL", url),
                            ("OVERSEER_MIND_MODEL", "m"), ("OVERSEER_GPU_CLASSES", "h200,b200"),
                            ("OVERSEER_MAX_SCALE_OUT", "2"), ("OVERSEER_PAYEE_REFS", "payee-lab,payee-gpu")):
            monkeypatch.setenv(name, value)
        [row] = _run_tick_job(MindResource.from_env(), f"sqlite:///{tmp_path / 'store.db'}")
    assert row["state"] == "queued"
    told = _told_limits(server.requests[0])
    assert told == {"gpu_classes": ["b200", "h200"], "max_scale_out_count": 2,
                    "max_actions_per_tick": TickSettings().limits.max_actions_per_tick}
    # Payees are wallet configuration: they stay with the operator, never in a model's prompt.
    sent = json.dumps(server.requests)
    assert "payee-lab" not in sent and "payee-gpu" not in sent
