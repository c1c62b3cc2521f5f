"""Every Redis key name, and the operations on them: enqueue, read, claim, reply, acknowledge, dead-letter.

Requests go to one stream per model, read by the consumer group `GROUP`. A message is acknowledged only
after its history rows are committed, so a worker that dies holding it leaves it pending, and live
workers reclaim it after the visibility timeout (XAUTOCLAIM). Answers go to one stream per API process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from mlapi.contract import Job, Reply, decode_job, encode

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


def request_stream(model: str) -> str:
    return f"mlapi:requests:{model}"


def dead_letter_stream(model: str) -> str:
    return f"mlapi:dead:{model}"


def reply_stream(api_id: str) -> str:
    return f"mlapi:replies:{api_id}"


def workers_key(model: str) -> str:
    """Sorted set of the model's workers by the time of their last heartbeat (ms since the epoch)."""
    return f"mlapi:workers:{model}"


def queued_key(prediction_id: str) -> str:
    return f"mlapi:queued:{prediction_id}"


def connect(url: str, *, read_timeout_s: float | None = 5.0) -> Redis:
    """A client that fails fast when the server is unreachable instead of hanging."""
    return Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=read_timeout_s, health_check_interval=30)


async def enqueue(redis: Redis, job: Job, *, track: bool) -> None:
    """Queue a job; with `track`, also remember its ids as queued, in the same round trip.

    Only ids a client may look up before they are answered need the marker: those of `wait=false`
    requests, and (through `mark_queued`) of requests that timed out. A waiting client learns its ids
    only with the answer, when the history row exists.
    """
    if not track:
        await redis.xadd(request_stream(job.model), {FIELD: encode(job)})
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(request_stream(job.model), {FIELD: encode(job)})
        _mark(pipe, job)
        await pipe.execute()


async def mark_queued(redis: Redis, job: Job) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        _mark(pipe, job)
        await pipe.execute()


def _mark(pipe: Pipeline, job: Job) -> None:
    marker = json.dumps({"model": job.model, "created_at": job.created_at.isoformat()})
    for row in job.rows:
        pipe.set(queued_key(row.id), marker, ex=QUEUED_TTL_S)


async def queued(redis: Redis, prediction_id: str) -> dict[str, str] | None:
    """The model and acceptance time of a prediction still in the queue, or None."""
    marker = await redis.get(queued_key(prediction_id))
    return json.loads(marker) if marker else None


@dataclass
class Delivery:
    """One stream entry handed to this consumer: a decoded job, or the reason it could not be decoded."""

    model: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1
    job: Job | None = None
    error: str | None = None

    @classmethod
    def of(cls, model: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Delivery:
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        delivery = cls(model=model, entry_id=entry, fields=fields)
        try:
            delivery.job = decode_job(fields[FIELD])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError) as e:
            delivery.error = f"malformed message: {type(e).__name__}: {e}"
            return delivery
        if delivery.job.model != model:
            delivery.error = f"message for model {delivery.job.model!r} on the stream of {model!r}"
        return delivery


async def ensure_groups(redis: Redis, models: Iterable[str]) -> None:
    """Create each model's stream and group; from id 0, so jobs queued before any worker ran are served."""
    for model in models:
        try:
            await redis.xgroup_create(request_stream(model), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


async def read_new(redis: Redis, consumer: str, models: Sequence[str], count: int, block_ms: int) -> list[Delivery]:
    """Block until entries arrive on any model's stream; take up to `count` per stream at once."""
    response = await redis.xreadgroup(
        GROUP, consumer, {request_stream(m): ">" for m in models}, count=count, block=block_ms
    )
    by_stream = {request_stream(m): m for m in models}
    return [
        Delivery.of(by_stream[stream.decode()], entry_id, fields)
        for stream, entries in stream_items(response)
        for entry_id, fields in entries
        if fields is not None
    ]


def stream_items(response: Any) -> list[tuple[bytes, list[Any]]]:
    """XREAD replies come as a list under RESP2 and a dict under RESP3."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.items())
    return [(stream, entries) for stream, entries in response]


async def claim_stale(
    redis: Redis, consumer: str, model: str, min_idle_ms: int, count: int, cursor: str = "0-0"
) -> tuple[str, list[Delivery]]:
    """Take over entries another consumer has held unacknowledged for `min_idle_ms`, with their delivery counts."""
    stream = request_stream(model)
    response = await redis.xautoclaim(stream, GROUP, consumer, min_idle_ms, cursor, count=count)
    next_cursor, entries = response[0], response[1]
    claimed = [Delivery.of(model, entry_id, fields) for entry_id, fields in entries if fields]
    if claimed:
        async with redis.pipeline(transaction=False) as pipe:
            for d in claimed:
                pipe.xpending_range(stream, GROUP, min=d.entry_id, max=d.entry_id, count=1)
            for d, pending in zip(claimed, await pipe.execute(), strict=True):
                d.deliveries = int(pending[0]["times_delivered"]) if pending else 1
    cursor_text = next_cursor.decode() if isinstance(next_cursor, bytes) else str(next_cursor)
    return cursor_text, claimed


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
            pipe.xadd(stream, {FIELD: encode(batch)}, maxlen=REPLY_MAXLEN, approximate=True)
            pipe.expire(stream, REPLY_TTL_S)
        by_stream: dict[str, list[str]] = {}
        for d in acks:
            by_stream.setdefault(request_stream(d.model), []).append(d.entry_id)
        if done := [queued_key(row.id) for d in acks if d.job for row in d.job.rows]:
            pipe.delete(*done)  # the history row answers for them now
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
        await pipe.execute()


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def trim_acknowledged(redis: Redis, model: str) -> None:
    """Drop entries every consumer has acknowledged; pending and undelivered ones stay."""
    stream = request_stream(model)
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


async def heartbeat(redis: Redis, consumer: str, models: Iterable[str], alive: bool = True) -> None:
    """Record that this worker is alive (or, on a clean exit, gone); old entries are dropped on the way.

    A sorted set of consumers by their last beat, rather than the group's idle times, whose meaning
    differs across Redis versions (before 7.2 an empty blocking read does not count as activity).
    """
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for model in models:
            if alive:
                pipe.zadd(workers_key(model), {consumer: now_ms})
                pipe.zremrangebyscore(workers_key(model), 0, now_ms - WORKERS_MEMORY_MS)
            else:
                pipe.zrem(workers_key(model), consumer)
        await pipe.execute()


async def live_workers(redis: Redis, model: str, max_idle_ms: int) -> list[str]:
    """Consumer names of the model's workers that beat within `max_idle_ms`."""
    names = await redis.zrangebyscore(workers_key(model), int(time.time() * 1000) - max_idle_ms, "+inf")
    return [_text(n) for n in names if isinstance(n, bytes | str)]


STATS = {
    "length": "Entries in the model's request stream (acknowledged ones until trimmed)",
    "lag": "Entries in the request stream not yet delivered to any worker",
    "pending": "Entries delivered to a worker and not yet acknowledged",
    "dead_letters": "Entries in the model's dead-letter stream",
    "live_workers": "Workers of the model with a recent heartbeat",
}


async def stats(redis: Redis, model: str, liveness_ms: int) -> dict[str, int]:
    """The numbers of `STATS` for one model, in one round trip; the lag is what autoscaling follows."""
    stream = request_stream(model)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xlen(dead_letter_stream(model))
        pipe.zcount(workers_key(model), int(time.time() * 1000) - liveness_ms, "+inf")
        length, groups, dead, live = await pipe.execute(raise_on_error=False)
    group: dict[str, Any] = {}
    if isinstance(groups, list):  # an error instead when no stream exists yet
        group = next((g for g in groups if _text(g["name"]) == GROUP), {})
    return {
        "length": int(length),
        "lag": int(group.get("lag") or 0),
        "pending": int(group.get("pending") or 0),
        "dead_letters": int(dead),
        "live_workers": int(live),
    }


async def prune_consumers(redis: Redis, model: str, max_idle_ms: int) -> None:
    """Forget consumers gone for long that hold nothing, so the group lists only workers that may return."""
    for c in await redis.xinfo_consumers(request_stream(model), GROUP):
        if int(c["pending"]) == 0 and int(c["idle"]) > max_idle_ms:
            await redis.xgroup_delconsumer(request_stream(model), GROUP, _text(c["name"]))
