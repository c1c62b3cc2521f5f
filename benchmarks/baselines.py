"""The two FastAPI baselines, written as a user would: `python -m benchmarks.baselines floor|inprocess PORT`.

`floor` validates the body with the model's own pydantic schema and answers a constant: the most any
FastAPI service can do on this machine. `inprocess` calls the trained pipeline on a one-row DataFrame
in a plain `def` endpoint (FastAPI runs it in its thread pool), the usual way to serve a model.
"""

# No `from __future__ import annotations`: FastAPI must see the sample class itself in the signatures.
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from mlapi.models.spec import ModelSpec

CONSTANT = {"prediction": 0, "label": "no diabetes", "probability": 0.9}


def floor_app(spec: ModelSpec) -> FastAPI:
    app = FastAPI()
    sample_type = spec.sample_type

    @app.post("/predict")
    async def predict(sample: sample_type) -> dict[str, Any]:  # type: ignore[valid-type]
        return CONSTANT

    return app


def inprocess_app(model_dir: Path) -> FastAPI:
    import pandas as pd

    from benchmarks.probes import load_bundled

    model = load_bundled(model_dir)
    pipeline, labels = model.estimator, model.spec.labels
    sample_type = model.spec.sample_type
    app = FastAPI()

    @app.post("/predict")
    def predict(sample: sample_type) -> dict[str, Any]:  # type: ignore[valid-type]
        row = sample.model_dump(by_alias=True)  # type: ignore[attr-defined]
        probabilities = pipeline.predict_proba(pd.DataFrame([row]))[0]
        k = int(probabilities.argmax())
        return {"prediction": k, "label": labels[k], "probability": float(probabilities[k])}

    return app


def main(argv: list[str]) -> None:
    import uvicorn

    kind, port, model_dir = argv[0], int(argv[1]), Path(argv[2])
    app = floor_app(ModelSpec.read(model_dir)) if kind == "floor" else inprocess_app(model_dir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
