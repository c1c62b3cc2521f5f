"""BentoML serving the exported pipeline with adaptive batching, run by `bentoml serve bentoml_app:Pipeline`
from the BentoML venv. Settings from the environment: BENCH_MODEL (the joblib file), BENCH_LABELS (JSON),
BENCH_WORKERS, BENCH_MAX_BATCH, BENCH_MAX_LATENCY_MS."""

import json
import os
from typing import Any

import bentoml
import joblib  # type: ignore[import-untyped]
import pandas as pd


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class Pipeline:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])
        self.labels = json.loads(os.environ["BENCH_LABELS"])

    @bentoml.api(  # type: ignore[untyped-decorator]
        batchable=True,
        max_batch_size=int(os.environ.get("BENCH_MAX_BATCH", "64")),
        max_latency_ms=int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000")),
    )
    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for probabilities in self.model.predict_proba(pd.DataFrame(rows)):
            k = int(probabilities.argmax())
            out.append({"prediction": k, "label": self.labels[k], "probability": float(probabilities[k])})
        return out
