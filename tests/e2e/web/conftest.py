"""Real `mlapi api`, `mlapi worker` and `mlapi web` processes, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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
