"""The API's reply reader under supervision, on a real Valkey: a crash is counted, the reader runs again from
where it was, and requests waiting meanwhile get their answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from mlapi import queue
from mlapi.api.dispatcher import READER, ReplyDispatcher
from mlapi.contract import Reply
from mlapi.faults import Faults
from mlapi.settings import Settings
from tests.conftest import until

pytestmark = pytest.mark.integration


class Crashing:
    """Faults that crash the reader again on each restart until it crashed `times` times."""

    def __init__(self, times: int) -> None:
        self.faults = Faults(enabled=True)
        self.times = times
        self.restarts: list[str] = []

    def restarted(self, task: str) -> None:
        self.restarts.append(task)
        if len(self.restarts) < self.times:
            self.faults.arm()


@pytest.fixture
async def crashing(settings: Settings, redis: Redis) -> AsyncIterator[tuple[ReplyDispatcher, Crashing]]:
    crash = Crashing(times=3)
    dispatcher = ReplyDispatcher(settings.require_redis_url(), 200, crash.faults, crash.restarted)
    dispatcher.start()
    yield dispatcher, crash
    await dispatcher.stop()


async def answer(redis: Redis, stream: str, reply_id: str) -> None:
    """What a worker does: one reply on the API process's reply stream."""
    await queue.finish(redis, [], [(stream, Reply(id=reply_id, results=[]))])


async def test_replies_sent_while_the_reader_is_down_reach_their_waiting_requests(
    redis: Redis, crashing: tuple[ReplyDispatcher, Crashing]
) -> None:
    dispatcher, crash = crashing
    before = asyncio.ensure_future(dispatcher.call("before", asyncio.sleep(0), 10, ["before"]))
    await answer(redis, dispatcher.stream, "before")
    assert (await before).id == "before"

    during = asyncio.ensure_future(dispatcher.call("during", asyncio.sleep(0), 10, ["during"]))
    crash.faults.arm()
    await until(lambda: len(crash.restarts) == 1 and not dispatcher.up)
    # Re-armed on each restart, the reader reads nothing until its third run: this reply lands while it is down.
    await answer(redis, dispatcher.stream, "during")
    assert not during.done()
    reply = await asyncio.wait_for(during, 10)
    assert reply.id == "during" and dispatcher.in_flight == 0
    assert crash.restarts == [READER] * 3 and dispatcher.up

    after = asyncio.ensure_future(dispatcher.call("after", asyncio.sleep(0), 10, ["after"]))
    await answer(redis, dispatcher.stream, "after")
    assert (await after).id == "after"
