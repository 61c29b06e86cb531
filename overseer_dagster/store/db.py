"""Engines, migrations and transactions.

`connect()` is the one way in: it resolves the URL, creates the engine and migrates to head.
SQLite runs in WAL mode and every writing transaction starts with BEGIN IMMEDIATE, so a
read-then-write transaction never hits SQLite's upgrade deadlock; PostgreSQL uses row locks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

_MIGRATIONS = Path(__file__).with_name("migrations")
_engines: dict[str, Engine] = {}


class StoreConfigError(RuntimeError):
    """The store's configuration names something unusable."""


def overseer_home() -> Path:
    """The persistent, project-local state directory (OVERSEER_HOME, default ./.overseer)."""
    home = Path(os.environ.get("OVERSEER_HOME") or ".overseer").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def database_url() -> str:
    url = os.environ.get("OVERSEER_DATABASE_URL")
    if url:
        try:
            make_url(url)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same config error
            raise StoreConfigError(f"OVERSEER_DATABASE_URL is not a SQLAlchemy URL: {exc}") from None
        return url
    return f"sqlite:///{overseer_home() / 'overseer.db'}"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("overseer_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def connect(url: str | None = None, *, migrate_schema: bool = True) -> Engine:
    """An engine for the store at `url` (default: `database_url()`), migrated to head. Cached per URL."""
    url = url or database_url()
    engine = _engines.get(url)
    if engine is not None:
        return engine
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        _sqlite_setup(engine)
    else:
        if parsed.drivername == "postgresql":
            # One PostgreSQL driver for the store and dagster-postgres: psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg2")
        engine = create_engine(parsed, pool_pre_ping=True)
    if migrate_schema:
        migrate(engine)
    _engines[url] = engine
    return engine


@contextmanager
def write_tx(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: takes SQLite's write lock up front; commits or rolls back whole."""
    with engine.connect().execution_options(overseer_write=True) as conn, conn.begin():
        yield conn
