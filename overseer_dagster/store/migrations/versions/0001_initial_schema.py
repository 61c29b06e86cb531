"""initial schema

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op

import overseer_dagster.store.tables

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('actions',
    sa.Column('action_id', sa.String(length=36), nullable=False),
    sa.Column('tick_id', sa.String(length=36), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('authority', sa.String(length=16), nullable=False),
    sa.Column('action_json', sa.Text(), nullable=False),
    sa.Column('gate_id', sa.String(length=36), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('outcome_reason', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('action_id', name=op.f('pk_actions'))
    )
    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_actions_status'), ['status'], unique=False)

    op.create_table('chain_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_head'))
    )
    # The chain starts from a fixed genesis hash.
    op.bulk_insert(
        sa.table('chain_head', sa.column('id', sa.Integer), sa.column('seq', sa.Integer), sa.column('last_hash', sa.String)),
        [{'id': 1, 'seq': 0, 'last_hash': '0' * 64}],
    )
    op.create_table('decisions',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('entry_id', sa.String(length=36), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('tick_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=True),
    sa.Column('authority', sa.String(length=16), nullable=True),
    sa.Column('action_id', sa.String(length=36), nullable=True),
    sa.Column('gate_id', sa.String(length=36), nullable=True),
    sa.Column('action_json', sa.Text(), nullable=True),
    sa.Column('context_digest', sa.String(length=64), nullable=True),
    sa.Column('raw_digest', sa.String(length=64), nullable=True),
    sa.Column('raw_excerpt', sa.Text(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint("phase IN ('decision', 'outcome')", name=op.f('ck_decisions_phase')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_decisions')),
    sa.UniqueConstraint('entry_id', name=op.f('uq_decisions_entry_id'))
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_decisions_action_id'), ['action_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_decisions_tick_id'), ['tick_id'], unique=False)

    op.create_table('gates',
    sa.Column('gate_id', sa.String(length=36), nullable=False),
    sa.Column('action_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('risky_kind', sa.String(length=32), nullable=False),
    sa.Column('action_hash', sa.String(length=64), nullable=False),
    sa.Column('action_json', sa.Text(), nullable=False),
    sa.Column('precondition_json', sa.Text(), nullable=False),
    sa.Column('rollback_json', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('decided_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('operator', sa.String(length=64), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'approved', 'rejected', 'expired', 'executed', 'superseded')", name=op.f('ck_gates_state')),
    sa.PrimaryKeyConstraint('gate_id', name=op.f('pk_gates'))
    )
    with op.batch_alter_table('gates', schema=None) as batch_op:
        batch_op.create_index('uq_gates_open_action_hash', ['action_hash'], unique=True, sqlite_where=sa.text("state IN ('pending', 'approved')"), postgresql_where=sa.text("state IN ('pending', 'approved')"))

    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=64), nullable=True),
    sa.Column('expires_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    # The deciding lease exists from the start, so taking it is a single conditional UPDATE.
    op.bulk_insert(sa.table('leases', sa.column('name', sa.String)), [{'name': 'overseer_tick'}])
    op.create_table('ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('ts', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('demand_kind', sa.String(length=16), nullable=False),
    sa.Column('replica_id', sa.String(length=63), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), server_default='0', nullable=False),
    sa.Column('completion_tokens', sa.Integer(), server_default='0', nullable=False),
    sa.Column('ttft_s', sa.Float(), nullable=True),
    sa.Column('itl_s', sa.Float(), nullable=True),
    sa.Column('latency_s', sa.Float(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('failure_reason', sa.String(length=64), nullable=True),
    sa.CheckConstraint("demand_kind IN ('external', 'unlabeled', 'internal', 'own_capacity', 'internal_stress')", name=op.f('ck_ledger_demand_kind')),
    sa.CheckConstraint("outcome IN ('ok', 'failed', 'preempted')", name=op.f('ck_ledger_outcome')),
    sa.CheckConstraint('prompt_tokens >= 0 AND completion_tokens >= 0', name=op.f('ck_ledger_tokens_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger'))
    )
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_ts_kind', ['ts', 'demand_kind'], unique=False)

    op.create_table('stress_targets',
    sa.Column('target_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('replica_id', sa.String(length=63), nullable=True),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('expires_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('action_id', sa.String(length=36), nullable=True),
    sa.CheckConstraint('concurrency >= 0 AND concurrency <= 64', name=op.f('ck_stress_targets_concurrency_range')),
    sa.CheckConstraint('expires_at > created_at', name=op.f('ck_stress_targets_expires_after_created')),
    sa.PrimaryKeyConstraint('target_id', name=op.f('pk_stress_targets'))
    )
    with op.batch_alter_table('stress_targets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stress_targets_created_at'), ['created_at'], unique=False)

    op.create_table('ticks',
    sa.Column('tick_id', sa.String(length=36), nullable=False),
    sa.Column('started_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=True),
    sa.Column('mind', sa.String(length=32), nullable=True),
    sa.Column('context_json', sa.Text(), nullable=True),
    sa.Column('context_digest', sa.String(length=64), nullable=True),
    sa.Column('raw_proposal', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('tick_id', name=op.f('pk_ticks'))
    )
    with op.batch_alter_table('ticks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticks_started_at'), ['started_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ticks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ticks_started_at'))

    op.drop_table('ticks')
    with op.batch_alter_table('stress_targets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stress_targets_created_at'))

    op.drop_table('stress_targets')
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_ts_kind')

    op.drop_table('ledger')
    op.drop_table('leases')
    with op.batch_alter_table('gates', schema=None) as batch_op:
        batch_op.drop_index('uq_gates_open_action_hash', sqlite_where=sa.text("state IN ('pending', 'approved')"), postgresql_where=sa.text("state IN ('pending', 'approved')"))

    op.drop_table('gates')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_decisions_tick_id'))
        batch_op.drop_index(batch_op.f('ix_decisions_created_at'))
        batch_op.drop_index(batch_op.f('ix_decisions_action_id'))

    op.drop_table('decisions')
    op.drop_table('chain_head')
    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_actions_status'))

    op.drop_table('actions')
