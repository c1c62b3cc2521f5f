"""API keys; each history row records the key that made it, with an index for paging one key's history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False, unique=True),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("models", JSONB),
        sa.Column("rate", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.add_column("predictions", sa.Column("key", sa.Text))  # nullable, no default: no table rewrite
    # Built without blocking the workers' inserts into a history that may be large already.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_predictions_key_created", "predictions", ["key", sa.text("created_at DESC"), sa.text("id DESC")],
            postgresql_concurrently=True, if_not_exists=True,
        )  # fmt: skip


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_predictions_key_created", "predictions", postgresql_concurrently=True, if_exists=True)
    op.drop_column("predictions", "key")
    op.drop_table("api_keys")
