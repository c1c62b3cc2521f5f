"""Batching logic of the worker: validate, predict each model's rows in one call, build rows and answers."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from mlapi import queue
from mlapi.contract import Job, Reply, Result, Timings, Value
from mlapi.models.runtime import Prediction
from mlapi.models.spec import ModelSpec


class Predictor(Protocol):
    spec: ModelSpec

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Prediction]: ...


@dataclass
class Answer:
    job: Job
    results: list[Result]
    error: str | None = None
    predict_ms: float = 0.0
    batch_rows: int = 0

    def reply(self, model_version: str, picked_up: datetime, store_ms: float) -> Reply:
        return Reply(
            id=self.job.id,
            model_version=model_version,
            results=self.results,
            error=self.error,
            timings=Timings(
                queue_ms=(picked_up - self.job.created_at).total_seconds() * 1000,
                predict_ms=self.predict_ms,
                store_ms=store_ms,
                batch_rows=self.batch_rows,
            ),
        )


@dataclass
class Outcome:
    """What one batch came to: rows to store, answers to send, entries to acknowledge or dead-letter."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    acks: list[queue.Delivery] = field(default_factory=list)
    dead: list[tuple[queue.Delivery, str]] = field(default_factory=list)


def _history_row(
    job: Job,
    version: str,
    row_id: str,
    features: dict[str, Value],
    now: datetime,
    p: Prediction | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "model": job.model,
        "model_version": version,
        "status": "done" if p else "failed",
        "features": features,
        "prediction": p.prediction if p else None,
        "label": p.label if p else None,
        "probability": p.probability if p else None,
        "probabilities": p.probabilities if p else None,
        "warnings": p.warnings if p else [],
        "error": error,
        "created_at": job.created_at,
        "completed_at": now,
    }


def _result(row_id: str, p: Prediction) -> Result:
    return Result(
        id=row_id,
        prediction=p.prediction,
        label=p.label,
        probability=p.probability,
        probabilities=p.probabilities,
        warnings=p.warnings,
    )


def _invalid_features(spec: ModelSpec, job: Job) -> str | None:
    """Validate queued rows with the same schema the API uses: the queue is not trusted either."""
    for row in job.rows:
        try:
            spec.sample_type.model_validate(row.features)
        except ValidationError as e:
            return f"row {row.id}: invalid features: {e.errors(include_url=False, include_input=False)}"
    return None


def _storable(features: dict[str, Value]) -> dict[str, Value]:
    """Features as stored with a failed row; ones JSON cannot hold (NaN) stay only in the dead letter."""
    try:
        json.dumps(features, allow_nan=False)
    except (TypeError, ValueError):
        return {}
    return features


class Planner:
    """Turns a batch of deliveries into an Outcome: validation, one vectorised predict per model, failures.

    Pure: no I/O, so the batching logic is tested without servers.
    """

    def __init__(self, models: Mapping[str, Predictor], max_deliveries: int) -> None:
        self.models = dict(models)
        self.max_deliveries = max_deliveries

    def plan(self, deliveries: Sequence[queue.Delivery], now: datetime) -> Outcome:
        outcome = Outcome()
        by_model: dict[str, list[queue.Delivery]] = {}
        for d in deliveries:
            if d.error is None and d.deliveries > self.max_deliveries:
                d.error = f"delivered {d.deliveries} times without being acknowledged"
            if d.error is None and d.job is not None:
                d.error = _invalid_features(self.models[d.model].spec, d.job)
            if d.error is None:
                by_model.setdefault(d.model, []).append(d)
            else:
                self._fail(outcome, d, d.error, now)
        for model, batch in by_model.items():
            self._predict(outcome, self.models[model], batch, now)
        return outcome

    def version(self, model: str) -> str:
        predictor = self.models.get(model)
        return predictor.spec.version if predictor else "unknown"

    def _predict(self, outcome: Outcome, predictor: Predictor, batch: list[queue.Delivery], now: datetime) -> None:
        """One vectorised predict for the whole batch; if it fails, each job alone, to find the bad one."""
        jobs = [d.job for d in batch if d.job is not None]
        started = time.perf_counter()
        try:
            predictions = predictor.predict([row.features for job in jobs for row in job.rows])
        except Exception:
            for d in batch:
                self._guarded_predict(outcome, predictor, d, now)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        offset = 0
        for d, job in zip(batch, jobs, strict=True):
            mine = predictions[offset : offset + len(job.rows)]
            offset += len(job.rows)
            self._succeed(outcome, predictor, d, job, mine, elapsed_ms, len(predictions))

    def _guarded_predict(self, outcome: Outcome, predictor: Predictor, d: queue.Delivery, now: datetime) -> None:
        assert d.job is not None
        started = time.perf_counter()
        try:
            predictions = predictor.predict([row.features for row in d.job.rows])
        except Exception as e:  # the model is pure: the same input fails the same way, so retrying is futile
            self._fail(outcome, d, f"prediction failed: {type(e).__name__}: {e}", now)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._succeed(outcome, predictor, d, d.job, predictions, elapsed_ms, len(predictions))

    def _succeed(
        self, outcome: Outcome, predictor: Predictor, d: queue.Delivery, job: Job,
        predictions: Sequence[Prediction], predict_ms: float, batch_rows: int,
    ) -> None:  # fmt: skip
        version = predictor.spec.version
        predicted_at = datetime.now(UTC)  # completed_at - created_at then spans queue and model time
        for row, p in zip(job.rows, predictions, strict=True):
            outcome.rows.append(_history_row(job, version, row.id, row.features, predicted_at, p, None))
        results = [_result(row.id, p) for row, p in zip(job.rows, predictions, strict=True)]
        outcome.answers.append(Answer(job, results, predict_ms=predict_ms, batch_rows=batch_rows))
        outcome.acks.append(d)

    def _fail(self, outcome: Outcome, d: queue.Delivery, error: str, now: datetime) -> None:
        outcome.dead.append((d, error))
        outcome.acks.append(d)
        if d.job is None:
            return  # undecodable: the dead-letter entry keeps the raw message
        version = self.version(d.job.model)
        for row in d.job.rows:
            outcome.rows.append(_history_row(d.job, version, row.id, _storable(row.features), now, None, error))
        outcome.answers.append(Answer(d.job, [Result(id=row.id, error=error) for row in d.job.rows], error))
