"""Batching logic of the worker: validate, predict each model's rows in one call, build rows and answers."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from mlapi import queue
from mlapi.contract import Job, Output, Reply, Result, Timings, Value
from mlapi.runtimes import Runtime


@dataclass
class Answer:
    job: Job
    results: list[Result]
    error: str | None = None
    predict_ms: float = 0.0
    batch_rows: int = 0

    def reply(self, picked_up: datetime, store_ms: float) -> Reply:
        return Reply(
            id=self.job.id,
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
    task: str,
    row_id: str,
    features: dict[str, Value],
    now: datetime,
    result: Result,
) -> dict[str, Any]:
    """The `predictions` row of one result; a regressor's value goes to `value`, a class to `prediction`."""
    regression = task == "regression"
    return {
        "id": row_id,
        "model": job.model,
        "model_version": str(job.version),
        "task": task,
        "status": "failed" if result.error else "done",
        "features": features,
        "prediction": None if regression else result.prediction,
        "value": result.prediction if regression else None,
        "label": result.label,
        "probability": result.probability,
        "probabilities": result.probabilities,
        "warnings": result.warnings,
        "error": result.error,
        "created_at": job.created_at,
        "completed_at": now,
        "key": job.key,
    }


def _result(row_id: str, o: Output, warnings: list[str]) -> Result:
    return Result(
        id=row_id,
        prediction=o.prediction,
        label=o.label,
        probability=o.probability,
        probabilities=o.probabilities,
        warnings=warnings,
    )


def _invalid_features(runtime: Runtime, job: Job) -> str | None:
    """Validate queued rows with the same schema the API uses: the queue is not trusted either."""
    for row in job.rows:
        try:
            runtime.spec.validate_row(row.features)
        except ValidationError as e:
            return f"row {row.id}: invalid features: {e.errors(include_url=False, include_input=False)}"
    return None


def _finite(outputs: list[Output]) -> list[Output]:
    """The outputs, if every number in them is finite: NaN or infinity (float32 overflow in an ONNX or XGBoost
    model fed a huge number, say) is no answer, and JSON and the history cannot hold it."""
    for i, o in enumerate(outputs):
        numbers = [o.prediction, o.probability, *(o.probabilities or {}).values()]
        if not all(math.isfinite(n) for n in numbers if n is not None):
            raise ValueError(f"the model answered a non-finite number (NaN or infinity) for row {i}: {o}")
    return outputs


def _storable(features: dict[str, Value]) -> dict[str, Value]:
    """Features as stored with a failed row; ones JSON cannot hold (NaN) stay only in the dead letter."""
    try:
        json.dumps(features, allow_nan=False)
    except (TypeError, ValueError):
        return {}
    return features


class Planner:
    """Turns a batch of deliveries into an Outcome: validation, one vectorised predict per version, failures.

    Pure: no I/O, so the batching logic is tested without servers. `models` is the worker's live mapping of
    loaded versions; the worker reads only the streams of versions in it.
    """

    def __init__(self, models: Mapping[queue.Key, Runtime], max_deliveries: int) -> None:
        self.models = models
        self.max_deliveries = max_deliveries

    def plan(self, deliveries: Sequence[queue.Delivery], now: datetime) -> Outcome:
        outcome = Outcome()
        by_version: dict[queue.Key, list[queue.Delivery]] = {}
        for d in deliveries:
            runtime = self.models.get(d.key)
            if d.error is None and runtime is None:
                d.error = f"{d.model!r} version {d.version} is not loaded here"
            if d.error is None and d.deliveries > self.max_deliveries:
                d.error = f"delivered {d.deliveries} times without being acknowledged"
            if d.error is None and d.job is not None and runtime is not None:
                d.error = _invalid_features(runtime, d.job)
            if d.error is None:
                by_version.setdefault(d.key, []).append(d)
            else:
                self._fail(outcome, d, d.error, now)
        for key, batch in by_version.items():
            self._predict(outcome, self.models[key], batch)
        return outcome

    def _predict(self, outcome: Outcome, runtime: Runtime, batch: list[queue.Delivery]) -> None:
        """One vectorised predict for the whole batch; if it fails, row by row, so only the bad rows fail."""
        jobs = [d.job for d in batch if d.job is not None]
        started = time.perf_counter()
        try:
            outputs = _finite(runtime.predict([row.features for job in jobs for row in job.rows]))
        except Exception:
            for d in batch:
                self._row_by_row(outcome, runtime, d)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        offset = 0
        for d, job in zip(batch, jobs, strict=True):
            mine = outputs[offset : offset + len(job.rows)]
            offset += len(job.rows)
            self._succeed(outcome, runtime, d, job, mine, elapsed_ms, len(outputs))

    def _row_by_row(self, outcome: Outcome, runtime: Runtime, d: queue.Delivery) -> None:
        """Each row of a job alone: the model is pure, so a row that fails alone is the bad one (retrying it is
        futile); its batch-mates are answered. A job with a failed row is answered as failed and dead-lettered."""
        assert d.job is not None
        started = time.perf_counter()
        answers: list[Output | str] = []
        for row in d.job.rows:
            try:
                [output] = _finite(runtime.predict([row.features]))
                answers.append(output)
            except Exception as e:
                answers.append(f"prediction failed: {type(e).__name__}: {e}")
        elapsed_ms = (time.perf_counter() - started) * 1000
        errors = [(i, a) for i, a in enumerate(answers) if isinstance(a, str)]
        if not errors:
            outputs = [a for a in answers if isinstance(a, Output)]
            self._succeed(outcome, runtime, d, d.job, outputs, elapsed_ms, len(outputs))
        elif len(errors) == len(answers):
            self._fail(outcome, d, errors[0][1], datetime.now(UTC))
        else:
            self._partly_fail(outcome, runtime, d, answers, elapsed_ms)

    def _partly_fail(
        self, outcome: Outcome, runtime: Runtime, d: queue.Delivery, answers: list[Output | str], predict_ms: float
    ) -> None:
        assert d.job is not None
        spec, now = runtime.spec, datetime.now(UTC)
        results = [
            Result(id=row.id, error=a) if isinstance(a, str) else _result(row.id, a, spec.warnings(row.features))
            for row, a in zip(d.job.rows, answers, strict=True)
        ]
        for row, result in zip(d.job.rows, results, strict=True):
            outcome.rows.append(_history_row(d.job, spec.task, row.id, _storable(row.features), now, result))
        error = "; ".join(f"row {r.id}: {r.error}" for r in results if r.error)
        outcome.answers.append(Answer(d.job, results, error, predict_ms=predict_ms, batch_rows=1))
        outcome.dead.append((d, error))
        outcome.acks.append(d)

    def _succeed(
        self, outcome: Outcome, runtime: Runtime, d: queue.Delivery, job: Job,
        outputs: Sequence[Output], predict_ms: float, batch_rows: int,
    ) -> None:  # fmt: skip
        spec = runtime.spec
        predicted_at = datetime.now(UTC)  # completed_at - created_at then spans queue and model time
        results = [_result(row.id, o, spec.warnings(row.features)) for row, o in zip(job.rows, outputs, strict=True)]
        for row, result in zip(job.rows, results, strict=True):
            outcome.rows.append(_history_row(job, spec.task, row.id, row.features, predicted_at, result))
        outcome.answers.append(Answer(job, results, predict_ms=predict_ms, batch_rows=batch_rows))
        outcome.acks.append(d)

    def _fail(self, outcome: Outcome, d: queue.Delivery, error: str, now: datetime) -> None:
        outcome.dead.append((d, error))
        outcome.acks.append(d)
        if d.job is None:
            return  # undecodable: the dead-letter entry keeps the raw message
        runtime = self.models.get(d.key)
        task = runtime.spec.task if runtime else "classification"
        results = [Result(id=row.id, error=error) for row in d.job.rows]
        for row, result in zip(d.job.rows, results, strict=True):
            outcome.rows.append(_history_row(d.job, task, row.id, _storable(row.features), now, result))
        outcome.answers.append(Answer(d.job, results, error))
