"""The protocol-free core of the API: inference and registry operations, with errors of its own.

HTTP (and later other protocols) only translate: routers turn requests into calls here and these errors
into their own error format (MLServer's DataPlane, `handlers/dataplane.py`, has the same shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi import queue, runtimes
from mlapi.api.access import (
    ANONYMOUS,
    Caller,
    Forbidden,
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    Keys,
    RateLimited,
    RateLimits,
    Unauthenticated,
    rows_digest,
    scope_digest,
)
from mlapi.api.dispatcher import BrokerUnavailable, PredictionTimeout, ReplyDispatcher
from mlapi.api.metrics import Metrics
from mlapi.contract import Job, Reply, Result, Row, Timings, Validation, Value
from mlapi.models.profile import Profile
from mlapi.models.spec import NAME_PATTERN, ModelSpec, SpecBody
from mlapi.settings import Settings
from mlapi.storage.registry import Conflict, Model, NotFound, RegistryRepository, Snapshot, Version, sha256
from mlapi.storage.repository import PredictionRepository

__all__ = [
    "ANONYMOUS", "BrokerUnavailable", "Caller", "Conflict", "Forbidden", "IdempotencyConflict", "IdempotencyMismatch",
    "InvalidIdempotencyKey", "NotFound", "PredictionTimeout", "RateLimited", "Unauthenticated",
]  # fmt: skip

log = logging.getLogger("mlapi.api")

LIVE_TTL_S = 1.0
"""How long this process trusts its count of each version's live workers and backlog before asking Redis again."""


class InvalidInput(Exception):
    """Rows that do not fit the spec; each error's `loc` starts with the row's index, then the feature."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid value(s)")
        self.errors = errors


class Refused(Exception):
    """A registry change refused for what was sent (name, spec, artifact); the message says why."""


class Unavailable(Exception):
    """Nothing can serve this now (no live worker for the version or the runtime); worth trying again after
    `retry_after_s`."""

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Overloaded(Unavailable):
    """The version's backlog is over the admission limit (`max_backlog`)."""


class PredictionFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.error or "prediction failed")
        self.ids = [r.id for r in reply.results]


@dataclass(frozen=True)
class Idempotent:
    """A request's idempotency key and the route it came by (keys are scoped per API key and route)."""

    route: str
    key: str


@dataclass(frozen=True)
class Inferred:
    """The answers to one request, in the order of its rows."""

    spec: ModelSpec
    created_at: datetime
    results: list[Result]
    timings: Timings | None
    job_id: str


@dataclass(frozen=True)
class Queued:
    ids: list[str]


@dataclass(frozen=True)
class VersionState:
    """A version with what the workers say of it."""

    model: Model
    version: Version
    ready: int
    load_errors: dict[str, str]


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        predictions: PredictionRepository,
        registry: RegistryRepository,
        dispatcher: ReplyDispatcher,
        metrics: Metrics,
        probe: AsyncEngine,
        keys: Keys | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.sender = queue.Sender(redis)
        self.predictions = predictions
        self.registry = registry
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.probe = probe
        """An engine without a pool, for readiness: each check is a new connection, sharing no state."""
        self.keys = keys
        """Who presented keys belong to; None with auth off."""
        self.rate_limits = rate_limits
        self.snapshot: Snapshot = {}
        self.refresh: Callable[[], Awaitable[None]] | None = None
        """Re-reads the registry at once (the app's watch); set by the app."""
        self.listeners: list[Callable[[], None]] = []
        """Called after the registry changed (the app drops its cached OpenAPI document)."""
        self._live: dict[queue.Key, int] = {}
        self._backlog: dict[queue.Key, int] = {}
        self._live_at = 0.0
        self._live_refresh: asyncio.Task[None] | None = None

    # ---- the registry as this process sees it ------------------------------------------------------------

    async def apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._live_at = 0.0
        for listener in self.listeners:
            listener()

    def model(self, name: str) -> Model:
        model = self.snapshot.get(name)
        if model is None:
            known = ", ".join(self.snapshot) or "none"
            raise NotFound(f"unknown model {name!r}; known models: {known}")
        return model

    def version(self, name: str, number: int | None = None) -> Version:
        """A version of a model, or its default version."""
        model = self.model(name)
        found = model.default if number is None else model.versions.get(number)
        if found is None:
            known = ", ".join(map(str, model.versions)) or "none"
            raise NotFound(f"model {name!r} has no version {number}; its versions: {known}")
        return found

    async def live(self, key: queue.Key, max_age_s: float = LIVE_TTL_S) -> int:
        """Live workers holding a version, from a count at most `max_age_s` old (one refresh at a time)."""
        if time.monotonic() - self._live_at > max_age_s:
            if self._live_refresh is None or self._live_refresh.done():
                self._live_refresh = asyncio.ensure_future(self._refresh_live())
            await asyncio.shield(self._live_refresh)
        return self._live.get(key, 0)

    async def _refresh_live(self) -> None:
        """Every version's live workers and backlog (lag plus pending), in one pipeline."""
        keys = [(m.name, v) for m in self.snapshot.values() for v in m.versions]
        stats = await queue.stats(self.redis, keys, self.settings.worker.liveness_ms)
        self._live = {k: s["live_workers"] for k, s in stats.items()}
        self._backlog = {k: s["lag"] + s["pending"] for k, s in stats.items()}
        self._live_at = time.monotonic()

    async def admit(self, key: queue.Key) -> None:
        """Refuse a request its version cannot serve now: no live worker, or a backlog over the limit."""
        name, number = key
        # A version a worker has just loaded is not in a count made before: count again before refusing.
        if not await self.live(key) and not await self.live(key, max_age_s=0):
            self.metrics.requests.labels(name, "unavailable").inc()
            raise Unavailable(
                f"no live worker holds {name!r} version {number}", self.settings.worker.liveness_ms / 1000
            )
        limit = self.settings.api.max_backlog
        if limit and (backlog := self._backlog.get(key, 0)) > limit:
            self.metrics.requests.labels(name, "overloaded").inc()
            raise Overloaded(f"{backlog} requests are waiting for {name!r} version {number}, over the limit of {limit}")

    async def check_database(self) -> None:
        """Raise unless PostgreSQL answers a query on a new connection (within the probe engine's timeouts)."""
        async with self.probe.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # ---- access -------------------------------------------------------------------------------------------

    async def authenticate(self, key: str | None) -> Caller:
        """The caller presenting `key` (the raw credential: `access.credential` of a header or metadata), its
        request counted against its rate limit; with auth off, the anonymous admin."""
        if self.keys is None:
            return ANONYMOUS
        try:
            caller = await self.keys.caller(key)
        except Unauthenticated:
            self.metrics.unauthenticated.inc()
            raise
        if self.rate_limits is not None:
            try:
                await self.rate_limits.hit(caller)
            except RateLimited:
                self.metrics.rate_limited.labels(caller.name or "").inc()
                raise
        return caller

    def permit(self, caller: Caller, *, model: str | None = None, admin: str | None = None) -> None:
        """Refuse (`Forbidden`) a caller using a model it is not given, or taking an admin action."""
        try:
            if model is not None:
                caller.require_model(model)
            if admin is not None:
                caller.require_admin(admin)
        except Forbidden:
            self.metrics.forbidden.labels(caller.name or "").inc()
            raise

    # ---- inference ------------------------------------------------------------------------------------------

    def validate(self, spec: ModelSpec, items: Sequence[Any]) -> list[dict[str, Value]]:
        """Each item validated against the spec; every row's errors are reported at once."""
        rows, errors = [], []
        for i, item in enumerate(items):
            try:
                rows.append(spec.validate_row(item))
            except ValidationError as e:
                errors += [{**err, "loc": (i, *err["loc"])} for err in e.errors(include_url=False)]
        if errors:
            self.metrics.requests.labels(spec.name, "invalid").inc()
            raise InvalidInput(errors)
        return rows

    async def infer(
        self,
        spec: ModelSpec,
        rows: list[dict[str, Value]],
        wait: bool,
        caller: Caller,
        idempotent: Idempotent | None = None,
    ) -> Inferred | Queued:
        """Queue validated rows for a version; with `wait`, answer them, else return their ids at once.

        With an idempotency key, the first request is served; a repeat with the same rows gets the first one's
        answer rebuilt from the history (`IdempotencyConflict` while it is in flight), one with other rows
        `IdempotencyMismatch`.
        """
        name = spec.name
        self.permit(caller, model=name)
        job = Job(
            id=uuid.uuid4().hex,
            model=name,
            version=spec.version,
            rows=[Row(id=str(uuid.uuid4()), features=f) for f in rows],
            reply_to=self.dispatcher.stream,
            created_at=datetime.now(UTC),
            key=caller.name,
        )
        claimed = None
        if idempotent is not None:
            claimed = scope_digest(caller, idempotent.route, idempotent.key)
            first = await queue.claim(self.redis, claimed, self._record(job, rows), self.settings.api.idempotency_ttl_s)
            if first is not None:
                return await self._replay(first, rows, caller)
        try:
            return await self._queue(spec, job, wait)
        except (Unavailable, BrokerUnavailable):  # refused, or perhaps never queued: a retry is served afresh
            if claimed is not None:
                with contextlib.suppress(RedisError):
                    await queue.release(self.redis, claimed)
            raise

    @staticmethod
    def _record(job: Job, rows: list[dict[str, Value]]) -> bytes:
        ids = [r.id for r in job.rows]
        record = {"rows": rows_digest(rows), "model": job.model, "version": job.version, "ids": ids, "job": job.id}
        return orjson.dumps(record)

    async def _replay(self, record: bytes, rows: list[dict[str, Value]], caller: Caller) -> Inferred:
        """The answer to the first request made with an idempotency key, from the history."""
        first = orjson.loads(record)
        ids: list[str] = first["ids"]
        if first["rows"] != rows_digest(rows):
            raise IdempotencyMismatch("this Idempotency-Key was used with other rows; use a new key for new rows")
        stored = {str(r["id"]): r for r in await self.predictions.get_many(ids, caller.name)}
        if len(stored) < len(ids):
            raise IdempotencyConflict("the first request with this Idempotency-Key is still in flight", ids)
        spec = self.version(first["model"], first["version"]).spec
        results = [_result(stored[i]) for i in ids]
        if errors := sorted({r.error for r in results if r.error}):
            raise PredictionFailed(Reply(id="", results=results, error="; ".join(errors)))
        return Inferred(spec, stored[ids[0]]["created_at"], results, None, first["job"])

    async def _queue(self, spec: ModelSpec, job: Job, wait: bool) -> Inferred | Queued:
        name = spec.name
        await self.admit((name, spec.version))
        durable = self.settings.api.durable_accept
        if not wait:
            try:
                await queue.enqueue(self.redis, job, track=True, durable_ms=self._durable_ms(durable != "off"))
            except queue.NotDurable as e:
                self.metrics.requests.labels(name, "unavailable").inc()
                raise BrokerUnavailable(f"not accepted: {e}", [r.id for r in job.rows]) from e
            except RedisError as e:  # the write may have reached the broker before the connection broke
                self.metrics.requests.labels(name, "unavailable").inc()
                ids = [r.id for r in job.rows]
                raise BrokerUnavailable(f"broker unavailable, the request may not be queued: {e}", ids) from e
            self.metrics.requests.labels(name, "queued").inc()
            return Queued([r.id for r in job.rows])
        started = time.perf_counter()
        try:
            reply = await self.dispatcher.submit(
                self.sender, job, self.settings.api.request_timeout_s, self._durable_ms(durable == "all")
            )
        except PredictionTimeout:
            self.metrics.requests.labels(name, "timeout").inc()
            with contextlib.suppress(RedisError):  # its ids are known to the client from now on
                await queue.mark_queued(self.redis, job)
            raise
        except BrokerUnavailable:
            self.metrics.requests.labels(name, "unavailable").inc()
            raise
        if reply.error is not None:
            self.metrics.requests.labels(name, "failed").inc()
            raise PredictionFailed(reply)
        self.metrics.answered(name, time.perf_counter() - started, reply)
        return Inferred(spec, job.created_at, reply.results, reply.timings, job.id)

    def _durable_ms(self, durable: bool) -> int | None:
        return self.settings.api.durable_timeout_ms if durable else None

    # ---- registry operations ----------------------------------------------------------------------------

    async def state(self, name: str, number: int) -> VersionState:
        model, version = self.model(name), self.version(name, number)
        key = (name, number)
        ready = (await queue.live_counts(self.redis, [key], self.settings.worker.liveness_ms))[key]
        errors = await queue.load_errors(self.redis, key, self.settings.worker.liveness_ms)
        return VersionState(model, version, ready, errors)

    async def add_version(
        self, name: str, spec_json: str | bytes, artifact: bytes, *, promote: bool, profile_json: str | None = None
    ) -> Version:
        """Check, have a worker load-check, then store a new version (with the reference profile of its training
        data, where given); refused without storing anything."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise Refused(f"invalid model name {name!r}: lower-case letters, digits and '-', at most 63")
        try:
            body = SpecBody.model_validate_json(spec_json)
        except ValidationError as e:
            raise Refused(f"invalid spec: {_describe(e)}") from None
        profile = _profile(body, profile_json)
        if reason := runtimes.check_format(body.runtime, artifact):
            raise Refused(reason)
        digest = sha256(artifact)
        for number, existing in (m.versions if (m := self.snapshot.get(name)) else {}).items():
            if existing.sha256 == digest:
                raise Conflict(f"version {number} of {name!r} has the same artifact (sha256 {digest[:12]}…)")
        try:
            spec = ModelSpec(**body.model_dump(), name=name, version=await self.registry.next_version(name))
            spec.sample_type  # noqa: B018 - a spec whose request schema cannot be built is refused here
        except (ValidationError, TypeError, ValueError) as e:
            raise Refused(f"invalid spec: {e}") from None
        await self._load_check(spec, artifact)
        stored = await self.registry.add_version(name, body, artifact, promote=promote, profile=profile)
        await self._changed("added", name, stored.version)
        return self.version(name, stored.version)

    async def _load_check(self, spec: ModelSpec, artifact: bytes) -> None:
        """A live worker able to run the runtime loads the artifact; its reason for refusing is the user's."""
        runtime = spec.runtime
        live = await queue.live_workers(
            self.redis, queue.runtime_workers_key(runtime), self.settings.worker.liveness_ms
        )
        if not live:
            raise Unavailable(f"no live worker can load {runtime!r} models, so the artifact cannot be checked")
        check_id = uuid.uuid4().hex
        validation = Validation(
            id=check_id,
            spec=spec.model_dump_json().encode(),
            artifact_key=queue.validation_artifact_key(check_id),
            reply_to=self.dispatcher.stream,
        )
        send = queue.request_validation(self.redis, runtime, validation, artifact)
        try:
            reply = await self.dispatcher.call(check_id, send, self.settings.api.validation_timeout_s, [])
        except PredictionTimeout:
            raise Unavailable(
                f"no worker checked the artifact within {self.settings.api.validation_timeout_s:g} s"
            ) from None
        if reply.error is not None:
            raise Refused(f"a worker could not load the artifact: {reply.error}")

    async def promote(self, name: str, number: int) -> Model:
        await self.registry.promote(name, number)
        await self._changed("promoted", name, number)
        return self.model(name)

    async def remove_version(self, name: str, number: int) -> None:
        model = self.model(name)
        self.version(name, number)
        if model.default_version == number:
            raise Conflict(f"version {number} is the default of {name!r}: promote another version first")
        await self._refuse_if_queued(name, [number])
        await self.registry.remove_version(name, number)
        await self._changed("removed", name, number)

    async def remove_model(self, name: str) -> None:
        await self._refuse_if_queued(name, list(self.model(name).versions))
        await self.registry.remove_model(name)
        await self._changed("removed", name, None)

    async def _refuse_if_queued(self, name: str, numbers: list[int]) -> None:
        stats = await queue.stats(self.redis, [(name, n) for n in numbers], self.settings.worker.liveness_ms)
        for (_, number), s in stats.items():
            if waiting := s["lag"] + s["pending"]:
                raise Conflict(f"{waiting} request(s) are queued for {name!r} version {number}; try again later")

    async def _changed(self, kind: str, name: str, number: int | None) -> None:
        """Announce a registry change to every process, and see it here at once."""
        try:
            await queue.announce(self.redis, kind, name, number)
        except RedisError as e:  # stored already: other processes see it at their next periodic re-read
            log.warning("could not announce the registry change (%s %s %s): %s", kind, name, number, e)
        if self.refresh is not None:
            await self.refresh()


def _profile(body: SpecBody, profile_json: str | None) -> Profile | None:
    if profile_json is None:
        return None
    try:
        profile = Profile.model_validate_json(profile_json)
        profile.check(body)
    except ValidationError as e:
        raise Refused(f"invalid profile: {_describe(e)}") from None
    except ValueError as e:
        raise Refused(f"invalid profile: {e}") from None
    return profile


def _result(row: dict[str, Any]) -> Result:
    """A history row as the answer it was."""
    prediction = row["value"] if row["task"] == "regression" else row["prediction"]
    return Result(
        id=str(row["id"]), prediction=prediction, label=row["label"], probability=row["probability"],
        probabilities=row["probabilities"], warnings=row["warnings"], error=row["error"],
    )  # fmt: skip


def _describe(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in e.errors(include_url=False))
