"""The store's tables: the single source of truth for decisions, actions, gates, targets and the ledger.

SQLAlchemy Core tables; Alembic migrations (store/migrations) create them, on SQLite and PostgreSQL alike.
Columns marked private never leave the store for a public surface (see core.redact / the projection).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ANN201
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only takes aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ANN201
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# The journal: one immutable row per tick outcome, per decided action and per dispatch outcome,
# each carrying the hash of the row before it (the audit chain).
decisions = Table(
    "decisions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("entry_id", String(36), nullable=False, unique=True),
    Column("phase", String(16), nullable=False),  # decision | outcome
    Column("tick_id", String(36), nullable=True, index=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("state", String(32), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("detail", Text, nullable=True),  # public-safe
    Column("kind", String(32), nullable=True),
    Column("authority", String(16), nullable=True),  # autonomous | gated
    Column("action_id", String(36), nullable=True, index=True),
    Column("gate_id", String(36), nullable=True),
    Column("action_json", Text, nullable=True),  # private
    Column("context_digest", String(64), nullable=True),
    Column("raw_digest", String(64), nullable=True),
    Column("raw_excerpt", Text, nullable=True),  # scrubbed, <= 1000 chars
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    CheckConstraint("phase IN ('decision', 'outcome')", name="phase"),
)

# The head of the audit chain: one row, updated in the same transaction as each append,
# which serialises appenders on every backend.
chain_head = Table(
    "chain_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

# Dispatch state of each queued action: the compare-and-set machine behind exactly-once.
actions = Table(
    "actions",
    metadata,
    Column("action_id", String(36), primary_key=True),
    Column("tick_id", String(36), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("authority", String(16), nullable=False),
    Column("action_json", Text, nullable=False),
    Column("gate_id", String(36), nullable=True),
    Column("status", String(32), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("run_id", String(64), nullable=True),
    Column("outcome_reason", String(64), nullable=True),
)

# One row per tick that decided (or tried to): its private context, for replay and audit.
ticks = Table(
    "ticks",
    metadata,
    Column("tick_id", String(36), primary_key=True),
    Column("started_at", UTCDateTime, nullable=False, index=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("outcome", String(32), nullable=True),
    Column("mind", String(32), nullable=True),
    Column("context_json", Text, nullable=True),  # private
    Column("context_digest", String(64), nullable=True),
    Column("raw_proposal", Text, nullable=True),  # private
    # What the decision took besides the context (mode, daily bound and count, limits): replay re-runs both.
    Column("decision_inputs_json", Text, nullable=True),  # private
)

# Mutual exclusion of deciding ticks (scheduled and manual): a named lease with an expiry.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
)

gates = Table(
    "gates",
    metadata,
    Column("gate_id", String(36), primary_key=True),
    Column("action_id", String(36), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("risky_kind", String(32), nullable=False),
    Column("action_hash", String(64), nullable=False),
    Column("action_json", Text, nullable=False),
    Column("precondition_json", Text, nullable=False),
    Column("rollback_json", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime, nullable=True),
    Column("operator", String(64), nullable=True),
    CheckConstraint(
        "state IN ('pending', 'approved', 'rejected', 'expired', 'executed', 'superseded')",
        name="state",
    ),
    # One open gate per action hash: a repeated proposal points at the open one.
    Index(
        "uq_gates_open_action_hash",
        "action_hash",
        unique=True,
        sqlite_where=text("state IN ('pending', 'approved')"),
        postgresql_where=text("state IN ('pending', 'approved')"),
    ),
)

# Signed operator decisions on gates (core.approval): the receipt of each approval, rejection and
# rollback go-ahead. An approval is consumed once, by the dispatch that claims its action.
receipts = Table(
    "receipts",
    metadata,
    Column("receipt_id", String(64), primary_key=True),  # SHA-256 of the signed approval
    Column("gate_id", String(36), nullable=False, index=True),
    Column("action_hash", String(64), nullable=False),  # as signed
    Column("operator", String(64), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("issued_at", String(40), nullable=False),  # exactly as signed (RFC 3339)
    Column("signature", String(128), nullable=False),  # base64 of the 64-byte Ed25519 signature
    Column("note", Text, nullable=True),  # scrubbed
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("consumed_at", UTCDateTime, nullable=True),
    Column("consumed_by_action", String(36), nullable=True, unique=True),
    CheckConstraint("decision IN ('approve', 'reject', 'rollback')", name="decision"),
    CheckConstraint("(consumed_at IS NULL) = (consumed_by_action IS NULL)", name="consumed_together"),
    # A gate is decided once (the gate's own compare-and-set says so too).
    Index(
        "uq_receipts_one_decision_per_gate",
        "gate_id",
        unique=True,
        sqlite_where=text("decision IN ('approve', 'reject')"),
        postgresql_where=text("decision IN ('approve', 'reject')"),
    ),
)

# The undo of an executed gate: `scale_in` (automatic when due: it reduces spend) or
# `readmit_replica` (launched by an operator's signed rollback). One per gate.
rollbacks = Table(
    "rollbacks",
    metadata,
    Column("rollback_id", String(36), primary_key=True),
    Column("gate_id", String(36), nullable=False, unique=True),
    Column("action_id", String(36), nullable=False),
    Column("plan", String(32), nullable=False),
    Column("plan_json", Text, nullable=False),  # private: what to undo (allocation id, replica id)
    Column("launch", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("due_at", UTCDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("run_id", String(64), nullable=True),
    Column("receipt_id", String(64), nullable=True),
    Column("outcome_reason", String(64), nullable=True),
    CheckConstraint("plan IN ('scale_in', 'readmit_replica')", name="plan"),
    CheckConstraint("launch IN ('automatic', 'operator')", name="launch"),
    CheckConstraint("state IN ('pending', 'running', 'done')", name="state"),
)

# What the stress harness should run: pool-wide (replica_id NULL) or per replica, until expires_at.
stress_targets = Table(
    "stress_targets",
    metadata,
    Column("target_id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("replica_id", String(63), nullable=True),
    Column("concurrency", Integer, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("action_id", String(36), nullable=True),
    CheckConstraint("concurrency >= 0 AND concurrency <= 64", name="concurrency_range"),
    CheckConstraint("expires_at > created_at", name="expires_after_created"),
)

# The token-usage ledger a gateway (and the stress harness) writes; contract in docs/contracts.md.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("demand_kind", String(16), nullable=False),
    Column("replica_id", String(63), nullable=True),
    Column("model", String(128), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, server_default="0"),
    Column("completion_tokens", Integer, nullable=False, server_default="0"),
    Column("ttft_s", Float, nullable=True),
    Column("itl_s", Float, nullable=True),
    Column("latency_s", Float, nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("failure_reason", String(64), nullable=True),
    CheckConstraint(
        "demand_kind IN ('external', 'unlabeled', 'internal', 'own_capacity', 'internal_stress')",
        name="demand_kind",
    ),
    CheckConstraint("outcome IN ('ok', 'failed', 'preempted')", name="outcome"),
    CheckConstraint("prompt_tokens >= 0 AND completion_tokens >= 0", name="tokens_nonnegative"),
    Index("ix_ledger_ts_kind", "ts", "demand_kind"),
    # The window aggregations (store.ledger) read only this index: one range per kind, already grouped.
    Index("ix_ledger_kind_ts_usage", "demand_kind", "ts", "outcome", "prompt_tokens", "completion_tokens",
          "ttft_s", "itl_s"),
)

# Public-safe reports the overseer emits (`emit_report`): one per action, summary already scrubbed.
reports = Table(
    "reports",
    metadata,
    Column("report_id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("topic", String(16), nullable=False),
    Column("summary", Text, nullable=False),  # public-safe (core.redact)
    Column("action_id", String(36), nullable=True, unique=True),
)
