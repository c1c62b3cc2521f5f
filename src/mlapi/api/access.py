"""Who is calling and what they may do, free of any protocol: API keys, per-key rate limits, idempotency keys.

Every protocol (the JSON API, and the Open Inference Protocol over REST and gRPC) hands the raw credential it
received to `DataPlane.authenticate` and maps these errors to its own: 401/UNAUTHENTICATED,
403/PERMISSION_DENIED, 429/RESOURCE_EXHAUSTED, 409/ALREADY_EXISTS and 422/INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from mlapi import queue
from mlapi.storage.keys import ApiKey, KeyRepository, digest

CACHE_LIMIT = 10_000
"""Keys (known or not) an API process remembers at most; past it, it starts afresh."""
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
"""Printable ASCII without spaces, as HTTP header values and gRPC metadata both carry it."""
_UNITS = {"s": "second", "m": "minute", "h": "hour"}


class Unauthenticated(Exception):
    """No key, or a key that is unknown or revoked."""


class Forbidden(Exception):
    """A valid key that may not do this (another model, or an admin action)."""


class RateLimited(Exception):
    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class IdempotencyConflict(Exception):
    """The first request with this idempotency key is still in flight: try again after `retry_after_s`."""

    retry_after_s = 1.0

    def __init__(self, reason: str, ids: list[str]) -> None:
        super().__init__(reason)
        self.ids = ids


class IdempotencyMismatch(Exception):
    """The idempotency key was used with other rows (or another model version) before."""


class InvalidIdempotencyKey(Exception):
    pass


@dataclass(frozen=True)
class Caller:
    """The identity a request carries: a key's name and rights, or, with auth off, an anonymous admin."""

    name: str | None
    admin: bool
    models: frozenset[str] | None = None
    """The models it may use; None: every model."""
    rate: str | None = None

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        models = frozenset(key.models) if key.models is not None else None
        return cls(name=key.name, admin=key.admin, models=models, rate=key.rate)

    def require_admin(self, action: str) -> None:
        if not self.admin:
            raise Forbidden(f"only an admin key may {action}")

    def require_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise Forbidden(f"this key may not use model {model!r}")

    def history_key(self, requested: str | None) -> str | None:
        """Whose history a read covers: a key's own rows; an admin's choice (None: everyone's)."""
        if self.admin:
            return requested
        if requested not in (None, self.name):
            raise Forbidden("only an admin key may read another key's history")
        return self.name


ANONYMOUS = Caller(name=None, admin=True)
"""Every request with auth off: it may do anything and reads every row, as before keys existed."""


def credential(authorization: str | None, api_key: str | None = None) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>` (an HTTP header or gRPC metadata), else the
    `X-API-Key` header's value."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key.strip() if api_key and api_key.strip() else None


class Keys:
    """Answers who a presented key belongs to, from PostgreSQL, remembering each answer (a refusal too) for
    `ttl_s`; `forget` drops everything at once (an API key was created or revoked somewhere)."""

    def __init__(self, repository: KeyRepository, ttl_s: float) -> None:
        self.repository = repository
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, asyncio.Task[ApiKey | None]]] = {}

    async def caller(self, key: str | None) -> Caller:
        if key is None:
            raise Unauthenticated("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key`")
        sha256 = digest(key)
        now = time.monotonic()
        known = self._known.get(sha256)
        if known is None or known[0] <= now:
            if len(self._known) >= CACHE_LIMIT:
                self._known.clear()
            # One lookup per key however many requests carry it at once; the task is shared by all of them.
            known = (now + self.ttl_s, asyncio.ensure_future(self.repository.use(sha256)))
            self._known[sha256] = known
        try:
            found = await asyncio.shield(known[1])
        except Exception:
            if self._known.get(sha256) is known:  # a failed lookup (the database away) is not remembered
                del self._known[sha256]
            raise
        if found is None:
            raise Unauthenticated("unknown or revoked API key")
        return Caller.of(found)

    async def forget(self) -> None:
        self._known.clear()


@lru_cache(maxsize=1024)
def rate_item(rate: str) -> RateLimitItem:
    """`100/s` as the `limits` library's item."""
    count, _, unit = rate.partition("/")
    return parse(f"{count}/{_UNITS[unit]}")


class RateLimits:
    """Per-key limits over a moving window whose counters live in Redis, so every API process shares them."""

    def __init__(self, redis: Redis) -> None:
        # redis-py, the project's own client (not the library's default, coredis), on the API's own pool: its
        # connections are the app's to close. The URL only names the storage; the pool decides where it goes.
        self.storage = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix=queue.RATE_LIMITS,
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # typed as str options, passed on whole
        )  # fmt: skip
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def hit(self, caller: Caller) -> None:
        """Count a request of `caller` against its limit; `RateLimited` when over it."""
        if caller.rate is None or caller.name is None:
            return
        item = rate_item(caller.rate)
        if await self.limiter.hit(item, caller.name):
            return
        reset_at, _ = await self.limiter.get_window_stats(item, caller.name)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(f"rate limit of {caller.rate} exceeded for key {caller.name!r}", retry_after)


def check_idempotency_key(value: str) -> str:
    if not IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
    return value


def scope_digest(caller: Caller, route: str, idempotency_key: str) -> str:
    """An idempotency key is scoped per API key and route: the SHA-256 of the three."""
    return hashlib.sha256(orjson.dumps([caller.name, route, idempotency_key])).hexdigest()


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """The SHA-256 of validated rows, as canonical JSON (keys sorted)."""
    return hashlib.sha256(orjson.dumps(rows, option=orjson.OPT_SORT_KEYS)).hexdigest()
