"""The faults, each injected under the load, and the checks after it: the queue drains, `/readyz` is ready
again, every accepted request has exactly one row (`done` unless the message was the fault's own), no client
waited past the request timeout, and a normal prediction works."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mlapi.api.dispatcher import READER
from mlapi.schemas import PredictionOut
from tests.chaos import faults
from tests.chaos.load import MARGIN_S, Call, Load, Tally, account, example
from tests.chaos.system import REQUEST_TIMEOUT_S, System, until

WARMUP_S = 2.0
"""Load before the fault."""
TAIL_S = 3.0
"""Load after the fault, on the recovered system."""
HEALTHY_S = 90.0
"""How long the system may take to be ready, drained and fully served before a fault."""
DRAIN_S = 60.0
READY_S = 20.0
RECOVERY_ROUNDS = 3
RECOVERY_S = 40.0
BURST = 8
"""`wait=false` requests per model sent before and after the marked message while the workers are frozen."""
STARTUP_GRACE_S = 30.0
"""A worker running this long without a heartbeat is hung: the harness's recovery kills it."""


@dataclass(frozen=True)
class Fault:
    key: str
    name: str
    inject: Callable[[System, Load, Tally], Awaitable[None]]
    """Injects the fault while the load runs; records in the tally what it could not do."""
    ends_workers: bool = False
    """Worker processes exit during this fault (killed by the harness, or by the fault's own message)."""
    marked: str | None = None
    """The fault's own message, sent once: a row of the fault model marked to hang or crash its worker."""


async def kill_workers(system: System, load: Load, tally: Tally) -> None:
    """SIGKILL a worker every 3 s for 15 s: a serving one, in turn; none when both are still starting."""
    kills = 0
    for n in range(5):
        if serving := await system.serving():
            kills += serving[n % len(serving)].kill(signal.SIGKILL)
        await asyncio.sleep(3)
    tally.notes.append(f"{kills} of 5 ticks found a serving worker to kill")


async def broker_outages(system: System, load: Load, tally: Tally) -> None:
    """Stop the broker (SIGTERM), back 3 s later; then kill it (SIGKILL), back 3 s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        await system.stop_broker(sig)
        await asyncio.sleep(3)
        await system.start_broker()
        await asyncio.sleep(TAIL_S)


async def database_outage(system: System, load: Load, tally: Tally) -> None:
    """PostgreSQL stopped (immediate) for 60 s."""
    await system.stop_database()
    await asyncio.sleep(60)
    await system.start_database()


def _marked(key: str, name: str, mode: str) -> Fault:
    """A fault of its own message: one row of the fault model marked `mode`, queued with batch-mates while the
    workers are frozen for a moment, so that it is delivered with them; then 10 s of the load."""

    async def inject(system: System, load: Load, tally: Tally) -> None:
        async with system.workers_frozen():
            await load.burst(BURST)  # the first entries go to the workers' blocked reads, if any
            call = await load.send_marked(mode, deadline_s=2)
            await load.burst(BURST)
        if call.status != 202:
            tally.problems.append(f"the {mode} message was not accepted: {call.outcome}")
            return
        await _count_batch_mates(tally, system, call.ids[0])
        await asyncio.sleep(10)

    return Fault(key, name, inject, ends_workers=True, marked=mode)


async def _count_batch_mates(tally: Tally, system: System, prediction_id: str) -> None:
    """The entries its first holder took with the marked message (it holds them until they are reclaimed)."""
    holder: tuple[str, str] | None = None

    async def delivered() -> bool:
        nonlocal holder
        holder = await system.holder((faults.MODEL, 1), prediction_id)
        return holder is not None

    if not await until(delivered, 10, interval_s=0.05) or holder is None:
        tally.problems.append("the marked message was not delivered to a worker within 10 s")
        return
    mates = await system.held_by(holder[1]) - 1
    tally.notes.append(f"the marked message's first delivery had {mates} batch-mates")
    if mates < 1:
        tally.problems.append("the marked message had no batch-mates: nothing shows they are spared")


def reply_reader_restarts(metrics: str) -> float | None:
    """The API's count of reply-reader restarts, or None when `/metrics` has no such counter."""
    values = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "mlapi_task_restarts"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("task") == READER
    ]
    return sum(values) if values else None


async def crash_reply_reader(system: System, load: Load, tally: Tally) -> None:
    """SIGUSR1 to the API (started with MLAPI_FAULT_INJECTION=1): its reply reader raises once, and must be
    restarted by its supervisor with no reply lost. Fails when the fault cannot be injected."""
    before = reply_reader_restarts(await system.metrics() or "")
    pid = system.api.pid
    assert pid is not None
    system.api.kill(signal.SIGUSR1)
    await asyncio.sleep(5)
    if system.api.pid != pid:
        tally.problems.append(
            "cannot inject: the API process exited on SIGUSR1 (no fault injection for the reply reader)"
        )
        return
    if before is None:
        tally.problems.append("cannot inject: /metrics has no counter of reply-reader restarts")
        return

    async def restarted() -> bool:
        after = reply_reader_restarts(await system.metrics() or "")
        return after is not None and after > before

    if not await until(restarted, 10):
        tally.problems.append("the reply reader's restart count did not grow after SIGUSR1")


FAULTS = [
    Fault("worker-kill", "SIGKILL a worker every 3 s for 15 s", kill_workers, ends_workers=True),
    Fault("broker", "broker stopped (SIGTERM) then killed (SIGKILL), back 3 s later each", broker_outages),
    Fault("database", "PostgreSQL stopped (immediate) for 60 s", database_outage),
    _marked("hang", "a model that hangs holding the GIL", faults.HANG),
    _marked("poison", "a poison message that kills its worker", faults.CRASH),
    Fault("reply-reader", "the API's reply reader crashes (SIGUSR1)", crash_reply_reader),
]


async def run(fault: Fault, system: System) -> Tally:
    """Inject one fault under the load and check what it left."""
    tally = Tally(fault.name)
    waited = time.monotonic()
    if not await until(lambda: _healthy(system), HEALTHY_S):
        tally.problems.append(f"not run: the system was not ready, drained and fully served within {HEALTHY_S:.0f} s")
        return tally
    since, started = datetime.now(UTC), time.monotonic()
    tally.notes.append(f"{started - waited:.0f} s waiting for every worker to serve before the fault")
    load = Load(system.url, REQUEST_TIMEOUT_S + 3 * MARGIN_S)
    try:
        await load.start()
        await asyncio.sleep(WARMUP_S)
        await fault.inject(system, load, tally)
        await asyncio.sleep(TAIL_S)
    finally:
        calls = await load.stop()
    stopped = time.monotonic()
    drained = await until(system.drained, DRAIN_S)
    if not drained:
        tally.problems.append(f"stuck: the queue did not drain within {DRAIN_S:.0f} s (lost counts rows not stored)")
    ready = await until(system.ready, READY_S)
    if not ready:
        status, body = await system.readiness()
        tally.problems.append(f"stuck readiness: /readyz {status} {READY_S:.0f} s after the fault: {body}")
    if drained and ready:
        tally.recovery_s = time.monotonic() - stopped
    await account(tally, calls, system.engine, since)
    _judge(tally, fault)
    await _check_answers(tally, system)
    _check_exits(tally, fault, system, started)
    if fault.marked is not None:
        await _check_dead_letters(tally, system, {i for c in calls if c.own for i in c.ids})
    if not (drained and ready):
        await _recover(tally, system, calls, since)
    if tally.refused:
        reasons = "; ".join(f"x{n} {tally.examples[r]!r}" for r, n in tally.refusals.most_common())
        tally.notes.append(f"503s: {reasons}")
    tally.notes.append(f"{time.monotonic() - started:.0f} s from the start of the load to the end of the checks")
    return tally


async def _healthy(system: System) -> bool:
    return await system.drained() and await system.fully_served()


def _judge(tally: Tally, fault: Fault) -> None:
    for count, what in (
        (tally.lost, "lost"),
        (tally.duplicated, "duplicated"),
        (tally.wrongly_failed, "wrongly failed"),
        (sum(tally.other.values()), "answered otherwise than 200, 202, 503 or 504"),
    ):
        if count:
            tally.problems.append(f"{count} {what}")
    if tally.max_latency_s > REQUEST_TIMEOUT_S + MARGIN_S:
        tally.problems.append(
            f"hang: a client waited {tally.max_latency_s:.1f} s (request timeout {REQUEST_TIMEOUT_S:g} s "
            f"+ {MARGIN_S:g} s)"
        )
    if tally.untold:
        tally.notes.append(f"{tally.untold} rows of requests whose clients were not given their ids")


async def _check_answers(tally: Tally, system: System) -> None:
    """A normal prediction works afterwards."""
    async with httpx.AsyncClient(base_url=system.url, timeout=REQUEST_TIMEOUT_S + MARGIN_S) as client:
        try:
            response = await client.post("/predict", json=await example(client))
        except httpx.HTTPError as e:
            tally.problems.append(f"no normal prediction afterwards: {type(e).__name__}: {e}")
            return
    try:
        PredictionOut.model_validate_json(response.content)
    except ValueError:
        tally.problems.append(f"no normal prediction afterwards: {response.status_code} {response.text[:300]}")


def _check_exits(tally: Tally, fault: Fault, system: System, started: float) -> None:
    exits = system.exits_since(started)
    tally.restarts = len(exits)
    for e in exits:
        if e.service == "api" or not fault.ends_workers:
            tally.problems.append(f"{e.service} (pid {e.pid}) exited with code {e.code}")
    if fault.marked and not any(e.service.startswith("worker") for e in exits):
        tally.problems.append(f"no worker exited: the worker of the {fault.marked} message was not replaced")


async def _check_dead_letters(tally: Tally, system: System, own: set[str]) -> None:
    if missing := own - await system.dead_lettered(faults.MODEL):
        tally.problems.append(f"the fault's own message is not dead-lettered: {sorted(missing)}")


async def _recover(tally: Tally, system: System, calls: list[Call], since: datetime) -> None:
    """After a stuck fault, restart what is stuck, as Kubernetes' liveness probes would, so that the next fault
    starts clean; then count again, to tell what the fault cost in the end."""
    for round_ in range(1, RECOVERY_ROUNDS + 1):
        serving = await system.serving()
        for worker in system.workers:
            stale = worker not in serving and time.monotonic() - worker.started_at > STARTUP_GRACE_S
            if stale or not await system.drained():
                worker.kill(signal.SIGKILL)
        if len(serving) == len(system.workers) and not await system.ready():
            system.api.kill(signal.SIGKILL)
        if await until(lambda: _healthy(system), RECOVERY_S):
            after = Tally(tally.fault)
            await account(after, calls, system.engine, since)
            tally.notes.append(
                f"recovered by the harness after {round_} round(s) of restarts; then lost {after.lost}, "
                f"wrongly failed {after.wrongly_failed}"
            )
            return
    tally.notes.append(f"not recovered after {RECOVERY_ROUNDS} rounds of restarts")
