from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mlapi.servers import free_port
from mlapi.web import create_app
from tests.unit.web.conftest import FakeApi, record, serve, value_record, web_settings


def field_block(html: str, name: str) -> str:
    """The markup of one feature's control, from its label to the end of its input."""
    start = html.index(f'for="f-{name}"') if f'for="f-{name}"' in html else html.index(f'name="{name}"')
    return html[start - 200 : start + 1200]


async def test_the_root_leads_to_the_form(web: httpx.AsyncClient) -> None:
    response = await web.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/predict"


async def test_the_form_is_built_from_the_default_models_spec(web: httpx.AsyncClient) -> None:
    response = await web.get("/predict")
    assert response.status_code == 200
    html = response.text
    assert '<option value="diabetes-risk" selected>diabetes-risk v1 (default)</option>' in html
    assert "This is version 1, the default." in html
    assert '<input type="hidden" name="version" value="1">' in html
    assert re.search(r'<select id="f-gender" name="gender"[^>]*>', html)
    assert '<option value="Female" selected>Female</option>' in html
    assert '<legend class="field-label">Hypertension</legend>' in html
    assert re.search(r'<input type="radio" id="f-hypertension" name="hypertension" value="1">', html)
    assert re.search(r'name="hypertension" value="0" checked>', html)
    age = re.search(r'<input id="f-age" name="age" type="number"[^>]*>', html)
    assert age is not None
    assert 'value="54"' in age[0] and 'step="0.1"' in age[0] and 'min="0"' in age[0]
    assert 'aria-describedby="f-age-hint"' in age[0]
    assert '<label class="field-label" for="f-age">Age <span class="unit">(years)</span></label>' in html
    assert "On 20,000 held-out rows it scored ROC AUC 0.979" in html
    assert "novalidate" in html and '<button type="submit" class="button-primary">Predict</button>' in html


async def test_another_model_and_prefilled_values_from_the_query(web: httpx.AsyncClient) -> None:
    html = (await web.get("/predict", params={"model": "iris", "petal_width": "1.7"})).text
    assert 'id="f-sepal_length"' in html and 'id="f-gender"' not in html
    assert re.search(r'name="petal_width" type="number"[^>]*value="1.7"', html)


async def test_an_unknown_model_is_a_friendly_404(web: httpx.AsyncClient) -> None:
    response = await web.get("/predict", params={"model": "nope"})
    assert response.status_code == 404
    assert "There is no model called" in response.text and 'href="/predict"' in response.text


async def test_submitting_shows_the_answer_with_its_latency_and_history_link(
    web: httpx.AsyncClient, fake_api: FakeApi
) -> None:
    form = {"model": "iris", "sepal_length": "5.1", "sepal_width": "3.5", "petal_length": "1.4", "petal_width": "9"}
    response = await web.post("/predict", data=form)
    assert response.status_code == 200
    assert fake_api.last_sample == {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 9.0}
    assert fake_api.requests[-1].path == "/models/iris/versions/1/predict", "the version the form was built from"
    html = response.text
    assert '<span class="verdict-label">versicolor</span>' in html
    assert "Probability <strong>81%</strong>" in html
    assert "(API 12.5 ms: queue 1.2 ms, model 3.0 ms, store 4.8 ms)" in html
    assert re.search(r'<a href="/predictions/[0-9a-f-]{36}"><code>', html)
    assert "petal_width=9 is outside the training range [0.1, 2.5]" in html
    assert re.search(r'name="petal_width" type="number"[^>]*value="9"', html), "the submitted value is kept"


async def test_a_422_is_shown_next_to_the_field_it_names(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.predict_status = 422
    fake_api.predict_body = {
        "detail": [{"loc": ["body", "age"], "type": "greater_than_equal", "input": -4,
                    "msg": "Input should be greater than or equal to 0"}]
    }  # fmt: skip
    response = await web.post("/predict", data={"model": "diabetes-risk", "age": "-4"})
    assert response.status_code == 422
    html = response.text
    assert '<p class="field-error" id="f-age-error">' in html
    assert "Input should be greater than or equal to 0." in field_block(html, "age")
    age = re.search(r'<input id="f-age"[^>]*>', html)
    assert age is not None and 'aria-invalid="true"' in age[0] and 'value="-4"' in age[0]
    assert 'aria-describedby="f-age-error f-age-hint"' in age[0]
    assert '<a href="#f-age">Age: Input should be greater than or equal to 0.</a>' in html
    assert html.count('class="field-error"') == 1
    assert "<title>Error: " in html
    assert "Some values need correcting" in html


@pytest.mark.parametrize(
    ("status", "body", "shown"),
    [
        (504, {"detail": "no answer within 10 s", "id": "7d7a4d1e-4a47-4c39-9f4e-6e1a8b3a9e20"},
         "no answer within 10 s"),
        (503, {"detail": "broker unavailable: Connection refused"}, "broker unavailable"),
        (502, {"detail": "model failed", "id": "7d7a4d1e-4a47-4c39-9f4e-6e1a8b3a9e20"}, "model failed"),
    ],
)  # fmt: skip
async def test_a_failed_prediction_keeps_the_form_and_explains(
    web: httpx.AsyncClient, fake_api: FakeApi, status: int, body: dict[str, str], shown: str
) -> None:
    fake_api.predict_status, fake_api.predict_body = status, body
    response = await web.post("/predict", data={"model": "iris", "sepal_length": "6.3"})
    assert response.status_code == status
    assert shown in response.text and 'role="alert"' in response.text
    assert re.search(r'name="sepal_length" type="number"[^>]*value="6.3"', response.text)
    if "id" in body:
        assert f'href="/predictions/{body["id"]}"' in response.text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: an API that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("path", ["/predict", "/history", "/predictions/7d7a4d1e-4a47-4c39-9f4e-6e1a8b3a9e20"])
async def test_an_api_that_is_down_gives_a_clear_page(path: str) -> None:
    port = free_port()
    async with serve(create_app(web_settings(api_url=f"http://127.0.0.1:{port}"))) as web:
        response = await web.get(path)
    assert response.status_code == 503
    assert "The prediction service is not available" in response.text
    assert f"The prediction API at http://127.0.0.1:{port} cannot be reached" in response.text
    assert 'aria-current="page"' in response.text or 'href="/history"' in response.text


async def test_an_api_that_hangs_gives_a_clear_page_in_time(silent_port: int) -> None:
    settings = web_settings(api_url=f"http://127.0.0.1:{silent_port}", api_timeout_s=0.3)
    async with serve(create_app(settings)) as web:
        response = await web.get("/history")
    assert response.status_code == 504
    assert "did not answer in time" in response.text


async def test_the_history_lists_charts_and_pages(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [record(i, prediction=i % 3, probability=0.5 + i / 100) for i in range(40)][::-1]
    html = (await web.get("/history")).text
    assert html.count("<tr data-id=") == 25
    assert f'href="/predictions/{fake_api.records[0].id}"' in html
    assert html.count('<svg class="chart"') == 4
    assert re.search(r"Every prediction of the last 24 hours \(.* UTC\): 40 in all\.", html)
    assert html.count('<span class="chart-window">(last 24 hours)</span>') == 4
    assert 'href="/history?cursor=25" rel="next"' in html
    assert 'id="live-toggle" checked data-refresh-s="5.0"' in html
    older = (await web.get("/history", params={"cursor": "25"})).text
    assert older.count("<tr data-id=") == 15 and 'rel="next"' not in older
    assert 'id="live-toggle"' not in older, "only the newest page updates by itself"


async def test_the_history_filters_by_model_and_class(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [record(0, "iris", 2), record(1, "diabetes-risk", 1), record(2, "iris", 0)]
    html = (await web.get("/history", params={"model": "iris", "prediction": "2"})).text
    assert html.count("<tr data-id=") == 1 and "virginica" in html
    assert '<option value="2" selected>virginica</option>' in html
    assert fake_api.requests[-1].params["model"] == "iris" and fake_api.requests[-1].params["prediction"] == "2"
    unfiltered = (await web.get("/history", params={"prediction": "x"})).text
    assert unfiltered.count("<tr data-id=") == 3
    assert "class 1 (diabetes, versicolor)" in unfiltered


async def test_an_empty_history_says_so(web: httpx.AsyncClient) -> None:
    html = (await web.get("/history")).text
    assert "No predictions yet." in html and html.count("No predictions in this window yet.") == 3


async def test_the_charts_summarise_the_whole_window_not_the_newest_rows(
    web: httpx.AsyncClient, fake_api: FakeApi
) -> None:
    old = record(0).model_copy(update={"id": str(uuid.uuid4()), "created_at": datetime.now(UTC) - timedelta(days=2)})
    fake_api.records = [*(record(i, prediction=i % 3) for i in reversed(range(900))), old]
    html = (await web.get("/history")).text
    assert html.count("<tr data-id=") == 25
    assert "900 in all." in html and "Of 900 predictions: setosa 300 (33%)" in html, "the day before is left out"
    stats = next(u for u in fake_api.requests if u.path == "/predictions/stats")
    since = datetime.fromisoformat(stats.params["since"])
    assert timedelta(hours=24) <= datetime.now(UTC) - since < timedelta(hours=24, minutes=1)
    assert stats.params["bucket"] == "hour"
    assert [u.path for u in fake_api.requests if u.path.startswith("/predictions")] == [
        "/predictions", "/predictions/stats"
    ], "one page of rows for the table, the statistics for the charts"  # fmt: skip


def live_version(html: str) -> str:
    found = re.search(r'<div id="live" data-version="([0-9a-f]+)">', html)
    assert found, "the page has a version"
    return found[1]


async def test_the_live_version_changes_when_the_window_or_the_page_does(
    web: httpx.AsyncClient, fake_api: FakeApi
) -> None:
    queued = record(5).model_copy(update={"status": "queued", "prediction": None, "label": None, "completed_at": None})
    fake_api.records = [queued, *(record(i) for i in reversed(range(5)))]
    first = live_version((await web.get("/history")).text)
    assert live_version((await web.get("/history")).text) == first, "nothing changed"
    fake_api.records[0] = record(5)
    answered = live_version((await web.get("/history")).text)
    assert answered != first
    fake_api.records.insert(0, record(6))
    assert live_version((await web.get("/history")).text) != answered


async def test_a_prediction_has_its_own_page(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [record(3, "diabetes-risk", 1, 0.7)]
    html = (await web.get(f"/predictions/{fake_api.records[0].id}")).text
    assert '<span class="verdict-label">diabetes</span>' in html
    assert '<th scope="row">Blood glucose level</th><td>140 mg/dL</td>' in html
    assert 'href="/predict?model=diabetes-risk&amp;version=1&amp;gender=Female&amp;age=54' in html
    missing = await web.get("/predictions/00000000-0000-0000-0000-00000000ffff")
    assert missing.status_code == 404 and "no prediction" in missing.text


async def test_pages_carry_a_strict_content_security_policy(web: httpx.AsyncClient) -> None:
    response = await web.get("/predict")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert " style=" not in response.text and "<script>" not in response.text
    assert (await web.get("/static/app.js")).status_code == 200
    not_found = await web.get("/no/such/page")
    assert not_found.status_code == 404 and "Page not found" in not_found.text


async def test_health(web: httpx.AsyncClient) -> None:
    assert (await web.get("/healthz")).json() == {"status": "alive"}


def picker(html: str) -> list[tuple[str, str, bool]]:
    """The model picker's options: (value, text, selected)."""
    block = html[html.index('<select id="model-picker"') : html.index("</select>", html.index('id="model-picker"'))]
    return [(v, t, bool(s)) for v, s, t in re.findall(r'<option value="([^"]*)"( selected)?>([^<]*)</option>', block)]


async def test_the_picker_lists_every_version_and_the_form_follows_the_chosen_one(
    web: httpx.AsyncClient, fake_api: FakeApi
) -> None:
    html = (await web.get("/predict", params={"model": "iris@2"})).text
    assert picker(html) == [
        ("diabetes-risk", "diabetes-risk v1 (default)", False),
        ("house-price", "house-price v1 (default)", False),
        ("iris", "iris v1 (default)", False),
        ("iris@2", "iris v2", True),
    ]
    assert fake_api.requests[-1].path == "/models/iris/versions/2"
    assert 'id="f-petal_width"' in html and 'id="f-sepal_length"' not in html, "version 2 takes petals only"
    assert "<title>Predict with iris v2 · mlapi</title>" in html
    assert "This is version 2, not the default." in html
    assert '<a href="/predict?model=iris">Use version 1, the default</a>' in html
    assert '<input type="hidden" name="version" value="2">' in html
    assert "On 30 held-out rows it scored accuracy 93%." in html and "Trained" not in html
    assert 'href="/predict?model=iris&amp;version=2">Reset to the example</a>' in html
    same = (await web.get("/predict", params={"model": "iris", "version": "2", "petal_width": "1.7"})).text
    assert ("iris@2", "iris v2", True) in picker(same)
    assert re.search(r'name="petal_width" type="number"[^>]*value="1.7"', same)
    default = (await web.get("/predict", params={"model": "iris"})).text
    assert ("iris", "iris v1 (default)", True) in picker(default) and 'id="f-sepal_length"' in default
    assert fake_api.requests[-1].path == "/models/iris/versions/1"


@pytest.mark.parametrize("params", [{"model": "iris", "version": "9"}, {"model": "iris@x"}, {"model": "nope@1"}])
async def test_an_unknown_version_is_a_friendly_404(web: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await web.get("/predict", params=params)
    assert response.status_code == 404
    assert "has no version" in response.text or "There is no model called" in response.text


async def test_predicting_posts_to_the_chosen_versions_url(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    form = {"model": "iris", "version": "2", "petal_length": "4.5", "petal_width": "0.2"}
    response = await web.post("/predict", data=form)
    assert response.status_code == 200
    assert fake_api.requests[-1].path == "/models/iris/versions/2/predict"
    assert fake_api.last_sample == {"petal_length": 4.5, "petal_width": 0.2}
    html = response.text
    assert ("iris@2", "iris v2", True) in picker(html), "the answer keeps the chosen version"
    assert '<span class="verdict-label">versicolor</span> <span class="verdict-class">class 1</span>' in html
    assert "This model gives no probabilities." in html
    assert "Probability <strong>" not in html and "Probability of every class" not in html
    assert "by iris v2 at" in html


async def test_a_regressors_answer_shows_the_number(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    html = (await web.get("/predict", params={"model": "house-price"})).text
    assert "Price of a house, in euros. Predicts a number." in html
    assert "On 412 held-out rows it scored MAE 20,512.2, RMSE 31,877.5 and R² 0.812." in html
    # "floor area" cannot be an id; "model" is the page's own field, so its control is named apart
    assert re.search(r'<label class="field-label" for="f0">Floor area <span class="unit">\(m²\)</span></label>', html)
    assert re.search(r'<input id="f0" name="floor area" type="number"', html)
    assert '<select id="f-model" name="_model"' in html
    assert '<p class="hint" id="f0-hint">Seen in training: 20 to 400 m².</p>' in html
    assert 'id="f-model-hint"' not in html and 'aria-describedby="f-model-hint"' not in html, "no empty hint"
    form = {"model": "house-price", "version": "1", "floor area": "90", "_model": "house", "rooms": "4"}
    response = await web.post("/predict", data=form)
    assert response.status_code == 200
    assert fake_api.requests[-1].path == "/models/house-price/versions/1/predict"
    assert fake_api.last_sample == {"floor area": 90.0, "model": "house", "rooms": 4}
    answer = response.text
    assert '<span class="verdict-label verdict-value">312,457</span>' in answer
    assert "Probability" not in answer and "class 1" not in answer
    assert re.search(r'<option value="house" selected>house</option>', answer), "the submitted value is kept"


async def test_a_version_no_worker_holds_is_flagged(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.unready = {("iris", 2)}
    assert "No worker holds this version" in (await web.get("/predict", params={"model": "iris@2"})).text
    assert "No worker holds this version" not in (await web.get("/predict", params={"model": "iris"})).text


async def test_the_history_shows_a_regressors_values(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [value_record(i, 250_000.0 + 1000 * i) for i in range(6)] + [record(9, "iris", 2)]
    html = (await web.get("/history")).text
    assert html.count("<tr data-id=") == 7
    assert '<span class="value">250,000</span>' in html and "virginica" in html
    assert re.findall(r"<figcaption>([^<]*) <span", html) == [
        "Predictions over time", "Predicted classes", "How sure the model was", "Predicted values",
        "Latency percentiles",
    ]  # fmt: skip
    assert html.count('<svg class="chart"') == 5
    only = (await web.get("/history", params={"model": "house-price", "prediction": "1"})).text
    assert "prediction" not in fake_api.requests[-1].params, "a class filter means nothing for a regressor"
    assert only.count("<tr data-id=") == 6
    assert 'id="filter-class"' not in only and '<option value="house-price" selected>' in only
    assert re.findall(r"<figcaption>([^<]*) <span", only) == [
        "Predictions over time", "Predicted values", "Latency percentiles"
    ]  # fmt: skip
    assert "6 predicted values of house-price from 250,000 to 255,000, in 10 bins" in only


async def test_a_regressors_prediction_has_its_own_page(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [value_record(0, 312_456.789)]
    html = (await web.get(f"/predictions/{fake_api.records[0].id}")).text
    assert '<span class="verdict-label verdict-value">312,457</span>' in html and "Probability" not in html
    assert '<th scope="row">Floor area</th><td>85.5 m²</td>' in html
    assert 'href="/predict?model=house-price&amp;version=1&amp;floor+area=85.5&amp;_model=flat&amp;rooms=3"' in html


async def test_a_prediction_of_a_removed_version_still_has_its_page(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [record(0, "iris", 2).model_copy(update={"model_version": "7"})]
    html = (await web.get(f"/predictions/{fake_api.records[0].id}")).text
    assert "iris v7" in html and '<span class="verdict-label">virginica</span>' in html
    assert 'href="/predict?model=iris&amp;version=1&amp;' in html, "predict again with the default version"
    fake_api.records = [record(0, "iris", 2).model_copy(update={"model": "gone", "probability": None})]
    gone = (await web.get(f"/predictions/{fake_api.records[0].id}")).text
    assert "This model gives no probabilities." in gone and "Predict again" not in gone
