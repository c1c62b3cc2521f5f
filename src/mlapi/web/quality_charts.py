"""The Models page's charts: live quality per bucket beside the holdout figure, as inline SVG."""

from __future__ import annotations

from mlapi.schemas import VersionQuality
from mlapi.web.charts import HEIGHT, PAD_BOTTOM, PAD_LEFT, PAD_RIGHT, WIDTH, Chart, _svg, _text, _y_axis, nice_ceiling
from mlapi.web.describe import number

HEADLINE = {"classification": ("accuracy", "roc_auc", "f1"), "regression": ("mae", "rmse", "r2")}
"""The metric a version's chart shows: the first of these it has, live or on the holdout."""
BOUNDED = {"accuracy", "roc_auc", "f1", "brier", "r2"}
"""Metrics on a 0..1 scale (R² may fall below 0; the chart's floor is 0)."""


def headline(report: VersionQuality) -> str | None:
    for metric in HEADLINE[report.task]:
        if report.overall.metrics.get(metric) is not None or metric in report.holdout:
            return metric
    return None


def quality_over_time(model: str, report: VersionQuality) -> Chart:
    """The headline metric per bucket as bars, with the holdout figure as a dashed line across."""
    metric = headline(report)
    title = f"{model} v{report.version}: {metric or 'quality'} over time"
    points = [
        (b.start, value)
        for b in report.buckets
        if metric and b.start is not None and (value := b.metrics.get(metric)) is not None
    ]
    holdout = report.holdout.get(metric) if metric else None
    if not points:
        return Chart(title, "No labelled predictions in the window yet: give feedback on predictions to see it.", None)
    top = 1.0 if metric in BOUNDED else nice_ceiling(max([v for _, v in points] + [float(holdout or 0)]))
    parts, plot_h = _y_axis(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    slot = plot_w / len(points)
    bar_w = max(1.0, min(slot * 0.8, 40))
    base = HEIGHT - PAD_BOTTOM
    for i, (start, value) in enumerate(points):
        h = plot_h * max(0.0, min(value, top)) / top
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{start:%Y-%m-%d %H:%M} UTC: {metric} {number(value)}</title></rect>"
        )
    if holdout is not None:
        y = base - plot_h * max(0.0, min(float(holdout), top)) / top
        parts.append(f'<line class="holdout" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            _text(WIDTH - PAD_RIGHT, y - 4, f"holdout {number(float(holdout))}", cls="axis-label", anchor="end")
        )
    first, last = points[0][0], points[-1][0]
    parts.append(_text(PAD_LEFT, base + 16, f"{first:%d %b %H:%M}", anchor="start"))
    parts.append(_text(WIDTH - PAD_RIGHT, base + 16, f"{last:%d %b %H:%M}", anchor="end"))
    overall = report.overall.metrics.get(metric or "")
    summary = (
        f"{metric} of {report.overall.labelled} labelled predictions in {len(points)} "
        f"bucket{'' if len(points) == 1 else 's'}: "
        f"overall {number(overall) if overall is not None else 'unknown'}"
        + (f", against {number(float(holdout))} on the holdout set." if holdout is not None else ".")
    )
    return Chart(title, summary, _svg(f"chart-quality-{report.version}", title, summary, parts))


def psi_bar_width(psi: float | None, drifted: float) -> float:
    """A drift bar's length in 0..100: the drifted threshold sits at two thirds of the scale."""
    return 0.0 if psi is None else min(100.0, 100 * psi / (1.5 * drifted))
