"""What each runtime costs: its own predict per batch of 1 and 64 rows, and throughput through the whole stack.

    .venv/bin/python scripts/runtime_costs.py [--seconds 10] [--repeats 1000]

Trains one gradient-boosted classifier per runtime on scikit-learn's bundled breast-cancer data (30
numeric features, 100 trees each), plus the scikit-learn pipeline in both of its runtime's shapes (the fast
path, a ColumnTransformer of passthrough columns before the trees, and the generic path, a scaler before
them). Then it:

1. loads each artifact with `mlapi.runtimes.load` as a worker does and times `predict` on 1 and 64 rows
   (median of `--repeats` calls, one thread);
2. starts the whole stack (Valkey, PostgreSQL, the API, two workers; every row stored), adds each model with
   the Python client (the CLI's engine) and runs `hey` at 64 clients for `--seconds` against each model's
   predict endpoint in turn.

Prints one markdown table. The machine is shared and noisy: read ratios between rows of one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from mlapi import runtimes
from mlapi.bench.load import Target, ensure_hey, run_hey
from mlapi.bench.systems import mlapi_stack
from mlapi.client import Client
from mlapi.contract import Value
from mlapi.models.manage import prepare
from mlapi.settings import PACKAGE_DIR

TREES = 100
CLIENTS = 64


def models(x: pd.DataFrame, y: pd.Series[int]) -> dict[str, tuple[str, Any]]:
    """name -> (runtime, a fitted model the client saves in that runtime's format)."""
    import lightgbm
    import xgboost
    from skl2onnx import to_onnx

    columns = list(x.columns)
    fast = Pipeline([
        ("features", ColumnTransformer([("numbers", "passthrough", columns)])),
        ("trees", HistGradientBoostingClassifier(max_iter=TREES, random_state=0)),
    ]).fit(x, y)  # fmt: skip
    generic = make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=TREES, random_state=0)).fit(x, y)
    # skl2onnx cannot convert HistGradientBoosting here (it writes booleans where ONNX wants ints): the same
    # scaler before 100 classic gradient-boosted trees of depth 3.
    exported = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=TREES, random_state=0)).fit(x, y)
    onnx = to_onnx(exported, x.to_numpy(dtype="float32")[:1], options={"zipmap": False}, target_opset=17)
    return {
        "sklearn-fast": ("sklearn", fast),
        "sklearn-generic": ("sklearn", generic),
        "xgboost": ("xgboost", xgboost.XGBClassifier(n_estimators=TREES, max_depth=6, n_jobs=1).fit(x, y)),
        "lightgbm": ("lightgbm", lightgbm.LGBMClassifier(n_estimators=TREES, n_jobs=1, verbose=-1).fit(x, y)),
        "onnx": ("onnx", onnx),
    }


def median_us(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="hey's duration per model")
    parser.add_argument("--repeats", type=int, default=1000, help="predict calls per cost measurement")
    args = parser.parse_args()
    data = load_breast_cancer(as_frame=True)
    x, y = data.data, data.target  # class numbers: XGBoost's classifier takes no text labels
    sample = x.head(200).assign(target=y.head(200))
    trained = models(x, y)
    hey = ensure_hey()
    table = []
    with tempfile.TemporaryDirectory() as work, mlapi_stack(PACKAGE_DIR / "models" / "registry" / "diabetes-risk",
                                                             Path(work)) as stack:  # fmt: skip
        client = Client(stack.base_url)
        for name, (runtime, model) in trained.items():
            upload = prepare(name, model, data=sample, target="target", runtime=runtime)
            info = client.upload(name, upload)
            loaded = runtimes.load(info.spec, upload.artifact)  # as a worker loads it
            rows: list[dict[str, Value]] = [info.spec.validate_row(r) for r in x.head(64).to_dict("records")]
            with threadpool_limits(1):
                costs = {n: median_us(partial(loaded.predict, rows[:n]), args.repeats) for n in (1, 64)}
            fast = getattr(loaded, "fast", None)
            assert fast is None or fast == (name == "sklearn-fast"), f"{name} took the wrong path"
            ready_until = time.monotonic() + 60
            while client.version(name, info.version).ready < 1 and time.monotonic() < ready_until:
                time.sleep(0.2)  # a script, not a test: waiting for the workers to load the new version
            body = json.dumps(rows[0]).encode()
            target = Target(f"{stack.base_url}/models/{name}/predict", body)
            load = run_hey(hey, target, CLIENTS, args.seconds, Path(work) / "body.json") if hey else None
            table.append((name, runtime, costs, load))
    print(f"breast cancer, {TREES} trees per model; predict: median of {args.repeats} calls, one thread; "
          f"stack: hey, {CLIENTS} clients, {args.seconds:g} s per model, every row stored\n")  # fmt: skip
    print("| model | runtime | µs per batch of 1 | µs per batch of 64 | µs per row at 64 | req/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, runtime, costs, load in table:
        one, many = costs.get(1, float("nan")), costs.get(64, float("nan"))
        rps, p50, p99 = (load.rps, load.p50_ms, load.p99_ms) if load else (float("nan"),) * 3
        cells = [
            name,
            runtime,
            f"{one:,.0f}",
            f"{many:,.0f}",
            f"{many / 64:,.1f}",
            f"{rps:,.0f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
