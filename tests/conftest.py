"""Shared fixtures: a migrated store on SQLite and (when reachable) on PostgreSQL.

PostgreSQL tests run against OVERSEER_TEST_POSTGRES_URL (CI sets it); each test gets its own
schema (or, for Dagster's storage, database: `postgres_fixtures`), dropped afterwards. Without the
variable they are skipped, and the summary lists them by file and says how to enable them.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine, text

from postgres_fixtures import PG_ENV, SKIP_REASON

from overseer_dagster.store import db

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"

# Property tests assert what holds, never how fast: one stalled example on a loaded machine is not a failure.
settings.register_profile("overseer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("overseer")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the developer's .overseer: each test has its own OVERSEER_HOME."""
    monkeypatch.setenv("OVERSEER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OVERSEER_DATABASE_URL", raising=False)
    monkeypatch.delenv("OVERSEER_ENABLED", raising=False)
    monkeypatch.delenv("OVERSEER_MODE", raising=False)


def _postgres_schema_url(request: pytest.FixtureRequest) -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(SKIP_REASON)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg2://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        db._engines.pop(f"{base}{sep}options=-csearch_path%3D{schema}", None)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for the store, once per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        yield url
        engine = db._engines.pop(url, None)
        if engine is not None:
            engine.dispose()
    else:
        yield from _postgres_schema_url(request)


@pytest.fixture
def engine(store_url: str) -> Engine:
    return db.connect(store_url)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    # Every skip whose reason names PG_ENV (SKIP_REASON), whichever fixture or test raised it.
    skipped = [r.nodeid for r in terminalreporter.stats.get("skipped", []) if PG_ENV in str(r.longrepr)]
    if skipped:
        by_file = Counter(nodeid.split("::", 1)[0] for nodeid in skipped)
        terminalreporter.write_sep("-", "PostgreSQL variants skipped")
        for path, n in sorted(by_file.items()):
            terminalreporter.write_line(f"  {path}: {n}")
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL test(s) skipped: set {PG_ENV}=postgresql://USER@HOST:PORT/DB to run them."
        )
    # The browser tests need a Chromium on the machine; say so rather than skip in silence.
    browser = [r for r in terminalreporter.stats.get("skipped", []) if "Chromium" in str(r.longrepr)]
    if browser:
        terminalreporter.write_sep("-", "browser tests skipped")
        terminalreporter.write_line(f"{len(browser)} test(s): {browser[0].longrepr[-1]}")
