"""replay inputs per tick, and a covering index for the ledger's window aggregations

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ticks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decision_inputs_json', sa.Text(), nullable=True))
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_kind_ts_usage', ['demand_kind', 'ts', 'outcome', 'prompt_tokens',
                                                          'completion_tokens', 'ttft_s', 'itl_s'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_kind_ts_usage')
    with op.batch_alter_table('ticks', schema=None) as batch_op:
        batch_op.drop_column('decision_inputs_json')
