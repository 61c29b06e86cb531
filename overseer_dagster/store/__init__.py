"""The store: SQLAlchemy tables, the repository functions that read and write them, Alembic migrations."""

from overseer_dagster.store.db import connect, database_url, overseer_home, write_tx

__all__ = ["connect", "database_url", "overseer_home", "write_tx"]
