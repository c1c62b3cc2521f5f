from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from mlapi.servers import free_port
from mlapi.web import create_app
from tests.unit.web.conftest import FakeApi, record, serve, web_settings


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
    assert '<option value="diabetes-risk" selected>' in html
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
    assert "The newest 40 predictions." in html
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
    assert "No predictions yet." in html and html.count("No predictions to show yet.") == 3


async def test_a_prediction_has_its_own_page(web: httpx.AsyncClient, fake_api: FakeApi) -> None:
    fake_api.records = [record(3, "diabetes-risk", 1, 0.7)]
    html = (await web.get(f"/predictions/{fake_api.records[0].id}")).text
    assert '<span class="verdict-label">diabetes</span>' in html
    assert '<th scope="row">Blood glucose level</th><td>140 mg/dL</td>' in html
    assert 'href="/predict?model=diabetes-risk&amp;gender=Female&amp;age=54' in html
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
