"""`mlapi migrate`: bring the database schema to the newest Alembic revision and seed the bundled models."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from pydantic import SecretStr

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


ADMIN_KEY_NAME = "admin"


def migrate(database_url: str, bundled_dir: Path, admin_key: SecretStr | None = None) -> list[str]:
    """The schema up to date, then the package's models in the registry and, given `admin_key`, the admin key
    named `admin` holding it (idempotent); returns what was done."""
    from mlapi.models.spec import read_bundled
    from mlapi.storage.keys import KeyRefused, KeyRepository
    from mlapi.storage.registry import RegistryRepository
    from mlapi.storage.repository import engine_for

    upgrade(database_url)

    async def seed() -> list[str]:
        engine = engine_for(database_url)
        try:
            done = await RegistryRepository(engine).seed(read_bundled(bundled_dir))
            if admin_key is not None and await KeyRepository(engine).ensure(
                ADMIN_KEY_NAME, admin_key.get_secret_value()
            ):
                done.append(f"admin key {ADMIN_KEY_NAME!r} set from MLAPI_ADMIN_KEY")
            return done
        except KeyRefused as e:
            raise SystemExit(f"MLAPI_ADMIN_KEY: {e}") from None
        finally:
            await engine.dispose()

    return asyncio.run(seed())
