"""`mlapi keys create | list | revoke`: API keys, straight in PostgreSQL, so the first admin key can be made
before any API runs (`MLAPI_DATABASE_URL`, else the database `mlapi up` runs, started for the command if need
be). A creation or revocation is announced to every API process on Redis where one is reachable (else they
see it within `MLAPI_API__KEY_CACHE_S`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from redis.exceptions import RedisError
from sqlalchemy.exc import ProgrammingError

from mlapi import queue
from mlapi.cli import columns
from mlapi.settings import Settings
from mlapi.storage.keys import ApiKey, KeyRefused, KeyRepository, check_rate
from mlapi.storage.repository import engine_for


def add_parser(keys: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; it is printed once, alone on the last line")
    create.add_argument("name", help="the key's name (lower-case letters, digits and '-'); never reused")
    create.add_argument("--admin", action="store_true", help="may manage models and read every key's history")
    create.add_argument("--models", help="the models it may use, comma-separated (default: every model)")
    create.add_argument("--rate", type=_rate, help="its rate limit: N/s, N/m or N/h (default: none)")
    actions.add_parser("list", help="every key's name, role, models, rate, creation and last use (never the key)")
    revoke = actions.add_parser("revoke", help="refuse a key from now on, on every API process")
    revoke.add_argument("name")


def _rate(value: str) -> str:
    try:
        return check_rate(value)
    except KeyRefused as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`mlapi keys ...`: 0 on success, 1 (with the reason on stderr) on refusal."""
    try:
        with database(settings) as url:
            return asyncio.run(_run(args, settings, url))
    except KeyRefused as e:
        print(f"mlapi keys {args.action}: {e}", file=sys.stderr)
    except ProgrammingError as e:
        print(f"mlapi keys {args.action}: {e.orig}; is the schema up to date (`mlapi migrate`)?", file=sys.stderr)
    return 1


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database's URL: `MLAPI_DATABASE_URL`, else the one `mlapi up` runs, started (and migrated) for the
    command if it is not running, and stopped again after it."""
    if settings.database_url:
        yield settings.require_database_url()
        return
    from mlapi.servers import PostgresServer
    from mlapi.storage.migrate import upgrade
    from mlapi.up import postgres_dir

    server = PostgresServer(postgres_dir(settings), settings.up.postgres_port).start()
    try:
        url = settings.model_copy(update={"database_url": server.url}).require_database_url()
        upgrade(url)
        yield url
    finally:
        server.stop()  # only if it was started here


async def _run(args: argparse.Namespace, settings: Settings, url: str) -> int:
    engine = engine_for(url)
    repository = KeyRepository(engine)
    try:
        if args.action == "create":
            models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
            key = await repository.create(args.name, admin=args.admin, models=models, rate=args.rate)
            await _announce(settings, "created", args.name)
            print(f"created key {args.name!r} ({describe(await _find(repository, args.name))}); it is shown once:")
            print(key)
        elif args.action == "list":
            print(table(await repository.list()))
        else:
            await repository.revoke(args.name)
            await _announce(settings, "revoked", args.name)
            print(f"revoked key {args.name!r}")
    finally:
        await engine.dispose()
    return 0


async def _find(repository: KeyRepository, name: str) -> ApiKey:
    return next(k for k in await repository.list() if k.name == name)


def describe(key: ApiKey) -> str:
    models = ",".join(key.models) if key.models is not None else "every model"
    return f"{'admin' if key.admin else 'user'}, {models}, rate {key.rate or 'unlimited'}"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def table(keys: list[ApiKey]) -> str:
    rows = [["NAME", "ROLE", "MODELS", "RATE", "CREATED", "LAST USED", "STATUS"]]
    for k in keys:
        status = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
        models = ",".join(k.models) if k.models is not None else "all"
        rows.append([k.name, "admin" if k.admin else "user", models, k.rate or "-", _when(k.created_at),
                     _when(k.last_used_at), status])  # fmt: skip
    return columns(rows)


async def _announce(settings: Settings, kind: str, name: str) -> None:
    """Tell the API processes at once, through Redis (`MLAPI_REDIS_URL`, else the one `mlapi up` runs)."""
    url = settings.redis_url or f"redis://127.0.0.1:{settings.up.redis_port}/0"
    redis = queue.connect(url)
    try:
        await queue.announce_key(redis, kind, name)
    except (RedisError, OSError):
        wait = settings.api.key_cache_s
        print(f"(no Redis reachable to announce it: API processes see it within {wait:g} s)", file=sys.stderr)
    finally:
        await redis.aclose()
