"""The load: concurrent clients mixing waiting predictions, `wait=false` and batches, every answer recorded;
and the accounting: what the clients were told, against what the `predictions` table holds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from mlapi.contract import Value
from mlapi.schemas import Accepted, BatchAccepted, BatchOut, ErrorWithIds, ModelDetail, PredictionOut
from tests.chaos import faults

CLIENTS = 24
BATCH = 4
MARGIN_S = 5.0
"""How much longer than the API's request timeout a client may wait for its answer."""
ACCEPTED = frozenset({200, 202, 504})
"""Answers that tell the client its request will be stored (504: not answered in time, with its ids)."""
REFUSED = 503
EXPECTED_4XX: frozenset[int] = frozenset()
"""The load sends only valid requests."""


@dataclass(frozen=True)
class Kind:
    """One sort of request of the mix."""

    name: str
    model: str
    wait: bool
    rows: int

    @property
    def path(self) -> str:
        return f"/models/{self.model}/predict" + ("" if self.wait else "?wait=false")


DEFAULT_MODEL = "diabetes-risk"
WAITING = Kind("waiting", DEFAULT_MODEL, wait=True, rows=1)
NO_WAIT = Kind("wait=false", DEFAULT_MODEL, wait=False, rows=1)
BATCHED = Kind("batch of 4", DEFAULT_MODEL, wait=True, rows=BATCH)
FAULT_MODEL = Kind("fault model, wait=false", faults.MODEL, wait=False, rows=1)
MIX = (WAITING, NO_WAIT, BATCHED, WAITING, NO_WAIT, FAULT_MODEL)
"""Each client goes round this, from its own starting point: the fault model's normal rows are the batch-mates
of the hang and the poison messages."""


@dataclass(frozen=True)
class Call:
    """One request and what became of it."""

    kind: str
    outcome: str
    """The status code, or the error when there was no answer (`ConnectError`, `ReadTimeout`), or `bad <code>`
    when the body does not have the documented shape."""
    status: int | None
    detail: str | None
    """An error's `detail` (its first 200 characters)."""
    ids: tuple[str, ...]
    latency_s: float
    own: bool = False
    """The fault's own message (hang, poison): expected to end `failed`, dead-lettered."""


def _ids(kind: Kind, status: int, body: bytes) -> tuple[str, ...]:
    """The prediction ids an answer gives; raises ValidationError when the body is not the documented one."""
    batch = kind.rows > 1
    if status == 200:
        if batch:
            return tuple(p.id for p in BatchOut.model_validate_json(body).predictions)
        return (PredictionOut.model_validate_json(body).id,)
    if status == 202:
        return tuple(BatchAccepted.model_validate_json(body).ids) if batch else (Accepted.model_validate_json(body).id,)
    if status in (503, 504):
        error = ErrorWithIds.model_validate_json(body)
        ids = error.ids or ([error.id] if error.id else [])
        if status == 504 and len(ids) != kind.rows:  # a client told "not in time" must learn its ids
            raise ValueError(f"a 504 with {len(ids)} ids for {kind.rows} rows")
        return tuple(ids)
    return ()


async def example(client: httpx.AsyncClient) -> dict[str, Value]:
    """The default model's example sample, from its spec as the API gives it."""
    detail = await client.get(f"/models/{DEFAULT_MODEL}")
    detail.raise_for_status()
    return ModelDetail.model_validate_json(detail.content).example


def _detail(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail") if isinstance(body, dict) else body)[:200]


def reason(detail: str | None) -> str:
    """An error's detail up to its first colon: the reason without the particulars."""
    return str(detail).split(":")[0]


class Load:
    """`CLIENTS` concurrent clients, each one request at a time, from `start()` until `stop()`."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.calls: list[Call] = []
        self._client = httpx.AsyncClient(
            base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=CLIENTS + 4)
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._serial = itertools.count()
        self._example: dict[str, Value] = {}

    async def start(self) -> None:
        self._example = await example(self._client)
        self._tasks = [asyncio.create_task(self._client_loop(i), name=f"client-{i}") for i in range(CLIENTS)]

    async def stop(self) -> list[Call]:
        """Stop sending; every request in flight finishes (its client's timeout bounds how long)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()
        return self.calls

    async def _client_loop(self, client: int) -> None:
        for kind in itertools.islice(itertools.cycle(MIX), client % len(MIX), None):
            if self._stop.is_set():
                return
            await self.send(kind, [self._sample(kind) for _ in range(kind.rows)])

    def _sample(self, kind: Kind) -> dict[str, Value]:
        n = next(self._serial)
        if kind.model == faults.MODEL:
            return faults.row(float(n % 1000))
        return {**self._example, "age": float(20 + n % 60), "bmi": float(18 + n % 20)}

    async def send(self, kind: Kind, rows: list[dict[str, Value]], own: bool = False) -> Call:
        body: object = {"instances": rows} if kind.rows > 1 else rows[0]
        started = time.monotonic()
        try:
            response = await self._client.post(kind.path, json=body)
        except httpx.HTTPError as e:
            call = Call(kind.name, type(e).__name__, None, None, (), time.monotonic() - started, own)
        else:
            latency = time.monotonic() - started
            try:
                ids = _ids(kind, response.status_code, response.content)
                outcome = str(response.status_code)
            except (ValidationError, ValueError) as e:
                ids, outcome = (), f"bad {response.status_code}: {str(e).splitlines()[0]}"
            call = Call(kind.name, outcome, response.status_code, _detail(response), ids, latency, own)
        self.calls.append(call)
        return call

    async def burst(self, n: int) -> None:
        """`n` `wait=false` requests for each model at once."""
        kinds = [FAULT_MODEL, NO_WAIT] * n
        await asyncio.gather(*(self.send(kind, [self._sample(kind)]) for kind in kinds))

    async def send_marked(self, mode: str, deadline_s: float) -> Call:
        """The fault's own message: one `wait=false` row of the fault model marked `mode`, sent again while the
        API refuses it (503, e.g. while workers restart) until it is accepted or `deadline_s` passes."""
        give_up = time.monotonic() + deadline_s
        while True:
            call = await self.send(FAULT_MODEL, [faults.row(-1.0, mode)], own=True)
            if call.status != REFUSED or time.monotonic() >= give_up:
                return call
            await asyncio.sleep(0.2)


@dataclass
class Tally:
    """One fault's line of the table."""

    fault: str
    accepted: int = 0
    refused: int = 0
    lost: int = 0
    duplicated: int = 0
    wrongly_failed: int = 0
    other: Counter[str] = field(default_factory=Counter)
    max_latency_s: float = 0.0
    restarts: int = 0
    recovery_s: float | None = None
    """From the end of the load until the queue is drained and `/readyz` ready; None: not within the deadlines."""
    untold: int = 0
    """Rows of this fault's time no client was given the id of (a request answered with an error that ran)."""
    refusals: Counter[str] = field(default_factory=Counter)
    """The 503s by reason."""
    examples: dict[str, str] = field(default_factory=dict)
    """A whole detail of each reason."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    HEADER = (
        "| fault | accepted | refused (503) | lost | duplicated | wrongly failed | other answers | max latency "
        "| restarts | drained and ready after | result |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )

    def line(self) -> str:
        other = ", ".join(f"{k} x{n}" for k, n in self.other.most_common()) or "0"
        recovery = "stuck" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return (
            f"| {self.fault} | {self.accepted} | {self.refused} | {self.lost} | {self.duplicated} "
            f"| {self.wrongly_failed} | {other} | {self.max_latency_s:.1f} s | {self.restarts} "
            f"| {recovery} | {'pass' if self.passed else 'FAIL'} |"
        )


async def stored(engine: AsyncEngine, ids: Iterable[str]) -> dict[str, list[str]]:
    """The statuses of the rows of each id that has any."""
    rows: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.text("SELECT id::text, status FROM predictions WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": sorted(set(ids))},
        )
        for prediction_id, status in result:
            rows.setdefault(prediction_id, []).append(status)
    return rows


async def untold_rows(engine: AsyncEngine, since: datetime, told: Iterable[str]) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(
            sa.text(
                "SELECT count(*) FROM predictions WHERE created_at >= :since AND NOT (id = ANY(CAST(:ids AS uuid[])))"
            ),
            {"since": since, "ids": sorted(set(told))},
        )
        return int(result.scalar_one())


async def account(tally: Tally, calls: list[Call], engine: AsyncEngine, since: datetime) -> None:
    """Count what the clients were told and check it against the table: every accepted id has exactly one row,
    `done` unless it is the fault's own message (then `failed`); a 503 that carried ids may have run, and then
    its rows must be `done` too."""
    accepted = [i for c in calls if c.status in ACCEPTED for i in c.ids]
    maybe = [i for c in calls if c.status == REFUSED for i in c.ids]
    own = {i for c in calls if c.own for i in c.ids}
    tally.accepted = len(accepted)
    for c in calls:
        if c.status == REFUSED:
            tally.refusals[reason(c.detail)] += 1
            tally.examples.setdefault(reason(c.detail), str(c.detail))
    tally.refused = tally.refusals.total()
    tally.max_latency_s = max((c.latency_s for c in calls), default=0.0)
    tally.other.update(
        c.outcome
        for c in calls
        if not (c.status in ACCEPTED or c.status == REFUSED or (c.status is not None and c.status in EXPECTED_4XX))
    )
    told = Counter([*accepted, *maybe])
    rows = await stored(engine, told)
    tally.duplicated = sum(n > 1 for n in told.values()) + sum(len(r) > 1 for r in rows.values())
    tally.lost = sum(i not in rows for i in set(accepted))
    tally.wrongly_failed = sum(any(s != "done" for s in rows.get(i, [])) for i in set(told) - own)
    tally.untold = await untold_rows(engine, since, told)
    for i in own:
        if rows.get(i, ["failed"]) != ["failed"]:
            tally.problems.append(f"the fault's own message {i} ended {rows[i]}, not failed")
