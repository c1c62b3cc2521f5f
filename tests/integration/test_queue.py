"""The queue on a real Redis-compatible server: one stream per model version, acknowledgement, reclaim,
trimming, liveness, registry events and artifact validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mlapi import queue
from mlapi.contract import Reply, Validation, decode_replies, decode_validation, encode
from tests.conftest import entries, job

pytestmark = pytest.mark.integration
MODEL = "diabetes-risk"
KEY: queue.Key = (MODEL, 1)
V2: queue.Key = (MODEL, 2)


async def pending(redis: Redis, key: queue.Key = KEY) -> list[dict[str, Any]]:
    return await redis.xpending_range(queue.request_stream(*key), queue.GROUP, "-", "+", 1000)


def test_a_models_keys_share_one_hash_tag() -> None:
    """So that a Redis Cluster keeps every key of a model in one slot."""
    names = [
        queue.request_stream(*KEY),
        queue.request_stream(*V2),
        queue.dead_letter_stream(MODEL),
        queue.workers_key(*KEY),
        queue.load_errors_key(*KEY),
    ]
    assert all(name.startswith("mlapi:{diabetes-risk}:") for name in names)
    assert len(set(names)) == len(names)
    assert queue.request_stream(*KEY) == "mlapi:{diabetes-risk}:requests:1"


async def test_jobs_queued_before_any_worker_are_served(redis: Redis) -> None:
    await queue.enqueue(redis, job(1), track=True)
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    [delivery] = await queue.read_new(redis, "w1", [KEY], 10, 100)
    assert delivery.job is not None and delivery.job.id == "job-1"
    assert delivery.key == KEY
    marker = await queue.queued(redis, "00000000-0000-0000-0000-000000000001")
    assert marker is not None and marker["model"] == MODEL and marker["version"] == 1


async def test_each_version_has_its_own_stream(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY), queue.request_stream(*V2)])
    await queue.enqueue(redis, job(1, KEY), track=False)
    await queue.enqueue(redis, job(2, V2), track=False)
    assert len(await entries(redis, queue.request_stream(*KEY))) == 1
    assert len(await entries(redis, queue.request_stream(*V2))) == 1
    [only_v2] = await queue.read_new(redis, "w2", [V2], 10, 100)  # a worker holding only v2 sees only v2
    assert only_v2.key == V2 and only_v2.job is not None and only_v2.job.id == "job-2"
    [v1] = await queue.read_new(redis, "w1", [KEY, V2], 10, 100)
    assert v1.key == KEY and v1.job is not None and v1.job.id == "job-1"


async def test_jobs_sent_together_land_in_order_and_each_caller_learns_its_own_fate(redis: Redis) -> None:
    """The jobs of one turn of the event loop travel in one pipeline; a job whose write fails fails alone."""
    sender = queue.Sender(redis)
    await redis.set(queue.request_stream("broken", 1), "not a stream")  # XADD on it answers WRONGTYPE
    sent = await asyncio.gather(
        sender.enqueue(job(1, KEY)),
        sender.enqueue(job(2, V2)),
        sender.enqueue(job(3, ("broken", 1))),
        sender.enqueue(job(4, KEY)),
        return_exceptions=True,
    )
    assert sent[0] is None and sent[1] is None and sent[3] is None
    assert isinstance(sent[2], ResponseError) and "WRONGTYPE" in str(sent[2])
    await queue.ensure_groups(redis, [queue.request_stream(*KEY), queue.request_stream(*V2)])
    first, second = await queue.read_new(redis, "w1", [KEY], 10, 100)
    assert [d.job.id for d in (first, second) if d.job] == ["job-1", "job-4"]
    [other] = await queue.read_new(redis, "w1", [V2], 10, 100)
    assert other.job is not None and other.job.id == "job-2"


async def test_a_durable_send_is_refused_by_a_broker_that_cannot_confirm_it(redis: Redis) -> None:
    """Without the append-only file WAITAOF cannot confirm: the durable caller hears so, its batch-mate not."""
    sender = queue.Sender(redis)
    await redis.config_set("appendonly", "no")
    try:
        durable, plain = await asyncio.gather(
            sender.enqueue(job(1), durable_ms=100), sender.enqueue(job(2)), return_exceptions=True
        )
    finally:
        await redis.config_set("appendonly", "yes")
    assert isinstance(durable, queue.NotDurable) and plain is None
    await asyncio.gather(sender.enqueue(job(3), durable_ms=5000), sender.enqueue(job(4)))
    assert len(await entries(redis, queue.request_stream(*KEY))) == 4


async def test_a_read_takes_from_every_version_at_once(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY), queue.request_stream(*V2)])
    for n in range(3):
        await queue.enqueue(redis, job(n, KEY), track=False)
        await queue.enqueue(redis, job(10 + n, V2), track=False)
    deliveries = await queue.read_new(redis, "w1", [KEY, V2], 2, 100)  # `count` is per stream
    assert sorted((d.key, d.job.id if d.job else "") for d in deliveries) == [
        (KEY, "job-0"), (KEY, "job-1"), (V2, "job-10"), (V2, "job-11"),
    ]  # fmt: skip


async def test_a_job_on_another_versions_stream_is_reported(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await redis.xadd(queue.request_stream(*KEY), {queue.FIELD: encode(job(1, V2))})
    [d] = await queue.read_new(redis, "w1", [KEY], 10, 100)
    assert d.error == "message for 'diabetes-risk' version 2 on the stream of 'diabetes-risk' 1"


async def test_only_tracked_jobs_leave_a_queued_marker(redis: Redis) -> None:
    waited = job(2)
    await queue.enqueue(redis, waited, track=False)
    assert await queue.queued(redis, waited.rows[0].id) is None
    await queue.mark_queued(redis, waited)  # it timed out: the client now knows its id
    marker = await queue.queued(redis, waited.rows[0].id)
    assert marker is not None and marker["created_at"] == waited.created_at.isoformat()


async def test_a_read_entry_stays_pending_until_acknowledged(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    for n in range(3):
        await queue.enqueue(redis, job(n), track=True)
    deliveries = await queue.read_new(redis, "w1", [KEY], 10, 100)
    assert [d.job.id for d in deliveries if d.job] == ["job-0", "job-1", "job-2"]
    assert len(await pending(redis)) == 3
    await queue.finish(redis, deliveries[:2], [])
    [left] = await pending(redis)
    assert left["message_id"].decode() == deliveries[2].entry_id
    assert await queue.read_new(redis, "w2", [KEY], 10, 50) == []  # not handed out twice
    assert await queue.queued(redis, job(0).rows[0].id) is None  # acknowledged: the history row answers
    assert await queue.queued(redis, job(2).rows[0].id) is not None


async def test_a_consumer_reads_back_what_it_was_delivered_and_did_not_acknowledge(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY), queue.request_stream(*V2)])
    for n, key in [(1, KEY), (2, V2), (3, KEY)]:
        await queue.enqueue(redis, job(n, key), track=False)
    lost = await queue.read_new(redis, "w1", [KEY, V2], 10, 100)  # a reply its reader never saw
    assert await queue.read_own(redis, "w2", [KEY, V2], 10) == []  # only one's own
    again = await queue.read_own(redis, "w1", [KEY, V2], 10)
    assert sorted((d.key, d.entry_id, d.deliveries) for d in again) == sorted((d.key, d.entry_id, 1) for d in lost)
    await queue.finish(redis, again[:2], [])
    assert [d.entry_id for d in await queue.read_own(redis, "w1", [KEY, V2], 10)] == [again[2].entry_id]


async def test_acknowledgements_go_to_each_versions_stream(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY), queue.request_stream(*V2)])
    await queue.enqueue(redis, job(1, KEY), track=False)
    await queue.enqueue(redis, job(2, V2), track=False)
    deliveries = await queue.read_new(redis, "w1", [KEY, V2], 10, 100)
    await queue.finish(redis, deliveries, [])
    assert await pending(redis, KEY) == [] and await pending(redis, V2) == []


async def test_entries_of_a_dead_consumer_are_reclaimed_with_their_count(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await queue.enqueue(redis, job(7), track=False)
    [held] = await queue.read_new(redis, "dead", [KEY], 10, 100)
    _, early = await queue.claim_stale(redis, "live", KEY, min_idle_ms=10_000, count=10)
    assert early == []  # not idle long enough yet
    await asyncio.sleep(0.15)  # the idle time itself is what is tested
    _, [claimed] = await queue.claim_stale(redis, "live", KEY, min_idle_ms=100, count=10)
    assert claimed.entry_id == held.entry_id and claimed.job == held.job and claimed.key == KEY
    assert claimed.deliveries == 2
    [entry] = await pending(redis)
    assert entry["consumer"] == b"live"


async def test_dead_letters_replies_and_acks_go_together(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*V2)])
    await redis.xadd(queue.request_stream(*V2), {b"junk": b"\x00"})
    [bad] = await queue.read_new(redis, "w1", [V2], 10, 100)
    assert bad.error is not None and bad.job is None
    reply = Reply(id="job-x", results=[], error=bad.error)
    await queue.finish(redis, [bad], [(queue.reply_stream("test"), reply)], [(bad, bad.error)])
    assert await pending(redis, V2) == []
    [(_, fields)] = await entries(redis, queue.dead_letter_stream(MODEL))
    assert fields[b"error"].decode() == bad.error and fields[b"version"] == b"2"
    assert fields[b"raw:junk"] == b"\x00" and fields[b"entry_id"].decode() == bad.entry_id
    [(_, answer)] = await entries(redis, queue.reply_stream("test"))
    assert decode_replies(answer[queue.FIELD]) == [reply]
    assert await queue.dead_letters(redis, [MODEL, "iris"]) == {MODEL: 1, "iris": 0}


async def test_trimming_keeps_pending_and_undelivered_entries(redis: Redis) -> None:
    stream = queue.request_stream(*KEY)
    await queue.ensure_groups(redis, [stream])
    await redis.config_set("stream-node-max-entries", 2)
    try:
        for n in range(6):
            await queue.enqueue(redis, job(n), track=False)
        delivered = await queue.read_new(redis, "w1", [KEY], 4, 100)  # 0-3 delivered, 4-5 not yet
        await queue.finish(redis, [delivered[0], delivered[1], delivered[3]], [])  # 2 stays pending
        await queue.trim_acknowledged(redis, KEY)
        remaining = [entry_id.decode() for entry_id, _ in await entries(redis, stream)]
        assert delivered[0].entry_id not in remaining and delivered[1].entry_id not in remaining
        assert delivered[2].entry_id in remaining
        assert len([e for e in remaining if e > delivered[3].entry_id]) == 2
    finally:
        await redis.config_set("stream-node-max-entries", 100)


async def test_trimming_a_version_without_a_stream_does_nothing(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*V2)])
    await queue.trim_acknowledged(redis, V2)  # a group that never delivered anything
    assert await entries(redis, queue.request_stream(*V2)) == []


async def test_live_workers_are_those_with_a_recent_heartbeat(redis: Redis) -> None:
    v1, v2 = queue.workers_key(*KEY), queue.workers_key(*V2)
    assert await queue.live_workers(redis, v1, 1000) == []
    await queue.heartbeat(redis, "w1", [KEY, V2], ["sklearn"])
    await queue.heartbeat(redis, "w2", [KEY], [])
    assert sorted(await queue.live_workers(redis, v1, 1000)) == ["w1", "w2"]
    assert await queue.live_workers(redis, v2, 1000) == ["w1"]
    assert await queue.live_workers(redis, queue.runtime_workers_key("sklearn"), 1000) == ["w1"]
    assert sorted(await queue.live_workers(redis, queue.ALL_WORKERS, 1000)) == ["w1", "w2"]
    assert await queue.live_counts(redis, [KEY, V2, ("iris", 1)], 1000) == {KEY: 2, V2: 1, ("iris", 1): 0}
    await asyncio.sleep(0.2)  # silence is what is tested
    assert await queue.live_workers(redis, v1, 100) == []  # silent for longer than allowed
    await queue.heartbeat(redis, "w1", [KEY], [])
    await queue.heartbeat(redis, "w2", [KEY], [], alive=False)  # a clean exit, or a version unloaded
    assert await queue.live_workers(redis, v1, 100) == ["w1"]
    await queue.heartbeat(redis, "w1", [V2], ["sklearn"], alive=False)
    assert await queue.live_workers(redis, v2, 1000) == []
    assert await queue.live_workers(redis, queue.runtime_workers_key("sklearn"), 1000) == []
    assert "w1" in await queue.live_workers(redis, queue.ALL_WORKERS, 1000)  # still alive, serving v1
    await queue.leave(redis, "w1")
    assert "w1" not in await queue.live_workers(redis, queue.ALL_WORKERS, 1000)


async def test_stats_by_version(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    for n in range(3):
        await queue.enqueue(redis, job(n), track=False)
    await queue.read_new(redis, "w1", [KEY], 1, 100)
    await queue.heartbeat(redis, "w1", [KEY], [])
    stats = await queue.stats(redis, [KEY, V2], 1000)
    assert stats[KEY] == {"length": 3, "lag": 2, "pending": 1, "live_workers": 1}
    assert stats[V2] == {"length": 0, "lag": 0, "pending": 0, "live_workers": 0}  # no stream yet
    assert set(stats[KEY]) == set(queue.STATS)


async def test_load_errors_are_reported_by_live_workers_only(redis: Redis) -> None:
    await queue.heartbeat(redis, "w1", [], ["sklearn"])
    await queue.report_load(redis, "w1", V2, "untrusted type x")
    await queue.report_load(redis, "gone", V2, "old reason")  # a worker that never beat, or long dead
    assert await queue.load_errors(redis, V2, 1000) == {"w1": "untrusted type x"}
    await queue.report_load(redis, "w1", V2, None)  # it could load the version after all
    assert await queue.load_errors(redis, V2, 1000) == {}


async def test_consumers_gone_for_long_and_holding_nothing_are_pruned(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await queue.enqueue(redis, job(1), track=False)
    await queue.read_new(redis, "holds", [KEY], 1, 10)
    await queue.read_new(redis, "empty", [KEY], 1, 10)
    await asyncio.sleep(0.15)  # the idle time itself is what is tested
    await queue.prune_consumers(redis, KEY, 100)
    names = [c["name"] for c in await redis.xinfo_consumers(queue.request_stream(*KEY), queue.GROUP)]
    assert names == [b"holds"]  # its entry must stay claimable


async def test_malformed_wire_bytes_are_reported_not_raised(redis: Redis) -> None:
    await queue.ensure_groups(redis, [queue.request_stream(*KEY)])
    await redis.xadd(queue.request_stream(*KEY), {queue.FIELD: encode(job(1))[:-3]})
    [d] = await queue.read_new(redis, "w1", [KEY], 10, 100)
    assert d.job is None and d.error is not None and d.error.startswith("malformed message")


async def test_registry_events_wake_a_blocked_reader(redis: Redis) -> None:
    after = await queue.last_event_id(redis)
    assert after == "0-0"  # an empty server
    assert await queue.wait_for_events(redis, after, 10) == (after, 0)
    reader = asyncio.create_task(queue.wait_for_events(redis, after, 5000))  # wakes on the event, or finds it
    await queue.announce(redis, "added", "churn", 2)
    newest, count = await asyncio.wait_for(reader, 2)
    assert count == 1 and newest == await queue.last_event_id(redis)
    [(_, event)] = await entries(redis, queue.REGISTRY_EVENTS)
    assert event == {b"kind": b"added", b"model": b"churn", b"version": b"2"}
    await queue.announce(redis, "removed", "churn")
    await queue.announce(redis, "promoted", "iris", 3)
    assert await queue.wait_for_events(redis, newest, 10) == (await queue.last_event_id(redis), 2)


async def test_a_validation_is_read_by_one_worker_and_answered(redis: Redis) -> None:
    validation = Validation(
        id="v1", spec=b"{}", artifact_key=queue.validation_artifact_key("v1"), reply_to=queue.reply_stream("api")
    )
    await queue.ensure_groups(redis, [queue.validation_stream("sklearn")])
    await queue.request_validation(redis, "sklearn", validation, b"PK artifact")
    assert await redis.get(validation.artifact_key) == b"PK artifact"
    assert 0 < await redis.ttl(validation.artifact_key) <= queue.VALIDATION_TTL_S
    [(stream, entry_id, data)] = await queue.read_validations(redis, "w1", ["sklearn"], 100)
    assert stream == queue.validation_stream("sklearn") and decode_validation(data) == validation
    assert await queue.read_validations(redis, "w2", ["sklearn"], 10) == []  # one worker checks it
    reply = Reply(id="v1", results=[], error="not a skops file")
    await queue.answer_validation(redis, stream, entry_id, validation, reply)
    [(_, fields)] = await entries(redis, validation.reply_to)
    assert decode_replies(fields[queue.FIELD]) == [reply]
    assert await redis.exists(validation.artifact_key) == 0
    assert (await redis.xpending(stream, queue.GROUP))["pending"] == 0
