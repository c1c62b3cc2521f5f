"""The web UI in a real browser against the real API: predict, a field's error, versions, a regressor, the history,
charts, live updates."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import httpx
import pandas as pd
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from mlapi.servers import free_port
from tests.conftest import DATASET
from tests.e2e.web.conftest import PAGE_SIZE, SCREENSHOTS, Regressor, Web, start_web

pytestmark = pytest.mark.e2e
ID = re.compile(r"/predictions/([0-9a-f-]{36})$")
CLASS_CHARTS = ("Predictions over time", "Predicted classes", "How sure the model was", "Latency percentiles")
WINDOW = " (last 24 hours)"
"""What every chart's caption says of the window it summarises."""


def iris(i: int) -> dict[str, Any]:
    """Samples spread over the three species, a few outside the training range."""
    kind = i % 3
    return {
        "sepal_length": [5.0, 6.0, 6.7][kind] + (i % 5) / 10,
        "sepal_width": [3.4, 2.8, 3.0][kind],
        "petal_length": [1.5, 4.4, 5.6][kind] + (i % 4) / 5,
        "petal_width": [0.2, 1.4, 2.2][kind] + (0.5 if i % 11 == 0 else 0),
    }


def predict_in_form(page: Page, **values: str) -> str:
    """Fill in the diabetes-risk form already open, submit it with Enter, and return the id of the answer."""
    for label, value in values.items():
        page.get_by_label(label).fill(value)
    page.get_by_label("Blood glucose level").press("Enter")
    link = page.locator(".result a[href^='/predictions/']")
    expect(link).to_be_visible()
    match = ID.search(link.get_attribute("href") or "")
    assert match, "the answer links to its history entry"
    return match[1]


@pytest.fixture(scope="module", autouse=True)
def history(web: Web) -> None:
    """Some history for the charts: batches a second apart, so predictions over time has more than one bar."""
    with web.api() as api:
        for batch in range(4):
            response = api.post("/models/iris/predict", json={"instances": [iris(batch * 12 + i) for i in range(12)]})
            assert response.status_code == 200, response.text
            if batch < 3:
                time.sleep(1)  # spreads the timestamps; nothing waits on this


def test_the_form_predicts_and_shows_how_sure_the_model_is(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/")
    expect(page).to_have_title(re.compile("Predict with diabetes-risk"))
    expect(page.get_by_label("Model and version")).to_have_value("diabetes-risk")  # its default version
    expect(page.locator(".version-note")).to_have_text(re.compile(r"^This is version \d+, the default\.$"))
    expect(page.get_by_label("Age")).to_have_value("54")  # the spec's example
    expect(page.get_by_label("Gender")).to_have_value("Female")
    page.get_by_role("group", name="Hypertension").get_by_label("Yes").check()
    page.get_by_label("Smoking history").select_option("former")
    # 85 is past the oldest age seen in training: the answer comes with a warning.
    values = {"Age": "85", "BMI": "33.4", "HbA1c level": "6.2", "Blood glucose level": "155"}
    prediction_id = predict_in_form(page, **values)

    result = page.locator(".result")
    expect(result).to_be_focused()
    expect(result.locator(".verdict-label")).to_have_text(re.compile(r"^(no diabetes|diabetes)$"))
    expect(result.locator(".confidence")).to_have_text(re.compile(r"Probability (>?\d+(\.\d)?%)"))
    expect(result.get_by_role("table", name="Probability of every class").locator("tbody tr")).to_have_count(2)
    expect(result.locator(".latency")).to_contain_text(re.compile(r"Answered in [\d.]+ (ms|s) \(API"))
    expect(result.locator(".notice-warning")).to_contain_text("age=85 is outside the training range [0.08, 80]")
    expect(page.get_by_label("Age")).to_have_value("85")
    page.screenshot(path=SCREENSHOTS / "predict.png", full_page=True)

    result.get_by_role("link", name=prediction_id).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(prediction_id)
    expect(page.locator("dl.facts")).to_contain_text("done")
    expect(page.get_by_role("row", name=re.compile("Age 85"))).to_be_visible()


def test_an_invalid_value_is_shown_at_its_field(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/predict")
    page.get_by_label("Age").fill("-5")
    page.get_by_role("button", name="Predict").click()
    error = page.locator("#f-age-error")
    expect(error).to_have_text(re.compile("Enter 0 or more"))
    expect(page.get_by_label("Age")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Age")).to_have_value("-5")
    summary = page.get_by_role("alert").filter(has_text="Some values need correcting")
    expect(summary).to_be_focused()
    summary.get_by_role("link", name=re.compile("^Age:")).click()
    expect(page.get_by_label("Age")).to_be_focused()
    expect(page.locator(".result")).to_have_count(0)


def test_the_form_follows_the_chosen_models_spec(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/predict")
    page.get_by_label("Model and version").select_option("iris")
    page.get_by_role("button", name="Use this model").click()
    expect(page.get_by_label("Petal width")).to_have_value("0.2")
    expect(page.get_by_label("Gender")).to_have_count(0)
    page.get_by_label("Petal width").fill("1.8")
    page.get_by_label("Petal length").fill("5.5")
    page.get_by_label("Petal length").press("Enter")
    expect(page.locator(".result .verdict-label")).to_have_text("virginica")


def test_by_keyboard_alone(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/predict")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "f-age":
            break
    expect(page.get_by_label("Age")).to_be_focused()
    page.keyboard.type("12")  # the field's text is selected on focus by Tab
    page.keyboard.press("Enter")
    expect(page.locator(".result")).to_be_focused()


def test_the_history_shows_the_new_prediction_and_charts(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/predict")
    prediction_id = predict_in_form(page, Age="45")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="History").click()
    expect(page).to_have_title(re.compile("History"))
    expect(page.locator(f'tr[data-id="{prediction_id}"]')).to_be_visible()
    expect(page.locator("table.history tbody tr")).to_have_count(PAGE_SIZE)

    for title in CLASS_CHARTS:  # other charts may join them, as other tests add models
        chart = chart_card(page, title)
        expect(chart.get_by_role("img")).to_be_visible()
        assert chart.locator("rect").count() >= 2, chart.inner_text()
    charts = page.locator("figure.chart-card")
    expect(charts.first.get_by_role("img")).to_have_accessible_name(re.compile("Predictions over time"))
    expect(page.get_by_role("list", name="Colours")).to_contain_text("virginica")
    page.screenshot(path=SCREENSHOTS / "history.png", full_page=True)

    page.get_by_role("link", name="Older predictions").click()
    expect(page.locator(f'tr[data-id="{prediction_id}"]')).to_have_count(0)
    expect(page.locator("table.history tbody tr").first).to_be_visible()


def chart_card(page: Page, title: str) -> Locator:
    caption = page.locator("figcaption", has_text=re.compile(f"^{re.escape(title + WINDOW)}$"))
    return page.locator("figure.chart-card").filter(has=caption)


def iris_history(api: httpx.Client) -> Counter[str]:
    """Every iris prediction in the history, by predicted class, read page by page."""
    found: Counter[str] = Counter()
    cursor = None
    while True:
        page = api.get("/predictions", params={"model": "iris", "limit": 500, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        found.update(r.get("label") or r["status"] for r in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


def test_the_charts_count_the_whole_window(page: Page, web: Web) -> None:
    """More rows than the API gives in one page (500): the charts count every one of them, class by class."""
    with web.api() as api:
        for batch in range(3):
            instances = [iris(batch * 200 + i) for i in range(200)]
            response = api.post("/models/iris/predict", json={"instances": instances})
            assert response.status_code == 200, response.text
        history = iris_history(api)
    total = sum(history.values())
    assert total > 600 and set(history) == {"setosa", "versicolor", "virginica"}, history
    page.goto(f"{web.url}/history?model=iris")
    expect(page.locator("p.lead")).to_have_text(
        re.compile(rf"^Every prediction of the last 24 hours .*: {total} in all\.$")
    )
    classes = chart_card(page, "Predicted classes").locator(".chart-summary")
    expect(classes).to_contain_text(f"Of {total} predictions: ")
    for label, n in history.items():
        expect(classes).to_contain_text(f"{label} {n} (")
    expect(chart_card(page, "Predictions over time").locator(".chart-summary")).to_contain_text(
        f"{total} predictions from "
    )
    expect(chart_card(page, "Latency percentiles").locator(".chart-summary")).to_contain_text(
        f"over {total} predictions"
    )


def test_the_history_filters_by_model_and_class(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/history")
    page.get_by_label("Model", exact=True).select_option("iris")
    page.get_by_role("button", name="Apply").click()
    page.get_by_label("Predicted class", exact=True).select_option(label="virginica")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"model=iris&prediction=2"))
    rows = page.locator("table.history tbody tr")
    expect(rows.first).to_be_visible()
    for text in rows.all_inner_texts():
        assert "iris" in text and "virginica" in text


def test_the_history_updates_by_itself(page: Page, web: Web) -> None:
    page.goto(f"{web.url}/history")
    expect(page.get_by_label(re.compile("Update by itself"))).to_be_checked()
    with web.api() as api:
        new_id = api.post("/models/iris/predict", json=iris(7)).json()["id"]
    expect(page.locator(f'tr[data-id="{new_id}"]')).to_be_visible(timeout=10_000)
    expect(page.get_by_role("status")).to_contain_text("New predictions shown")


def test_readable_on_a_phone(browser: Browser, web: Web, regressor: Regressor) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        for path in ("/predict", "/history", f"/predict?model={regressor.name}@2", f"/history?model={regressor.name}"):
            page.goto(f"{web.url}{path}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} scrolls sideways on a phone ({width} px)"
        page.goto(f"{web.url}/predict")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator(".result .verdict-label")).to_be_visible()
        page.screenshot(path=SCREENSHOTS / "predict-phone.png", full_page=True)
    finally:
        context.close()


def test_an_api_that_is_down_is_explained(page: Page, web: Web) -> None:
    dead = start_web(web.stack, f"http://127.0.0.1:{free_port()}")
    for path in ("/predict", "/history"):
        response = page.goto(f"{dead}{path}")
        assert response is not None and response.status == 503
        expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
        expect(page.get_by_role("link", name="try again")).to_be_visible()


def test_without_javascript(browser: Browser, web: Web, regressor: Regressor) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{web.url}/predict")
        page.get_by_label("Model and version").select_option(f"{regressor.name}@2")
        page.get_by_role("button", name="Use this model").click()
        expect(page).to_have_url(re.compile(rf"model={regressor.name}%402$"))
        page.get_by_label("Petal length").fill("5")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator(".result .meta")).to_contain_text(f"by {regressor.name} v2")
        shown = page.locator(".result .verdict-value").inner_text()
        assert float(shown.replace(",", "")) == pytest.approx(regressor.predict(2, {"petal length": 5.0}), rel=1e-4)
        page.goto(f"{web.url}/predict?model=iris")
        page.get_by_label("Petal length").fill("4.5")
        page.get_by_label("Petal width").fill("1.4")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator(".result .verdict-label")).to_have_text("versicolor")
        page.get_by_label("Petal width").fill("")
        page.get_by_role("button", name="Predict").click()
        expect(page.locator("#f-petal_width-error")).to_contain_text("Enter a value")
        page.goto(f"{web.url}/history")
        expect(page.locator("figure.chart-card svg.chart").nth(len(CLASS_CHARTS) - 1)).to_be_visible()
    finally:
        context.close()


def test_a_version_is_chosen_and_a_regressor_answers_with_a_number(page: Page, web: Web, regressor: Regressor) -> None:
    page.goto(f"{web.url}/predict")
    picker = page.get_by_label("Model and version")
    expect(picker.locator("option", has_text=f"{regressor.name} v1 (default)")).to_have_attribute(
        "value", regressor.name
    )
    picker.select_option(f"{regressor.name}@2")
    page.get_by_role("button", name="Use this model").click()
    expect(page).to_have_title(re.compile(f"Predict with {regressor.name} v2"))
    expect(page.locator(".version-note")).to_have_text(
        "This is version 2, not the default. Use version 1, the default."
    )
    expect(page.get_by_label("Sepal length")).to_have_count(0)  # version 2 takes the petal's length alone
    expect(page.locator(".lead")).to_contain_text("Predicts a number")
    page.get_by_label("Petal length").fill("4.5")
    page.get_by_label("Petal length").press("Enter")

    result = page.locator(".result")
    expect(result).to_be_focused()
    expect(result.locator(".meta")).to_contain_text(f"by {regressor.name} v2")
    shown = result.locator(".verdict-value").inner_text()
    assert float(shown.replace(",", "")) == pytest.approx(regressor.predict(2, {"petal length": 4.5}), rel=1e-4)
    expect(result).not_to_contain_text("Probability")
    expect(page.get_by_label("Model and version")).to_have_value(f"{regressor.name}@2")

    page.get_by_role("link", name="Use version 1, the default").click()
    expect(page.get_by_label("Sepal length")).to_be_visible()
    page.get_by_label("Petal length").press("Enter")
    expect(page.locator(".result .meta")).to_contain_text(f"by {regressor.name} v1")


def test_the_history_shows_a_regressors_values(page: Page, web: Web, regressor: Regressor) -> None:
    with web.api() as api:
        for length in (1.5, 4.5, 6.0):
            row = {"sepal length": 6.0, "sepal width": 3.0, "petal length": length}
            response = api.post(f"/models/{regressor.name}/versions/1/predict", json=row)
            assert response.status_code == 200, response.text
            assert response.json()["task"] == "regression" and "label" not in response.json()
    page.goto(f"{web.url}/history")
    page.get_by_label("Model", exact=True).select_option(regressor.name)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_label("Predicted class")).to_have_count(0)  # a regressor has no classes to filter by
    rows = page.locator("table.history tbody tr")
    expect(rows.first).to_contain_text(regressor.name)
    expect(rows.first.locator(".value")).to_have_text(re.compile(r"^-?[\d,]+(\.\d+)?$"))
    expect(page.locator("figure.chart-card figcaption")).to_have_text(
        [title + WINDOW for title in ("Predictions over time", "Predicted values", "Latency percentiles")]
    )
    values = chart_card(page, "Predicted values")
    expect(values.get_by_role("img")).to_be_visible()
    assert values.locator("rect").count() >= 2, values.inner_text()
    expect(values).to_contain_text(f"predicted values of {regressor.name}")

    rows.first.get_by_role("link").click()
    expect(page.locator(".verdict-value")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text(f"{regressor.name} v1")
    expect(page.get_by_role("row", name=re.compile("Petal length"))).to_be_visible()


def test_was_this_right_and_the_models_page(page: Page, web: Web) -> None:
    """Feedback from a prediction's page, then live quality beside the holdout and drift on the Models page."""
    rows = pd.read_csv(DATASET).iloc[70_000:70_250]
    truth = rows.pop("diabetes").tolist()
    with web.api() as api:
        answers = api.post("/predict", json={"instances": rows.to_dict("records")}).json()["predictions"]
        items = [{"id": a["id"], "label": t} for a, t in zip(answers[1:], truth[1:], strict=True)]
        assert api.post("/feedback", json={"items": items}).status_code == 200
    first = answers[0]
    page.goto(f"{web.url}/predictions/{first['id']}")
    control = page.get_by_role("group", name="Was this right?")
    other = "diabetes" if first["label"] == "no diabetes" else "no diabetes"
    control.get_by_label("No, it was").select_option(other)
    control.get_by_role("button", name="Save").click()
    expect(page.locator(".feedback-given")).to_contain_text(f"Recorded as {other}")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    section = page.locator("section.model-report", has=page.get_by_role("heading", name="diabetes-risk", exact=True))
    expect(section.locator("table.versions")).to_contain_text("roc_auc")
    expect(section.locator("figure.chart-card svg.chart").first).to_be_visible()
    expect(section.locator("figure.chart-card .chart-summary").first).to_contain_text("against")
    drift = section.locator("table.drift").first
    expect(drift.locator("tbody tr")).to_have_count(9)  # eight features and the prediction
    expect(drift.locator(".verdict-tag").first).to_have_text(re.compile("^(stable|watch|drifted)$"))
    page.screenshot(path=SCREENSHOTS / "models.png", full_page=True)
