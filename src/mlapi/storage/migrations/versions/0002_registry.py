"""The model registry (models, their versions and artifacts); history rows gain `task` and `value`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("task", sa.Text, nullable=False, server_default="classification"))
    op.add_column("predictions", sa.Column("value", sa.Double))
    op.create_check_constraint("ck_predictions_task", "predictions", "task IN ('classification', 'regression')")
    op.create_table(
        "models",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("default_version", sa.Integer),
        sa.Column("next_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("removed_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "model_versions",
        sa.Column("model", sa.Text, sa.ForeignKey("models.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("runtime", sa.Text, nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("artifact", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("trusted", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("metrics", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("origin", sa.Text, nullable=False, server_default="upload"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("task IN ('classification', 'regression')", name="ck_model_versions_task"),
        sa.UniqueConstraint("model", "sha256", name="uq_model_versions_sha256"),
    )


def downgrade() -> None:
    op.drop_table("model_versions")
    op.drop_table("models")
    op.drop_constraint("ck_predictions_task", "predictions")
    op.drop_column("predictions", "value")
    op.drop_column("predictions", "task")
