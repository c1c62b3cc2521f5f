"""The database tables, defined once; the migrations create them and the repository queries them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData()

STATUSES = ("queued", "done", "failed")

predictions = sa.Table(
    "predictions",
    metadata,
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
    sa.CheckConstraint(f"status IN {STATUSES}", name="ck_predictions_status"),
    sa.Index("ix_predictions_created", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index("ix_predictions_model_created", "model", sa.text("created_at DESC"), sa.text("id DESC")),
)
