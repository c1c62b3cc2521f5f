from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from mlapi.web import charts
from tests.unit.web.conftest import record

SVG = "{http://www.w3.org/2000/svg}"


def parse(chart: charts.Chart) -> ET.Element:
    assert chart.svg is not None
    root = ET.fromstring(str(chart.svg))
    assert root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and title.text == chart.title
    assert desc is not None and desc.text == chart.summary
    assert (root.get("aria-labelledby"), root.get("aria-describedby")) == (title.get("id"), desc.get("id"))
    return root


def bars(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{SVG}rect"))


def test_every_chart_says_so_when_there_is_no_data() -> None:
    for chart in charts.history_charts([]):
        assert chart.svg is None
        assert "No" in chart.summary


def test_class_distribution_has_one_bar_per_class_with_counts() -> None:
    records = [record(i, prediction=i % 3) for i in range(10)]  # 4 setosa, 3 versicolor, 3 virginica
    chart = charts.class_distribution(records)
    root = parse(chart)
    assert len(bars(root)) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[:2] == ["setosa", "4 (40%)"]
    assert "setosa 4 (40%)" in chart.summary


def test_probability_histogram_puts_each_prediction_in_its_bin() -> None:
    records = [record(0, probability=0.55), record(1, probability=0.95), record(2, probability=1.0)]
    root = parse(charts.probability_histogram(records))
    rects = bars(root)
    assert len(rects) == 10
    heights = [float(r.get("height", "0")) for r in rects]
    assert heights[5] > 0 and heights[9] == pytest.approx(2 * heights[5])
    assert all(h == 0 for i, h in enumerate(heights) if i not in (5, 9))


def test_latency_percentiles_are_drawn_from_request_to_answer() -> None:
    records = [record(i) for i in range(100)]  # latencies 5..104 ms
    chart = charts.latency_percentiles(records)
    parse(chart)
    assert "p50 54 ms" in chart.summary and "max 104 ms" in chart.summary
    assert charts.latency_ms(records[0]) == pytest.approx(5.0)


def test_predictions_over_time_stacks_classes_per_bin() -> None:
    records = [record(i, prediction=i % 2) for i in range(12)]  # one every 10 s over 110 s
    chart = charts.predictions_over_time(records)
    root = parse(chart)
    assert charts.bin_width_s(110) == 5
    assert len(bars(root)) == 12  # one class per bin here, so one rectangle each
    assert [label for label, _ in chart.legend] == ["setosa", "versicolor"]
    assert "12 predictions" in chart.summary and "stacked by class" in chart.summary


def test_one_label_keeps_one_colour_across_models() -> None:
    mixed = [record(0, "iris", 2), record(1, "diabetes-risk", 1), record(2, "iris", 0)]
    assert charts.series_order(mixed) == ["diabetes", "setosa", "virginica"]


@pytest.mark.parametrize(("span", "width"), [(0, 1), (23, 1), (24, 2), (3600, 300), (86400 * 30, 604800)])
def test_time_bins_stay_few(span: float, width: int) -> None:
    assert charts.bin_width_s(span) == width


def test_helpers() -> None:
    assert (
        charts.nice_ceiling(0) == 1
        and charts.nice_ceiling(7) == 8
        and charts.nice_ceiling(21) == 25
        and charts.nice_ceiling(51) == 60
    )
    assert [charts.count_ceiling(n) for n in (1, 3, 5, 12, 50, 51)] == [2, 4, 6, 20, 50, 60]
    assert charts.percentile([1, 2, 3, 4], 50) == 2.5
    assert charts.percentile([5], 99) == 5
    later = record(0)
    assert later.created_at is not None
    assert charts.latency_ms(later.model_copy(update={"completed_at": None})) is None
    assert charts.latency_ms(later.model_copy(update={"completed_at": later.created_at - timedelta(1)})) == 0


def test_labels_are_escaped() -> None:
    chart = charts.class_distribution([record(0).model_copy(update={"label": "<b>&"})])
    assert "<b>" not in str(chart.svg) and "&lt;b&gt;&amp;" in str(chart.svg)
    parse(chart)
