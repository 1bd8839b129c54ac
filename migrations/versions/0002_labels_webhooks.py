"""Labels on datasets and jobs; a job's webhook and its delivery state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _webhook_columns() -> list[sa.Column]:
    return [
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("webhook_secret", sa.String(100), nullable=True),
        sa.Column("webhook_status", sa.String(16), nullable=True),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("webhook_last_error", sa.Text(), nullable=True),
        sa.Column("webhook_delivered_at", sa.DateTime(), nullable=True),
    ]


def upgrade() -> None:
    # nullable: rows written before this revision have no labels (read back as {})
    op.add_column("datasets", sa.Column("labels", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("labels", sa.JSON(), nullable=True))
    for column in _webhook_columns():
        op.add_column("jobs", column)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in reversed(_webhook_columns()):
            batch.drop_column(column.name)
        batch.drop_column("labels")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("labels")
