"""The public-safe projection: allowlisted typed fields, then the scrubber; it fails closed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from overseer_dagster.core import projection
from overseer_dagster.core.health import ClaimName, SignalKind
from overseer_dagster.core.projection import MARKER

from health_fixtures import NOW, demand, fleet, secrets, snapshot


def test_unlisted_fields_are_dropped_and_counted() -> None:
    got = projection.surface("external_demand", {"external_requests": 3, "prompt": "hello", "origin": "x"})
    assert got.value == {"external_requests": 3}
    assert got.withheld == ("external_demand.<unlisted>", "external_demand.<unlisted>")
    assert got.blockers == ("projection",)


@pytest.mark.parametrize("field,value", [
    ("external_requests", "3"),  # a number field given text
    ("external_requests", float("nan")),
    ("external_requests", [1, 2]),
])
def test_values_of_the_wrong_type_are_withheld(field: str, value: object) -> None:
    got = projection.surface("external_demand", {field: value})
    assert got.value == {field: MARKER}
    assert got.blockers == ("projection",)


@pytest.mark.parametrize("value", [
    "connect to 10.20.30.40:8000 failed", "fleet source: timeout", "Schema_Invalid", "x" * 200, "",
])
def test_reason_codes_must_be_codes(value: str) -> None:
    got = projection.surface("fleet_state", {"fleet_problem": value})
    assert got.value["fleet_problem"] == MARKER


def test_a_scrubber_hit_after_projection_is_withheld_and_blocks() -> None:
    """A value can pass its type and still be a secret: a vendor key is a valid replica id."""
    key = secrets()["vendor_key"]
    assert projection.REPLICA_ID.project(key) == key  # it does match the pattern...
    got = projection.project(projection.REPLICA_ID, key)
    assert (got.value, got.blockers) == (MARKER, ("projection",))  # ...and the scrubber catches it


def test_projection_fails_closed_whatever_the_scrubber_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism, independent of today's rules: any finding withholds the value and blocks the snapshot."""
    from overseer_dagster.core import redact

    real = redact.findings
    monkeypatch.setattr(redact, "findings", lambda text: real(text) or (
        [redact.Finding("test", 0, len(text))] if "r-1" in text else []))
    snap, doc = projection.report_document(snapshot())
    assert snap.overclaim_blocked and "projection" in snap.blockers
    assert doc["status"] == "unverified" and doc["overclaim_blocked"] is True
    assert [r["replica_id"] for r in doc["replicas"]] == ["r-0", MARKER, "r-2"]
    markdown, _ = projection.public_report(snapshot())
    assert "r-1" not in markdown and "unverified" in markdown


def test_a_report_whose_text_trips_the_scrubber_is_withheld_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from overseer_dagster.core import redact

    real = redact.findings
    monkeypatch.setattr(redact, "findings", lambda text: real(text) or (
        [redact.Finding("test", 0, 1)] if "## Figures" in text else []))
    markdown, doc = projection.public_report(snapshot())
    assert "withheld" in markdown and "Figures" not in markdown
    assert doc["overclaim_blocked"] is True and "projection" in doc["blockers"]


def test_a_withheld_figure_is_not_stated(monkeypatch: pytest.MonkeyPatch) -> None:
    real = projection.Number.project

    def refuse_goodput(self, value):  # noqa: ANN001, ANN202 - stands in for any future rejection
        if value == 90.0:
            raise projection._Rejected
        return real(self, value)

    monkeypatch.setattr(projection.Number, "project", refuse_goodput)
    _, doc = projection.report_document(snapshot())
    goodput = next(c for c in doc["claims"] if c["name"] == "goodput")
    assert goodput["stated"] is False and goodput["value"] is None and "projection" in goodput["reasons"]


def test_the_public_report_states_only_verified_figures() -> None:
    stale = snapshot(demand=demand(last_row=datetime(2026, 12, 3, 11, 0, tzinfo=UTC)))
    markdown, doc = projection.public_report(stale)
    claims = {c["name"]: c for c in doc["claims"]}
    assert claims["ready_replicas"]["stated"] and claims["ready_replicas"]["value"] == 3
    for name in ("external_demand", "throughput", "goodput"):
        assert claims[name] == {**claims[name], "stated": False, "value": None}
        assert "demand:stale" in claims[name]["reasons"] and "ledger_stale" in claims[name]["reasons"]
    # The measured figures appear nowhere in the public output.
    measured = stale.figures
    for name in ("external_demand", "throughput", "goodput"):
        assert f"| {measured[ClaimName(name)]:g} " not in markdown
    assert "9000" not in json.dumps(doc) and "9000" not in markdown
    assert doc["status"] == "unverified" and "Overclaim blocked" in markdown
    assert "| External demand | unverified | demand:stale, ledger_stale |" in markdown


def test_a_healthy_report_says_so_and_lists_replicas() -> None:
    markdown, doc = projection.public_report(snapshot())
    assert doc["status"] == "healthy" and doc["overclaim_blocked"] is False and doc["blockers"] == []
    assert markdown.startswith("# Fleet health: healthy")
    assert "| Ready replicas | 3 replicas | verified |" in markdown
    assert [r["replica_id"] for r in doc["replicas"]] == ["r-0", "r-1", "r-2"]


def test_a_stale_fleet_shows_no_replica_list() -> None:
    stale = snapshot(fleet=fleet(observed=datetime(2026, 12, 3, 11, 0, tzinfo=UTC)))
    markdown, doc = projection.public_report(stale)
    assert doc["replicas"] == [] and doc["replicas_shown"] is False
    assert "r-0" not in markdown


def test_private_notes_never_reach_the_report() -> None:
    leaky = secrets()["ip_message"]
    snap = snapshot(fleet=fleet(r_2={"health": "unknown", "unknown_reason": leaky}))
    assert snap.notes
    markdown, doc = projection.public_report(snap)
    assert leaky not in markdown and leaky not in json.dumps(doc)
    assert "unknown_reason_unparsed" in markdown


def test_health_metadata_is_numbers_states_and_stated_figures_only() -> None:
    stale = snapshot(demand=None)
    got = projection.surface("fleet_health", projection.health_values(stale))
    assert not got.withheld
    assert got.value["demand_state"] == "unavailable" and got.value["status"] == "unverified"
    assert "external_demand" not in got.value and got.value["ready_replicas"] == 3
    assert all(isinstance(v, (int, float)) for k, v in got.value.items() if not k.endswith("_state") and k != "status")


def test_log_lines_are_templates_of_projected_fields() -> None:
    tick_id = "979e6afd-18b2-4020-94d3-892e5affdcca"
    ok = projection.line("tick {tick_id}: {outcome} ({states})", tick_id=tick_id, outcome="decided",
                         states={"queued": 2, "no_action": 1})
    assert ok.value == f"tick {tick_id}: decided (queued=2, no_action=1)" and not ok.withheld
    bad = projection.line("tick {tick_id}: {outcome}", tick_id="10.20.30.40", outcome=secrets()["bearer"])
    assert bad.value == f"tick {MARKER}: {MARKER}" and bad.blockers == ("projection",)


def test_tick_rows_keep_typed_fields_only() -> None:
    row = {"seq": 1, "created_at": NOW, "state": "skipped", "reason": "mind_unavailable", "kind": None,
           "authority": None, "gate_id": None, "action_id": None}
    got = projection.surface("tick_rows", {"rows": [row, {**row, "reason": "upstream 10.20.30.40 refused"}]})
    assert got.value["rows"][0]["created_at"] == "2026-12-03T12:00:30Z"
    assert got.value["rows"][1]["reason"] == MARKER


def test_run_tags_allowlist() -> None:
    got = projection.surface("run_tags", {"overseer/kind": "stop_stress", "overseer/origin": "http://x"})
    assert got.value == {"overseer/kind": "stop_stress"} and got.blockers == ("projection",)


def test_emit_report_text_is_the_verified_report_not_the_minds_prose() -> None:
    got = projection.emit_report_text("capacity", snapshot(demand=None))
    assert got.value.startswith("Report topic: capacity\n\n# Fleet health: unverified")
    assert not got.withheld
    assert projection.emit_report_text("a prompt", snapshot()).value.startswith(f"Report topic: {MARKER}")


def test_every_report_field_is_allowlisted() -> None:
    """The document built from a snapshot never needs to drop a field: the allowlist covers it."""
    for snap in (snapshot(), snapshot(fleet=None, fleet_problem="fleet_timeout: x"), snapshot(demand=None)):
        _, doc = projection.report_document(snap)
        assert "projection" not in doc["blockers"]
        assert {s["kind"] for s in doc["signals"]} == {k.value for k in SignalKind}
