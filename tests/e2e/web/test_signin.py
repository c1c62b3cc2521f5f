"""The web UI with auth required, in a real browser: it asks for a key, keeps it in an HttpOnly, SameSite=Strict
session cookie that no page shows, shows that key's history only, predicts with it, and signs out."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect

from mlapi.models.spec import read_bundled
from tests.conftest import REGISTRY, Stack, StackFactory, create_key, keys, wait_until
from tests.e2e.web.conftest import start_web

pytestmark = pytest.mark.e2e
EXAMPLE = read_bundled(REGISTRY)["diabetes-risk"][0].example


@dataclass
class Signed:
    stack: Stack
    url: str
    alice: str
    theirs: str
    """A prediction of another key."""
    mine: str
    """A prediction of alice's key, made through the API."""


@pytest.fixture(scope="module")
def signed(stack_factory: StackFactory) -> Signed:
    stack = stack_factory(MLAPI_API__AUTH="required")
    alice, bob = create_key(stack, "web-alice"), create_key(stack, "web-bob")
    stack.start_api()
    stack.start_worker("--model", "diabetes-risk")
    stack.wait_ready()
    made = []
    for key in (alice, bob):
        response = httpx.post(f"{stack.url}/predict", json=EXAMPLE, headers={"X-API-Key": key}, timeout=30)
        assert response.status_code == 200, response.text
        made.append(response.json()["id"])
    return Signed(stack, start_web(stack, stack.url), alice, theirs=made[1], mine=made[0])


def test_the_web_ui_signs_in_shows_only_that_keys_history_and_signs_out(page: Page, signed: Signed) -> None:
    page.goto(f"{signed.url}/history")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fhistory$"))  # asked for a key first
    page.get_by_label("API key").fill("mlapi_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")

    page.get_by_label("API key").fill(signed.alice)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{signed.url}/history")  # back where it was going
    expect(page.locator(".signed-in")).to_have_text("Key web-alice")
    expect(page.locator(f"a[href='/predictions/{signed.mine}']").first).to_be_visible()
    assert page.locator(f"a[href='/predictions/{signed.theirs}']").count() == 0
    cookie = next(c for c in page.context.cookies() if c["name"] == "mlapi_key")
    assert cookie["value"] == signed.alice and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["expires"] == -1  # a session cookie
    assert signed.alice not in page.content()
    assert page.evaluate("document.cookie") == ""  # no script can read it
    page.goto(f"{signed.url}/predictions/{signed.theirs}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()

    page.goto(f"{signed.url}/predict")
    page.get_by_label("Blood glucose level").press("Enter")
    link = page.locator(".result a[href^='/predictions/']")
    expect(link).to_be_visible()
    made = (link.get_attribute("href") or "").rsplit("/", 1)[-1]
    record = httpx.get(f"{signed.stack.url}/predictions/{made}", headers={"X-API-Key": signed.alice}).json()
    assert record["key"] == "web-alice"  # the form predicts with the signed-in key

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{signed.url}/signin")
    assert not [c for c in page.context.cookies() if c["name"].startswith("mlapi_key")]
    page.goto(f"{signed.url}/predict")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fpredict$"))


def test_a_revoked_key_is_signed_out_at_its_next_page(page: Page, signed: Signed) -> None:
    key = create_key(signed.stack, "web-brief")
    page.goto(f"{signed.url}/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".signed-in")).to_have_text("Key web-brief")
    assert keys(signed.stack, "revoke", "web-brief").returncode == 0
    me = f"{signed.stack.url}/me"
    wait_until(lambda: httpx.get(me, headers={"X-API-Key": key}).status_code == 401, 1, "the API to refuse the key")
    page.goto(f"{signed.url}/history")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fhistory$"))
    assert not [c for c in page.context.cookies() if c["name"].startswith("mlapi_key")]
