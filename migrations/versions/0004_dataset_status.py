"""Datasets parsed off the request path: a status (processing, ready, failed), the
error of a failed parse, and the raw upload with its reader options while processing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        # every dataset stored before this revision was parsed in its request: ready
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="ready"))
        batch.add_column(sa.Column("error_code", sa.String(64), nullable=True))
        batch.add_column(sa.Column("error_message", sa.Text(), nullable=True))
        batch.add_column(sa.Column("upload", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("upload_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        for column in ("upload_options", "upload", "error_message", "error_code", "status"):
            batch.drop_column(column)
