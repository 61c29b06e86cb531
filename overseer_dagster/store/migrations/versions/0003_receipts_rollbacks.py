"""receipts and rollbacks: signed operator decisions on gates, and the undo of executed gates

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import overseer_dagster.store.tables

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('receipts',
    sa.Column('receipt_id', sa.String(length=64), nullable=False),
    sa.Column('gate_id', sa.String(length=36), nullable=False),
    sa.Column('action_hash', sa.String(length=64), nullable=False),
    sa.Column('operator', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('issued_at', sa.String(length=40), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('recorded_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('consumed_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('consumed_by_action', sa.String(length=36), nullable=True),
    sa.CheckConstraint("decision IN ('approve', 'reject', 'rollback')", name=op.f('ck_receipts_decision')),
    sa.CheckConstraint('(consumed_at IS NULL) = (consumed_by_action IS NULL)', name=op.f('ck_receipts_consumed_together')),
    sa.PrimaryKeyConstraint('receipt_id', name=op.f('pk_receipts')),
    sa.UniqueConstraint('consumed_by_action', name=op.f('uq_receipts_consumed_by_action'))
    )
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_receipts_gate_id'), ['gate_id'], unique=False)
        batch_op.create_index('uq_receipts_one_decision_per_gate', ['gate_id'], unique=True, sqlite_where=sa.text("decision IN ('approve', 'reject')"), postgresql_where=sa.text("decision IN ('approve', 'reject')"))

    op.create_table('rollbacks',
    sa.Column('rollback_id', sa.String(length=36), nullable=False),
    sa.Column('gate_id', sa.String(length=36), nullable=False),
    sa.Column('action_id', sa.String(length=36), nullable=False),
    sa.Column('plan', sa.String(length=32), nullable=False),
    sa.Column('plan_json', sa.Text(), nullable=False),
    sa.Column('launch', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('due_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('receipt_id', sa.String(length=64), nullable=True),
    sa.Column('outcome_reason', sa.String(length=64), nullable=True),
    sa.CheckConstraint("launch IN ('automatic', 'operator')", name=op.f('ck_rollbacks_launch')),
    sa.CheckConstraint("plan IN ('scale_in', 'readmit_replica')", name=op.f('ck_rollbacks_plan')),
    sa.CheckConstraint("state IN ('pending', 'running', 'done')", name=op.f('ck_rollbacks_state')),
    sa.PrimaryKeyConstraint('rollback_id', name=op.f('pk_rollbacks')),
    sa.UniqueConstraint('gate_id', name=op.f('uq_rollbacks_gate_id'))
    )
    with op.batch_alter_table('rollbacks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollbacks_state'), ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rollbacks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollbacks_state'))

    op.drop_table('rollbacks')
    with op.batch_alter_table('receipts', schema=None) as batch_op:
        batch_op.drop_index('uq_receipts_one_decision_per_gate', sqlite_where=sa.text("decision IN ('approve', 'reject')"), postgresql_where=sa.text("decision IN ('approve', 'reject')"))
        batch_op.drop_index(batch_op.f('ix_receipts_gate_id'))

    op.drop_table('receipts')
