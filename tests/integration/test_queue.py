"""The queue on a real Redis-compatible server: acknowledgement, reclaim, trimming, liveness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from mlapi import queue
from mlapi.contract import Job, Row, encode
from tests.conftest import entries

pytestmark = pytest.mark.integration
MODEL = "diabetes-risk"


def job(n: int) -> Job:
    return Job(
        id=f"job-{n}",
        model=MODEL,
        rows=[Row(id=f"00000000-0000-0000-0000-{n:012d}", features={"x": n})],
        reply_to=queue.reply_stream("test"),
        created_at=datetime.now(UTC),
    )


async def pending(redis: Redis) -> list[dict[str, Any]]:
    return await redis.xpending_range(queue.request_stream(MODEL), queue.GROUP, "-", "+", 1000)


async def test_jobs_queued_before_any_worker_are_served(redis: Redis) -> None:
    await queue.enqueue(redis, job(1), track=True)
    await queue.ensure_groups(redis, [MODEL])
    [delivery] = await queue.read_new(redis, "w1", [MODEL], 10, 100)
    assert delivery.job is not None and delivery.job.id == "job-1"
    marker = await queue.queued(redis, "00000000-0000-0000-0000-000000000001")
    assert marker is not None and marker["model"] == MODEL


async def test_only_tracked_jobs_leave_a_queued_marker(redis: Redis) -> None:
    waited = job(2)
    await queue.enqueue(redis, waited, track=False)
    assert await queue.queued(redis, waited.rows[0].id) is None
    await queue.mark_queued(redis, waited)  # it timed out: the client now knows its id
    marker = await queue.queued(redis, waited.rows[0].id)
    assert marker is not None and marker["created_at"] == waited.created_at.isoformat()


async def test_a_read_entry_stays_pending_until_acknowledged(redis: Redis) -> None:
    await queue.ensure_groups(redis, [MODEL])
    for n in range(3):
        await queue.enqueue(redis, job(n), track=False)
    deliveries = await queue.read_new(redis, "w1", [MODEL], 10, 100)
    assert [d.job.id for d in deliveries if d.job] == ["job-0", "job-1", "job-2"]
    assert len(await pending(redis)) == 3
    await queue.finish(redis, deliveries[:2], [])
    [left] = await pending(redis)
    assert left["message_id"].decode() == deliveries[2].entry_id
    assert await queue.read_new(redis, "w2", [MODEL], 10, 50) == []  # not handed out twice


async def test_entries_of_a_dead_consumer_are_reclaimed_with_their_count(redis: Redis) -> None:
    await queue.ensure_groups(redis, [MODEL])
    await queue.enqueue(redis, job(7), track=False)
    [held] = await queue.read_new(redis, "dead", [MODEL], 10, 100)
    _, early = await queue.claim_stale(redis, "live", MODEL, min_idle_ms=10_000, count=10)
    assert early == []  # not idle long enough yet
    await asyncio.sleep(0.15)
    _, [claimed] = await queue.claim_stale(redis, "live", MODEL, min_idle_ms=100, count=10)
    assert claimed.entry_id == held.entry_id and claimed.job == held.job
    assert claimed.deliveries == 2
    [entry] = await pending(redis)
    assert entry["consumer"] == b"live"


async def test_dead_letters_replies_and_acks_go_together(redis: Redis) -> None:
    await queue.ensure_groups(redis, [MODEL])
    await redis.xadd(queue.request_stream(MODEL), {b"junk": b"\x00"})
    [bad] = await queue.read_new(redis, "w1", [MODEL], 10, 100)
    assert bad.error is not None and bad.job is None
    await queue.finish(redis, [bad], [], [(bad, bad.error)])
    assert await pending(redis) == []
    [(_, fields)] = await entries(redis, queue.dead_letter_stream(MODEL))
    assert fields[b"error"].decode() == bad.error
    assert fields[b"raw:junk"] == b"\x00" and fields[b"entry_id"].decode() == bad.entry_id


async def test_trimming_keeps_pending_and_undelivered_entries(redis: Redis) -> None:
    stream = queue.request_stream(MODEL)
    await queue.ensure_groups(redis, [MODEL])
    await redis.config_set("stream-node-max-entries", 2)
    try:
        for n in range(6):
            await queue.enqueue(redis, job(n), track=False)
        delivered = await queue.read_new(redis, "w1", [MODEL], 4, 100)  # 0-3 delivered, 4-5 not yet
        await queue.finish(redis, [delivered[0], delivered[1], delivered[3]], [])  # 2 stays pending
        await queue.trim_acknowledged(redis, MODEL)
        remaining = [entry_id.decode() for entry_id, _ in await entries(redis, stream)]
        assert delivered[0].entry_id not in remaining and delivered[1].entry_id not in remaining
        assert delivered[2].entry_id in remaining
        assert len([e for e in remaining if e > delivered[3].entry_id]) == 2
    finally:
        await redis.config_set("stream-node-max-entries", 100)


async def test_live_workers_are_those_with_a_recent_heartbeat(redis: Redis) -> None:
    assert len(await queue.live_workers(redis, MODEL, 1000)) == 0
    await queue.heartbeat(redis, "w1", [MODEL, "iris"])
    await queue.heartbeat(redis, "w2", [MODEL])
    assert len(await queue.live_workers(redis, MODEL, 1000)) == 2
    assert len(await queue.live_workers(redis, "iris", 1000)) == 1
    await asyncio.sleep(0.2)
    assert len(await queue.live_workers(redis, MODEL, 100)) == 0  # silent for longer than allowed
    await queue.heartbeat(redis, "w1", [MODEL])
    await queue.heartbeat(redis, "w2", [MODEL], alive=False)  # a clean exit
    assert await queue.live_workers(redis, MODEL, 100) == ["w1"]


async def test_consumers_gone_for_long_and_holding_nothing_are_pruned(redis: Redis) -> None:
    await queue.ensure_groups(redis, [MODEL])
    await queue.enqueue(redis, job(1), track=False)
    await queue.read_new(redis, "holds", [MODEL], 1, 10)
    await queue.read_new(redis, "empty", [MODEL], 1, 10)
    await asyncio.sleep(0.15)
    await queue.prune_consumers(redis, MODEL, 100)
    names = [c["name"] for c in await redis.xinfo_consumers(queue.request_stream(MODEL), queue.GROUP)]
    assert names == [b"holds"]  # its entry must stay claimable


async def test_malformed_wire_bytes_are_reported_not_raised(redis: Redis) -> None:
    await queue.ensure_groups(redis, [MODEL])
    await redis.xadd(queue.request_stream(MODEL), {queue.FIELD: encode(job(1))[:-3]})
    [d] = await queue.read_new(redis, "w1", [MODEL], 10, 100)
    assert d.job is None and d.error is not None and d.error.startswith("malformed message")
