from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from mlapi.schemas import PredictionRecord
from mlapi.web import charts
from tests.unit.web.conftest import record, value_record

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


def titles(records: list[PredictionRecord]) -> list[str]:
    return [c.title for c in charts.history_charts(records)]


def test_a_regressors_answers_get_their_own_chart_and_no_class_charts() -> None:
    values = [value_record(i, v) for i, v in enumerate([10.0, 12.5, 15.0, 40.0])]
    assert titles(values) == ["Predictions over time", "Predicted values", "Latency percentiles"]
    for chart in charts.history_charts(values):
        parse(chart)
    chart = charts.value_histogram(values, bins=4)  # bins of 7.5 from 10 to 40
    heights = [float(r.get("height", "0")) for r in bars(parse(chart))]
    assert heights[0] == pytest.approx(3 * heights[3]) and heights[1] == heights[2] == 0 and heights[3] > 0
    assert chart.summary == "4 predicted values of house-price from 10 to 40, in 4 bins: median 13.75."
    assert "No classes to show" in charts.class_distribution(values).summary


def test_a_mixed_history_keeps_the_class_charts_and_counts_every_answer_over_time() -> None:
    mixed = [record(0, "iris", 2), value_record(1, 5.0), record(2, "iris", 0)]
    assert titles(mixed) == [
        "Predictions over time", "Predicted classes", "How sure the model was", "Predicted values",
        "Latency percentiles",
    ]  # fmt: skip
    over_time = charts.predictions_over_time(mixed)
    parse(over_time)
    assert [label for label, _ in over_time.legend] == ["setosa", "virginica", charts.VALUE_SERIES]
    assert "3 predictions" in over_time.summary
    assert "Of 2 predictions" in charts.class_distribution(mixed).summary
    assert charts.series_order(mixed) == ["setosa", "virginica"], "the table's colours are the classes'"


def test_values_of_different_regressors_are_not_mixed() -> None:
    chart = charts.value_histogram([value_record(0, 1.0), value_record(1, 1e6, model="rent")])
    assert chart.svg is None and "2 regressors (house-price, rent)" in chart.summary


def test_one_value_or_equal_values_make_one_bar() -> None:
    chart = charts.value_histogram([value_record(0, 7.0), value_record(1, 7.0)])
    heights = [float(r.get("height", "0")) for r in bars(parse(chart))]
    assert heights[0] > 0 and all(h == 0 for h in heights[1:])


def test_a_classifier_without_probabilities() -> None:
    plain = [
        record(i, prediction=i % 3).model_copy(update={"probability": None, "probabilities": None}) for i in range(3)
    ]
    assert titles(plain) == [
        "Predictions over time",
        "Predicted classes",
        "How sure the model was",
        "Latency percentiles",
    ]
    histogram = charts.probability_histogram(plain)
    assert histogram.svg is None and histogram.summary == "None of these predictions came with probabilities."
    parse(charts.class_distribution(plain))


def test_rows_without_an_answer_are_left_out() -> None:
    queued = value_record(0, 1.0).model_copy(update={"status": "queued", "prediction": None, "completed_at": None})
    failed = record(1).model_copy(
        update={"status": "failed", "task": None, "prediction": None, "label": None, "probability": None,
                "probabilities": None, "error": "model failed"}
    )  # fmt: skip
    for chart in charts.history_charts([queued, failed]):
        assert chart.svg is None
