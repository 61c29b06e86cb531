"""The store: migrations match the tables on both backends; the audit chain detects tampering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import exc, update

from overseer_dagster.core.demand import UsageRecord
from overseer_dagster.store import journal, ledger, targets, write_tx
from overseer_dagster.store.tables import decisions, metadata

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_migrations_create_exactly_the_tables(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _append(engine, n: int) -> None:
    with write_tx(engine) as conn:
        journal.append(conn, [
            journal.Entry(phase="decision", state="queued", kind="noop", created_at=NOW + timedelta(seconds=i))
            for i in range(n)
        ])


def test_chain_verifies_and_names_the_first_tampered_row(engine) -> None:
    _append(engine, 5)
    assert journal.verify(engine).ok
    with engine.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.seq == 3).values(state="succeeded"))
    report = journal.verify(engine)
    assert not report.ok and report.broken_seq == 3


@pytest.mark.parametrize("deleted", [2, 3])
def test_chain_detects_a_deleted_row_at_its_place(engine, deleted: int) -> None:
    _append(engine, 3)
    with engine.begin() as conn:
        conn.execute(decisions.delete().where(decisions.c.seq == deleted))
    report = journal.verify(engine)
    assert not report.ok and report.broken_seq == deleted


def test_ledger_window_groups_by_kind_in_the_database(engine) -> None:
    rows = [UsageRecord(ts=NOW - timedelta(seconds=i), demand_kind="external", prompt_tokens=10,
                        completion_tokens=20, outcome="failed" if i == 0 else "ok") for i in range(5)]
    rows.append(UsageRecord(ts=NOW, demand_kind="internal_stress", completion_tokens=7))
    rows.append(UsageRecord(ts=NOW - timedelta(minutes=5), demand_kind="external", completion_tokens=999))
    ledger.record_usage(engine, rows)
    by_kind = {r["demand_kind"]: r for r in ledger.window_by_kind(engine, NOW, 60)}
    assert by_kind["external"]["requests"] == 5
    assert by_kind["external"]["failures"] == 1
    assert by_kind["external"]["completion_tokens"] == 100
    assert by_kind["internal_stress"]["completion_tokens"] == 7
    assert ledger.last_row_at(engine) == NOW


def test_impossible_stress_target_is_refused_by_the_store(engine) -> None:
    with pytest.raises(ValueError, match="concurrency"), write_tx(engine) as conn:
        targets.set_target(conn, replica_id=None, concurrency=65, now=NOW, expires_at=NOW + timedelta(seconds=60))
    # The database's own constraint holds even for a writer that skips the repository.
    from overseer_dagster.store.tables import stress_targets
    with pytest.raises(exc.IntegrityError), engine.begin() as conn:
        conn.execute(stress_targets.insert().values(created_at=NOW, concurrency=-1, expires_at=NOW + timedelta(1)))


def test_newest_unexpired_target_per_scope_wins(engine) -> None:
    with write_tx(engine) as conn:
        targets.set_target(conn, replica_id=None, concurrency=4, now=NOW, expires_at=NOW + timedelta(seconds=60))
        targets.set_target(conn, replica_id=None, concurrency=8, now=NOW, expires_at=NOW + timedelta(seconds=60))
        targets.set_target(conn, replica_id="r-1", concurrency=2, now=NOW, expires_at=NOW + timedelta(seconds=10))
    active = targets.active(engine, NOW + timedelta(seconds=5))
    assert active[None].concurrency == 8 and active["r-1"].concurrency == 2
    assert set(targets.active(engine, NOW + timedelta(seconds=30))) == {None}
