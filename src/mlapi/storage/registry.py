"""The model registry in PostgreSQL: models, their numbered versions with artifacts, and the default version.

Every API and worker process of a deployment reads the same registry; a change is announced on Redis
(`mlapi.queue.announce`) by whoever made it, and processes re-read the registry when told or periodically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mlapi.models.profile import PROFILE_FILE, Profile
from mlapi.models.spec import ModelSpec, SpecBody
from mlapi.storage.quality import add_profile
from mlapi.storage.tables import model_versions, models


class RegistryError(Exception):
    """A registry operation refused; the message says why, for the user."""


class NotFound(RegistryError):
    pass


class Conflict(RegistryError):
    pass


@dataclass(frozen=True)
class Version:
    """One version as listed: everything but the artifact's bytes."""

    spec: ModelSpec
    sha256: str
    size: int
    origin: str
    created_at: datetime
    profile: Profile | None = None
    """The training data's reference profile, which drift compares the history with."""


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    default_version: int | None
    versions: dict[int, Version]

    @property
    def default(self) -> Version | None:
        return self.versions.get(self.default_version) if self.default_version is not None else None


Snapshot = dict[str, Model]
"""The whole registry as one process sees it, by model name."""


def sha256(artifact: bytes) -> str:
    return hashlib.sha256(artifact).hexdigest()


_LISTED = [c for c in model_versions.columns if c.name != "artifact"]


class RegistryRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def snapshot(self) -> Snapshot:
        """Every model and version, without artifacts, in two queries."""
        async with self.engine.connect() as conn:
            live = sa.select(models).where(models.c.removed_at.is_(None)).order_by(models.c.name)
            model_rows = (await conn.execute(live)).mappings().all()
            version_rows = (
                await conn.execute(sa.select(*_LISTED).order_by(model_versions.c.model, model_versions.c.version))
            ).mappings()
            versions: dict[str, dict[int, Version]] = {}
            for v in version_rows:
                versions.setdefault(v["model"], {})[v["version"]] = _version(v)
        return {
            m["name"]: Model(m["name"], m["description"], m["default_version"], versions.get(m["name"], {}))
            for m in model_rows
        }

    async def artifact(self, model: str, version: int) -> bytes | None:
        query = sa.select(model_versions.c.artifact).where(
            model_versions.c.model == model, model_versions.c.version == version
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar_one_or_none()

    async def next_version(self, model: str) -> int:
        """The number the next version of `model` would get (1 for a new model)."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(sa.select(models.c.next_version).where(models.c.name == model))).scalar()
        return int(found or 1)

    async def add_version(
        self,
        name: str,
        body: SpecBody,
        artifact: bytes,
        *,
        promote: bool,
        origin: str = "upload",
        profile: Profile | None = None,
    ) -> ModelSpec:
        """Store a new version (numbered by the registry) with its reference profile; it becomes the default with
        `promote` or when the model had none. Raises `Conflict` when the model already has an identical artifact."""
        async with self.engine.begin() as conn:
            return await _insert_version(conn, name, body, artifact, promote=promote, origin=origin, profile=profile)

    async def promote(self, name: str, version: int) -> None:
        async with self.engine.begin() as conn:
            await _lock_model(conn, name)
            await _require_version(conn, name, version)
            await conn.execute(sa.update(models).where(models.c.name == name).values(default_version=version))

    async def remove_version(self, name: str, version: int) -> None:
        """Raises `Conflict` for the default version: promote another one first, or remove the model."""
        async with self.engine.begin() as conn:
            model = await _lock_model(conn, name)
            await _require_version(conn, name, version)
            if model["default_version"] == version:
                raise Conflict(f"version {version} is the default of {name!r}: promote another version first")
            await conn.execute(
                sa.delete(model_versions).where(model_versions.c.model == name, model_versions.c.version == version)
            )

    async def remove_model(self, name: str) -> None:
        """Remove every version and its artifact; the model's row stays as a tombstone (see `models`)."""
        async with self.engine.begin() as conn:
            await _lock_model(conn, name)
            await conn.execute(sa.delete(model_versions).where(model_versions.c.model == name))
            await conn.execute(
                sa.update(models).where(models.c.name == name).values(removed_at=sa.func.now(), default_version=None)
            )

    async def seed(self, bundled: Mapping[str, tuple[ModelSpec, Path]]) -> list[str]:
        """Add each bundled model's artifact unless the model already holds it (same sha256), with the reference
        profile beside it (a held version without one gets it); a new bundled version becomes the default only
        where the default is a bundled one. Returns what was done."""
        done = []
        for name, (spec, path) in bundled.items():
            artifact = path.read_bytes()
            profile_path = path.parent / PROFILE_FILE
            profile = Profile.model_validate_json(profile_path.read_bytes()) if profile_path.is_file() else None
            async with self.engine.begin() as conn:
                try:
                    model = await _lock_model(conn, name, create=spec.description, revive=False)
                except NotFound:
                    continue  # a user removed this bundled model: it stays removed
                held = await conn.execute(
                    sa.select(model_versions.c.version).where(
                        model_versions.c.model == name, model_versions.c.sha256 == sha256(artifact)
                    )
                )
                if (version := held.scalar()) is not None:
                    if profile is not None and await _profile_missing(conn, name, version):
                        await add_profile(conn, name, version, profile.model_dump(mode="json"))
                        done.append(f"added the reference profile to {name} version {version}")
                    continue
                default_origin = None
                if model["default_version"] is not None:
                    default_origin = (
                        await conn.execute(
                            sa.select(model_versions.c.origin).where(
                                model_versions.c.model == name,
                                model_versions.c.version == model["default_version"],
                            )
                        )
                    ).scalar()
                body = SpecBody.model_validate(spec.model_dump(exclude={"name", "version"}))
                stored = await _insert_version(
                    conn, name, body, artifact, promote=default_origin in (None, "bundled"), origin="bundled",
                    profile=profile,
                )  # fmt: skip
                done.append(f"seeded {name} version {stored.version}")
        return done


def _version(row: sa.RowMapping) -> Version:
    spec = ModelSpec.model_validate({**row["spec"], "name": row["model"], "version": row["version"]})
    profile = Profile.model_validate(row["profile"]) if row["profile"] is not None else None
    return Version(spec, row["sha256"], row["size"], row["origin"], row["created_at"], profile)


async def _profile_missing(conn: AsyncConnection, name: str, version: int) -> bool:
    found = await conn.execute(
        sa.select(model_versions.c.profile.is_(None)).where(
            model_versions.c.model == name, model_versions.c.version == version
        )
    )
    return bool(found.scalar())


async def _lock_model(
    conn: AsyncConnection, name: str, create: str | None = None, *, revive: bool = True
) -> sa.RowMapping:
    """The model's row, locked for this transaction. With `create` (its description) it is made if missing,
    and a removed model of that name comes back (with `revive`), keeping its version numbers."""
    if create is not None:
        await conn.execute(pg_insert(models).values(name=name, description=create).on_conflict_do_nothing())
    row = (await conn.execute(sa.select(models).where(models.c.name == name).with_for_update())).mappings().first()
    if row is not None and row["removed_at"] is not None:
        if create is None or not revive:
            raise NotFound(f"no model {name!r}")
        await conn.execute(sa.update(models).where(models.c.name == name).values(removed_at=None))
        row = {**row, "removed_at": None}  # type: ignore[assignment]
    if row is None:
        raise NotFound(f"no model {name!r}")
    return row


async def _require_version(conn: AsyncConnection, name: str, version: int) -> None:
    found = await conn.execute(
        sa.select(model_versions.c.version).where(model_versions.c.model == name, model_versions.c.version == version)
    )
    if found.scalar() is None:
        raise NotFound(f"model {name!r} has no version {version}")


async def _insert_version(
    conn: AsyncConnection,
    name: str,
    body: SpecBody,
    artifact: bytes,
    *,
    promote: bool,
    origin: str,
    profile: Profile | None = None,
) -> ModelSpec:
    model = await _lock_model(conn, name, create=body.description)
    digest = sha256(artifact)
    same = await conn.execute(
        sa.select(model_versions.c.version).where(model_versions.c.model == name, model_versions.c.sha256 == digest)
    )
    if (existing := same.scalar()) is not None:
        raise Conflict(f"version {existing} of {name!r} has the same artifact (sha256 {digest[:12]}…)")
    version = int(model["next_version"])
    spec = ModelSpec(**body.model_dump(), name=name, version=version)
    await conn.execute(
        sa.insert(model_versions).values(
            model=name, version=version, runtime=spec.runtime, task=spec.task,
            spec=body.model_dump(mode="json"), artifact=artifact, sha256=digest, size=len(artifact),
            trusted=spec.trusted, metrics=spec.metrics, origin=origin,
            profile=profile.model_dump(mode="json") if profile is not None else sa.null(),
        )
    )  # fmt: skip
    update: dict[str, Any] = {"next_version": version + 1}
    if promote or model["default_version"] is None:
        update["default_version"] = version
    if body.description:
        update["description"] = body.description
    await conn.execute(sa.update(models).where(models.c.name == name).values(**update))
    return spec
