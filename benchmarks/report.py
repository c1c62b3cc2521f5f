"""The benchmark's outputs: a progress line per point, the console table, `benchmarks.md` and its plot."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks import capacity, probes

if TYPE_CHECKING:
    from benchmarks import Point, Results
    from benchmarks.load import LoadResult

MARKDOWN = "benchmarks.md"
PLOT = "benchmarks.png"

LABELS = {
    "floor": "bare FastAPI floor",
    "inprocess": "FastAPI + pipeline in-process",
    "mlserver": "MLServer, adaptive batching",
    "bentoml": "BentoML, adaptive batching",
    "litserve": "LitServe, batching",
    "mlapi": "mlapi (API, 2 workers, Redis, PostgreSQL)",
}
DESCRIPTIONS = {
    "floor": "FastAPI validating the body with the model's pydantic schema and answering a constant; "
    "uvicorn with uvloop and httptools, one process. The most a FastAPI service can do here.",
    "inprocess": "FastAPI calling `pipeline.predict_proba(pd.DataFrame([sample]))` in a plain `def` endpoint "
    "(FastAPI's thread pool), one process: how a model is usually served.",
    "mlserver": "MLServer 1.7 with `mlserver-sklearn`, the same pipeline exported with joblib, adaptive batching "
    "on (32 rows / 2 ms), `parallel_workers: 0`; in its own venv. The request is the V2 inference protocol "
    "with the pandas codec (one input per column, `predict_proba` requested): the same sample, another shape.",
    "bentoml": "BentoML 1.4 with `@bentoml.api(batchable=True)` (adaptive batching, at most 64 rows, max latency "
    "1 s), the pipeline loaded with joblib, `predict_proba` on a DataFrame of the batch; in its own venv. The body "
    'is the sample as a batch of one (`{"rows": [sample]}`). 1 and 2 workers were tried, the faster kept.',
    "litserve": "LitServe 0.2 with batching on (at most 64 rows, a 2 ms window), the pipeline loaded with joblib, "
    "`predict_proba` on a DataFrame of the batch; in its own venv. The body is the sample. 1 and 2 workers, "
    "`fast_queue` off and on were tried, the fastest kept.",
    "mlapi": "`mlapi up` as shipped: the API, two workers, Redis-compatible server and PostgreSQL; every "
    "prediction is written to the history before it is answered. Access control, durable acceptance and "
    "admission control off (see *What each feature costs*).",
}


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) or math.isinf(value) else f"{value:.2f}x"


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def _load_now() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def progress_line(point: Point) -> str:
    r = point.result
    extra = ""
    if point.persisted is not None:
        extra = f"  rows stored {point.persisted:,} for {point.answered:,} answers"
    return (f"  {point.system:<10} c={r.concurrency:<3} {r.rps:8,.0f} req/s  p50 {_ms(r.p50_ms):>6} ms  "
            f"p99 {_ms(r.p99_ms):>6} ms  errors {r.errors}{extra}")  # fmt: skip


def _rows(results: Results) -> list[list[str]]:
    rows = []
    for p in results.points:
        r = p.result
        rows.append([LABELS.get(p.system, p.system), str(r.concurrency), f"{r.rps:,.0f}", _ms(r.p50_ms),
                     _ms(r.p99_ms), f"{r.errors:,}"])  # fmt: skip
    return rows


RESULT_HEADER = ["system", "c", "req/s", "p50 ms", "p99 ms", "errors"]


def _rounds_section(results: Results) -> list[str]:
    if results.plan.rounds < 2:
        return []
    rows = [[LABELS.get(p.system, p.system), str(p.result.concurrency), *(f"{r.rps:,.0f}" for r in p.rounds)]
            for p in results.points]  # fmt: skip
    header = ["system", "c", *(f"round {i + 1} req/s" for i in range(results.plan.rounds))]
    return ["How much the rounds differ:", "", _md_table(header, rows), ""]


def _ratios(results: Results) -> list[list[str]]:
    rows = []
    for c in results.plan.concurrencies:
        mine, best = results.point("mlapi", c), results.best_peer(c)
        if mine is None or best is None:
            continue
        rows.append([f"**the best peer** ({LABELS[best.system]})", str(c),
                     _ratio(_div(mine.result.rps, best.result.rps)),
                     _ratio(_div(mine.result.p50_ms, best.result.p50_ms)),
                     _ratio(_div(mine.result.p99_ms, best.result.p99_ms))])  # fmt: skip
    for other in [s for s in results.plan.systems if s != "mlapi"]:
        for c in results.plan.concurrencies:
            mine, theirs = results.point("mlapi", c), results.point(other, c)
            if mine is None or theirs is None:
                continue
            rows.append([LABELS[other], str(c), _ratio(_div(mine.result.rps, theirs.result.rps)),
                         _ratio(_div(mine.result.p50_ms, theirs.result.p50_ms)),
                         _ratio(_div(mine.result.p99_ms, theirs.result.p99_ms))])  # fmt: skip
    return rows


RATIO_HEADER = ["mlapi vs", "c", "throughput", "p50", "p99"]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]  # fmt: skip
    return "\n".join([line, "-" * len(line), *body])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table(results: Results) -> str:
    parts = [_text_table(RESULT_HEADER, _rows(results))]
    if ratios := _ratios(results):
        parts.append("ratios of mlapi to each (throughput: higher is better; latency: lower is better)\n"
                     + _text_table(RATIO_HEADER, [[c.replace("**", "") for c in r] for r in ratios]))  # fmt: skip
    if u := capacity.unit(results):
        parts.append(capacity.console(u))
    if targets := _targets(results):
        parts.append("targets\n" + "\n".join(f"  [{'met' if t.met else 'NOT met'}] {t.name}: {t.detail}"
                                             for t in targets))  # fmt: skip
    return "\n\n".join(parts)


@dataclass
class Verdict:
    name: str
    met: bool
    detail: str


def worker_ms_per_row(point: Point) -> float:
    return _div(point.cpu_s.get("workers", float("nan")) * 1000, float(point.persisted or 0))


def _target_peer(results: Results, top: int) -> Verdict | None:
    mine, theirs = results.point("mlapi", top), results.best_peer(top)
    if mine is None or theirs is None:
        return None
    ratio = _div(mine.result.rps, theirs.result.rps)
    persisted = mine.persisted is not None and mine.persisted >= mine.answered and mine.result.errors == 0
    met = ratio >= 2 and mine.result.p99_ms <= theirs.result.p99_ms and persisted
    return Verdict(
        f"c={top}: ≥ 2x the best peer's throughput ({LABELS[theirs.system]}), p99 no higher, every row persisted",
        met,
        f"{ratio:.2f}x ({mine.result.rps:,.0f} vs {theirs.result.rps:,.0f} req/s), p99 {_ms(mine.result.p99_ms)} vs "
        f"{_ms(theirs.result.p99_ms)} ms, {mine.persisted or 0:,} rows stored for {mine.answered:,} answers, "
        f"{mine.result.errors} errors",
    )  # fmt: skip


def _target_api_cpu(results: Results, top: int) -> Verdict | None:
    mine, floor = results.point("mlapi", top), results.point("floor", top)
    if mine is None or floor is None or not mine.answered or not floor.answered:
        return None
    api, bare = mine.cpu_s["api"] * 1e6 / mine.answered, floor.cpu_s["server"] * 1e6 / floor.answered
    return Verdict(f"c={top}: API CPU per request within 2x of the floor's", api <= 2 * bare,
                   f"{api:,.0f} vs {bare:,.0f} µs ({_ratio(_div(api, bare))})")  # fmt: skip


def python_memory(point: Point) -> probes.Memory | None:
    """The memory of a system's Python processes: mlapi's API and workers, a peer's whole process tree."""
    groups = ["api", "workers"] if point.system == "mlapi" else ["server"]
    found = [point.memory[g] for g in groups if g in point.memory]
    if not found:
        return None
    return probes.Memory(sum(m.pss_mb for m in found), sum(m.rss_mb for m in found), sum(m.processes for m in found))


def _target_memory(results: Results, top: int) -> Verdict | None:
    mine, theirs = results.point("mlapi", top), results.best_peer(top)
    if mine is None or theirs is None:
        return None
    a, b = python_memory(mine), python_memory(theirs)
    if a is None or b is None:
        return None
    return Verdict(
        f"memory: mlapi's Python processes no more than the best peer's ({LABELS[theirs.system]}), PSS",
        a.pss_mb <= b.pss_mb,
        f"{a.pss_mb:,.0f} MB in {a.processes} processes vs {b.pss_mb:,.0f} MB in {b.processes} (RSS {a.rss_mb:,.0f} "
        f"vs {b.rss_mb:,.0f} MB)",
    )  # fmt: skip


def _target_floor(results: Results, top: int) -> Verdict | None:
    mine, floor = results.point("mlapi", top), results.point("floor", top)
    if mine is None or floor is None:
        return None
    share = _div(mine.result.rps, floor.result.rps)
    return Verdict(f"c={top}: ≥ 40 % of the bare floor's throughput", share >= 0.4,
                   f"{share:.0%} ({mine.result.rps:,.0f} vs {floor.result.rps:,.0f} req/s)")  # fmt: skip


def _target_lone(results: Results) -> Verdict | None:
    mine, theirs = results.point("mlapi", 1), results.point("inprocess", 1)
    if mine is None or theirs is None:
        return None
    return Verdict("c=1: p50 no higher than the in-process pipeline's", mine.result.p50_ms <= theirs.result.p50_ms,
                   f"{_ms(mine.result.p50_ms)} vs {_ms(theirs.result.p50_ms)} ms")  # fmt: skip


def _target_cost(results: Results, top: int) -> Verdict | None:
    mine = results.point("mlapi", top)
    batched = next((c for c in results.pipeline if c.batch == max(x.batch for x in results.pipeline)), None)
    if mine is None or batched is None:
        return None
    worker, own = worker_ms_per_row(mine), batched.pipeline_ms / batched.batch
    return Verdict(
        f"worker CPU per row within 2x of the pipeline's own predict_proba per row at {batched.batch} rows",
        worker <= 2 * own,
        f"{worker * 1000:.0f} µs of worker CPU per row at c={top} vs {own * 1000:.0f} µs per row in "
        f"predict_proba({batched.batch} rows) ({_ratio(_div(worker, own))})",
    )  # fmt: skip


def _target_history(results: Results) -> Verdict | None:
    if len(results.history) < 2:
        return None
    small, large = min(results.history), max(results.history)
    worst = max(_div(large_r.p99_ms, results.history[small][q].p99_ms) for q, large_r in results.history[large].items())
    return Verdict(
        f"GET /predictions p99 at {large:,} rows within 2x of its p99 at {small:,} rows", worst <= 2,
        f"worst query {_ratio(worst)}",
    )  # fmt: skip


def _targets(results: Results) -> list[Verdict]:
    top = max(results.plan.concurrencies)
    checks: list[Callable[[], Verdict | None]] = [
        lambda: _target_peer(results, top), lambda: _target_floor(results, top), lambda: _target_lone(results),
        lambda: _target_cost(results, top), lambda: _target_api_cpu(results, top),
        lambda: _target_memory(results, top), lambda: _target_history(results),
    ]  # fmt: skip
    return [v for check in checks if (v := check()) is not None]


def _bins(batches: dict[int, int]) -> list[tuple[str, int]]:
    edges = [(1, 1), (2, 4), (5, 8), (9, 16), (17, 32), (33, 64)]
    out = [(f"{lo}-{hi}" if lo != hi else str(lo), sum(n for s, n in batches.items() if lo <= s <= hi))
           for lo, hi in edges]  # fmt: skip
    if above := sum(n for s, n in batches.items() if s > 64):
        out.append(("> 64", above))
    return out


def _batch_section(results: Results) -> list[str]:
    points = [p for p in results.points if p.system == "mlapi" and p.batches]
    if not points:
        return []
    header = ["rows in the batch", *(f"c={p.result.concurrency}" for p in points)]
    binned = [_bins(p.batches or {}) for p in points]
    rows = [[label, *(f"{b[i][1]:,}" for b in binned)] for i, (label, _) in enumerate(binned[0])]
    means = [_div(sum(s * n for s, n in (p.batches or {}).items()), sum((p.batches or {}).values())) for p in points]
    rows.append(["**mean rows per batch, by request**", *(f"{m:.1f}" for m in means)])
    probed = [p for p in points if p.probe_ok]
    return [
        "## Batches the workers formed",
        "",
        "Requests by the number of rows in the batch they were predicted in, from the `batch` entry of the "
        "`Server-Timing` header. hey discards headers, so beside the load a probe sends one request every 50 ms "
        f"and reads it ({', '.join(f'{p.probe_ok:,} at c={p.result.concurrency}' for p in probed)}; their rows "
        "are stored and counted too). At c=1 one request is in flight, so every batch is that one row.",
        "",
        _md_table(header, rows),
        "",
    ]


def _cost_section(results: Results) -> list[str]:
    lines = ["## Worker cost per row", ""]
    rows = [[f"pipeline.predict_proba(DataFrame), {c.batch} row(s)", f"{c.pipeline_ms:.2f}",
             f"{c.pipeline_ms / c.batch * 1000:.0f}"] for c in results.pipeline]  # fmt: skip
    rows += [[f"SklearnModel.scores (mlapi's fast path), {c.batch} row(s)", f"{c.lean_ms:.2f}",
              f"{c.lean_ms / c.batch * 1000:.0f}"] for c in results.pipeline]  # fmt: skip
    for p in results.points:
        if p.system == "mlapi" and p.persisted:
            per_row = worker_ms_per_row(p)
            what = f"mlapi worker CPU, all of it (decode, validate, predict, store, reply), c={p.result.concurrency}"
            rows.append([what, "-", f"{per_row * 1000:.0f}"])
    lines += [
        "The pipeline's own cost is the median CPU time of one call in the benchmark process, single-threaded. "
        "The worker's cost is the CPU time both worker processes spent during the point divided by the rows "
        "they stored: everything a worker does for a row, not only the predict.",
        "",
        _md_table(["what", "CPU ms per call", "µs per row"], rows),
        "",
    ]
    return lines


def _cpu_section(results: Results) -> list[str]:
    order = ["server", "api", "workers", "redis", "postgres"]
    groups = sorted({g for p in results.points for g in p.cpu_s}, key=order.index)
    names = {"server": "server", "api": "API", "workers": "workers", "redis": "Redis", "postgres": "PostgreSQL"}
    rows = []
    for p in results.points:
        if not p.answered or not p.result.seconds:
            continue
        cells = [f"{p.cpu_s[g] * 1e6 / p.answered:,.0f}" if g in p.cpu_s else "" for g in groups]
        client = p.result.client_cpu_s
        busy = (sum(p.cpu_s.values()) + (0 if math.isnan(client) else client)) / p.result.seconds
        rows.append([LABELS.get(p.system, p.system), str(p.result.concurrency), *cells,
                     "-" if math.isnan(client) else f"{client * 1e6 / p.answered:,.0f}", f"{busy:.2f}"])  # fmt: skip
    return [
        "## CPU per request",
        "",
        "CPU time (user + system, from /proc; PostgreSQL with its backends) each part spent per answered request, "
        "and the cores all of them, the load generator included, kept busy on average. The machine has 2, "
        "shared with other work: what is not listed went to other processes.",
        "",
        _md_table(["system", "c", *(f"{names[g]} µs/req" for g in groups), "hey µs/req", "cores busy"], rows),
        "",
    ]


def _memory_section(results: Results) -> list[str]:
    top = results.plan.top
    rows = []
    for name in results.plan.systems:
        p = results.point(name, top)
        if p is None or not p.memory:
            continue
        for group, m in p.memory.items():
            what = {"server": "all its processes", "api": "API (Python)", "workers": "workers (Python)",
                    "redis": "Valkey (separate)", "postgres": "PostgreSQL (separate)"}[group]  # fmt: skip
            rows.append([LABELS[name], what, str(m.processes), f"{m.pss_mb:,.0f}", f"{m.rss_mb:,.0f}"])
        if name == "mlapi" and (py := python_memory(p)):
            rows.append([LABELS[name], "**Python processes (API + workers)**", str(py.processes),
                         f"**{py.pss_mb:,.0f}**", f"{py.rss_mb:,.0f}"])  # fmt: skip
    return [
        "## Memory",
        "",
        f"Resident memory right after each c={top} point (the largest over the rounds), each process tree summed "
        "from /proc/PID/smaps_rollup. **PSS** (proportional set size) is what the targets read: a page shared by "
        "several processes (forked workers, shared libraries) is divided among them, so a tree's PSS is what it "
        "really holds; RSS counts shared pages in full in every process. The baselines run from mlapi's venv and "
        "would share its libraries' pages (lowering its PSS), so mlapi is measured again once every other system "
        "is stopped, and the larger figure kept; each peer has its own venv.",
        "",
        _md_table(["system", "processes measured", "count", "PSS MB", "RSS MB"], rows),
        "",
    ]


def _trials_section(results: Results) -> list[str]:
    if not results.trials:
        return []
    rows = [[LABELS[t.system], t.config, f"{t.result.rps:,.0f}", _ms(t.result.p99_ms), f"{t.result.errors:,}",
             "kept" if t.kept else ""] for t in results.trials]  # fmt: skip
    return [
        "## The peers' configurations tried",
        "",
        f"Each configuration alone on the machine, {results.plan.trial_seconds:g} s at c={results.plan.top} after "
        "a warm-up; the fastest without errors is the one measured.",
        "",
        _md_table(["system", "configuration", "req/s", "p99 ms", "errors", ""], rows),
        "",
    ]


def _per_prediction_section(results: Results) -> list[str]:
    u = capacity.unit(results)
    if u is None:
        return []
    return [
        f"## Per prediction, mlapi at c={u.concurrency}",
        "",
        f"What [capacity.md]({capacity.MARKDOWN}) plans from: CPU from /proc over the rounds, Redis commands "
        "from `INFO commandstats`, PostgreSQL rows from `pg_stat_database` and WAL from `pg_current_wal_lsn()`.",
        "",
        _md_table(["figure", "value"], [[n, v] for n, v in capacity.figures(u)]),
        "",
    ]


def _section(title: str, intro: str, table: str) -> list[str]:
    return [f"## {title}", "", intro, "", table, ""]


def _load_rows(named: dict[str, LoadResult]) -> list[list[str]]:
    return [[name, f"{r.rps:,.0f}", _ms(r.p50_ms), _ms(r.p99_ms), f"{r.errors:,}"] for name, r in named.items()]


def _extras_sections(results: Results) -> list[str]:
    x, plan = results.extras, results.plan
    if x is None:
        return []
    lines = _section(
        "What each feature costs",
        f"One more stack (Valkey, PostgreSQL, two workers) with one API process per setting, differing only in "
        f"it; hey at c={plan.top}, {plan.extras_seconds:g} s per run, median of {plan.rounds} round(s) in rotating "
        "order, the queue drained before each run. The targets are measured with all of them off.",
        _md_table(["setting", "req/s", "p50 ms", "p99 ms", "errors"], _load_rows(x.features)),
    )
    if x.oip:
        tool = next(iter(x.oip.values())).tool
        lines += _section(
            "The Open Inference Protocol's paths",
            f"The same stack's API with its gRPC service on; c={plan.top}, {plan.extras_seconds:g} s per path, "
            f"median of {plan.rounds} rotated round(s), one diabetes-risk row per request. hey speaks no gRPC, so "
            f"one load generator drives all four alike: {tool}, in the benchmark's process (slower than hey, so "
            "compare these rows with each other, not with the main table).",
            _md_table(["path", "req/s", "p50 ms", "p99 ms", "errors"], _load_rows(x.oip)),
        )
    if x.runtimes:
        rows = []
        for r in x.runtimes:
            one, many = r.cost_us.get(1, float("nan")), r.cost_us.get(64, float("nan"))
            load = r.load
            rows.append([r.model, r.runtime, f"{one:,.0f}", f"{many:,.0f}", f"{many / 64:,.1f}",
                         f"{load.rps:,.0f}" if load else "-", _ms(load.p50_ms) if load else "-",
                         _ms(load.p99_ms) if load else "-", f"{load.errors:,}" if load else "-"])  # fmt: skip
        bundled = next((c for c in results.pipeline if c.batch == 64), None)
        lines += [
            "## Each runtime",
            "",
            "A 100-tree classifier per runtime trained on scikit-learn's breast-cancer data (30 numeric features), "
            "and the scikit-learn pipeline in both shapes of its runtime (the compiled fast path; the generic "
            "path, a scaler before the trees). The runtime's own `predict` is the median CPU time of "
            f"{plan.runtime_repeats} calls in the benchmark process, one thread; throughput is through the whole "
            f"stack (every row stored), hey at c={plan.top} for {plan.extras_seconds:g} s."
            + (
                f" The bundled model's compiled fast path costs {bundled.lean_ms * 1000:,.0f} µs per batch of 64 rows "
                "(*Worker cost per row*); its throughput is the main table's."
                if bundled
                else ""
            ),
            "",
            _md_table(
                [
                    "model",
                    "runtime",
                    "µs per batch of 1",
                    "µs per batch of 64",
                    "µs per row at 64",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                ],
                rows,
            ),
            "",
        ]
    return lines


def _lone_section(results: Results) -> list[str]:
    b = results.lone
    if b is None:
        return []
    rows = [
        ["client round trip (httpx)", _ms(b.client_ms)],
        ["API total (`Server-Timing: total`)", _ms(b.total_ms)],
        ["  accepted → taken by a worker (`queue`: enqueue, stream wake-up)", f"{b.queue_ms:.2f}"],
        ["  predict (`predict`)", f"{b.predict_ms:.2f}"],
        ["  commit to PostgreSQL (`store`)", f"{b.store_ms:.2f}"],
        ["  API: parse, validate, reply stream, response (the rest)", f"{b.api_and_reply_ms:.2f}"],
        ["rows in the batch (`batch`)", f"{b.batch_rows:.0f}"],
    ]
    return [
        "## Where a lone request's time goes",
        "",
        f"Medians of {b.requests} sequential requests, from the `Server-Timing` header the API returns.",
        "",
        _md_table(["part", "ms"], rows),
        "",
    ]


def _history_section(results: Results) -> list[str]:
    if not results.history:
        return []
    rows = []
    for n, queries in sorted(results.history.items()):
        for name, r in queries.items():
            rows.append([f"{n:,}", name, _ms(r.p50_ms), _ms(r.p99_ms), f"{r.rps:,.0f}", f"{r.errors}"])
    plan = results.plan
    return [
        "## History at scale",
        "",
        f"`GET /predictions?limit=50` against a table holding each number of rows, generated directly into "
        f"PostgreSQL; {plan.history_seconds:g} s per query at c={plan.history_concurrency}.",
        "",
        _md_table(["rows stored", "query", "p50 ms", "p99 ms", "req/s", "errors"], rows),
        "",
    ]


def markdown(results: Results) -> str:
    plan = results.plan
    command = "make bench QUICK=1" if plan.quick else "make bench"
    targets = _targets(results)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` (`python -m benchmarks{' --quick' if plan.quick else ''}`) on "
        f"{results.started:%Y-%m-%d %H:%M} UTC in {results.seconds / 60:.0f} min; {results.machine}. "
        f"Load from {results.tool} on the same machine, against 127.0.0.1, the same 8-field diabetes sample for "
        f"every system. All run at once after a {plan.warmup_s:g} s warm-up each and take turns, every system but "
        "the one under load paused (SIGSTOP on its process groups; resumed, it gets a "
        f"{plan.rewarm_s:g} s re-warm before its point): each point is {plan.rounds} round(s) of {plan.seconds:g} s "
        "per system, the order rotating each round, and the table gives the median round (errors and counts are "
        f"totals; errors in the re-warms: {sum(results.rewarm_errors.values()):,}). **The best peer** is the fastest "
        "of MLServer, BentoML and LitServe at each concurrency. mlapi's workers run with their predict watchdog "
        "(which ends a worker whose event loop has not run for 30 s) at an hour, as a pause looks like a hang to "
        "it. Load average "
        f"(1 min) {results.load_before} at the start, {_load_now()} at the end.",
        "",
        "The machine is small and shared, and the load generator competes with the servers for its cores: "
        "absolute numbers move by tens of percent between runs. **The ratios, all from this one run, are what "
        "to read.** Latency percentiles are as the load tool reports them.",
        "",
        f"![throughput and p99 against concurrency]({PLOT})",
        "",
        _md_table(RESULT_HEADER, _rows(results)),
        "",
        *_rounds_section(results),
        "## mlapi relative to each, same run",
        "",
        "Throughput: above 1x is better. Latency: below 1x is better.",
        "",
        _md_table(RATIO_HEADER, _ratios(results)),
        "",
        "## Targets",
        "",
        *(f"- {'✅ met' if t.met else '❌ not met'}: {t.name}: {t.detail}." for t in targets),
        "",
        *_per_prediction_section(results),
        *_memory_section(results),
        *_batch_section(results),
        *_cpu_section(results),
        *_cost_section(results),
        *_lone_section(results),
        *_history_section(results),
        *_extras_sections(results),
        *_trials_section(results),
        "## The systems",
        "",
        *(f"- **{LABELS[s]}**{_config(results, s)}: {DESCRIPTIONS[s]}" for s in plan.systems),
        "",
    ]
    return "\n".join(lines)


def _config(results: Results, system: str) -> str:
    config = results.configs.get(system)
    return f" ({config})" if config else ""


def plot(results: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in results.plan.systems:
        points = sorted((p for p in results.points if p.system == system), key=lambda p: p.result.concurrency)
        if not points:
            continue
        cs = [p.result.concurrency for p in points]
        style = {"linewidth": 2.5} if system == "mlapi" else {"linewidth": 1.5}
        left.plot(cs, [p.result.rps for p in points], marker="o", label=LABELS[system], **style)
        right.plot(cs, [p.result.p99_ms for p in points], marker="o", label=LABELS[system], **style)
    for ax, title, unit in ((left, "Throughput", "requests / s"), (right, "p99 latency", "ms (log scale)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(results.plan.concurrencies), [str(c) for c in results.plan.concurrencies])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.suptitle(f"make bench, {results.started:%Y-%m-%d}, {results.machine.split(', Linux')[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(results.plan.out_dir / PLOT, dpi=110)
    plt.close(fig)


def write(results: Results) -> None:
    (results.plan.out_dir / MARKDOWN).write_text(markdown(results))
    plot(results)
    capacity.write(results)
