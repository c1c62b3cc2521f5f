"""The model worker: consume -> batch -> predict -> persist -> answer -> acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from mlapi import queue
from mlapi.contract import Job, Reply, Result, Timings, Value
from mlapi.models.runtime import Prediction
from mlapi.models.spec import ModelSpec
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.repository import PredictionRepository

log = logging.getLogger("mlapi.worker")

MAX_BACKOFF_S = 5.0


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


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        redis: Redis,
        repository: PredictionRepository,
        models: Mapping[str, Predictor],
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.repository = repository
        self.models = dict(models)
        self.consumer = consumer or settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._claim_cursor = dict.fromkeys(self.models, "0-0")
        self._last_claim = 0.0
        self._last_trim = time.monotonic()
        self._backoff = 0.0

    async def start(self) -> None:
        await queue.ensure_groups(self.redis, self.models)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; the batch in hand is finished and acknowledged first."""
        await self.start()
        log.info("worker %s serving %s", self.consumer, ", ".join(self.models))
        while not stop.is_set():
            try:
                await self.step()
                self._backoff = 0.0
            except (RedisError, SQLAlchemyError, OSError) as e:
                # The broker or the database is away: nothing was acknowledged, so nothing is lost.
                self._backoff = min(MAX_BACKOFF_S, max(0.1, self._backoff * 2))
                log.warning("%s: %s; retrying in %.1f s", type(e).__name__, e, self._backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._backoff)
        await self.leave()

    async def step(self) -> int:
        """Reclaim or read one batch and process it; returns the number of entries handled."""
        deliveries = await self._reclaim_due()
        if not deliveries:
            deliveries = await queue.read_new(
                self.redis, self.consumer, list(self.models), self.settings.batch_size, self.settings.block_ms
            )
        if deliveries:
            await self.process(deliveries)
        if time.monotonic() - self._last_trim >= self.settings.trim_interval_s:
            self._last_trim = time.monotonic()
            for model in self.models:
                await queue.trim_acknowledged(self.redis, model)
        return len(deliveries)

    async def _reclaim_due(self) -> list[queue.Delivery]:
        if time.monotonic() - self._last_claim < self.settings.visibility_timeout_ms / 2000:
            return []
        self._last_claim = time.monotonic()
        claimed: list[queue.Delivery] = []
        for model in self.models:
            self._claim_cursor[model], found = await queue.claim_stale(
                self.redis, self.consumer, model, self.settings.visibility_timeout_ms,
                self.settings.batch_size, self._claim_cursor[model],
            )  # fmt: skip
            claimed += found
            await queue.prune_consumers(self.redis, model, 100 * self.settings.visibility_timeout_ms)
        if claimed:
            log.warning("reclaimed %d entries held too long by other consumers", len(claimed))
        return claimed

    async def process(self, deliveries: Sequence[queue.Delivery]) -> None:
        """Predict, store, answer and acknowledge one batch; dead-letter what cannot succeed."""
        now = datetime.now(UTC)
        outcome = Outcome()
        by_model: dict[str, list[queue.Delivery]] = {}
        for d in deliveries:
            if d.error is None and d.deliveries > self.settings.max_deliveries:
                d.error = f"delivered {d.deliveries} times without being acknowledged"
            if d.error is None and d.job is not None:
                d.error = _invalid_features(self.models[d.model].spec, d.job)
            if d.error is None:
                by_model.setdefault(d.model, []).append(d)
            else:
                self._fail(outcome, d, d.error, now)
        for model, batch in by_model.items():
            self._predict(outcome, self.models[model], batch, now)
        started = time.perf_counter()
        await self.repository.add(outcome.rows)
        store_ms = (time.perf_counter() - started) * 1000
        replies = [
            (
                a.job.reply_to,
                Reply(
                    id=a.job.id,
                    model_version=self._version(a.job.model),
                    results=a.results,
                    completed_at=now,
                    error=a.error,
                    timings=Timings(
                        queue_ms=(now - a.job.created_at).total_seconds() * 1000,
                        predict_ms=a.predict_ms,
                        store_ms=store_ms,
                        batch_rows=a.batch_rows,
                    ),
                ),
            )
            for a in outcome.answers
        ]
        await queue.finish(self.redis, outcome.acks, replies, outcome.dead)
        for delivery, error in outcome.dead:
            log.error("dead-lettered %s entry %s: %s", delivery.model, delivery.entry_id, error)

    def _version(self, model: str) -> str:
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
            self._succeed(outcome, predictor, d, job, mine, elapsed_ms, len(predictions), now)

    def _guarded_predict(self, outcome: Outcome, predictor: Predictor, d: queue.Delivery, now: datetime) -> None:
        assert d.job is not None
        started = time.perf_counter()
        try:
            predictions = predictor.predict([row.features for row in d.job.rows])
        except Exception as e:  # the model is pure: the same input fails the same way, so retrying is futile
            self._fail(outcome, d, f"prediction failed: {type(e).__name__}: {e}", now)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._succeed(outcome, predictor, d, d.job, predictions, elapsed_ms, len(predictions), now)

    def _succeed(
        self, outcome: Outcome, predictor: Predictor, d: queue.Delivery, job: Job,
        predictions: Sequence[Prediction], predict_ms: float, batch_rows: int, now: datetime,
    ) -> None:  # fmt: skip
        version = predictor.spec.version
        for row, p in zip(job.rows, predictions, strict=True):
            outcome.rows.append(_history_row(job, version, row.id, row.features, now, p, None))
        results = [_result(row.id, p) for row, p in zip(job.rows, predictions, strict=True)]
        outcome.answers.append(Answer(job, results, predict_ms=predict_ms, batch_rows=batch_rows))
        outcome.acks.append(d)

    def _fail(self, outcome: Outcome, d: queue.Delivery, error: str, now: datetime) -> None:
        outcome.dead.append((d, error))
        outcome.acks.append(d)
        if d.job is None:
            return  # undecodable: the dead-letter entry keeps the raw message
        version = self._version(d.job.model)
        for row in d.job.rows:
            outcome.rows.append(_history_row(d.job, version, row.id, _storable(row.features), now, None, error))
        outcome.answers.append(Answer(d.job, [Result(id=row.id, error=error) for row in d.job.rows], error))

    async def leave(self) -> None:
        """Remove this consumer from the groups where it holds nothing, so it stops counting as live."""
        for model in self.models:
            stream = queue.request_stream(model)
            pending = await self.redis.xpending_range(stream, queue.GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                await self.redis.xgroup_delconsumer(stream, queue.GROUP, self.consumer)


async def run_worker(settings: Settings) -> None:
    """`mlapi worker`: load the models, then serve until SIGTERM or SIGINT."""
    from mlapi.models.runtime import LoadedModel
    from mlapi.models.spec import read_registry
    from mlapi.storage.repository import engine_for

    names = settings.worker.models or list(read_registry(settings.models_dir))
    models = {name: LoadedModel.load(settings.models_dir / name) for name in names}
    redis = queue.connect(settings.require_redis_url(), read_timeout_s=settings.worker.block_ms / 1000 + 5)
    engine = engine_for(settings.require_database_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Worker(settings.worker, redis, PredictionRepository(engine), models).run(stop)
    finally:
        await redis.aclose()
        await engine.dispose()
    log.info("worker stopped")
