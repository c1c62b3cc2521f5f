"""The model registry on a real PostgreSQL and a real Redis-compatible server: seeding, version numbers,
promotion and removal rules, change events, and a worker's host following the registry.

Other tests share the session's database, so every test works on models of its own (unique names) and
removes them; nothing here assumes which models the registry holds besides those.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import skops.io
import sqlalchemy as sa
from redis.asyncio import Redis
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue
from mlapi.contract import Job, Reply, Row, Validation, decode_replies
from mlapi.models.spec import ARTIFACT_FILE, ModelSpec, SpecBody, read_bundled
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.settings import Settings, WorkerSettings
from mlapi.storage.migrate import migrate
from mlapi.storage.registry import Conflict, NotFound, RegistryRepository, Snapshot, sha256
from mlapi.storage.repository import PredictionRepository
from mlapi.storage.tables import model_versions
from mlapi.watch import RegistryWatch
from mlapi.worker import Worker
from mlapi.worker.host import ModelHost
from tests.conftest import REGISTRY, entries

pytestmark = pytest.mark.integration

IRIS = ModelSpec.read(REGISTRY / "iris")
BODY = SpecBody.model_validate(IRIS.model_dump(exclude={"name", "version"}))
"""The bundled iris spec, as a user would upload it with an artifact of their own."""


def artifact(c: float) -> bytes:
    """A real iris classifier that fits the iris spec, different for each `c` (and each call: skops stamps it)."""
    x, y = load_iris(return_X_y=True)
    data: bytes = skops.io.dumps(LogisticRegression(C=c, max_iter=2000).fit(x, y))
    return data


@pytest.fixture
def registry(engine: AsyncEngine) -> RegistryRepository:
    return RegistryRepository(engine)


@pytest.fixture
async def unique(registry: RegistryRepository) -> AsyncIterator[Callable[[], str]]:
    """Makes model names no other test uses; the models are removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"test-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for name in made:
        with contextlib.suppress(NotFound):
            await registry.remove_model(name)


@pytest.fixture
def name(unique: Callable[[], str]) -> str:
    return unique()


async def test_seeding_twice_leaves_the_registry_unchanged(registry: RegistryRepository, settings: Settings) -> None:
    url, bundled_dir = settings.require_database_url(), settings.bundled_models_dir
    await asyncio.to_thread(migrate, url, bundled_dir)  # `mlapi migrate` runs its own event loop
    before = await registry.snapshot()
    assert await asyncio.to_thread(migrate, url, bundled_dir) == []
    after = await registry.snapshot()
    for model, (_, path) in read_bundled(bundled_dir).items():
        assert after[model] == before[model]  # same versions, same sha256, same default
        assert sha256(path.read_bytes()) in {v.sha256 for v in after[model].versions.values()}


async def test_a_changed_bundled_artifact_becomes_the_default_only_over_a_bundled_one(
    registry: RegistryRepository, name: str, tmp_path: Path
) -> None:
    folder = tmp_path / name  # a package's registry folder: the folder's name is the model's
    shutil.copytree(REGISTRY / "iris", folder)
    original = (folder / ARTIFACT_FILE).read_bytes()
    assert await registry.seed(read_bundled(tmp_path)) == [f"seeded {name} version 1"]
    assert await registry.seed(read_bundled(tmp_path)) == []

    (folder / ARTIFACT_FILE).write_bytes(retrained := artifact(0.5))  # a new release of the package
    assert await registry.seed(read_bundled(tmp_path)) == [f"seeded {name} version 2"]
    model = (await registry.snapshot())[name]
    assert model.default_version == 2
    assert model.versions[2].origin == "bundled" and model.versions[2].sha256 == sha256(retrained)
    assert model.versions[2].spec.labels == IRIS.labels and model.versions[2].spec.name == name

    # The user promotes a version of their own: the next release is added, but takes no traffic.
    uploaded = await registry.add_version(name, BODY, artifact(2.0), promote=True)
    assert uploaded.version == 3
    (folder / ARTIFACT_FILE).write_bytes(artifact(5.0))
    assert await registry.seed(read_bundled(tmp_path)) == [f"seeded {name} version 4"]
    model = (await registry.snapshot())[name]
    assert sorted(model.versions) == [1, 2, 3, 4] and model.default_version == 3
    assert [model.versions[v].origin for v in (1, 2, 3, 4)] == ["bundled", "bundled", "upload", "bundled"]

    (folder / ARTIFACT_FILE).write_bytes(original)  # an artifact the model holds already, though not as default
    assert await registry.seed(read_bundled(tmp_path)) == []
    assert sorted((await registry.snapshot())[name].versions) == [1, 2, 3, 4]


async def test_versions_are_numbered_from_one_and_never_reused(registry: RegistryRepository, name: str) -> None:
    assert await registry.next_version(name) == 1
    numbers = [(await registry.add_version(name, BODY, artifact(c), promote=False)).version for c in (1, 2, 3)]
    assert numbers == [1, 2, 3]
    model = (await registry.snapshot())[name]
    assert model.default_version == 1  # the first version of a model is its default, promoted or not
    assert model.description == IRIS.description
    await registry.remove_version(name, 3)
    assert await registry.next_version(name) == 4  # the history may name version 3: never another one
    assert (await registry.add_version(name, BODY, artifact(4), promote=False)).version == 4
    await registry.remove_version(name, 2)
    assert await registry.artifact(name, 2) is None
    assert sorted((await registry.snapshot())[name].versions) == [1, 4]
    assert (await registry.add_version(name, BODY, artifact(5), promote=False)).version == 5


async def test_a_stored_version_keeps_its_artifact_and_spec(registry: RegistryRepository, name: str) -> None:
    data = artifact(1)
    spec = await registry.add_version(name, BODY, data, promote=False)
    assert await registry.artifact(name, spec.version) == data
    version = (await registry.snapshot())[name].versions[spec.version]
    assert version.spec == spec and version.spec.name == name
    assert version.sha256 == sha256(data) and version.size == len(data) and version.origin == "upload"


async def test_promotion(registry: RegistryRepository, name: str) -> None:
    await registry.add_version(name, BODY, artifact(1), promote=False)
    await registry.add_version(name, BODY, artifact(2), promote=False)
    assert (await registry.snapshot())[name].default_version == 1
    await registry.promote(name, 2)
    assert (await registry.snapshot())[name].default_version == 2
    with pytest.raises(NotFound, match="has no version 7"):
        await registry.promote(name, 7)
    with pytest.raises(NotFound, match="no model"):
        await registry.promote(f"{name}-absent", 1)
    await registry.add_version(name, BODY, artifact(3), promote=True)
    model = (await registry.snapshot())[name]
    assert model.default_version == 3
    assert model.default is not None and model.default.spec.version == 3


async def test_the_default_version_cannot_be_removed(registry: RegistryRepository, name: str) -> None:
    await registry.add_version(name, BODY, artifact(1), promote=False)
    await registry.add_version(name, BODY, artifact(2), promote=False)
    before = (await registry.snapshot())[name]
    with pytest.raises(Conflict, match="version 1 is the default"):
        await registry.remove_version(name, 1)
    with pytest.raises(NotFound):
        await registry.remove_version(name, 9)
    with pytest.raises(NotFound):
        await registry.remove_version(f"{name}-absent", 1)
    assert (await registry.snapshot())[name] == before
    await registry.promote(name, 2)
    await registry.remove_version(name, 1)  # no longer the default
    assert sorted((await registry.snapshot())[name].versions) == [2]


async def test_removing_a_model_removes_its_versions(
    registry: RegistryRepository, engine: AsyncEngine, name: str
) -> None:
    await registry.add_version(name, BODY, artifact(1), promote=False)
    await registry.add_version(name, BODY, artifact(2), promote=False)
    await registry.remove_model(name)
    assert name not in await registry.snapshot()
    async with engine.connect() as conn:
        left = await conn.execute(sa.select(sa.func.count()).where(model_versions.c.model == name))
    assert left.scalar() == 0
    assert await registry.artifact(name, 1) is None
    with pytest.raises(NotFound):
        await registry.remove_model(name)


async def test_a_model_added_again_after_removal_continues_its_version_numbers(
    registry: RegistryRepository, name: str
) -> None:
    # The history still names the removed model's versions: a new model of that name must not reuse them.
    await registry.add_version(name, BODY, artifact(1), promote=False)
    await registry.add_version(name, BODY, artifact(2), promote=False)
    await registry.remove_model(name)
    with pytest.raises(NotFound):
        await registry.promote(name, 1)
    again = await registry.add_version(name, BODY, artifact(3), promote=False)
    assert again.version == 3
    model = (await registry.snapshot())[name]
    assert list(model.versions) == [3] and model.default_version == 3


async def test_a_bundled_model_a_user_removed_is_not_seeded_again(
    registry: RegistryRepository, name: str, tmp_path: Path
) -> None:
    shutil.copytree(REGISTRY / "iris", tmp_path / name)
    assert await registry.seed(read_bundled(tmp_path)) == [f"seeded {name} version 1"]
    await registry.remove_model(name)
    assert await registry.seed(read_bundled(tmp_path)) == []
    assert name not in await registry.snapshot()


async def test_an_identical_artifact_is_refused(registry: RegistryRepository, unique: Callable[[], str]) -> None:
    name, other = unique(), unique()
    data = artifact(1)
    await registry.add_version(name, BODY, data, promote=False)
    before = (await registry.snapshot())[name]
    with pytest.raises(Conflict, match=f"version 1 of '{name}' has the same artifact"):
        await registry.add_version(name, BODY, data, promote=True)
    assert (await registry.snapshot())[name] == before
    assert await registry.next_version(name) == 2  # a refused version takes no number
    assert (await registry.add_version(other, BODY, data, promote=False)).version == 1  # per model


async def test_the_watch_sees_a_change_within_a_second_of_its_event(
    registry: RegistryRepository, redis: Redis, settings: Settings, name: str
) -> None:
    seen: asyncio.Queue[Snapshot] = asyncio.Queue()

    async def record(snapshot: Snapshot) -> None:
        seen.put_nowait(snapshot)

    # No periodic re-read within the test: only the event can bring the change.
    watch = RegistryWatch(settings.require_redis_url(), registry, refresh_s=3600, on_change=record)
    await watch.start()
    try:
        first = seen.get_nowait()  # the registry as it was at start
        assert name not in first
        await registry.add_version(name, BODY, artifact(1), promote=True)
        await queue.announce(redis, "added", name, 1)
        added = await asyncio.wait_for(seen.get(), 1.0)
        assert added[name].default_version == 1 and watch.snapshot == added

        await registry.add_version(name, BODY, artifact(2), promote=False)
        await registry.promote(name, 2)
        await queue.announce(redis, "promoted", name, 2)
        promoted = await asyncio.wait_for(seen.get(), 1.0)
        assert promoted[name].default_version == 2 and sorted(promoted[name].versions) == [1, 2]

        await registry.remove_model(name)
        await queue.announce(redis, "removed", name)
        removed = await asyncio.wait_for(seen.get(), 1.0)
        assert name not in removed
    finally:
        await watch.stop()


async def test_the_host_loads_new_versions_and_drains_removed_ones(
    registry: RegistryRepository, redis: Redis, engine: AsyncEngine, name: str
) -> None:
    v1, v2 = (name, 1), (name, 2)
    host = ModelHost(redis, registry, "host-test", [name])
    await registry.add_version(name, BODY, artifact(1), promote=True)
    await host.apply(await registry.snapshot())
    assert list(host.loaded) == [v1] and host.serving == [v1]  # only the model it serves
    loaded = host.loaded[v1]
    assert isinstance(loaded, SklearnModel) and loaded.spec.version == 1
    assert [g["name"] for g in await redis.xinfo_groups(queue.request_stream(*v1))] == [queue.GROUP.encode()]

    await registry.add_version(name, BODY, artifact(2), promote=True)
    await host.apply(await registry.snapshot())
    assert sorted(host.loaded) == [v1, v2] and host.loaded[v1] is loaded  # nothing reloaded
    await queue.heartbeat(redis, host.consumer, host.serving, host.runtimes)

    # Version 1 still has work: one request another worker holds unacknowledged, one not yet delivered.
    jobs = [
        Job(
            id=f"job-{n}", model=name, version=1, rows=[Row(id=str(uuid.uuid4()), features=IRIS.example)],
            reply_to=queue.reply_stream("host-test"), created_at=datetime.now(UTC),
        )
        for n in range(2)
    ]  # fmt: skip
    for job in jobs:
        await queue.enqueue(redis, job, track=False)
    [held] = await queue.read_new(redis, "other", [v1], 1, 100)
    await registry.remove_version(name, 1)
    await host.apply(await registry.snapshot())
    assert host.draining == {v1} and host.serving == [v2] and v1 in host.loaded

    await host.unload_drained()
    assert v1 in host.loaded  # an entry is undelivered and one pending
    worker = Worker(WorkerSettings(block_ms=50), redis, PredictionRepository(engine), host)
    assert await worker.step() == 1  # the removed version still answers what was queued for it
    stored = await PredictionRepository(engine).get(jobs[1].rows[0].id)
    assert stored is not None and stored["status"] == "done" and stored["model_version"] == "1"
    await host.unload_drained()
    assert v1 in host.loaded  # the other worker's entry is still pending

    await queue.finish(redis, [held], [])
    await host.unload_drained()
    assert list(host.loaded) == [v2] and host.draining == set()
    assert await queue.live_workers(redis, queue.workers_key(*v1), 60_000) == []
    assert await queue.live_workers(redis, queue.workers_key(*v2), 60_000) == ["host-test"]


async def test_a_version_the_host_cannot_load_is_reported_not_served(
    registry: RegistryRepository, redis: Redis, name: str
) -> None:
    host = ModelHost(redis, registry, "host-test", [name])
    await queue.heartbeat(redis, host.consumer, [], host.runtimes)
    await registry.add_version(name, BODY, artifact(1), promote=True)
    await registry.add_version(name, BODY, b"PK\x03\x04 a damaged archive", promote=False)
    await host.apply(await registry.snapshot())
    assert list(host.loaded) == [(name, 1)]
    assert "not a skops file" in host.failed[(name, 2)]
    assert await queue.load_errors(redis, (name, 2), 60_000) == {"host-test": host.failed[(name, 2)]}
    await host.apply(await registry.snapshot())  # not retried on every change
    assert list(host.loaded) == [(name, 1)]


async def test_the_host_load_checks_uploads_for_the_api(redis: Redis, registry: RegistryRepository) -> None:
    host = ModelHost(redis, registry, "validator", [])
    assert "sklearn" in host.runtimes
    stop = asyncio.Event()
    checker = asyncio.create_task(host.validate_forever(redis, stop, 100))
    reply_to = queue.reply_stream("validation-test")
    good, broken = IRIS.model_dump_json().encode(), IRIS.model_copy(update={"labels": ["a", "b"]}).model_dump_json()
    cases = {"good": (good, artifact(1)), "pickle": (good, b"\x80\x05junk"), "labels": (broken.encode(), artifact(1))}
    try:
        for vid, (spec, data) in cases.items():
            validation = Validation(
                id=vid, spec=spec, artifact_key=queue.validation_artifact_key(vid), reply_to=reply_to
            )
            await queue.request_validation(redis, "sklearn", validation, data)
        answers: dict[str, Reply] = {}
        last = "0"
        while len(answers) < len(cases):
            response = await asyncio.wait_for(redis.xread({reply_to: last}, block=5000), 10)
            for _, items in queue.stream_items(response):
                for entry_id, fields in items:
                    last = entry_id
                    answers.update((r.id, r) for r in decode_replies(fields[queue.FIELD]))
    finally:
        stop.set()
        await asyncio.wait_for(checker, 5)
    assert answers["good"].error is None
    assert answers["pickle"].error is not None and "pickle" in answers["pickle"].error
    assert answers["labels"].error is not None and "do not match the spec's labels" in answers["labels"].error
    assert [await redis.exists(queue.validation_artifact_key(v)) for v in cases] == [0, 0, 0]
    assert len(await entries(redis, reply_to)) == len(cases)
