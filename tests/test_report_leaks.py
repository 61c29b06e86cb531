"""Secrets planted in every input of a tick never reach a public surface.

The real `overseer_tick` job runs in-process with secrets in the fleet source (replica error
text, a hostile replica id), the mind's output and its unavailability reason, and the ledger's
metadata. Then every Dagster event of every run (messages, metadata, log lines), the run tags,
the report file and the default CLI output are scanned: no planted string appears in any of them,
and neither does a local path.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from overseer_dagster import cli
from overseer_dagster.adapters.mind import MindAnswer
from overseer_dagster.core.demand import UsageRecord
from overseer_dagster.definitions import defs
from overseer_dagster.defs.resources import FleetResource, MindResource, StoreResource
from overseer_dagster.store import connect, ledger

from health_fixtures import secrets

PLANTED = secrets()


class _Answer:
    name = "script"

    def __init__(self, answer: MindAnswer) -> None:
        self.answer = answer

    def propose(self, ctx) -> MindAnswer:  # noqa: ANN001
        return self.answer


class PlantedMind(MindResource):
    """A mind that answers exactly what the test says, wired through the Dagster job's `mind` resource."""

    raw: str | None = None
    unavailable: str | None = None
    detail: str | None = None

    def get(self) -> _Answer:
        return _Answer(MindAnswer(raw=self.raw, unavailable=self.unavailable, detail=self.detail))


def _replica(rid: str, **fields) -> dict:
    now = datetime.now(UTC).isoformat()
    return {"replica_id": rid, "health": "healthy", "routing_state": "admitted", "inflight": 2, "max_inflight": 16,
            "itl_p90_s": 0.03, "observed_at": now, **fields}


def _source(folder: Path, name: str, replicas: list[dict]) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"observed_at": datetime.now(UTC).isoformat(), "replicas": replicas}))
    return f"snapshot:{path}"


def _tick(instance: dg.DagsterInstance, store_url: str, source: str, mind: PlantedMind) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("overseer_tick").execute_in_process(
        instance=instance,
        raise_on_error=False,
        resources={"store": StoreResource(database_url=store_url), "fleet": FleetResource(source=source),
                   "mind": mind},
    )


def _public_text(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    """Everything a run shows: every event (message, metadata, log line, errors), and its tags."""
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    events = [serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    return "\n".join([*events, json.dumps(dict(run.tags)), json.dumps(run.run_config, default=str)])


def test_planted_secrets_reach_no_public_surface(store_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERSEER_CADENCE_S", "1")  # ticks one second apart may each decide
    monkeypatch.setenv("OVERSEER_HEALTH_FRESH_CADENCES", "600")  # and the readings stay fresh meanwhile
    now = datetime.now(UTC)
    ledger.record_usage(connect(store_url), [
        UsageRecord(ts=now - timedelta(seconds=1), demand_kind="external", replica_id=PLANTED["origin"],
                    model=PLANTED["bearer"], prompt_tokens=10, completion_tokens=5, itl_s=0.02),
        UsageRecord(ts=now - timedelta(seconds=1), demand_kind="external", model=PLANTED["seed"],
                    outcome="failed", failure_reason=PLANTED["ip_message"]),
    ])
    leaky_fleet = _source(tmp_path, "leaky", [
        _replica("r-0"),
        _replica("r-1", health="unknown", unknown_reason=PLANTED["ip_message"]),
        _replica("r-2", health="unknown", unknown_reason=f"{PLANTED['bearer']} {PLANTED['seed']}"),
    ])
    # Replica ids that fail the pattern: the whole snapshot is rejected, with a reason.
    hostile_fleet = _source(tmp_path, "hostile", [_replica(PLANTED["origin"]), _replica(f"{PLANTED['ip']}:8000")])
    leaky_summary = f"{PLANTED['bearer']} via {PLANTED['origin']} seed {PLANTED['seed']} {PLANTED['prompt']}"
    plan = [
        ("blocked", leaky_fleet, PlantedMind(raw=json.dumps({"actions": [
            {"kind": "emit_report", "topic": "health", "summary": leaky_summary}]}) + f" {PLANTED['vendor_key']}")),
        ("skipped", hostile_fleet, PlantedMind(raw='{"actions":[{"kind":"noop"}]}')),
        ("mind_unavailable", leaky_fleet,
         PlantedMind(unavailable=PLANTED["ip_message"], detail=f"{PLANTED['bearer']} {PLANTED['seed']}")),
        ("decided", leaky_fleet,
         PlantedMind(raw=json.dumps({"actions": [{"kind": "stop_stress", "reason": PLANTED["prompt"]}]}))),
    ]
    results = []
    with dg.instance_for_test() as instance:
        for i, (outcome, source, mind) in enumerate(plan):
            if i:
                time.sleep(1.05)
            result = _tick(instance, store_url, source, mind)
            text = _public_text(instance, result)
            assert result.success, text[-3000:]
            assert _meta(result, "overseer_decision")["outcome"] == outcome
            results.append(result)

            # Every event (messages, metadata, log lines), the run's tags and config.
            for name, secret in PLANTED.items():
                assert secret not in text, f"{name} leaked into the events of tick {i} ({outcome})"
            assert str(tmp_path) not in text, f"a local path leaked into tick {i}"
            # Dagster's default IO manager would add a `path` entry: ours adds none.
            for event in result.get_asset_materialization_events():
                metadata = event.materialization.metadata
                assert "path" not in metadata
                assert not any(isinstance(v, dg.PathMetadataValue) for v in metadata.values())

    # The replica error text became a reason code in the report; the secret stayed out.
    report = _meta(results[0], "fleet_health")["report"]
    assert "| r-1 | unknown | admitted | no | unknown_reason_unparsed |" in report

    # A hostile replica id at the source rejects the snapshot with a reason.
    assert _meta(results[1], "fleet_state")["fleet_problem"] == "fleet_snapshot_invalid"
    document = _meta(results[1], "fleet_health")["document"]
    fleet = next(s for s in document["signals"] if s["kind"] == "fleet")
    # The previous tick's reading, aged and not renewed: stale, the source's code first; no replica line shown.
    assert (fleet["state"], fleet["reasons"][0]) == ("stale", "fleet_snapshot_invalid")
    assert document["replicas"] == [] and document["overclaim_blocked"] is True

    # The mind's unavailability text became a code.
    mind = next(s for s in _meta(results[2], "fleet_health")["document"]["signals"] if s["kind"] == "mind")
    assert mind == {**mind, "state": "unavailable", "reasons": ["mind_unavailable"]}

    # The report file and the CLI's default output are public-safe; --private is marked as such.
    latest = (tmp_path / "home" / "reports" / "latest.json").read_text()
    monkeypatch.setenv("OVERSEER_DATABASE_URL", store_url)
    outputs = [_cli("health"), _cli("health", "--json")]
    for text in (latest, *outputs):
        for name, secret in PLANTED.items():
            assert secret not in text, f"{name} leaked"
        assert str(tmp_path) not in text
    assert json.loads(outputs[1])["overclaim_blocked"] is True
    assert _cli("health", "--private").startswith("PRIVATE")


def _cli(*args: str) -> str:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert cli.main(list(args)) == 0
    return buffer.getvalue()


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
