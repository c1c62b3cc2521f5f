"""`make bench` (`python -m benchmarks`): mlapi against the systems users would pick instead, on this machine,
in one run.

Each system is started on free 127.0.0.1 ports, warmed up, then loaded at each concurrency with the
same sample for the same time; every ratio in the report comes from this one run.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks import capacity, extras, probes, report, systems
from benchmarks.load import LoadGenerator, LoadResult, Target, ensure_hey
from mlapi.settings import Settings

SYSTEMS = ("floor", "inprocess", "mlserver", "bentoml", "litserve", "mlapi")
PEERS = ("mlserver", "bentoml", "litserve")
"""The serving systems a user would pick instead; "the best peer" is the fastest of them at a concurrency."""


@dataclass(frozen=True)
class Plan:
    systems: tuple[str, ...] = SYSTEMS
    concurrencies: tuple[int, ...] = (1, 16, 64)
    seconds: float = 12.0
    rounds: int = 2
    """Every point is run this many times, the systems in turn; the report gives medians."""
    warmup_s: float = 3.0
    rewarm_s: float = 1.0
    """Load after a paused system is resumed, before a point is measured (mlapi's workers heartbeat again)."""
    trial_seconds: float = 8.0
    """Each configuration of a peer is tried this long at the top concurrency; the fastest is kept."""
    bentoml_workers: tuple[int, ...] = (1, 2)
    litserve_options: tuple[tuple[int, bool], ...] = ((1, False), (1, True), (2, False), (2, True))
    """(workers, fast_queue) of each LitServe configuration tried."""
    lone_requests: int = 300
    history_rows: tuple[int, ...] = (1_000, 1_000_000)
    history_seconds: float = 8.0
    history_concurrency: int = 1
    extras: bool = True
    """Also measure the features' cost, the Open Inference Protocol's paths and each runtime."""
    extras_seconds: float = 10.0
    runtime_repeats: int = 300
    out_dir: Path = Path("docs")
    venvs: Path = Path(".bench")
    use_hey: bool = True
    quick: bool = False
    model: str = "diabetes-risk"

    @property
    def top(self) -> int:
        return max(self.concurrencies)


@dataclass
class UnitCounts:
    """What the broker and the database did during a point of mlapi's (exact counters, not samples)."""

    redis_calls: dict[str, int] = field(default_factory=dict)
    wal_bytes: int = 0
    rows_written: int = 0
    predictions_inserted: int = 0

    def __add__(self, other: UnitCounts) -> UnitCounts:
        calls = dict(self.redis_calls)
        for name, n in other.redis_calls.items():
            calls[name] = calls.get(name, 0) + n
        return UnitCounts(calls, self.wal_bytes + other.wal_bytes, self.rows_written + other.rows_written,
                          self.predictions_inserted + other.predictions_inserted)  # fmt: skip


@dataclass
class Point:
    system: str
    result: LoadResult
    cpu_s: dict[str, float]
    """CPU seconds each group of the system's processes spent during the point."""
    persisted: int | None = None
    """History rows stored for requests accepted during the point (mlapi only)."""
    batches: dict[int, int] | None = None
    """Requests of the batch probe by the number of rows in the batch they were predicted in (mlapi only)."""
    probe_ok: int = 0
    """Answered requests of the batch probe, stored beside the load's."""
    rounds: list[LoadResult] = field(default_factory=list)
    """The load results of each round, when this point combines several."""
    memory: dict[str, probes.Memory] = field(default_factory=dict)
    """Memory of each group of the system's processes right after the point (the largest over rounds)."""
    units: UnitCounts | None = None
    """mlapi only, at the top concurrency."""

    @property
    def answered(self) -> int:
        return self.result.ok + self.probe_ok


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def combine(points: list[Point]) -> Point:
    """One point from the rounds of a system at a concurrency: medians of rate and percentiles, sums of the rest,
    the largest memory."""
    results = [p.result for p in points]
    first = results[0]
    result = LoadResult(
        concurrency=first.concurrency, seconds=sum(r.seconds for r in results),
        requests=sum(r.requests for r in results), ok=sum(r.ok for r in results),
        errors=sum(r.errors for r in results), rps=_median([r.rps for r in results]),
        p50_ms=_median([r.p50_ms for r in results]), p99_ms=_median([r.p99_ms for r in results]),
        tool=first.tool, error_samples=[e for r in results for e in r.error_samples][:5],
        client_cpu_s=sum(r.client_cpu_s for r in results),
    )  # fmt: skip
    batches: dict[int, int] = {}
    for p in points:
        for size, n in (p.batches or {}).items():
            batches[size] = batches.get(size, 0) + n
    persisted = [p.persisted for p in points if p.persisted is not None]
    memory: dict[str, probes.Memory] = {}
    for p in points:
        for group, m in p.memory.items():
            if group not in memory or m.pss_mb > memory[group].pss_mb:
                memory[group] = m
    units = [p.units for p in points if p.units is not None]
    return Point(
        system=points[0].system, result=result,
        cpu_s={g: sum(p.cpu_s.get(g, 0.0) for p in points) for g in points[0].cpu_s},
        persisted=sum(persisted) if persisted else None, batches=batches or None,
        probe_ok=sum(p.probe_ok for p in points), rounds=results, memory=memory,
        units=sum(units[1:], units[0]) if units else None,
    )  # fmt: skip


@dataclass
class Trial:
    """One configuration of a peer, tried at the top concurrency to choose the one measured."""

    system: str
    config: str
    result: LoadResult
    kept: bool = False


@dataclass
class Results:
    plan: Plan
    tool: str
    started: datetime
    machine: str
    points: list[Point] = field(default_factory=list)
    pipeline: list[probes.PipelineCost] = field(default_factory=list)
    lone: probes.Breakdown | None = None
    history: dict[int, dict[str, LoadResult]] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)
    """The configuration each system ran in."""
    extras: extras.Extras | None = None
    rewarm_errors: dict[str, int] = field(default_factory=dict)
    """Errors each system answered in its re-warms after a pause (none expected)."""
    seconds: float = 0.0
    load_before: str = field(default_factory=lambda: f"{os.getloadavg()[0]:.1f}")
    """Load average when the run began: how busy the shared machine was."""

    def point(self, system: str, concurrency: int) -> Point | None:
        return next((p for p in self.points if p.system == system and p.result.concurrency == concurrency), None)

    def best_peer(self, concurrency: int) -> Point | None:
        """The fastest of the peers at this concurrency."""
        found = [p for s in PEERS if (p := self.point(s, concurrency)) is not None]
        return max(found, key=lambda p: p.result.rps) if found else None


@contextmanager
def _progress(label: str, seconds: float) -> Iterator[None]:
    """A ticking line while a load runs, when a person is watching."""
    done = threading.Event()

    def tick() -> None:
        started = time.monotonic()
        while not done.wait(0.5):
            print(f"\r  {label:<28} {time.monotonic() - started:5.1f} / {seconds:.0f} s", end="", flush=True)

    thread = threading.Thread(target=tick, daemon=True) if sys.stdout.isatty() else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread:
            thread.join()
            print("\r" + " " * 48 + "\r", end="", flush=True)


def _measure(plan: Plan, load: LoadGenerator, running: systems.Running, concurrency: int) -> Point:
    pids = running.processes
    # mlapi reports each request's batch in Server-Timing, which hey discards: a paced probe collects it.
    # At c=1 there is one request in flight, so every batch is one row and the probe would only add load.
    probe = None
    if running.database_url and concurrency > 1:
        probe = probes.BatchProbe(running.target.url, running.target.body or b"")
    counting = running.database_url is not None and running.redis_url is not None and concurrency == plan.top
    if counting:
        assert running.database_url is not None and running.redis_url is not None
        redis_before = probes.redis_commands(running.redis_url)
        pg_before = probes.pg_counters(running.database_url)
    cpu_before = {group: probes.cpu_seconds(p) for group, p in pids.items()}
    since = datetime.now(UTC)
    with _progress(f"{running.name} c={concurrency}", plan.seconds), probe or nullcontext():
        result = load.run(running.target, concurrency, plan.seconds)
    until = datetime.now(UTC)
    cpu = {group: probes.cpu_seconds(p) - cpu_before[group] for group, p in pids.items()}
    point = Point(running.name, result, cpu)
    if concurrency == plan.top:
        point.memory = {group: probes.memory(p) for group, p in pids.items()}
    if probe is not None:
        point.batches, point.probe_ok = probe.histogram(), len(probe.sizes)
    elif running.database_url:
        point.batches = {1: result.ok}
    if running.database_url:
        time.sleep(0.5)  # let requests hey abandoned at its deadline be stored before they are counted
        point.persisted = probes.stored_rows(running.database_url, since, until + timedelta(seconds=1))
    if counting:
        assert running.database_url is not None and running.redis_url is not None
        redis_after = probes.redis_commands(running.redis_url)
        pg_after = probes.pg_counters_after(running.database_url, pg_before, point.persisted or 0)
        calls = {n: c - redis_before.get(n, 0) for n, c in redis_after.items() if c > redis_before.get(n, 0)}
        calls["info"] = calls.get("info", 0) - 1  # the reading itself
        point.units = UnitCounts(
            {n: c for n, c in calls.items() if c > 0}, pg_after.wal_bytes - pg_before.wal_bytes,
            pg_after.rows_written - pg_before.rows_written,
            pg_after.predictions_inserted - pg_before.predictions_inserted,
        )  # fmt: skip
    print(report.progress_line(point), flush=True)
    return point


def _history(results: Results, load: LoadGenerator, running: systems.Running) -> None:
    plan = results.plan
    assert running.database_url is not None
    for rows in plan.history_rows:
        started = time.monotonic()

        def filled(n: int, rows: int = rows) -> None:
            print(f"\r  generating history rows: {n:,} / {rows:,}", end="", flush=True)

        cursor = probes.fill_history(running.database_url, rows, filled)
        print(f"\r  generated {rows:,} history rows in {time.monotonic() - started:.1f} s" + " " * 10, flush=True)
        queries = {
            "first page": f"{running.base_url}/predictions?limit=50",
            "page halfway down (cursor)": f"{running.base_url}/predictions?limit=50&cursor={cursor}",
            "first page, one model": f"{running.base_url}/predictions?limit=50&model={plan.model}",
        }
        results.history[rows] = {}
        for name, url in queries.items():
            with _progress(f"history {rows:,} rows", plan.history_seconds):
                result = load.run(Target(url), plan.history_concurrency, plan.history_seconds)
            results.history[rows][name] = result
            print(f"  history {rows:>9,} rows  {name:<28} p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms"
                  f"  errors {result.errors}", flush=True)  # fmt: skip


def _configs(name: str, plan: Plan) -> list[dict[str, Any]]:
    """The configurations of a system to try (one: nothing to choose)."""
    if name == "bentoml":
        return [{"workers": w} for w in plan.bentoml_workers]
    if name == "litserve":
        return [{"workers": w, "fast_queue": q} for w, q in plan.litserve_options]
    return [{}]


def _system(
    name: str, plan: Plan, model_dir: Path, work: Path, **config: Any
) -> AbstractContextManager[systems.Running]:
    if name in ("floor", "inprocess"):
        return systems.fastapi_baseline(name, model_dir, work)
    if name == "mlserver":
        return systems.mlserver_system(model_dir, work, plan.venvs)
    if name == "bentoml":
        return systems.bentoml_system(model_dir, work, plan.venvs, **config)
    if name == "litserve":
        return systems.litserve_system(model_dir, work, plan.venvs, **config)
    if name == "mlapi":
        return systems.mlapi_stack(model_dir, work)
    raise ValueError(f"unknown system {name!r}")


def _choose(results: Results, load: LoadGenerator, model_dir: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    """Try each configuration of the peers that have several, alone on the machine, and keep the fastest."""
    plan = results.plan
    chosen: dict[str, dict[str, Any]] = {}
    for name in plan.systems:
        configs = _configs(name, plan)
        if len(configs) < 2:
            chosen[name] = configs[0]
            continue
        trials = []
        for i, config in enumerate(configs):
            work = tmp / f"{name}-trial-{i + 1}"
            work.mkdir()
            with _system(name, plan, model_dir, work, **config) as running:
                with _progress(f"{name} warm-up", plan.warmup_s):
                    load.run(running.target, 16, plan.warmup_s)
                with _progress(f"{name} trial", plan.trial_seconds):
                    result = load.run(running.target, plan.top, plan.trial_seconds)
            trials.append(Trial(name, running.config, result))
            print(f"  trial {name:<9} {running.config:<58} {result.rps:8,.0f} req/s  p99 {result.p99_ms:6.1f} ms  "
                  f"errors {result.errors}", flush=True)  # fmt: skip
        best = max(range(len(trials)), key=lambda i: trials[i].result.rps if not trials[i].result.errors else 0)
        trials[best].kept = True
        results.trials += trials
        chosen[name] = configs[best]
    return chosen


def _resume(results: Results, load: LoadGenerator, running: systems.Running) -> None:
    """SIGCONT, ready again, and a short load so no point starts cold; counts and says so if it saw errors."""
    running.resume()
    rewarm = load.run(running.target, 16, results.plan.rewarm_s)
    results.rewarm_errors[running.name] = results.rewarm_errors.get(running.name, 0) + rewarm.errors
    if rewarm.errors:
        print(f"  {running.name}: {rewarm.errors} errors while re-warming after a pause: {rewarm.error_samples}",
              flush=True)  # fmt: skip


def _remeasure_memory(results: Results, running: systems.Running) -> None:
    """mlapi's memory alone on the machine: the baselines, from the same venv, share its libraries' pages and
    so lower its PSS while they run. Keeps the larger of this and the figure taken under load."""
    point = results.point(running.name, results.plan.top)
    if point is None:
        return
    for group, pids in running.processes.items():
        now = probes.memory(pids)
        if group not in point.memory or now.pss_mb > point.memory[group].pss_mb:
            point.memory[group] = now


def _phase(started: float, what: str) -> None:
    print(f"[{(time.monotonic() - started) / 60:4.1f} min] {what}", flush=True)


def run(plan: Plan, settings: Settings) -> Results:
    """Run the plan and write the report; returns what was measured."""
    started = time.monotonic()
    for noisy in ("httpx", "alembic"):  # one line per readiness probe and migration step drowns the table
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    model_dir = settings.bundled_models_dir / plan.model
    hey = ensure_hey() if plan.use_hey else None
    load = LoadGenerator(hey, plan.out_dir)
    machine = f"{platform.machine()}, {_cpus()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"
    results = Results(plan, load.name, datetime.now(UTC), machine)
    print(f"make bench{' QUICK=1' if plan.quick else ''}: {', '.join(plan.systems)} at c={plan.concurrencies}, "
          f"{plan.rounds} x {plan.seconds:g} s per point, load from {load.name}", flush=True)  # fmt: skip
    results.pipeline = probes.pipeline_costs(model_dir, (1, 64), repeat=30 if plan.quick else 100)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with TemporaryDirectory(prefix="mlapi-bench-") as tmp:
        load.work_dir = Path(tmp)
        _phase(started, "trying the peers' configurations")
        chosen = _choose(results, load, model_dir, Path(tmp))
        _phase(started, "starting the systems")
        # All systems run at once and take turns, the order rotating each round, so a busy minute on the
        # shared machine falls on every system alike; the one under load runs alone: the others are paused.
        running: dict[str, systems.Running] = {}
        stacks = {name: ExitStack() for name in plan.systems}
        try:
            for name in plan.systems:
                work = Path(tmp) / name
                work.mkdir()
                print(f"starting {name} ...", flush=True)
                running[name] = stacks[name].enter_context(_system(name, plan, model_dir, work, **chosen[name]))
                results.configs[name] = running[name].config
                with _progress(f"{name} warm-up", plan.warmup_s):
                    load.run(running[name].target, 16, plan.warmup_s)
                running[name].pause()
            _phase(started, "measuring")
            measured: dict[tuple[str, int], list[Point]] = {}
            for r in range(plan.rounds):
                order = [plan.systems[(i + r) % len(plan.systems)] for i in range(len(plan.systems))]
                print(f"round {r + 1} of {plan.rounds}", flush=True)
                for concurrency in plan.concurrencies:
                    for name in order:
                        _resume(results, load, running[name])
                        point = _measure(plan, load, running[name], concurrency)
                        running[name].pause()
                        measured.setdefault((name, concurrency), []).append(point)
            results.points = [combine(measured[(n, c)]) for n in plan.systems for c in plan.concurrencies]
            for name in plan.systems:
                if name != "mlapi":
                    stacks[name].close()
            if mlapi := running.get("mlapi"):
                _resume(results, load, mlapi)
                _remeasure_memory(results, mlapi)
                _phase(started, "lone requests and history")
                results.lone = probes.lone_requests(mlapi.target.url, mlapi.target.body or b"", plan.lone_requests)
                if plan.history_rows:
                    _history(results, load, mlapi)
        finally:
            for stack in stacks.values():
                stack.close()
        if plan.extras and "mlapi" in plan.systems:
            _phase(started, "features, protocol paths, runtimes")
            work = Path(tmp) / "extras"
            work.mkdir()
            results.extras = extras.measure(plan, load, model_dir, work)
    results.seconds = time.monotonic() - started
    print()
    print(report.table(results))
    report.write(results)
    print(f"\nwrote {plan.out_dir / report.MARKDOWN}, {plan.out_dir / report.PLOT} and "
          f"{plan.out_dir / capacity.MARKDOWN} in {results.seconds / 60:.1f} min", flush=True)  # fmt: skip
    return results


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def quick_plan() -> Plan:
    """A development run: short points, one round, a smaller history, a report outside docs/."""
    return replace(
        Plan(), seconds=4.0, rounds=1, warmup_s=1.0, trial_seconds=3.0, lone_requests=100,
        history_rows=(1_000, 100_000), history_seconds=3.0, extras_seconds=3.0, runtime_repeats=50,
        out_dir=Path(".bench/quick"), quick=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks [--quick]` (`make bench`, `make bench QUICK=1`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run for development (report in .bench/quick)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server the run started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run(quick_plan() if args.quick else Plan(), Settings())
