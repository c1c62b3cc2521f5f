"""MLServer as users deploy it: its own venv, the pipeline exported the way `mlserver-sklearn` loads it.

The joblib file is MLServer's format, written only for this baseline; mlapi itself loads skops only.
The request is the V2 inference protocol with the pandas codec: the same sample, one input per column,
asking for `predict_proba` so every system computes the same thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlapi.models.spec import ModelSpec

MAX_BATCH_SIZE = 32
MAX_BATCH_TIME_S = 0.002
# mlserver pins an old FastAPI; its parallel workers crash with uvloop 0.22 and later.
REQUIREMENTS = ["mlserver>=1.7,<1.8", "mlserver-sklearn>=1.7,<1.8", "uvloop<0.22"]


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def ensure_venv(venv: Path) -> Path:
    """The `mlserver` executable of a venv created on first use, with the scikit-learn version mlapi runs."""
    executable = venv / "bin" / "mlserver"
    stamp = venv / ".installed"
    wanted = " ".join([*REQUIREMENTS, f"scikit-learn=={_sklearn_version()}"])
    if stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"creating the MLServer venv in {venv} (once; a minute or two) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *wanted.split(" ")],
        check=True,
    )
    stamp.write_text(wanted)
    return executable


def export_model(model_dir: Path, out_dir: Path, ports: tuple[int, int, int]) -> Path:
    """Write the joblib artifact and MLServer's two settings files; returns the folder `mlserver start` takes."""
    import joblib  # type: ignore[import-untyped]

    from mlapi.bench.probes import load_bundled

    model = load_bundled(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(model.estimator, out_dir / "model.joblib")
    http, grpc, metrics = ports
    server = {"debug": False, "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
              "parallel_workers": 0}  # fmt: skip
    model_settings = {
        "name": model.spec.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": MAX_BATCH_TIME_S,
        "parameters": {"uri": "./model.joblib", "version": model.spec.version},
    }
    (out_dir / "settings.json").write_text(json.dumps(server, indent=2))
    (out_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return out_dir


def v2_body(spec: ModelSpec, sample: dict[str, Any]) -> bytes:
    """The sample as a V2 inference request decoded into a one-row DataFrame by the pandas codec."""
    inputs = []
    for f in spec.features:
        value = sample[f.name]
        if f.kind == "category":
            inputs.append({"name": f.name, "shape": [1], "datatype": "BYTES", "data": [value]})
        elif f.kind == "flag" or f.integer:
            inputs.append({"name": f.name, "shape": [1], "datatype": "INT64", "data": [int(value)]})
        else:
            inputs.append({"name": f.name, "shape": [1], "datatype": "FP64", "data": [float(value)]})
    body = {"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": [{"name": "predict_proba"}]}
    return json.dumps(body).encode()
