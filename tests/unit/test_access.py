"""The pure parts of access control: credentials, a caller's rights, rates, idempotency keys, `mlapi up`'s
default and the `mlapi keys list` table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlapi.api.access import (
    ANONYMOUS,
    Caller,
    Forbidden,
    InvalidIdempotencyKey,
    check_idempotency_key,
    credential,
    rate_item,
    rows_digest,
    scope_digest,
)
from mlapi.keys import table
from mlapi.settings import ApiSettings, Settings
from mlapi.storage.keys import ApiKey, KeyRefused, check_name, check_rate, digest, new_key
from mlapi.up import auth_default


@pytest.mark.parametrize(
    ("authorization", "api_key", "expected"),
    [
        ("Bearer abc", None, "abc"), ("bearer   abc ", None, "abc"), ("BEARER abc", "other", "abc"),
        (None, "abc", "abc"), ("Basic dXNlcjpwdw==", "abc", "abc"), ("Basic dXNlcjpwdw==", None, None),
        ("Bearer", None, None), ("abc", None, None), ("", " ", None), (None, None, None),
    ],
)  # fmt: skip
def test_the_credential_is_a_bearer_token_else_the_api_key_header(
    authorization: str | None, api_key: str | None, expected: str | None
) -> None:
    assert credential(authorization, api_key) == expected


def test_a_key_uses_its_models_and_only_admins_manage() -> None:
    alice = Caller(name="alice", admin=False, models=frozenset({"iris"}))
    alice.require_model("iris")
    with pytest.raises(Forbidden, match="diabetes-risk"):
        alice.require_model("diabetes-risk")
    with pytest.raises(Forbidden, match="admin"):
        alice.require_admin("add models")
    Caller(name="root", admin=True).require_admin("add models")
    Caller(name="any", admin=False).require_model("whatever")  # no list: every model


def test_a_key_reads_its_own_history_and_an_admin_anyones() -> None:
    alice = Caller(name="alice", admin=False)
    assert alice.history_key(None) == "alice" and alice.history_key("alice") == "alice"
    with pytest.raises(Forbidden):
        alice.history_key("bob")
    admin = Caller(name="root", admin=True)
    assert admin.history_key(None) is None and admin.history_key("bob") == "bob"
    assert ANONYMOUS.history_key(None) is None  # auth off: everything, as before keys existed


def test_rates_are_per_second_minute_or_hour() -> None:
    for rate in ("1/s", "100/m", "5000/h"):
        assert check_rate(rate) == rate
    for bad in ("0/s", "10/d", "10", "ten/s", "10/sec", "-1/s", "10 /s"):
        with pytest.raises(KeyRefused):
            check_rate(bad)
    item = rate_item("100/m")
    assert item.amount == 100 and item.get_expiry() == 60
    assert rate_item("3/h").get_expiry() == 3600 and rate_item("7/s").get_expiry() == 1


def test_names_follow_the_model_name_rule() -> None:
    assert check_name("ci-bot-2") == "ci-bot-2"
    for bad in ("Alice", "a b", "-x", "", "x" * 64):
        with pytest.raises(KeyRefused):
            check_name(bad)


def test_keys_are_long_random_and_stored_as_their_sha256() -> None:
    key, other = new_key(), new_key()
    assert key != other and key.startswith("mlapi_") and len(key) >= 40
    assert digest(key) == digest(key) != digest(other) and len(digest(key)) == 64 and key not in digest(key)


def test_idempotency_keys_are_printable_ascii() -> None:
    assert check_idempotency_key("order-1/retry:2") == "order-1/retry:2"
    for bad in ("", "has space", "é", "x" * 256, "tab\there"):
        with pytest.raises(InvalidIdempotencyKey):
            check_idempotency_key(bad)


def test_rows_are_compared_by_content_and_idempotency_keys_scoped_per_key_and_route() -> None:
    assert rows_digest([{"a": 1, "b": "x"}]) == rows_digest([{"b": "x", "a": 1}])  # field order does not matter
    assert rows_digest([{"a": 1}]) != rows_digest([{"a": 1.5}])
    assert rows_digest([{"a": 1}, {"a": 2}]) != rows_digest([{"a": 2}, {"a": 1}])  # row order does
    alice, bob = Caller(name="alice", admin=False), Caller(name="bob", admin=False)
    scopes = {scope_digest(c, r, "k") for c in (alice, bob, ANONYMOUS) for r in ("/predict", "/models/iris/predict")}
    assert len(scopes) == 6


@pytest.mark.parametrize(
    ("host", "set_to", "expected"),
    [("127.0.0.1", None, "off"), ("::1", None, "off"), ("localhost", None, "off"), ("0.0.0.0", None, "required"),
     ("192.168.1.5", None, "required"), ("127.0.0.1", "required", "required"), ("0.0.0.0", "off", "off")],
)  # fmt: skip
def test_mlapi_up_turns_auth_off_on_loopback_only_unless_told(host: str, set_to: str | None, expected: str) -> None:
    api = ApiSettings(host=host, **({"auth": set_to} if set_to else {}))
    auth, line = auth_default(Settings(api=api))
    assert auth == expected and line.startswith(f"Auth     {expected}")


def test_the_keys_table_shows_everything_but_the_key() -> None:
    at = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    listed = table([
        ApiKey("admin", True, None, None, at, at, None),
        ApiKey("ci", False, ("iris", "diabetes-risk"), "100/s", at, None, at),
    ])  # fmt: skip
    lines = listed.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "MODELS", "RATE", "CREATED", "LAST", "USED", "STATUS"]
    assert lines[1].split()[:4] == ["admin", "admin", "all", "-"] and lines[1].endswith("active")
    assert lines[2].split()[:4] == ["ci", "user", "iris,diabetes-risk", "100/s"]
    assert "revoked 2026-12-05 09:30" in lines[2]
