"""PostgreSQL for tests: the server CI names in OVERSEER_TEST_POSTGRES_URL, and throwaway databases on it.

Without the variable a PostgreSQL test skips with SKIP_REASON; conftest's summary lists every skip
that names the variable, so a new PostgreSQL test needs nothing more than `base_url_or_skip()`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ENV = "OVERSEER_TEST_POSTGRES_URL"
SKIP_REASON = f"PostgreSQL variant: set {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"


def base_url_or_skip() -> str:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(SKIP_REASON)
    return base


def _admin(base: str):  # noqa: ANN202 - an autocommit Engine (CREATE/DROP DATABASE refuse transactions)
    return create_engine(make_url(base).set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")


@contextmanager
def fresh_database(base: str, prefix: str = "overseer_test") -> Iterator[str]:
    """A new, empty database on `base`'s server, dropped afterwards (with any connection left to it): its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin(base)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name, query={}).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def with_schema(url: str, schema: str) -> str:
    """`url` with a new schema `schema` created in its database and first on the search path."""
    engine = _admin(url)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"
