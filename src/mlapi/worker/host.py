"""The model versions one worker holds: loaded off the event loop as the registry changes, drained before
they go; and the load-checks of uploaded artifacts the API asks for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import msgspec
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mlapi import queue, runtimes
from mlapi.contract import Reply, decode_validation
from mlapi.models.spec import ModelSpec
from mlapi.storage.registry import RegistryRepository, Snapshot

log = logging.getLogger("mlapi.worker")

MAX_BACKOFF_S = 5.0


class ModelHost:
    def __init__(self, redis: Redis, registry: RegistryRepository, consumer: str, models: Sequence[str]) -> None:
        self.redis = redis
        self.registry = registry
        self.consumer = consumer
        self.models = set(models)
        """Names this worker serves; empty: all."""
        self.loaded: dict[queue.Key, runtimes.Runtime] = {}
        """Versions this worker serves, draining ones included."""
        self.draining: set[queue.Key] = set()
        """Versions removed from the registry: served until their stream is empty, then unloaded."""
        self.failed: dict[queue.Key, str] = {}
        self.runtimes = [name for name in runtimes.RUNTIMES if runtimes.unavailable(name) is None]
        self.changed = asyncio.Event()
        """Set when the loaded versions change, so a worker serving nothing stops waiting."""

    @property
    def serving(self) -> list[queue.Key]:
        """Versions whose heartbeat this worker sends: loaded and not draining."""
        return [k for k in self.loaded if k not in self.draining]

    async def apply(self, snapshot: Snapshot) -> None:
        """Load the versions the registry has and this worker lacks; drain the ones it no longer has."""
        wanted = {
            (name, number): version.spec
            for name, model in snapshot.items()
            if not self.models or name in self.models
            for number, version in model.versions.items()
        }
        for key in set(self.loaded) - set(wanted) - self.draining:
            log.info("%s version %d was removed: draining it", *key)
            self.draining.add(key)
        for key, spec in wanted.items():
            if key not in self.loaded and key not in self.failed:
                await self._load(key, spec)
            self.draining.discard(key)
        self.changed.set()

    async def _load(self, key: queue.Key, spec: ModelSpec) -> None:
        error = runtimes.unavailable(spec.runtime)
        if error is None:
            artifact = await self.registry.artifact(*key)
            if artifact is None:
                return  # removed meanwhile
            runtime, error = await _try_load(spec, artifact)
            if runtime is not None:
                await queue.ensure_groups(self.redis, [queue.request_stream(*key)])
                self.loaded[key] = runtime
                log.info("loaded %s version %d (%s, %s)", key[0], key[1], spec.runtime, spec.task)
        if error is not None:
            log.error("cannot load %s version %d: %s", key[0], key[1], error)
            self.failed[key] = error
        await queue.report_load(self.redis, self.consumer, key, error)

    async def unload_drained(self) -> None:
        """Unload the draining versions no entry is left for (none undelivered, none pending)."""
        if not self.draining:
            return
        stats = await queue.stats(self.redis, sorted(self.draining), 0)
        for key, numbers in stats.items():
            if numbers["lag"] == 0 and numbers["pending"] == 0:
                self.draining.discard(key)
                self.loaded.pop(key, None)
                await queue.heartbeat(self.redis, self.consumer, [key], [], alive=False)
                log.info("unloaded %s version %d", *key)

    async def validate_forever(self, redis: Redis, stop: asyncio.Event, block_ms: int) -> None:
        """Answer the API's load-checks of uploaded artifacts for the runtimes this worker has."""
        if not self.runtimes:
            return
        backoff = 0.0
        while not stop.is_set():
            try:
                await queue.ensure_groups(redis, [queue.validation_stream(r) for r in self.runtimes])
                while not stop.is_set():
                    for stream, entry_id, data in await queue.read_validations(
                        redis, self.consumer, self.runtimes, block_ms
                    ):
                        await self._validate(redis, stream, entry_id, data)
                    backoff = 0.0
            except (RedisError, OSError) as e:
                backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
                log.warning("validation: %s: %s; retrying in %.1f s", type(e).__name__, e, backoff)
                await asyncio.sleep(backoff)

    async def _validate(self, redis: Redis, stream: str, entry_id: str, data: bytes) -> None:
        try:
            validation = decode_validation(data)
        except msgspec.DecodeError as e:
            log.error("malformed validation request %s: %s", entry_id, e)
            await redis.xack(stream, queue.GROUP, entry_id)
            return
        artifact: bytes | None = await redis.get(validation.artifact_key)  # type: ignore[assignment]
        error = None
        if artifact is None:
            error = "the artifact expired before a worker could check it"
        else:
            try:
                spec = ModelSpec.model_validate_json(validation.spec)
            except ValidationError as e:
                error = f"invalid spec: {e}"
            else:
                error = (await _try_load(spec, artifact))[1]
        log.info("validation %s: %s", validation.id, error or "loads")
        await queue.answer_validation(
            redis, stream, entry_id, validation, Reply(id=validation.id, results=[], error=error)
        )


async def _try_load(spec: ModelSpec, artifact: bytes) -> tuple[runtimes.Runtime | None, str | None]:
    """Load off the event loop; whatever the artifact does wrong is a reason, never a crashed worker."""
    try:
        return await asyncio.to_thread(runtimes.load, spec, artifact), None
    except runtimes.LoadError as e:
        return None, str(e)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"
