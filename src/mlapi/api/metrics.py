"""Prometheus metrics of one API process: its requests, and the queue as Redis sees it at scrape time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis

from mlapi import queue
from mlapi.contract import Reply

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Owned by the app (no global registry), so every app and test has its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlapi_predict_requests", "Predict requests by model and outcome "
            "(ok, queued, invalid, failed, timeout, unavailable, overloaded)", ["model", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mlapi_predict_seconds", "Time from a predict request's arrival to its answer, for answered ones",
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.stage = Histogram(
            "mlapi_stage_seconds", "Worker-side time of answered requests by stage (queue, predict, store)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "mlapi_batch_rows", "Rows in the batch each answered request was predicted in",
            buckets=ROW_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.unauthenticated = Counter(
            "mlapi_unauthenticated",
            "Requests refused for a missing, unknown or revoked API key",
            registry=self.registry,
        )
        self.forbidden = Counter(
            "mlapi_forbidden", "Requests refused because their key may not do that, by key", ["key"],
            registry=self.registry,
        )  # fmt: skip
        self.rate_limited = Counter(
            "mlapi_rate_limited",
            "Requests refused over their key's rate limit, by key",
            ["key"],
            registry=self.registry,
        )
        self.in_flight = Gauge("mlapi_in_flight", "Requests waiting for their answer", registry=self.registry)
        self.max_backlog = Gauge(
            "mlapi_max_backlog", "Admission limit: requests waiting per model version above which new ones get "
            "503 (0: no limit)", registry=self.registry,
        )  # fmt: skip
        self.task_restarts = Counter(
            "mlapi_task_restarts", "Restarts of a background task after it failed", ["task"], registry=self.registry
        )
        self._queue = {
            name: Gauge(f"mlapi_queue_{name}", text, ["model", "version"], registry=self.registry)
            for name, text in queue.STATS.items()
        }
        self._quality = Gauge(
            "mlapi_model_quality", "Live quality over the quality window (MLAPI_QUALITY__WINDOW_DAYS) of labelled "
            "predictions, per model version and metric (labelled: their count)", ["model", "version", "metric"],
            registry=self.registry,
        )  # fmt: skip
        self._drift = Gauge(
            "mlapi_model_drift_psi", "Population stability index of a feature's values (or of the predictions) over "
            "the drift window (MLAPI_QUALITY__DRIFT_WINDOW_H) against the version's training data",
            ["model", "version", "feature"], registry=self.registry,
        )  # fmt: skip
        self._dead = Gauge(
            "mlapi_queue_dead_letters", "Entries in the model's dead-letter stream", ["model"], registry=self.registry
        )

    def answered(self, model: str, seconds: float, reply: Reply) -> None:
        self.requests.labels(model, "ok").inc()
        self.latency.labels(model).observe(seconds)
        if t := reply.timings:
            self.stage.labels("queue").observe(t.queue_ms / 1000)
            self.stage.labels("predict").observe(t.predict_ms / 1000)
            self.stage.labels("store").observe(t.store_ms / 1000)
            self.batch_rows.observe(t.batch_rows)

    def set_quality(
        self, quality: Mapping[tuple[str, str, str], float], drift: Mapping[tuple[str, str, str], float]
    ) -> None:
        """Replace the quality and drift gauges (a version no longer measured loses its series)."""
        for gauge, values in ((self._quality, quality), (self._drift, drift)):
            gauge.clear()
            for labels, value in values.items():
                gauge.labels(*labels).set(value)

    async def render(self, redis: Redis, keys: Sequence[queue.Key], liveness_ms: int) -> bytes:
        """The process's metrics, with every model version's queue as Redis sees it now."""
        for gauge in (*self._queue.values(), self._dead):
            gauge.clear()  # a removed version's or model's series go with it
        for (model, version), stats in (await queue.stats(redis, keys, liveness_ms)).items():
            for name, value in stats.items():
                self._queue[name].labels(model, str(version)).set(value)
        for model, count in (await queue.dead_letters(redis, sorted({m for m, _ in keys}))).items():
            self._dead.labels(model).set(count)
        return generate_latest(self.registry)
