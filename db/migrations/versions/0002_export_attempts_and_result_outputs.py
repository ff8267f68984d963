"""export attempts and result outputs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:16:09.161742
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('export_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('export_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['export_id'], ['exports.id'], name=op.f('fk_export_attempts_export_id_exports'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export_attempts'))
    )
    with op.batch_alter_table('export_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_export_attempts_export_id'), ['export_id'], unique=False)

    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outputs', sa.JSON(), nullable=False, server_default='[]'))

    


def downgrade() -> None:
    
    with op.batch_alter_table('results', schema=None) as batch_op:
        batch_op.drop_column('outputs')

    with op.batch_alter_table('export_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_export_attempts_export_id'))

    op.drop_table('export_attempts')
    
