"""Ground truth on history rows, reference profiles on versions, and the drift rollup the workers keep.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("truth", sa.Integer))
    op.add_column("predictions", sa.Column("truth_value", sa.Double))
    op.add_column("predictions", sa.Column("feedback_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_predictions_labelled", "predictions", ["model", "model_version", "created_at"],
        postgresql_where=sa.text("feedback_at IS NOT NULL"),
    )  # fmt: skip
    op.add_column("model_versions", sa.Column("profile", JSONB))
    op.create_table(
        "drift_counts",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("feature", sa.Text, primary_key=True),
        sa.Column("bin", sa.Integer, primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("drift_counts")
    op.drop_column("model_versions", "profile")
    op.drop_index("ix_predictions_labelled", "predictions")
    op.drop_column("predictions", "feedback_at")
    op.drop_column("predictions", "truth_value")
    op.drop_column("predictions", "truth")
