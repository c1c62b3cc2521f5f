"""`make chaos`: each fault in turn on one running system; one line of the table per fault."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.chaos.load import Tally
from tests.chaos.scenarios import FAULTS, Fault, run
from tests.chaos.system import System

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tallies() -> Iterator[list[Tally]]:
    found: list[Tally] = []
    yield found
    print("\n\n" + "\n".join([Tally.HEADER, *(t.line() for t in found)]))
    for t in found:
        for text in [*t.problems, *t.notes]:
            print(f"- {t.fault}: {text}")


@pytest.fixture(scope="module")
async def system(tallies: list[Tally]) -> AsyncIterator[System]:
    root = Path(tempfile.mkdtemp(prefix="mlapi-chaos-"))
    system = System(root)
    try:
        await system.start()
        yield system
    finally:
        await system.stop()
        if tallies and all(t.passed for t in tallies):  # the servers' data is kept only for a failure
            for data in (system.redis_server.data_dir, system.postgres.data_dir):
                shutil.rmtree(data, ignore_errors=True)
        print(f"\nlogs of every process (one file per run): {system.log_dir}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.key for f in FAULTS])
async def test_fault(fault: Fault, system: System, tallies: list[Tally]) -> None:
    tally = await run(fault, system)
    tallies.append(tally)
    print(f"\n{tally.line()}")
    assert tally.passed, "; ".join(tally.problems)
