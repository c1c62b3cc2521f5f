"""Every Redis key name, and the operations on them: enqueue, read, claim, reply, acknowledge, dead-letter,
heartbeats, registry events and artifact validation.

Requests go to one stream per model version, read by the consumer group `GROUP`. A message is acknowledged
only after its history rows are committed, so a worker that dies holding it leaves it pending, and live
workers reclaim it after the visibility timeout (XAUTOCLAIM). Answers go to one stream per API process.
A model's keys share the hash tag `{<model>}`, so a Redis Cluster keeps them in one slot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis import exceptions
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from mlapi.contract import Job, Reply, Validation, decode_job, encode

GROUP = "mlapi-workers"
FIELD = b"d"
"""The one field of a stream entry: the msgpack-encoded message."""
QUEUED_TTL_S = 24 * 3600
"""How long a queued prediction id is remembered for `GET /predictions/{id}`; removed once it is stored."""
REPLY_MAXLEN = 10_000
REPLY_TTL_S = 3600
"""A reply stream outlives its API process by this long at most."""
DEAD_LETTER_MAXLEN = 100_000
WORKERS_MEMORY_MS = 3600_000
"""Heartbeats older than this are dropped."""
ALL_WORKERS = "mlapi:workers"
"""Sorted set of every worker by its last heartbeat (ms since the epoch), whatever it serves."""
REGISTRY_EVENTS = "mlapi:registry:events"
"""Registry changes (a version added, promoted or removed); every process re-reads the registry on one."""
RATE_LIMITS = "mlapi:rate"
"""Prefix of the per-key rate limiters' windows (the `limits` library names its keys below it)."""
KEY_EVENTS = "mlapi:keys:events"
"""API keys created or revoked; every API process forgets what it cached about keys on one."""
EVENTS_MAXLEN = 1000
VALIDATION_TTL_S = 120
"""How long an uploaded artifact waits in Redis for a worker to load-check it."""

Key = tuple[str, int]
"""A model version: (model name, version number)."""


def request_stream(model: str, version: int) -> str:
    return f"mlapi:{{{model}}}:requests:{version}"


def dead_letter_stream(model: str) -> str:
    return f"mlapi:{{{model}}}:dead"


def workers_key(model: str, version: int) -> str:
    """Sorted set of the workers holding the version loaded, by their last heartbeat (ms since the epoch)."""
    return f"mlapi:{{{model}}}:workers:{version}"


def load_errors_key(model: str, version: int) -> str:
    """Hash of worker -> why it could not load the version."""
    return f"mlapi:{{{model}}}:load-errors:{version}"


def runtime_workers_key(runtime: str) -> str:
    """Sorted set of the workers able to load artifacts of a runtime, by their last heartbeat."""
    return f"mlapi:runtimes:{runtime}"


def validation_stream(runtime: str) -> str:
    return f"mlapi:validate:{runtime}"


def validation_artifact_key(validation_id: str) -> str:
    return f"mlapi:validation:{validation_id}"


def reply_stream(api_id: str) -> str:
    return f"mlapi:replies:{api_id}"


def queued_key(prediction_id: str) -> str:
    return f"mlapi:queued:{prediction_id}"


def idempotency_key(scope_sha256: str) -> str:
    """The record of one idempotency key, by the SHA-256 of (API key, route, idempotency key)."""
    return f"mlapi:idempotency:{scope_sha256}"


def connect(url: str, *, read_timeout_s: float | None = 5.0) -> Redis:
    """A client that fails fast when the server is unreachable instead of hanging, and that tries a command once
    more on a new connection when its pooled one turns out dead (after the broker restarted). A command sent
    twice is harmless here: stored rows and acknowledgements are idempotent, and replies are matched by id."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1, supported_errors=(exceptions.ConnectionError,))
    return Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=read_timeout_s, health_check_interval=30, retry=retry
    )


async def enqueue(redis: Redis, job: Job, *, track: bool, durable_ms: int | None = None) -> None:
    """Queue a job; with `track`, also remember its ids as queued, in the same round trip.

    Only ids a client may look up before they are answered need the marker: those of `wait=false`
    requests, and (through `mark_queued`) of requests that timed out. A waiting client learns its ids
    only with the answer, when the history row exists.

    With `durable_ms`, return only once the broker has written the entry to its append-only file and fsynced
    it (`WAITAOF 1 0`, in the same non-transactional pipeline, so on the same connection, whose writes it
    covers); `NotDurable` when that is not confirmed within `durable_ms`.
    """
    stream = request_stream(job.model, job.version)
    if not track and durable_ms is None:
        await redis.xadd(stream, {FIELD: encode(job)})
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(stream, {FIELD: encode(job)})
        if track:
            _mark(pipe, job)
        if durable_ms is not None:
            pipe.waitaof(1, 0, durable_ms)
        answers = await pipe.execute(raise_on_error=False)
    waited = answers.pop() if durable_ms is not None else None
    if failed := next((a for a in answers if isinstance(a, Exception)), None):
        raise failed
    if durable_ms is not None:
        _confirm(waited, durable_ms)


class Sender:
    """Queues the jobs of waiting requests: those submitted in the same turn of the event loop travel in one
    pipeline, one write and one round trip for all of them instead of one each, and one WAITAOF (which covers
    every earlier write of its connection) confirms those that want durability. Each caller learns the fate
    of its own job, as from `enqueue`."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._batch: list[tuple[Job, int | None, asyncio.Future[None]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def enqueue(self, job: Job, durable_ms: int | None = None) -> None:
        """Return once the job is on its stream (and, with `durable_ms`, on the broker's disk: else `NotDurable`);
        the connection's error when the pipeline failed, after which the job may or may not be queued."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.append((job, durable_ms, future))
        await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Job, int | None, asyncio.Future[None]]]) -> None:
        durable = [ms for _, ms, _ in batch if ms is not None]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job, _, _ in batch:
                    pipe.xadd(request_stream(job.model, job.version), {FIELD: encode(job)})
                if durable:
                    pipe.waitaof(1, 0, max(durable))
                answers = await pipe.execute(raise_on_error=False)
        except Exception as e:  # every caller gets the failure of the write its job was in
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        waited = answers.pop() if durable else None
        for (_, durable_ms, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller gave up
                continue
            try:
                if isinstance(answer, Exception):
                    raise answer
                if durable_ms is not None:
                    _confirm(waited, durable_ms)
            except RedisError as e:
                future.set_exception(e)
            else:
                future.set_result(None)


async def mark_queued(redis: Redis, job: Job) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        _mark(pipe, job)
        await pipe.execute()


def _mark(pipe: Pipeline, job: Job) -> None:
    marker = json.dumps(
        {"model": job.model, "version": job.version, "created_at": job.created_at.isoformat(), "key": job.key}
    )
    for row in job.rows:
        pipe.set(queued_key(row.id), marker, ex=QUEUED_TTL_S)


async def queued(redis: Redis, prediction_id: str) -> dict[str, Any] | None:
    """The model, version and acceptance time of a prediction still in the queue, or None."""
    marker = await redis.get(queued_key(prediction_id))
    return json.loads(marker) if marker else None


class NotDurable(RedisError):
    """The broker did not confirm that an enqueued entry reached its disk; the entry may still be served."""


def _confirm(answer: Any, durable_ms: int) -> None:
    """WAITAOF's answer: [local fsyncs, replicas]; an error when the server cannot (no AOF, before 7.2)."""
    if isinstance(answer, Exception):
        raise NotDurable(f"the broker cannot confirm the write to disk: {answer}")
    if int(answer[0]) < 1:
        raise NotDurable(f"the broker did not confirm the write to disk within {durable_ms} ms")


WAITAOF_SINCE = (7, 2)


async def durability_problem(redis: Redis) -> str | None:
    """Why this server cannot confirm enqueues with WAITAOF (it needs Redis or Valkey >= 7.2 with the
    append-only file on), or None when it can."""
    server, persistence = await redis.info("server"), await redis.info("persistence")
    version = str(server.get("redis_version", "0"))  # Valkey reports the Redis version it is compatible with
    if tuple(int(part) for part in version.split(".")[:2]) < WAITAOF_SINCE:
        name = "Valkey" if "valkey_version" in server else "Redis"
        return f"the broker is {name} {server.get('valkey_version', version)}; WAITAOF needs Redis >= 7.2 or Valkey"
    if int(persistence.get("aof_enabled", 0)) != 1:
        return "the broker runs without its append-only file (start it with --appendonly yes)"
    try:
        fsync = [_text(v or "") for v in (await redis.config_get("appendfsync")).values()]
    except ResponseError:  # CONFIG is often not allowed on managed servers; WAITAOF's timeouts would tell then
        fsync = []
    if fsync == ["no"]:
        return "the broker leaves fsyncs to the OS (appendfsync no), so WAITAOF never confirms (use everysec)"
    return None


@dataclass
class Delivery:
    """One stream entry handed to this consumer: a decoded job, or the reason it could not be decoded."""

    model: str
    version: int
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1
    job: Job | None = None
    error: str | None = None

    @property
    def key(self) -> Key:
        return self.model, self.version

    @classmethod
    def of(cls, key: Key, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Delivery:
        delivery = cls(model=key[0], version=key[1], entry_id=_text(entry_id), fields=fields)
        try:
            delivery.job = decode_job(fields[FIELD])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as e:
            delivery.error = f"malformed message: {type(e).__name__}: {e}"
            return delivery
        if (delivery.job.model, delivery.job.version) != key:
            job = delivery.job
            delivery.error = f"message for {job.model!r} version {job.version} on the stream of {key[0]!r} {key[1]}"
        return delivery


async def ensure_groups(redis: Redis, streams: Iterable[str]) -> None:
    """Create each stream and its group; from id 0, so entries queued before any worker ran are served."""
    for stream in streams:
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


async def read_new(redis: Redis, consumer: str, keys: Sequence[Key], count: int, block_ms: int) -> list[Delivery]:
    """Block until entries arrive on any version's stream; take up to `count` per stream at once."""
    by_stream = {request_stream(*k): k for k in keys}
    response = await redis.xreadgroup(GROUP, consumer, dict.fromkeys(by_stream, ">"), count=count, block=block_ms)
    return [
        Delivery.of(by_stream[_text(stream)], entry_id, fields)
        for stream, entries in stream_items(response)
        for entry_id, fields in entries
        if fields is not None
    ]


async def read_own(redis: Redis, consumer: str, keys: Sequence[Key], count: int) -> list[Delivery]:
    """Up to `count` entries already delivered to this consumer and not acknowledged, with their delivery
    counts: what a read whose reply was lost (a timeout, a paused process, a dropped connection) left
    pending here, which no other worker would reclaim before the visibility timeout. Read from the pending
    list and the stream, since XREADGROUP from 0 would count another delivery, and a lost reply is none."""
    found: list[Delivery] = []
    for key in keys:
        stream = request_stream(*key)
        held = await redis.xpending_range(stream, GROUP, "-", "+", count - len(found), consumername=consumer)
        if not held:
            continue
        async with redis.pipeline(transaction=False) as pipe:
            for entry in held:
                pipe.xrange(stream, entry["message_id"], entry["message_id"])
            ranges = await pipe.execute()
        for entry, read in zip(held, ranges, strict=True):
            for entry_id, fields in read:  # none when the entry was deleted meanwhile
                delivery = Delivery.of(key, entry_id, fields)
                delivery.deliveries = int(entry["times_delivered"])
                found.append(delivery)
        if len(found) >= count:
            break
    return found


def stream_items(response: Any) -> list[tuple[bytes, list[Any]]]:
    """XREAD replies come as a list under RESP2 and a dict under RESP3."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.items())
    return [(stream, entries) for stream, entries in response]


async def claim_stale(
    redis: Redis, consumer: str, key: Key, min_idle_ms: int, count: int, cursor: str = "0-0"
) -> tuple[str, list[Delivery]]:
    """Take over entries another consumer has held unacknowledged for `min_idle_ms`, with their delivery counts."""
    stream = request_stream(*key)
    response = await redis.xautoclaim(stream, GROUP, consumer, min_idle_ms, cursor, count=count)
    next_cursor, entries = response[0], response[1]
    claimed = [Delivery.of(key, entry_id, fields) for entry_id, fields in entries if fields]
    if claimed:
        async with redis.pipeline(transaction=False) as pipe:
            for d in claimed:
                pipe.xpending_range(stream, GROUP, min=d.entry_id, max=d.entry_id, count=1)
            for d, pending in zip(claimed, await pipe.execute(), strict=True):
                d.deliveries = int(pending[0]["times_delivered"]) if pending else 1
    return _text(next_cursor), claimed


async def renew(redis: Redis, consumer: str, deliveries: Sequence[Delivery]) -> None:
    """Reset the idle time of entries this consumer holds, without counting a delivery (XCLAIM JUSTID), so
    that no live worker reclaims them while this one waits for the database or the broker to come back."""
    by_stream: dict[str, list[Any]] = {}
    for d in deliveries:
        by_stream.setdefault(request_stream(d.model, d.version), []).append(d.entry_id)
    async with redis.pipeline(transaction=False) as pipe:
        for stream, ids in by_stream.items():
            pipe.xclaim(stream, GROUP, consumer, 0, ids, justid=True)
        await pipe.execute()


async def finish(
    redis: Redis,
    acks: Sequence[Delivery],
    replies: Sequence[tuple[str, Reply]],
    dead: Sequence[tuple[Delivery, str]] = (),
) -> None:
    """Dead-letter, answer and acknowledge in one round trip; called only after the rows are committed."""
    async with redis.pipeline(transaction=False) as pipe:
        for delivery, error in dead:
            fields: dict[bytes | str, bytes | str | int] = {
                b"error": error,
                b"version": delivery.version,
                b"entry_id": delivery.entry_id,
                b"deliveries": delivery.deliveries,
                b"failed_at": str(time.time()),
            }
            fields.update({b"raw:" + key: value for key, value in delivery.fields.items()})
            pipe.xadd(
                dead_letter_stream(delivery.model),
                fields,  # type: ignore[arg-type]
                maxlen=DEAD_LETTER_MAXLEN,
                approximate=True,
            )
        by_reply_stream: dict[str, list[Reply]] = {}
        for stream, reply in replies:
            by_reply_stream.setdefault(stream, []).append(reply)
        for stream, batch in by_reply_stream.items():  # one entry per API process, not per job
            _reply(pipe, stream, batch)
        by_stream: dict[str, list[str]] = {}
        for d in acks:
            by_stream.setdefault(request_stream(d.model, d.version), []).append(d.entry_id)
        if done := [queued_key(row.id) for d in acks if d.job for row in d.job.rows]:
            pipe.delete(*done)  # the history row answers for them now
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
        await pipe.execute()


def _reply(pipe: Pipeline, stream: str, replies: list[Reply]) -> None:
    pipe.xadd(stream, {FIELD: encode(replies)}, maxlen=REPLY_MAXLEN, approximate=True)
    pipe.expire(stream, REPLY_TTL_S)


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def trim_acknowledged(redis: Redis, key: Key) -> None:
    """Drop entries every consumer has acknowledged; pending and undelivered ones stay."""
    stream = request_stream(*key)
    async with redis.pipeline(transaction=True) as pipe:  # one consistent view of the group
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, GROUP)
        groups, pending = await pipe.execute()
    group = next((g for g in groups if _text(g["name"]) == GROUP), None)
    if group is None or group["last-delivered-id"] is None:
        return
    keep_from = _next_id(_text(group["last-delivered-id"]))
    if pending["pending"]:
        keep_from = min(keep_from, _text(pending["min"]), key=_id_key)
    await redis.xtrim(stream, minid=keep_from, approximate=True)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def heartbeat(
    redis: Redis, consumer: str, keys: Iterable[Key], runtimes: Iterable[str], alive: bool = True
) -> None:
    """Record that this worker is alive and holds these versions and runtimes (or, when not `alive`, that it
    no longer does); old entries are dropped on the way.

    Sorted sets of consumers by their last beat, rather than the group's idle times, whose meaning differs
    across Redis versions (before 7.2 an empty blocking read does not count as activity).
    """
    now_ms = int(time.time() * 1000)
    sets = [workers_key(*k) for k in keys] + [runtime_workers_key(r) for r in runtimes]
    async with redis.pipeline(transaction=False) as pipe:
        for name in [*sets, ALL_WORKERS] if alive else sets:
            if alive:
                pipe.zadd(name, {consumer: now_ms})
                pipe.zremrangebyscore(name, 0, now_ms - WORKERS_MEMORY_MS)
            else:
                pipe.zrem(name, consumer)
        await pipe.execute()


async def leave(redis: Redis, consumer: str) -> None:
    await redis.zrem(ALL_WORKERS, consumer)


async def live_workers(redis: Redis, key_name: str, max_idle_ms: int) -> list[str]:
    """Consumer names in a heartbeat set (`workers_key`, `runtime_workers_key`) that beat within `max_idle_ms`."""
    names = await redis.zrangebyscore(key_name, int(time.time() * 1000) - max_idle_ms, "+inf")
    return [_text(n) for n in names if isinstance(n, bytes | str)]


async def live_counts(redis: Redis, keys: Sequence[Key], max_idle_ms: int) -> dict[Key, int]:
    """How many live workers hold each version, in one round trip."""
    since = int(time.time() * 1000) - max_idle_ms
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.zcount(workers_key(*k), since, "+inf")
        counts = await pipe.execute()
    return {k: int(c) for k, c in zip(keys, counts, strict=True)}


async def report_load(redis: Redis, consumer: str, key: Key, error: str | None) -> None:
    """Record why this worker could not load a version, or clear it once it could."""
    if error is None:
        await redis.hdel(load_errors_key(*key), consumer)
    else:
        await redis.hset(load_errors_key(*key), consumer, error)


async def load_errors(redis: Redis, key: Key, max_idle_ms: int) -> dict[str, str]:
    """Why live workers could not load a version, by worker."""
    errors = {_text(k): _text(v) for k, v in (await redis.hgetall(load_errors_key(*key))).items()}
    live = set(await live_workers(redis, ALL_WORKERS, max_idle_ms)) if errors else set()
    return {worker: error for worker, error in errors.items() if worker in live}


# ---- registry events -------------------------------------------------------------------------------------


async def announce(redis: Redis, kind: str, model: str, version: int | None = None) -> None:
    """Tell every process the registry changed (`added`, `promoted`, `removed`)."""
    event = {"kind": kind, "model": model, "version": "" if version is None else str(version)}
    await redis.xadd(REGISTRY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]


async def announce_key(redis: Redis, kind: str, name: str) -> None:
    """Tell every API process a key was `created` or `revoked` (by name; never the key)."""
    await redis.xadd(KEY_EVENTS, {"kind": kind, "name": name}, maxlen=EVENTS_MAXLEN, approximate=True)


async def last_event_id(redis: Redis, stream: str = REGISTRY_EVENTS) -> str:
    newest: list[tuple[bytes, Any]] = await redis.xrevrange(stream, count=1)  # type: ignore[assignment]
    return _text(newest[0][0]) if newest else "0-0"


async def wait_for_events(redis: Redis, after: str, block_ms: int, stream: str = REGISTRY_EVENTS) -> tuple[str, int]:
    """Block until events newer than `after` arrive on an event stream (the registry's by default) or
    `block_ms` passes; returns the newest id seen and how many events arrived."""
    response = await redis.xread({stream: after}, count=100, block=block_ms)
    entries = [entry for _stream, items in stream_items(response) for entry in items]
    return (_text(entries[-1][0]) if entries else after), len(entries)


# ---- idempotency keys -----------------------------------------------------------------------------------


async def claim(redis: Redis, scope_sha256: str, record: bytes, ttl_s: int) -> bytes | None:
    """Store the record of an idempotency key unless one exists, in one command (SET NX GET): None when this
    request claimed it, else the first request's record."""
    existing = await redis.set(idempotency_key(scope_sha256), record, nx=True, ex=ttl_s, get=True)
    return existing if isinstance(existing, bytes) else None


async def release(redis: Redis, scope_sha256: str) -> None:
    """Forget an idempotency key whose request was refused before it was queued, so a retry is served."""
    await redis.delete(idempotency_key(scope_sha256))


# ---- artifact validation ---------------------------------------------------------------------------------


async def request_validation(redis: Redis, runtime: str, validation: Validation, artifact: bytes) -> None:
    """Hand an uploaded artifact to one worker able to load its runtime."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(validation.artifact_key, artifact, ex=VALIDATION_TTL_S)
        pipe.xadd(validation_stream(runtime), {FIELD: encode(validation)}, maxlen=EVENTS_MAXLEN, approximate=True)
        await pipe.execute()


async def read_validations(
    redis: Redis, consumer: str, runtimes: Sequence[str], block_ms: int
) -> list[tuple[str, str, bytes]]:
    """Block until validation requests arrive; returns (stream, entry id, message) for each."""
    streams = [validation_stream(r) for r in runtimes]
    response = await redis.xreadgroup(GROUP, consumer, dict.fromkeys(streams, ">"), count=1, block=block_ms)
    return [
        (_text(stream), _text(entry_id), fields[FIELD])
        for stream, entries in stream_items(response)
        for entry_id, fields in entries
        if fields and FIELD in fields
    ]


async def answer_validation(redis: Redis, stream: str, entry_id: str, validation: Validation, reply: Reply) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        _reply(pipe, validation.reply_to, [reply])
        pipe.delete(validation.artifact_key)
        pipe.xack(stream, GROUP, entry_id)
        await pipe.execute()


# ---- statistics ------------------------------------------------------------------------------------------

STATS = {
    "length": "Entries in the version's request stream (acknowledged ones until trimmed)",
    "lag": "Entries in the request stream not yet delivered to any worker",
    "pending": "Entries delivered to a worker and not yet acknowledged",
    "live_workers": "Workers holding the version loaded, with a recent heartbeat",
}


async def stats(redis: Redis, keys: Sequence[Key], liveness_ms: int) -> dict[Key, dict[str, int]]:
    """The numbers of `STATS` for each version, in one round trip; the lag is what autoscaling follows."""
    since = int(time.time() * 1000) - liveness_ms
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.xlen(request_stream(*k))
            pipe.xinfo_groups(request_stream(*k))
            pipe.zcount(workers_key(*k), since, "+inf")
        answers = await pipe.execute(raise_on_error=False)
    out = {}
    for i, k in enumerate(keys):
        length, groups, live = answers[3 * i : 3 * i + 3]
        group: dict[str, Any] = {}
        if isinstance(groups, list):  # an error instead when no stream exists yet
            group = next((g for g in groups if _text(g["name"]) == GROUP), {})
        out[k] = {
            "length": int(length) if isinstance(length, int) else 0,
            "lag": int(group.get("lag") or 0),
            "pending": int(group.get("pending") or 0),
            "live_workers": int(live) if isinstance(live, int) else 0,
        }
    return out


async def dead_letters(redis: Redis, models: Sequence[str]) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as pipe:
        for m in models:
            pipe.xlen(dead_letter_stream(m))
        counts = await pipe.execute()
    return {m: int(c) for m, c in zip(models, counts, strict=True)}


async def prune_consumers(redis: Redis, key: Key, max_idle_ms: int) -> None:
    """Forget consumers gone for long that hold nothing, so the group lists only workers that may return."""
    stream = request_stream(*key)
    for c in await redis.xinfo_consumers(stream, GROUP):
        if int(c["pending"]) == 0 and int(c["idle"]) > max_idle_ms:
            await redis.xgroup_delconsumer(stream, GROUP, _text(c["name"]))
