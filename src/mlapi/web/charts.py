"""Charts of the history, drawn as inline SVG on the server: no chart library, no script, styled by the page's CSS.

Each chart comes with a sentence that says what it shows, which screen readers read instead of the picture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

from mlapi.schemas import ModelSummary, PredictionRecord, Stats
from mlapi.web.describe import number

WIDTH, HEIGHT = 360, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 12, 12, 34
SERIES_COLOURS = 8
"""The stylesheet defines `.series-0` .. `.series-7` (a colour-blind-safe palette)."""
CONFIDENT = 0.9
ROW_HEIGHT = 32.0
"""Height of one bar of a horizontal bar chart."""
VALUE, FAILED, QUEUED = "value", "failed", "queued"
"""The statistics' series of regressors' answers, failures and rows not answered yet, beside the classes' labels."""
VALUE_SERIES = "value (regression)"
"""How the regressors' series is named on the chart over time."""
NOTHING_YET = "No predictions in this window yet."


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


def series_order(stats: Stats, models: Sequence[ModelSummary]) -> list[str]:
    """The window's predicted classes in a stable order (by model, then class), so one label keeps one colour on a
    page; labels no model lists any more follow, sorted."""
    present = {s for s in stats.totals if s not in (VALUE, FAILED, QUEUED)}
    known = [label for m in sorted(models, key=lambda m: m.name) for label in m.labels]
    labels: list[str] = []
    for label in [*known, *sorted(present)]:
        if label in present and label not in labels:
            labels.append(label)
    return labels


def _series_class(labels: list[str], label: str) -> str:
    return f"series-{labels.index(label) % SERIES_COLOURS}"


def class_distribution(stats: Stats, labels: list[str]) -> Chart:
    title = "Predicted classes"
    if not labels:
        empty = "No classes to show: these are a regressor's answers." if VALUE in stats.totals else NOTHING_YET
        return Chart(title, empty, None)
    counts = {label: stats.totals[label] for label in labels}
    total = sum(counts.values())
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


def median_bin(counts: Sequence[int]) -> int:
    """The bin holding the middle one of the counted values (of a non-empty histogram)."""
    half, running = sum(counts) / 2, 0
    for i, n in enumerate(counts):
        running += n
        if running >= half:
            return i
    return len(counts) - 1  # pragma: no cover - the running sum reaches the half


def _bars(counts: Sequence[int], edges: Sequence[float], label: Callable[[float], str], axis: str) -> list[str]:
    """A histogram's bars, each with its range and count as a tooltip, and the axes."""
    bins = len(counts)
    top = count_ceiling(max(counts))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    bar_w = plot_w / bins
    for i, n in enumerate(counts):
        h = plot_h * n / top
        x = PAD_LEFT + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{HEIGHT - PAD_BOTTOM - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}"><title>{escape(label(edges[i]))} to {escape(label(edges[i + 1]))}: {n}</title></rect>'
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        tick = label(edges[0] + fraction * (edges[-1] - edges[0]))
        parts.append(_text(PAD_LEFT + fraction * plot_w, HEIGHT - PAD_BOTTOM + 16, tick, anchor=anchor))
    parts.append(_text(PAD_LEFT + plot_w / 2, HEIGHT - 4, axis, cls="axis-title"))
    return parts


def _percent(value: float) -> str:
    return f"{value:.0%}"


def probability_histogram(stats: Stats, labels: list[str]) -> Chart:
    title = "How sure the model was"
    histogram = stats.probability
    counts = [sum(bins) for bins in zip(*histogram.counts.values(), strict=True)]
    if not sum(counts):
        return Chart(title, "None of these predictions came with probabilities." if labels else NOTHING_YET, None)
    edges, total = histogram.edges, sum(counts)
    middle = median_bin(counts)
    confident = sum(n for n, low in zip(counts, edges, strict=False) if low >= CONFIDENT)
    summary = (
        f"Probability of the predicted class over {total} predictions, in {len(counts)} bins of "
        f"{edges[1] - edges[0]:.0%}: the median between {edges[middle]:.0%} and {edges[middle + 1]:.0%}; "
        f"{confident} ({confident / total:.0%}) at {CONFIDENT:.0%} or more."
    )
    parts = _bars(counts, edges, _percent, "probability of the predicted class")
    return Chart(title, summary, _svg("chart-confidence", title, summary, parts))


def latency_ms(record: PredictionRecord) -> float | None:
    """From the request's arrival at the API to the worker's answer, as the history records them."""
    if record.created_at is None or record.completed_at is None:
        return None
    return max(0.0, (record.completed_at - record.created_at).total_seconds() * 1000)


def _duration(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def latency_percentiles(stats: Stats) -> Chart:
    title = "Latency percentiles"
    points = [(name, v) for name, v in stats.latency_ms.items() if v is not None]
    if not points:
        return Chart(title, "No completed predictions to show yet.", None)
    answered = sum(n for series, n in stats.totals.items() if series not in (FAILED, QUEUED))
    summary = (
        f"Time from request to answer over {answered} predictions: "
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


def _time_label(moment: datetime, width_s: int) -> str:
    if width_s >= 86400:
        return moment.strftime("%d %b")
    return moment.strftime("%H:%M:%S" if width_s < 60 else "%H:%M")


def width_words(width_s: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if width_s >= size and width_s % size == 0:
            n = width_s // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return f"{width_s} second{'s' if width_s > 1 else ''}"


def _display(series: str) -> str:
    return VALUE_SERIES if series == VALUE else series


def predictions_over_time(stats: Stats, labels: list[str]) -> Chart:
    """Every bucket of the window, stacked by series (the classes, the regressors' answers, failures)."""
    title = "Predictions over time"
    if not stats.total:
        return Chart(title, NOTHING_YET, None)
    width = stats.bucket_s
    step = timedelta(seconds=width)
    first = stats.over_time[0].start
    start = first - math.ceil((first - stats.since) / step) * step  # the bucket holding `since`
    n_bins = math.ceil((stats.until - start) / step)
    series = labels + [s for s in (VALUE, FAILED, QUEUED) if s in stats.totals]
    bins: list[dict[str, int]] = [{} for _ in range(n_bins)]
    for bucket in stats.over_time:
        bins[(bucket.start - start) // step] = bucket.counts
    top = count_ceiling(max(sum(b.values()) for b in bins))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    slot = plot_w / n_bins
    bar_w = max(1.0, min(slot * 0.8, 40))
    for i, b in enumerate(bins):
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        y = float(HEIGHT - PAD_BOTTOM)
        when = _time_label(start + i * step, width)
        for name in series:
            if not b.get(name):
                continue
            h = plot_h * b[name] / top
            y -= h
            parts.append(
                f'<rect class="{_series_class(series, name)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}"><title>{escape(when)} UTC, {escape(_display(name))}: {b[name]}</title></rect>'
            )
    for i, anchor in {0: "start", n_bins // 2: "middle", n_bins - 1: "end"}.items():
        tick_x = {"start": PAD_LEFT + i * slot, "middle": PAD_LEFT + (i + 0.5) * slot, "end": PAD_LEFT + (i + 1) * slot}
        parts.append(
            _text(tick_x[anchor], HEIGHT - PAD_BOTTOM + 16, _time_label(start + i * step, width), anchor=anchor)
        )
    parts.append(_text(PAD_LEFT + plot_w / 2, HEIGHT - 4, f"UTC, per {width_words(width)}", cls="axis-title"))
    moment = "%Y-%m-%d %H:%M:%S" if width < 60 else "%Y-%m-%d %H:%M"
    busiest = max(range(n_bins), key=lambda i: sum(bins[i].values()))
    summary = (
        f"{stats.total} predictions from {stats.since:{moment}} to {stats.until:{moment}} UTC "
        f"in bins of {width_words(width)}, stacked by class ({', '.join(map(_display, series))}); the busiest bin, "
        f"{_time_label(start + busiest * step, width)}, had {sum(bins[busiest].values())}."
    )
    legend = tuple((_display(name), _series_class(series, name)) for name in series)
    return Chart(title, summary, _svg("chart-time", title, summary, parts), legend)


def value_histogram(stats: Stats, regressors: Sequence[str]) -> Chart:
    """How a regressor's answers spread; values of different models share no scale, so they are not mixed."""
    title = "Predicted values"
    if stats.values is None:
        return Chart(title, "No regressor's answers to show yet.", None)
    if len(regressors) > 1:
        summary = (
            f"Values of {len(regressors)} regressors ({', '.join(regressors)}) share no scale: filter by one model."
        )
        return Chart(title, summary, None)
    name = regressors[0] if regressors else "the regressor"
    counts, edges = stats.values.counts[VALUE], stats.values.edges
    middle = median_bin(counts)
    parts = _bars(counts, edges, number, f"predicted value of {name}")
    summary = (
        f"{sum(counts)} predicted values of {name} from {number(edges[0])} to {number(edges[-1])}, in {len(counts)} "
        f"bins: the median between {number(edges[middle])} and {number(edges[middle + 1])}."
    )
    return Chart(title, summary, _svg("chart-values", title, summary, parts))


def history_charts(stats: Stats, labels: list[str], regressors: Sequence[str]) -> list[Chart]:
    """The overview of a window of the history; a regressor's answers get their own chart instead of the classes.
    `labels` are the window's classes in `series_order`; `regressors` the regression models the window may hold."""
    values = VALUE in stats.totals
    middle = []
    if not values or labels:
        middle += [class_distribution(stats, labels), probability_histogram(stats, labels)]
    if values:
        middle.append(value_histogram(stats, regressors))
    return [predictions_over_time(stats, labels), *middle, latency_percentiles(stats)]
