"""API keys in PostgreSQL: created, listed, revoked, and looked up by the SHA-256 of a presented key.

A key is 32 random bytes (256 bits), so a plain SHA-256 is enough to store it: there is nothing to guess that a
slow hash would protect. The key itself is shown once, at creation, and never stored or logged.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi.models.spec import NAME_PATTERN
from mlapi.storage.tables import api_keys

PREFIX = "mlapi_"
"""Every generated key starts with this, so a leaked one is recognisable (secret scanners, logs)."""
RATE = re.compile(r"^([1-9][0-9]{0,8})/([smh])$")
"""A rate limit as `mlapi keys create --rate` takes it: requests per second, minute or hour."""
MIN_KEY_LENGTH = 32


class KeyRefused(Exception):
    """A key command refused; the message says why."""


@dataclass(frozen=True)
class ApiKey:
    """What is known of a key: never the key itself."""

    name: str
    admin: bool
    models: tuple[str, ...] | None
    """The models it may use; None: every model."""
    rate: str | None
    """Its rate limit (`100/s`); None: none."""
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_rate(rate: str) -> str:
    if not RATE.fullmatch(rate):
        raise KeyRefused(f"invalid rate {rate!r}: N/s, N/m or N/h, e.g. 100/s")
    return rate


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise KeyRefused(f"invalid key name {name!r}: lower-case letters, digits and '-', at most 63")
    return name


def _key(row: Any) -> ApiKey:
    models = row["models"]
    return ApiKey(
        name=row["name"], admin=row["admin"], models=tuple(models) if models is not None else None,
        rate=row["rate"], created_at=row["created_at"], last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )  # fmt: skip


class KeyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, name: str, *, admin: bool = False, models: list[str] | None = None, rate: str | None = None,
        key: str | None = None,
    ) -> str:  # fmt: skip
        """Store a new key (a generated one unless `key` is given) and return it; a name is never reused."""
        check_name(name)
        if rate is not None:
            check_rate(rate)
        key = key or new_key()
        values = {"name": name, "sha256": digest(key), "admin": admin, "models": models, "rate": rate}
        async with self.engine.begin() as conn:
            created = await conn.execute(
                insert(api_keys).values(values).on_conflict_do_nothing().returning(api_keys.c.name)
            )
            if created.first() is None:
                raise KeyRefused(f"a key named {name!r} exists or existed (names are never reused); choose another")
        return key

    async def ensure(self, name: str, key: str) -> bool:
        """An admin key `name` holding exactly `key` (created, or given this key and un-revoked); True if it
        changed anything."""
        if len(key) < MIN_KEY_LENGTH:
            raise KeyRefused(f"the admin key must be at least {MIN_KEY_LENGTH} characters long")
        values = {"name": name, "sha256": digest(key), "admin": True}
        statement = insert(api_keys).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[api_keys.c.name],
            set_={"sha256": statement.excluded.sha256, "admin": True, "models": None, "revoked_at": None},
            where=(api_keys.c.sha256 != statement.excluded.sha256) | api_keys.c.revoked_at.is_not(None),
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement.returning(api_keys.c.name))).first() is not None

    async def list(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))).mappings()
            return [_key(r) for r in rows]

    async def revoke(self, name: str) -> None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.name == name)
                    .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, sa.func.now()))
                    .returning(api_keys.c.name)
                )
            ).first()
        if row is None:
            raise KeyRefused(f"no key named {name!r}")

    async def use(self, sha256: str) -> ApiKey | None:
        """The live key with this digest, marking it used now; None for an unknown or revoked key."""
        statement = (
            sa.update(api_keys)
            .where(api_keys.c.sha256 == sha256, api_keys.c.revoked_at.is_(None))
            .values(last_used_at=sa.func.now())
            .returning(*api_keys.c)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(statement)).mappings().first()
        if row is None or not secrets.compare_digest(row["sha256"], sha256):
            return None
        return _key(row)
