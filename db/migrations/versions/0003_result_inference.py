"""result inference: the runtime and precision that produced each result

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for results recorded before this revision: which arithmetic made them was not kept
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtime', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('precision', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('precision')
        batch_op.drop_column('runtime')
