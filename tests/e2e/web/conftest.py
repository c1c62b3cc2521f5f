"""Real `mlapi api`, `mlapi worker` and `mlapi web` processes, and Debian's Chromium driven by Playwright.

Besides the bundled models, the module's stack serves a regressor added through the API as a user would:
version 1 (the default) and version 2, which takes other features.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from mlapi.models.spec import Feature, SpecBody
from mlapi.servers import free_port
from tests.conftest import Stack, StackFactory, _get, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
# `make screenshots` writes them to docs/screenshots; an ordinary run keeps the work tree clean.
SCREENSHOTS = Path(os.environ.get("MLAPI_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="mlapi-screenshots-"))
PAGE_SIZE = 10
REGRESSOR = "web-petal-width"
"""A model of this module's own: the registry outlives the module, so its name says whose it is."""
IRIS_COLUMNS = ("sepal length", "sepal width", "petal length")


@dataclass
class Web:
    stack: Stack
    url: str

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.stack.url, timeout=30)


def start_web(stack: Stack, api_url: str, **env: str) -> str:
    port = free_port()
    env = {"MLAPI_WEB__API_URL": api_url, "MLAPI_WEB__PAGE_SIZE": str(PAGE_SIZE), **env}
    stack.spawn("web", "web", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(f"{url}/healthz") == 200, 30, "the web UI to start")
    return url


@pytest.fixture(scope="module")
def web(stack_factory: StackFactory) -> Web:
    stack = stack_factory()
    stack.start_api()
    stack.start_worker()
    stack.wait_ready()
    return Web(stack, start_web(stack, stack.url, MLAPI_WEB__REFRESH_S="1"))


@dataclass(frozen=True)
class Regressor:
    name: str
    fitted: dict[int, Any]
    """The estimator of each version, by number, to check the answers shown against."""

    def predict(self, version: int, row: dict[str, float]) -> float:
        return float(self.fitted[version].predict(pd.DataFrame([row]))[0])


def petal_width_model(features: tuple[str, ...]) -> tuple[Any, bytes, SpecBody]:
    """A linear regressor of the petal width of an iris from `features`, saved with skops; and its spec."""
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    data = load_iris().data
    frame = pd.DataFrame({name: data[:, IRIS_COLUMNS.index(name)] for name in features})
    model = LinearRegression().fit(frame, data[:, 3])
    predicted = model.predict(frame)
    spec = SpecBody(
        task="regression", labels=[], description=f"Petal width of an iris from its {', '.join(features)}",
        features=[
            Feature(name=name, kind="number", minimum=0, step=0.1, unit="cm", example=float(frame[name].iloc[75]),
                    training_range=(float(frame[name].min()), float(frame[name].max())))
            for name in features
        ],
        metrics={"mae": mean_absolute_error(data[:, 3], predicted), "r2": r2_score(data[:, 3], predicted),
                 "rmse": root_mean_squared_error(data[:, 3], predicted), "holdout_rows": len(frame)},
    )  # fmt: skip
    return model, skops.io.dumps(model), spec


def _ready(api: httpx.Client, name: str, version: int) -> bool:
    response = api.get(f"/models/{name}/versions/{version}")
    return response.status_code == 200 and response.json()["ready"] > 0


@pytest.fixture(scope="module")
def regressor(web: Web) -> Regressor:
    """`web-petal-width`, uploaded while the stack runs: v1 (the default) on three measurements, v2 on one."""
    fitted: dict[int, Any] = {}
    with web.api() as api:
        for features in (IRIS_COLUMNS, ("petal length",)):
            model, artifact, spec = petal_width_model(features)
            response = api.post(
                f"/models/{REGRESSOR}/versions", files={"artifact": ("model.skops", artifact)},
                data={"spec": spec.model_dump_json()}, timeout=90,
            )  # fmt: skip
            assert response.status_code == 201, response.text
            version = int(response.json()["version"])
            fitted[version] = model
            wait_until(lambda v=version: _ready(api, REGRESSOR, v), 30, f"a worker to load {REGRESSOR} v{version}")
    assert sorted(fitted) == [1, 2], "a new model's versions are numbered from 1"
    return Regressor(REGRESSOR, fitted)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh desktop-sized tab that fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"script errors in the page: {errors}"
