"""Cost of one predict call of the scikit-learn runtime on the bundled diabetes-risk: fast and generic paths.

    .venv/bin/python scripts/bench_runtime.py [--repeats N]

Prints a markdown table of the median time per call for batches of 1 and 64 rows: the runtime's fast path
(compiled NumPy encoding), its generic path (one DataFrame per batch through the whole pipeline), and the
pipeline's own `predict_proba(DataFrame)` as the baseline (a frame built outside the timing). One thread, as
the worker runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import pandas as pd
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from mlapi import runtimes
from mlapi.contract import Value
from mlapi.models.spec import ARTIFACT_FILE, ModelSpec
from mlapi.runtimes.sklearn import SklearnModel
from mlapi.settings import PACKAGE_DIR

MODEL_DIR = PACKAGE_DIR / "models" / "registry" / "diabetes-risk"


def rows(spec: ModelSpec, n: int, seed: int = 0) -> list[dict[str, Value]]:
    """Valid rows spread over every category and each training range."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row: dict[str, Value] = {}
        for f in spec.features:
            if f.kind == "category":
                row[f.name] = rng.choice(f.values or [])
            elif f.kind == "flag":
                row[f.name] = rng.randint(0, 1)
            else:
                low, high = f.training_range or (0.0, 100.0)
                row[f.name] = round(rng.uniform(low, high), 2)
        out.append(row)
    return out


def median_us(call: Callable[[], object], repeats: int) -> float:
    for _ in range(max(10, repeats // 20)):  # warm caches and lazy imports
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per cell (default 2000)")
    args = parser.parse_args()
    spec = ModelSpec.read(MODEL_DIR)
    fast = runtimes.load(spec, (MODEL_DIR / ARTIFACT_FILE).read_bytes())
    assert isinstance(fast, SklearnModel) and fast.fast, "diabetes-risk should take the fast path"
    generic = SklearnModel(spec, fast.estimator, fast=False)
    print(f"diabetes-risk, {args.repeats} calls per cell, median; one thread\n")
    print("| path | rows | µs per batch | µs per row |")
    print("|---|---:|---:|---:|")
    with threadpool_limits(1):
        for n in (1, 64):
            batch = rows(spec, n)
            frame = pd.DataFrame(batch)
            cells = [
                ("fast: `SklearnModel.predict` (compiled encoding)", lambda b=batch: fast.predict(b)),
                ("generic: `SklearnModel.predict` (DataFrame per batch)", lambda b=batch: generic.predict(b)),
                ("baseline: `pipeline.predict_proba(frame)`", lambda f=frame: fast.estimator.predict_proba(f)),
            ]
            for name, call in cells:
                us = median_us(call, args.repeats)
                print(f"| {name} | {n} | {us:,.0f} | {us / n:,.1f} |")


if __name__ == "__main__":
    main()
