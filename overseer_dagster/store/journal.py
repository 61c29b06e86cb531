"""The journal: append-only, hash-chained rows of decisions and their outcomes (the audit chain).

Each row's hash covers its own fields and the previous row's hash; `verify` walks the chain and
names the first row whose stored hash, link or sequence does not hold.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from overseer_dagster.core.redact import redact
from overseer_dagster.store.tables import chain_head, decisions

GENESIS = "0" * 64
_HASHED = (
    "seq", "entry_id", "phase", "tick_id", "created_at", "state", "reason", "detail", "kind",
    "authority", "action_id", "gate_id", "action_json", "context_digest", "raw_digest", "raw_excerpt",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal row to append. `phase` is `decision` (a tick outcome or a decided action) or `outcome`."""

    phase: str
    state: str
    created_at: datetime
    tick_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    kind: str | None = None
    authority: str | None = None
    action_id: str | None = None
    gate_id: str | None = None
    action_json: str | None = None
    context_digest: str | None = None
    raw_digest: str | None = None
    raw_excerpt: str | None = None
    entry_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def row_hash(row: dict[str, Any], prev_hash: str) -> str:
    material = {k: row.get(k) for k in _HASHED}
    material["created_at"] = row["created_at"].isoformat()
    material["prev_hash"] = prev_hash
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def append(conn: Connection, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Append rows in order inside the caller's (writing) transaction; returns them with seq and hashes."""
    if not entries:
        return []
    # Locks the head row first (PostgreSQL row lock; SQLite's write lock is already held).
    conn.execute(update(chain_head).where(chain_head.c.id == 1).values(seq=chain_head.c.seq))
    seq, prev = conn.execute(select(chain_head.c.seq, chain_head.c.last_hash).where(chain_head.c.id == 1)).one()
    rows = []
    for entry in entries:
        seq += 1
        row = {k: getattr(entry, k) for k in Entry.__slots__}
        row["seq"] = seq
        row["prev_hash"] = prev
        row["row_hash"] = prev = row_hash(row, row["prev_hash"])
        rows.append(row)
    conn.execute(decisions.insert(), rows)
    conn.execute(update(chain_head).where(chain_head.c.id == 1).values(seq=seq, last_hash=prev))
    return rows


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    rows: int
    broken_seq: int | None = None
    problem: str | None = None


def verify(engine: Engine, batch: int = 5000) -> ChainReport:
    prev, expected_seq, count = GENESIS, 1, 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch).execute(select(decisions).order_by(decisions.c.seq))
        for row in result.mappings():
            count += 1
            if row["seq"] != expected_seq:
                return ChainReport(False, count, expected_seq, f"row missing: the next row is seq {row['seq']}")
            if row["prev_hash"] != prev:
                return ChainReport(False, count, row["seq"], "prev_hash does not link to the row before")
            if row_hash(dict(row), prev) != row["row_hash"]:
                return ChainReport(False, count, row["seq"], "row content does not match its hash")
            prev, expected_seq = row["row_hash"], expected_seq + 1
        head_seq, head_hash = conn.execute(select(chain_head.c.seq, chain_head.c.last_hash)).one()
    if head_seq != expected_seq - 1 or head_hash != prev:
        return ChainReport(False, count, expected_seq, "rows missing at the end of the chain")
    return ChainReport(True, count)


def tail(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(decisions).order_by(decisions.c.seq.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in reversed(rows)]


def for_tick(engine: Engine, tick_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(decisions).where(decisions.c.tick_id == tick_id).order_by(decisions.c.seq)
        ).mappings().all()
    return [dict(r) for r in rows]


# The columns a public surface (CLI, UI, reports) may show; action_json and raw_* stay in the store.
PUBLIC_FIELDS = (
    "seq", "created_at", "phase", "state", "reason", "detail", "kind", "authority", "tick_id", "action_id",
    "gate_id", "row_hash",
)  # fmt: skip


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A journal row as a public surface shows it: public columns only, free text scrubbed."""
    out = {k: row.get(k) for k in PUBLIC_FIELDS}
    out["created_at"] = row["created_at"].isoformat()
    for k in ("reason", "detail"):
        if out[k]:
            out[k] = redact(out[k])
    return out
