from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from mlapi.schemas import PredictionRecord
from mlapi.web import charts
from tests.unit.web.conftest import START, VERSIONS, record, stats_of, summary, value_record

MODELS = [summary(name) for name in sorted(VERSIONS)]

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


def draw(records: list[PredictionRecord], width: int = 3600) -> list[charts.Chart]:
    stats = stats_of(records, width=width)
    regressors = sorted({r.model for r in records if r.task == "regression"})
    return charts.history_charts(stats, charts.series_order(stats, MODELS), regressors)


def chart(records: list[PredictionRecord], title: str, width: int = 3600) -> charts.Chart:
    return next(c for c in draw(records, width) if c.title == title)


def test_every_chart_says_so_when_there_is_no_data() -> None:
    for c in draw([]):
        assert c.svg is None
        assert "No" in c.summary


def test_class_distribution_has_one_bar_per_class_with_counts() -> None:
    records = [record(i, prediction=i % 3) for i in range(10)]  # 4 setosa, 3 versicolor, 3 virginica
    c = chart(records, "Predicted classes")
    root = parse(c)
    assert len(bars(root)) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[:2] == ["setosa", "4 (40%)"]
    assert "setosa 4 (40%)" in c.summary


def test_the_charts_count_the_whole_window_not_a_page_of_it() -> None:
    stats = stats_of([record(0)]).model_copy(update={"total": 123_456, "totals": {"setosa": 123_456}})
    labels = charts.series_order(stats, MODELS)
    assert "Of 123456 predictions: setosa 123456 (100%)" in charts.class_distribution(stats, labels).summary
    assert "Time from request to answer over 123456 predictions" in charts.latency_percentiles(stats).summary


def test_probability_histogram_puts_each_prediction_in_its_bin() -> None:
    records = [record(0, probability=0.55), record(1, probability=0.95), record(2, probability=1.0)]
    c = chart(records, "How sure the model was")
    rects = bars(parse(c))
    assert len(rects) == 10
    heights = [float(r.get("height", "0")) for r in rects]
    assert heights[5] > 0 and heights[9] == pytest.approx(2 * heights[5])
    assert all(h == 0 for i, h in enumerate(heights) if i not in (5, 9))
    assert "the median between 90% and 100%; 2 (67%) at 90% or more" in c.summary


def test_latency_percentiles_are_the_apis() -> None:
    records = [record(i) for i in range(100)]  # latencies 5..104 ms
    c = chart(records, "Latency percentiles")
    assert len(bars(parse(c))) == 4
    assert "over 100 predictions: p50 54 ms, p90 94 ms, p95 99 ms, p99 103 ms." in c.summary
    assert charts.latency_ms(records[0]) == pytest.approx(5.0)


def test_predictions_over_time_has_every_bucket_of_the_window_stacked_by_class() -> None:
    records = [record(i, prediction=i % 2) for i in range(12)]  # one every 10 s over 110 s
    stats = stats_of(records, START - timedelta(seconds=3), START + timedelta(seconds=120), width=5)
    c = charts.predictions_over_time(stats, charts.series_order(stats, MODELS))
    root = parse(c)
    assert len(bars(root)) == 12  # one class per bucket here, so one rectangle each
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-label"][3:]
    assert ticks[0] == f"{START - timedelta(seconds=5):%H:%M:%S}", "the first bar is the bucket holding `since`"
    assert [label for label, _ in c.legend] == ["setosa", "versicolor"]
    assert "12 predictions" in c.summary and "in bins of 5 seconds, stacked by class" in c.summary


def test_one_label_keeps_one_colour_across_models() -> None:
    mixed = [record(0, "iris", 2), record(1, "diabetes-risk", 1), record(2, "iris", 0)]
    assert charts.series_order(stats_of(mixed), MODELS) == ["diabetes", "setosa", "virginica"]


def test_helpers() -> None:
    assert (
        charts.nice_ceiling(0) == 1
        and charts.nice_ceiling(7) == 8
        and charts.nice_ceiling(21) == 25
        and charts.nice_ceiling(51) == 60
    )
    assert [charts.count_ceiling(n) for n in (1, 3, 5, 12, 50, 51)] == [2, 4, 6, 20, 50, 60]
    assert [charts.median_bin(c) for c in ([1], [1, 1], [0, 3, 1], [1, 0, 0, 5])] == [0, 0, 1, 3]
    assert [charts.width_words(w) for w in (1, 30, 60, 3600, 7200, 86400)] == [
        "1 second", "30 seconds", "1 minute", "1 hour", "2 hours", "1 day",
    ]  # fmt: skip
    later = record(0)
    assert later.created_at is not None
    assert charts.latency_ms(later.model_copy(update={"completed_at": None})) is None
    assert charts.latency_ms(later.model_copy(update={"completed_at": later.created_at - timedelta(1)})) == 0


def test_labels_are_escaped() -> None:
    stats = stats_of([record(0).model_copy(update={"label": "<b>&"})])
    c = charts.class_distribution(stats, charts.series_order(stats, MODELS))
    assert "<b>" not in str(c.svg) and "&lt;b&gt;&amp;" in str(c.svg)
    parse(c)


def titles(records: list[PredictionRecord]) -> list[str]:
    return [c.title for c in draw(records)]


def test_a_regressors_answers_get_their_own_chart_and_no_class_charts() -> None:
    values = [value_record(i, v) for i, v in enumerate([10.0, 12.0, 15.0, 40.0, 10.0])]
    assert titles(values) == ["Predictions over time", "Predicted values", "Latency percentiles"]
    for c in draw(values):
        parse(c)
    c = chart(values, "Predicted values")  # bins of 3 from 10 to 40
    heights = [float(r.get("height", "0")) for r in bars(parse(c))]
    assert heights[0] == pytest.approx(3 * heights[9]) and heights[1] == heights[9] > 0
    assert sum(1 for h in heights if h) == 3
    assert c.summary == "5 predicted values of house-price from 10 to 40, in 10 bins: the median between 10 and 13."
    stats = stats_of(values)
    assert "No classes to show" in charts.class_distribution(stats, charts.series_order(stats, MODELS)).summary


def test_a_mixed_history_keeps_the_class_charts_and_counts_every_answer_over_time() -> None:
    mixed = [record(0, "iris", 2), value_record(1, 5.0), record(2, "iris", 0)]
    assert titles(mixed) == [
        "Predictions over time", "Predicted classes", "How sure the model was", "Predicted values",
        "Latency percentiles",
    ]  # fmt: skip
    over_time = chart(mixed, "Predictions over time")
    parse(over_time)
    assert [label for label, _ in over_time.legend] == ["setosa", "virginica", charts.VALUE_SERIES]
    assert "3 predictions" in over_time.summary
    assert "Of 2 predictions" in chart(mixed, "Predicted classes").summary
    assert charts.series_order(stats_of(mixed), MODELS) == ["setosa", "virginica"], "the table's colours"


def test_values_of_different_regressors_are_not_mixed() -> None:
    c = chart([value_record(0, 1.0), value_record(1, 1e6, model="rent")], "Predicted values")
    assert c.svg is None and "2 regressors (house-price, rent)" in c.summary


def test_one_value_or_equal_values_make_one_bar() -> None:
    c = chart([value_record(0, 7.0), value_record(1, 7.0)], "Predicted values")
    heights = [float(r.get("height", "0")) for r in bars(parse(c))]
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
    histogram = chart(plain, "How sure the model was")
    assert histogram.svg is None and histogram.summary == "None of these predictions came with probabilities."
    parse(chart(plain, "Predicted classes"))


def test_rows_without_an_answer_are_counted_over_time_only() -> None:
    queued = value_record(0, 1.0).model_copy(update={"status": "queued", "prediction": None, "completed_at": None})
    failed = record(1).model_copy(
        update={"status": "failed", "task": None, "prediction": None, "label": None, "probability": None,
                "probabilities": None, "error": "model failed"}
    )  # fmt: skip
    over_time, *others = draw([queued, failed])
    assert [label for label, _ in over_time.legend] == ["failed", "queued"]
    assert "2 predictions" in parse(over_time).findtext(f"{SVG}desc", "")
    for c in others:
        assert c.svg is None


def test_an_empty_window_after_a_busy_one() -> None:
    quiet = stats_of([record(0)], START + timedelta(hours=1), START + timedelta(hours=2))
    assert quiet.total == 0
    assert all(c.svg is None for c in charts.history_charts(quiet, [], []))
