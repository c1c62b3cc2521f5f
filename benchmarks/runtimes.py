"""What each runtime costs: its own predict per batch of 1 and 64 rows, and throughput through the whole stack.

Trains one gradient-boosted classifier per runtime on scikit-learn's bundled breast-cancer data (30 numeric
features, 100 trees each), plus the scikit-learn pipeline in both of its runtime's shapes (the fast path, a
ColumnTransformer of passthrough columns before the trees, and the generic path, a scaler before them). Each is
added to a running stack with the Python client (the CLI's engine), loaded with `mlapi.runtimes.load` as a
worker loads it to time `predict` on 1 and 64 rows (median CPU time, one thread), and loaded through the whole
stack at the top concurrency. The bundled model's compiled fast path is the main table's mlapi row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from benchmarks import probes
from benchmarks.load import LoadGenerator, LoadResult, Target
from benchmarks.systems import wait_for
from mlapi import runtimes
from mlapi.client import Client
from mlapi.contract import Value
from mlapi.models.manage import prepare

TREES = 100


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


def median_cpu_us(call: Callable[[], object], repeats: int) -> float:
    """CPU time, as the benchmark's other costs: wall time on a shared machine measures the neighbours."""
    return probes.median_cpu_ms(call, repeats) * 1000


@dataclass
class Row:
    model: str
    runtime: str
    cost_us: dict[int, float]
    """The runtime's own predict, median CPU µs per call, by rows in the batch."""
    load: LoadResult | None
    fast: bool | None = None


def measure(base_url: str, load: LoadGenerator, clients: int, seconds: float, repeats: int) -> list[Row]:
    """Add each model to the running stack at `base_url`, time its runtime's predict as a worker loads it, and
    load its predict endpoint through the whole stack."""
    data = load_breast_cancer(as_frame=True)
    x, y = data.data, data.target  # class numbers: XGBoost's classifier takes no text labels
    sample = x.head(200).assign(target=y.head(200))
    client = Client(base_url)
    out = []
    for name, (runtime, model) in models(x, y).items():
        upload = prepare(name, model, data=sample, target="target", runtime=runtime)
        info = client.upload(name, upload)
        loaded = runtimes.load(info.spec, upload.artifact)  # as a worker loads it
        rows: list[dict[str, Value]] = [info.spec.validate_row(r) for r in x.head(64).to_dict("records")]
        with threadpool_limits(1):
            costs = {n: median_cpu_us(partial(loaded.predict, rows[:n]), repeats) for n in (1, 64)}
        fast = getattr(loaded, "fast", None)
        assert fast is None or fast == (name == "sklearn-fast"), f"{name} took the wrong path"
        wait_for(f"{base_url}/models/{name}/versions/{info.version}", f"the workers to load {name}",
                 lambda v: v.get("ready", 0) >= 1)  # fmt: skip
        target = Target(f"{base_url}/models/{name}/predict", json.dumps(rows[0]).encode())
        result = load.run(target, clients, seconds)
        print(f"  runtime {name:<16} {costs[1]:7,.0f} µs/1 row  {costs[64]:7,.0f} µs/64 rows  "
              f"{result.rps:8,.0f} req/s  p99 {result.p99_ms:6.1f} ms  errors {result.errors}", flush=True)  # fmt: skip
        out.append(Row(name, runtime, costs, result, fast))
    return out
