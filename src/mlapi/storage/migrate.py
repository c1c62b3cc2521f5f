"""`mlapi migrate`: bring the database schema to the newest Alembic revision and seed the bundled models."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def migrate(database_url: str, bundled_dir: Path) -> list[str]:
    """The schema up to date, then the package's models in the registry (idempotent); returns what was seeded."""
    from mlapi.models.spec import read_bundled
    from mlapi.storage.registry import RegistryRepository
    from mlapi.storage.repository import engine_for

    upgrade(database_url)

    async def seed() -> list[str]:
        engine = engine_for(database_url)
        try:
            return await RegistryRepository(engine).seed(read_bundled(bundled_dir))
        finally:
            await engine.dispose()

    return asyncio.run(seed())
