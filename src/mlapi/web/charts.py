"""Charts of the history, drawn as inline SVG on the server: no chart library, no script, styled by the page's CSS.

Each chart comes with a sentence that says what it shows, which screen readers read instead of the picture.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from markupsafe import Markup, escape

from mlapi.schemas import PredictionRecord
from mlapi.web.describe import number

WIDTH, HEIGHT = 360, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 12, 12, 34
SERIES_COLOURS = 8
"""The stylesheet defines `.series-0` .. `.series-7` (a colour-blind-safe palette)."""
BIN_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
MAX_TIME_BINS = 24
ROW_HEIGHT = 32.0
"""Height of one bar of a horizontal bar chart."""
PERCENTILES = ((50, "p50"), (90, "p90"), (95, "p95"), (99, "p99"))
VALUE_SERIES = "value (regression)"
"""The series of regressors' answers among the classes of the chart over time."""
NOTHING_YET = "No predictions to show yet."


@dataclass(frozen=True)
class Chart:
    title: str
    summary: str
    """What the chart shows, in words: the text alternative of the picture."""
    svg: Markup | None
    """None when there is nothing to draw."""
    legend: tuple[tuple[str, str], ...] = ()
    """(label, CSS class) of each coloured series."""


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k at or above `value` (at least 1): a readable axis top."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)  # pragma: no cover - the loop always returns


def count_ceiling(value: int) -> float:
    """An axis top for counts whose half-way line is a whole number too (never 7.5 predictions)."""
    top = nice_ceiling(value)
    return nice_ceiling(top + 1) if top % 2 else top


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (`q` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _svg(uid: str, title: str, summary: str, body: list[str], height: float = HEIGHT) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'aria-labelledby="{uid}-t" aria-describedby="{uid}-d" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{uid}-t">{escape(title)}</title><desc id="{uid}-d">{escape(summary)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, cls: str = "axis-label", anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'


def _y_axis(top: float, unit: str = "") -> tuple[list[str], float]:
    """Horizontal grid lines with labels at 0, half and the top; returns the parts and the plot's height."""
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = []
    for fraction in (0, 0.5, 1):
        y = HEIGHT - PAD_BOTTOM - fraction * plot_h
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(_text(PAD_LEFT - 6, y + 4, f"{_fmt(top * fraction)}{unit}", anchor="end"))
    return parts, plot_h


def regression_value(record: PredictionRecord) -> float | None:
    """A regressor's answer; None for a classification and for a row without an answer."""
    if record.task != "regression" or record.prediction is None:
        return None
    return float(record.prediction)


def series_order(records: Sequence[PredictionRecord]) -> list[str]:
    """Predicted labels in a stable order (by model, then class), so one label keeps one colour on a page."""
    seen = {(r.model, r.prediction or 0, r.label) for r in records if r.label is not None}
    labels: list[str] = []
    for _, _, label in sorted(seen, key=lambda s: (s[0], s[1])):
        if label not in labels:
            labels.append(label)
    return labels


def _series_class(labels: list[str], label: str) -> str:
    return f"series-{labels.index(label) % SERIES_COLOURS}"


def class_distribution(records: Sequence[PredictionRecord]) -> Chart:
    title = "Predicted classes"
    done = [r for r in records if r.label is not None]
    if not done:
        empty = "No classes to show: these are a regressor's answers." if _has_values(records) else NOTHING_YET
        return Chart(title, empty, None)
    labels = series_order(done)
    counts = Counter(r.label for r in done)
    total = len(done)
    summary = f"Of {total} predictions: " + ", ".join(
        f"{label} {counts[label]} ({counts[label] / total:.0%})" for label in labels
    )
    row_h = ROW_HEIGHT
    bar_h = row_h * 0.6
    left, right = 110, 84
    span = WIDTH - left - right
    top = max(counts.values())
    body = []
    for i, label in enumerate(labels):
        y = 4 + i * row_h
        w = max(1.0, span * counts[label] / top)
        body.append(_text(left - 8, y + bar_h / 2 + 8, _shorten(label, 16), cls="bar-label", anchor="end"))
        body.append(
            f'<rect class="{_series_class(labels, label)}" x="{left}" y="{y + 4:.1f}" width="{w:.1f}" '
            f'height="{bar_h:.1f}" rx="2"/>'
        )
        value = f"{counts[label]} ({counts[label] / total:.0%})"
        body.append(_text(left + w + 6, y + bar_h / 2 + 8, value, cls="bar-value", anchor="start"))
    return Chart(title, summary, _svg("chart-classes", title, summary, body, 8 + len(labels) * row_h))


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def probability_histogram(records: Sequence[PredictionRecord], bins: int = 10) -> Chart:
    title = "How sure the model was"
    values = [r.probability for r in records if r.probability is not None]
    if not values:
        labelled = any(r.label is not None for r in records)
        return Chart(title, "None of these predictions came with probabilities." if labelled else NOTHING_YET, None)
    counts = [0] * bins
    for p in values:
        counts[min(bins - 1, max(0, int(p * bins)))] += 1
    top = count_ceiling(max(counts))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    bar_w = plot_w / bins
    for i, n in enumerate(counts):
        h = plot_h * n / top
        x = PAD_LEFT + i * bar_w
        low, high = i / bins, (i + 1) / bins
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{HEIGHT - PAD_BOTTOM - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}"><title>{low:.0%} to {high:.0%}: {n}</title></rect>'
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        parts.append(_text(PAD_LEFT + fraction * plot_w, HEIGHT - PAD_BOTTOM + 16, f"{fraction:.0%}", anchor=anchor))
    parts.append(_text(PAD_LEFT + plot_w / 2, HEIGHT - 4, "probability of the predicted class", cls="axis-title"))
    confident = sum(1 for p in values if p >= 0.9)
    summary = (
        f"Probability of the predicted class over {len(values)} predictions, in {bins} bins of "
        f"{1 / bins:.0%}: median {percentile(values, 50):.0%}; "
        f"{confident} ({confident / len(values):.0%}) at 90% or more."
    )
    return Chart(title, summary, _svg("chart-confidence", title, summary, parts))


def latency_ms(record: PredictionRecord) -> float | None:
    """From the request's arrival at the API to the worker's answer, as the history records them."""
    if record.created_at is None or record.completed_at is None:
        return None
    return max(0.0, (record.completed_at - record.created_at).total_seconds() * 1000)


def _duration(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def latency_percentiles(records: Sequence[PredictionRecord]) -> Chart:
    title = "Latency percentiles"
    values = [v for r in records if r.status == "done" and (v := latency_ms(r)) is not None]
    if not values:
        return Chart(title, "No completed predictions to show yet.", None)
    points = [(name, percentile(values, q)) for q, name in PERCENTILES] + [("max", max(values))]
    summary = (
        f"Time from request to answer over {len(values)} predictions: "
        + ", ".join(f"{name} {_duration(v)}" for name, v in points)
        + "."
    )
    left, right = 44, 74
    row_h = ROW_HEIGHT
    bar_h = row_h * 0.6
    top = max(v for _, v in points) or 1.0
    body = []
    for i, (name, value) in enumerate(points):
        y = 4 + i * row_h
        w = max(1.0, (WIDTH - left - right) * value / top)
        body.append(_text(left - 8, y + bar_h / 2 + 8, name, cls="bar-label", anchor="end"))
        body.append(f'<rect class="bar" x="{left}" y="{y + 4:.1f}" width="{w:.1f}" height="{bar_h:.1f}" rx="2"/>')
        body.append(_text(left + w + 6, y + bar_h / 2 + 8, _duration(value), cls="bar-value", anchor="start"))
    return Chart(title, summary, _svg("chart-latency", title, summary, body, 8 + len(points) * row_h))


def bin_width_s(span_s: float) -> int:
    """The narrowest bin width that fits `span_s` into at most `MAX_TIME_BINS` bins."""
    for width in BIN_WIDTHS_S:
        if span_s / width < MAX_TIME_BINS:
            return width
    return BIN_WIDTHS_S[-1]


def _time_label(moment: datetime, width_s: int) -> str:
    if width_s >= 86400:
        return moment.strftime("%d %b")
    return moment.strftime("%H:%M:%S" if width_s < 60 else "%H:%M")


def _width_words(width_s: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if width_s >= size and width_s % size == 0:
            n = width_s // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return f"{width_s} second{'s' if width_s > 1 else ''}"


def predictions_over_time(records: Sequence[PredictionRecord]) -> Chart:
    title = "Predictions over time"
    dated = [r for r in records if r.created_at is not None and _series(r) is not None]
    if not dated:
        return Chart(title, NOTHING_YET, None)
    stamps = [r.created_at.timestamp() for r in dated if r.created_at is not None]
    width = bin_width_s(max(stamps) - min(stamps))
    first = math.floor(min(stamps) / width)
    n_bins = math.floor(max(stamps) / width) - first + 1
    labels = series_order(dated) + ([VALUE_SERIES] if _has_values(dated) else [])
    bins: list[Counter[str]] = [Counter() for _ in range(n_bins)]
    for r, stamp in zip(dated, stamps, strict=True):
        bins[math.floor(stamp / width) - first][_series(r) or ""] += 1
    top = count_ceiling(max(sum(b.values()) for b in bins))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    slot = plot_w / max(n_bins, 1)
    bar_w = max(1.0, min(slot * 0.8, 40))
    start = datetime.fromtimestamp(first * width, UTC)
    for i, b in enumerate(bins):
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        y = float(HEIGHT - PAD_BOTTOM)
        when = start + timedelta(seconds=i * width)
        for label in labels:
            if not b[label]:
                continue
            h = plot_h * b[label] / top
            y -= h
            parts.append(
                f'<rect class="{_series_class(labels, label)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}"><title>{escape(_time_label(when, width))} UTC, {escape(label)}: '
                f"{b[label]}</title></rect>"
            )
    for i, anchor in {0: "start", n_bins // 2: "middle", n_bins - 1: "end"}.items():
        when = start + timedelta(seconds=i * width)
        tick_x = {"start": PAD_LEFT + i * slot, "middle": PAD_LEFT + (i + 0.5) * slot, "end": PAD_LEFT + (i + 1) * slot}
        parts.append(_text(tick_x[anchor], HEIGHT - PAD_BOTTOM + 16, _time_label(when, width), anchor=anchor))
    parts.append(_text(PAD_LEFT + plot_w / 2, HEIGHT - 4, f"UTC, per {_width_words(width)}", cls="axis-title"))
    end = start + timedelta(seconds=n_bins * width)
    moment = "%Y-%m-%d %H:%M:%S" if width < 60 else "%Y-%m-%d %H:%M"
    busiest = max(range(n_bins), key=lambda i: sum(bins[i].values()))
    summary = (
        f"{len(dated)} predictions from {start:{moment}} to {end:{moment}} UTC "
        f"in bins of {_width_words(width)}, stacked by class ({', '.join(labels)}); the busiest bin, "
        f"{_time_label(start + timedelta(seconds=busiest * width), width)}, had {sum(bins[busiest].values())}."
    )
    legend = tuple((label, _series_class(labels, label)) for label in labels)
    return Chart(title, summary, _svg("chart-time", title, summary, parts), legend)


def _has_values(records: Sequence[PredictionRecord]) -> bool:
    return any(regression_value(r) is not None for r in records)


def _series(record: PredictionRecord) -> str | None:
    """The series of an answered row in the chart over time: its class, or the regressors' one."""
    return record.label if record.label is not None else VALUE_SERIES if regression_value(record) is not None else None


def value_histogram(records: Sequence[PredictionRecord], bins: int = 10) -> Chart:
    """How a regressor's answers spread; values of different models share no scale, so they are not mixed."""
    title = "Predicted values"
    answered = [(r.model, v) for r in records if (v := regression_value(r)) is not None]
    if not answered:
        return Chart(title, "No regressor's answers to show yet.", None)
    models = sorted({m for m, _ in answered})
    if len(models) > 1:
        summary = f"Values of {len(models)} regressors ({', '.join(models)}) share no scale: filter by one model."
        return Chart(title, summary, None)
    values = [v for _, v in answered]
    low, high = min(values), max(values)
    step = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / step))] += 1
    top = count_ceiling(max(counts))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    bar_w = plot_w / bins
    for i, n in enumerate(counts):
        h = plot_h * n / top
        x = PAD_LEFT + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{HEIGHT - PAD_BOTTOM - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}"><title>{escape(number(low + i * step))} to {escape(number(low + (i + 1) * step))}: '
            f"{n}</title></rect>"
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        tick = number(low + fraction * step * bins)
        parts.append(_text(PAD_LEFT + fraction * plot_w, HEIGHT - PAD_BOTTOM + 16, tick, anchor=anchor))
    parts.append(_text(PAD_LEFT + plot_w / 2, HEIGHT - 4, f"predicted value of {models[0]}", cls="axis-title"))
    summary = (
        f"{len(values)} predicted values of {models[0]} from {number(low)} to {number(high)}, in {bins} bins: "
        f"median {number(percentile(values, 50))}."
    )
    return Chart(title, summary, _svg("chart-values", title, summary, parts))


def history_charts(records: Sequence[PredictionRecord]) -> list[Chart]:
    """The overview of a window of the history; a regressor's answers get their own chart instead of the classes."""
    values = _has_values(records)
    middle = []
    if not values or any(r.label is not None for r in records):
        middle += [class_distribution(records), probability_histogram(records)]
    if values:
        middle.append(value_histogram(records))
    return [predictions_over_time(records), *middle, latency_percentiles(records)]
