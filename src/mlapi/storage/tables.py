"""The database tables, defined once; the migrations create them and the repositories query them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData()

STATUSES = ("queued", "done", "failed")
TASKS = ("classification", "regression")

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", UUID(as_uuid=False), primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("task", sa.Text, nullable=False, server_default="classification"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("features", JSONB, nullable=False),
    sa.Column("prediction", sa.Integer),  # a classifier's predicted class
    sa.Column("value", sa.Double),  # a regressor's predicted value
    sa.Column("label", sa.Text),
    sa.Column("probability", sa.Float),
    sa.Column("probabilities", JSONB),
    sa.Column("warnings", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    # Ground truth (the latest feedback wins): a classifier's true class index, or a regressor's true value.
    sa.Column("truth", sa.Integer),
    sa.Column("truth_value", sa.Double),
    sa.Column("feedback_at", sa.DateTime(timezone=True)),
    # The name of the API key that made it (null: made with auth off); a key reads only its own rows.
    sa.Column("key", sa.Text),
    sa.CheckConstraint(f"status IN {STATUSES}", name="ck_predictions_status"),
    sa.CheckConstraint(f"task IN {TASKS}", name="ck_predictions_task"),
    sa.Index("ix_predictions_created", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index("ix_predictions_model_created", "model", sa.text("created_at DESC"), sa.text("id DESC")),
    # Live quality reads only labelled rows of one model version in a window.
    sa.Index(
        "ix_predictions_labelled",
        "model",
        "model_version",
        "created_at",
        postgresql_where=sa.text("feedback_at IS NOT NULL"),
    ),
    sa.Index("ix_predictions_key_created", "key", sa.text("created_at DESC"), sa.text("id DESC")),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    # A name is never reused, revoked or not: history rows name their key, and a new key of an old name would
    # read the old key's history.
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False, unique=True),  # of the key; the key itself is never stored
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("models", JSONB),  # the models it may use; null: every model
    sa.Column("rate", sa.Text),  # e.g. "100/s"; null: no limit
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("default_version", sa.Integer),
    # Versions are never reused while the model exists: the history names them.
    sa.Column("next_version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # A removed model keeps its row, so a later model of the same name continues its version numbers (the
    # history names versions) and `mlapi migrate` does not bring back a bundled model a user removed.
    sa.Column("removed_at", sa.DateTime(timezone=True)),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
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
    # `bundled` for versions `mlapi migrate` seeds from the package, `upload` for the rest.
    sa.Column("origin", sa.Text, nullable=False, server_default="upload"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    # The reference profile of the training data (`mlapi.models.profile.Profile`), which drift compares with.
    sa.Column("profile", JSONB),
    sa.CheckConstraint(f"task IN {TASKS}", name="ck_model_versions_task"),
    sa.UniqueConstraint("model", "sha256", name="uq_model_versions_sha256"),
)

drift_counts = sa.Table(
    "drift_counts",
    metadata,
    # Rows answered per model version, minute, profiled column and bin, kept by the workers in the statement that
    # stores the rows (so a redelivered row, which inserts nothing, counts nothing). `feature` '' is the
    # prediction; `bin` -1 counts numbers outside the training range (besides their own bin).
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("feature", sa.Text, primary_key=True),
    sa.Column("bin", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)
