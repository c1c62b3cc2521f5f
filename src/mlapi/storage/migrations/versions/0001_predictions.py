"""Create the predictions table.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("features", JSONB, nullable=False),
        sa.Column("prediction", sa.Integer),
        sa.Column("label", sa.Text),
        sa.Column("probability", sa.Float),
        sa.Column("probabilities", JSONB),
        sa.Column("warnings", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('queued', 'done', 'failed')", name="ck_predictions_status"),
    )
    op.create_index("ix_predictions_created", "predictions", [sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_index(
        "ix_predictions_model_created",
        "predictions",
        ["model", sa.text("created_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_table("predictions")
