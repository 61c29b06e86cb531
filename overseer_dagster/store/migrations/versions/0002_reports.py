"""reports: the public-safe reports `emit_report` actions write

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import overseer_dagster.store.tables

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reports',
    sa.Column('report_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', overseer_dagster.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('topic', sa.String(length=16), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('action_id', sa.String(length=36), nullable=True),
    sa.PrimaryKeyConstraint('report_id', name=op.f('pk_reports')),
    sa.UniqueConstraint('action_id', name=op.f('uq_reports_action_id'))
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_created_at'))

    op.drop_table('reports')
