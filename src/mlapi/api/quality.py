"""The protocol-free core of what the history says about the models: ground truth, live quality, drift, and the
statistics the charts draw. The SQL is `mlapi.storage.quality`'s; here are the checks and the answers' shapes."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mlapi import queue
from mlapi.api.access import ANONYMOUS, Caller
from mlapi.api.dataplane import DataPlane
from mlapi.models.profile import PREDICTION, Column, psi, verdict
from mlapi.models.spec import ModelSpec
from mlapi.schemas import (
    DriftBin,
    DriftReport,
    FeatureDrift,
    Feedback,
    FeedbackItem,
    Histogram,
    QualityFigures,
    QualityReport,
    Stats,
    TimeBucket,
    VersionDrift,
    VersionQuality,
)
from mlapi.storage.quality import PERCENTILES, QualityRepository, Truth, Window
from mlapi.storage.registry import Conflict, NotFound

log = logging.getLogger("mlapi.api")

QUALITY_BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
BUCKET_WORDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
NICE_BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
STATS_BUCKETS = 24
"""Buckets the statistics aim for when no bucket is given."""
MAX_BUCKETS = 10_000
HISTOGRAM_BINS = 10


class InvalidQuery(Exception):
    """Parameters that cannot describe a window or a bucket (422)."""


class InvalidFeedback(Exception):
    """Feedback refused; `errors` lists each bad item (index, id, reason)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid feedback item(s)")
        self.errors = errors


class LabelRefused(Exception):
    """A label the model does not know, or feedback of the wrong kind for the model (422)."""


@dataclass(frozen=True)
class _Problem:
    status: int
    reason: str


def utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def in_utc(value: datetime | None) -> datetime | None:
    """A time in UTC (naive times are UTC); one that UTC cannot express (year 0, year 10000) is refused."""
    try:
        return None if value is None else value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise InvalidQuery(f"{value.isoformat()} is out of range in UTC") from None  # type: ignore[union-attr]


def window_bounds(since: datetime | None, until: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    """[since, until) with the defaults: until now, since `default` before until."""
    until = in_utc(until) or datetime.now(UTC)
    try:
        since = in_utc(since) or until - default
    except OverflowError:
        raise InvalidQuery(f"no window of {default} ends at {until.isoformat()}") from None
    if since >= until:
        raise InvalidQuery(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    return since, until


def bucket_seconds(bucket: str | None, since: datetime, until: datetime) -> int:
    """A bucket width in seconds: a number, a word (second .. week), or the nice width giving about 24 buckets."""
    span = (until - since).total_seconds()
    if bucket is None:
        return next((w for w in NICE_BUCKETS_S if span / w <= STATS_BUCKETS), NICE_BUCKETS_S[-1])
    if bucket in BUCKET_WORDS:
        width = BUCKET_WORDS[bucket]
    elif re.fullmatch(r"[0-9]{1,9}", bucket) and int(bucket) > 0:
        width = int(bucket)
    else:
        raise InvalidQuery(
            f"bucket {bucket!r} is neither a whole number of seconds nor one of {', '.join(BUCKET_WORDS)}"
        )
    if span / width > MAX_BUCKETS:
        raise InvalidQuery(f"{span / width:.0f} buckets of {width} s in the window: at most {MAX_BUCKETS}")
    return width


def f1(confusion: Mapping[tuple[int, int], int], classes: int) -> float:
    """F1 as the holdout metrics have it: of class 1 for two classes, else the macro average (0 where undefined)."""

    def of(k: int) -> float:
        tp = confusion.get((k, k), 0)
        fp = sum(n for (y, p), n in confusion.items() if p == k and y != k)
        fn = sum(n for (y, p), n in confusion.items() if y == k and p != k)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

    return of(1) if classes == 2 else sum(of(k) for k in range(classes)) / classes


class QualityPlane:
    def __init__(self, dp: DataPlane, repository: QualityRepository) -> None:
        self.dp = dp
        self.repository = repository
        self._gauges_at = -math.inf
        self._gauges_lock = asyncio.Lock()

    # ---- ground truth -----------------------------------------------------------------------------------------

    async def feedback(self, items: Sequence[FeedbackItem], caller: Caller) -> list[Feedback]:
        """Store ground truth for every item, or for none: `InvalidFeedback` lists the bad ones. A key labels only
        its own predictions (another's is not found)."""
        latest = {str(i.id): i for i in items}  # the last of repeated ids wins, as later feedback does
        problems, targets = await self._check(list(latest.values()), caller.history_key(None))
        if problems:
            errors = [
                {"index": n, "id": str(item.id), "status": p.status, "detail": p.reason}
                for n, item in enumerate(items)
                if (p := problems.get(str(item.id))) is not None
            ]
            raise InvalidFeedback(errors)
        return await self._store(list(latest.values()), targets)

    async def feedback_one(self, item: FeedbackItem, caller: Caller) -> Feedback:
        """Store ground truth for one of the caller's predictions: `NotFound`, `Conflict` or `LabelRefused`
        otherwise."""
        problems, targets = await self._check([item], caller.history_key(None))
        if (problem := problems.get(str(item.id))) is not None:
            raise {404: NotFound, 409: Conflict}.get(problem.status, LabelRefused)(problem.reason)
        [stored] = await self._store([item], targets)
        return stored

    async def _store(self, items: list[FeedbackItem], targets: Mapping[str, Mapping[str, Any]]) -> list[Feedback]:
        truths = [self._truth(i, targets[str(i.id)]) for i in items]
        times = await self.repository.set_truth(truths)
        out = []
        for item, truth in zip(items, truths, strict=True):
            label = None
            if truth.truth is not None:
                label = self._spec(targets[truth.id]).labels[truth.truth]  # type: ignore[union-attr]
            actual = truth.truth if truth.truth is not None else truth.value
            assert actual is not None
            out.append(Feedback(id=str(item.id), actual=actual, label=label, created_at=times[truth.id]))
        return out

    def _spec(self, row: Mapping[str, Any]) -> ModelSpec | None:
        model = self.dp.snapshot.get(row["model"])
        number = row["model_version"]
        found = model.versions.get(int(number)) if model is not None and number.isdigit() else None
        return found.spec if found is not None else None

    def _truth(self, item: FeedbackItem, row: Mapping[str, Any]) -> Truth:
        if row["task"] == "regression":
            return Truth(str(item.id), None, item.value)
        spec = self._spec(row)
        assert spec is not None and item.label is not None
        index = item.label if isinstance(item.label, int) else spec.labels.index(item.label)
        return Truth(str(item.id), index, None)

    async def _check(
        self, items: Sequence[FeedbackItem], owner: str | None
    ) -> tuple[dict[str, _Problem], dict[str, dict[str, Any]]]:
        """What is wrong with each item, by id; and the stored rows they name (of those `owner` made, with one)."""
        targets = await self.repository.targets([str(i.id) for i in items], owner)
        problems: dict[str, _Problem] = {}
        for item in items:
            key = str(item.id)
            row = targets.get(key)
            if row is None:
                queued = await queue.queued(self.dp.redis, key)
                mine = queued is not None and (owner is None or queued.get("key") == owner)
                problems[key] = (
                    _Problem(409, f"prediction {key} is still queued: give feedback once it is answered")
                    if mine
                    else _Problem(404, f"no prediction {key}")
                )
            elif (problem := self._check_label(item, row)) is not None:
                problems[key] = problem
        return problems, targets

    def _check_label(self, item: FeedbackItem, row: Mapping[str, Any]) -> _Problem | None:
        key, name, number = str(item.id), row["model"], row["model_version"]
        if row["status"] != "done":
            return _Problem(409, f"prediction {key} {row['status']}: there is no answer to judge")
        if row["task"] == "regression":
            if item.value is None:
                return _Problem(422, f"{name!r} is a regressor: give its true `value`, not a label")
            return None
        if item.label is None:
            return _Problem(422, f"{name!r} is a classifier: give its true `label`, not a value")
        spec = self._spec(row)
        if spec is None:
            return _Problem(409, f"version {number} of {name!r} is no longer in the registry: its labels are unknown")
        labels = spec.labels
        if isinstance(item.label, int) and not 0 <= item.label < len(labels):
            return _Problem(422, f"class index {item.label} is not one of {name!r}'s: 0 to {len(labels) - 1}")
        if isinstance(item.label, str) and item.label not in labels:
            return _Problem(422, f"{item.label!r} is not a label of {name!r} version {number}: {labels}")
        return None

    # ---- live quality -------------------------------------------------------------------------------------------

    async def quality(
        self, name: str, version: int | None, since: datetime | None, until: datetime | None, bucket: str,
        caller: Caller = ANONYMOUS,
    ) -> QualityReport:  # fmt: skip
        """Quality of every version that answered in the window (or of `version`), overall and per bucket, over the
        caller's labelled predictions (an admin's: everyone's)."""
        caller.require_model(name)
        model = self.dp.model(name)
        if version is not None:
            self.dp.version(name, version)
        since, until = window_bounds(since, until, timedelta(days=self.dp.settings.quality.window_days))
        window = Window(name, since, until, key=caller.history_key(None))
        numbers = [version] if version is not None else await self.repository.versions(window)
        reports = []
        for number in numbers:
            found = model.versions.get(number)
            if found is not None:  # a removed version's labels and holdout metrics are gone with it
                reports.append(await self._version_quality(found.spec, window, QUALITY_BUCKETS[bucket]))
        return QualityReport(model=name, since=since, until=until, bucket=bucket, versions=reports)

    async def _version_quality(self, spec: ModelSpec, window: Window, width: timedelta) -> VersionQuality:
        window = Window(window.model, window.since, window.until, spec.version, key=window.key)
        if spec.task == "regression":
            rows = await self.repository.regressor_quality(window, width)
            figures = [_figures(r, ("mae", "rmse", "r2")) for r in rows]
        else:
            rows, confusion = await self.repository.classifier_quality(window, spec.labels, width)
            matrices: dict[datetime | None, dict[tuple[int, int], int]] = {}
            for c in confusion:
                matrices.setdefault(c["bucket"], {})[(c["y"], c["p"])] = c["n"]
            figures = [
                _figures(r, ("accuracy", "roc_auc", "brier", "log_loss"), f1=f1(matrices.get(r["bucket"], {}),
                         len(spec.labels)))
                for r in rows
            ]  # fmt: skip
        overall = next((f for f in figures if f.start is None), None)
        empty = QualityFigures(labelled=0, metrics={})
        return VersionQuality(
            version=spec.version, task=spec.task, holdout=spec.metrics, overall=overall or empty,
            buckets=[f for f in figures if f.start is not None],
        )  # fmt: skip

    # ---- drift --------------------------------------------------------------------------------------------------

    async def drift(
        self, name: str, version: int | None, since: datetime | None, until: datetime | None,
        caller: Caller = ANONYMOUS,
    ) -> DriftReport:  # fmt: skip
        """Each version's inputs and answers in the window against its reference profile: everyone's, as the
        workers count them, to keys that may use the model."""
        caller.require_model(name)
        model = self.dp.model(name)
        if version is not None:
            self.dp.version(name, version)
        q = self.dp.settings.quality
        since, until = window_bounds(since, until, timedelta(hours=q.drift_window_h))
        window = Window(name, since, until)
        numbers = [version] if version is not None else await self.repository.drift_versions(window)
        reports = []
        for number in numbers:
            found = model.versions.get(number)
            if found is None:
                continue
            if found.profile is None:
                reports.append(VersionDrift(version=number, rows=0, profiled=False, features=[], prediction=None))
                continue
            counts = await self.repository.bin_counts(Window(name, since, until, number))
            columns = [self._column(c, counts.get(c.name, {})) for c in found.profile.columns]
            prediction = next((c for c in columns if c.name == PREDICTION), None)
            rows = sum(counts.get(PREDICTION, {}).get(i, 0) for i in range(len(prediction.bins))) if prediction else 0
            features = [c for c in columns if c.name != PREDICTION]
            reports.append(VersionDrift(version=number, rows=rows, profiled=True, features=features,
                                        prediction=prediction))  # fmt: skip
        thresholds = {"watch": q.psi_watch, "drifted": q.psi_drifted}
        return DriftReport(model=name, since=since, until=until, thresholds=thresholds, versions=reports)

    def _column(self, column: Column, counts: Mapping[int, int]) -> FeatureDrift:
        q = self.dp.settings.quality
        observed = [counts.get(i, 0) for i in range(len(column.shares))]
        total = sum(observed)
        value = psi(observed, column.shares)
        outside = counts.get(-1, 0) / total if total and column.kind == "number" else None
        bins = [
            DriftBin(name=n, expected=e, actual=c / total if total else 0.0)
            for n, e, c in zip(column.bin_names(), column.shares, observed, strict=True)
        ]
        return FeatureDrift(
            name=column.name, kind=column.kind, psi=value, outside_range=outside, bins=bins,
            verdict=verdict(value, q.psi_watch, q.psi_drifted) if value is not None else None,
        )  # fmt: skip

    # ---- statistics for the charts --------------------------------------------------------------------------

    async def stats(
        self, model: str | None, version: int | None, since: datetime | None, until: datetime | None,
        bucket: str | None, prediction: int | None, key: str | None = None,
    ) -> Stats:  # fmt: skip
        """The window's counts over time per series, histograms and latency percentiles; without `since`, the
        window starts at the oldest matching prediction."""
        if version is not None:
            if model is None:
                raise InvalidQuery("version needs model")
            self.dp.version(model, version)
        until = in_utc(until) or datetime.now(UTC)
        if since is None:
            probe = Window(model, until, until, version, prediction, key)
            oldest = await self.repository.first_created(probe)
            since = oldest if oldest is not None and oldest < until else None
        since, until = window_bounds(since, until, timedelta(hours=1))
        width = bucket_seconds(bucket, since, until)
        window = Window(model, since, until, version, prediction, key)
        found = await self.repository.stats(window, timedelta(seconds=width), HISTOGRAM_BINS)
        return _stats(found, since, until, width)

    # ---- gauges ---------------------------------------------------------------------------------------------------

    async def update_gauges(self) -> None:
        """Recompute the quality and drift gauges, at most every `metrics_interval_s` (a scrape waits for it)."""
        interval = self.dp.settings.quality.metrics_interval_s
        async with self._gauges_lock:
            if time.monotonic() - self._gauges_at < interval:
                return
            self._gauges_at = time.monotonic()
            metrics = self.dp.metrics
            quality: dict[tuple[str, str, str], float] = {}
            drift: dict[tuple[str, str, str], float] = {}
            for model in list(self.dp.snapshot.values()):
                for report in (await self.quality(model.name, None, None, None, "day")).versions:
                    quality[(model.name, str(report.version), "labelled")] = report.overall.labelled
                    for metric, value in report.overall.metrics.items():
                        if value is not None:
                            quality[(model.name, str(report.version), metric)] = value
                for d in (await self.drift(model.name, None, None, None)).versions:
                    for f in [*d.features, *([d.prediction] if d.prediction else [])]:
                        if f.psi is not None:
                            drift[(model.name, str(d.version), f.name or "prediction")] = f.psi
            metrics.set_quality(quality, drift)


def _figures(row: Mapping[str, Any], names: Sequence[str], **extra: float) -> QualityFigures:
    metrics = {n: None if row[n] is None else float(row[n]) for n in names}
    if row["n"]:
        metrics.update(extra)
    return QualityFigures(start=row["bucket"], labelled=row["n"], metrics=metrics)


def _stats(found: Mapping[str, Any], since: datetime, until: datetime, width: int) -> Stats:
    buckets: dict[datetime, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for r in found["over_time"]:
        buckets.setdefault(r["bucket"], {})[r["series"]] = r["n"]
        totals[r["series"]] = totals.get(r["series"], 0) + r["n"]
    probability: dict[str, list[int]] = {}
    for r in found["probability"]:
        probability.setdefault(r["series"], [0] * HISTOGRAM_BINS)[r["bin"] - 1] += r["n"]
    values = None
    if found["values"]:
        lo, hi = found["values"][0]["lo"], found["values"][0]["hi"]
        step = (hi - lo) / HISTOGRAM_BINS
        counts = [0] * HISTOGRAM_BINS
        for r in found["values"]:
            counts[r["bin"] - 1] += r["n"]
        edges = [lo + i * step for i in range(HISTOGRAM_BINS)] + [hi]
        values = Histogram(edges=edges, counts={"value": counts})
    latency = found["latency"]
    percentiles = latency["ms"] or [None] * len(PERCENTILES)
    return Stats(
        since=since, until=until, bucket_s=width, total=sum(totals.values()), totals=totals,
        over_time=[TimeBucket(start=b, counts=c) for b, c in sorted(buckets.items())],
        probability=Histogram(edges=[i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)], counts=probability),
        values=values,
        latency_ms={f"p{round(q * 100)}": p for q, p in zip(PERCENTILES, percentiles, strict=True)},
    )  # fmt: skip
