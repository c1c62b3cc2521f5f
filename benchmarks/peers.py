"""The peers as users deploy them: each in its own venv created on first use, serving the bundled pipeline
exported with joblib (their format, written only for them; mlapi itself loads skops only), each asked for
`predict_proba` on the same sample.

- MLServer with `mlserver-sklearn` and adaptive batching, the V2 inference protocol with the pandas codec.
- BentoML with `@bentoml.api(batchable=True)`: adaptive batching, at most 64 rows a batch.
- LitServe with batching on: at most 64 rows a batch, a 2 ms window.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlapi.models.spec import ModelSpec

APPS = Path(__file__).parent / "apps"
"""The peers' own server scripts, run by their venvs' Python (they import nothing of mlapi)."""

MLSERVER_MAX_BATCH_SIZE = 32
MLSERVER_MAX_BATCH_TIME_S = 0.002
BATCH_ROWS = 64
"""BentoML's and LitServe's largest batch."""
LITSERVE_BATCH_TIMEOUT_S = 0.002
BENTOML_MAX_LATENCY_MS = 1000
"""BentoML's latency budget for its adaptive batcher (its documentation's example value)."""


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]
    executable: str
    """The venv's program that serves: `mlserver`, `bentoml` or `python`."""


PEERS = {
    # mlserver pins an old FastAPI; its parallel workers crash with uvloop 0.22 and later.
    "mlserver": Peer("mlserver", ("mlserver>=1.7,<1.8", "mlserver-sklearn>=1.7,<1.8", "uvloop<0.22"), "mlserver"),
    "bentoml": Peer("bentoml", ("bentoml>=1.4,<1.5", "pandas"), "bentoml"),
    # pyzmq: LitServe's `fast_queue`.
    "litserve": Peer("litserve", ("litserve>=0.2,<0.3", "pandas", "pyzmq"), "python"),
}


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def ensure_venv(peer: Peer, root: Path) -> Path:
    """The serving executable of the peer's venv under `root`, created on first use with the scikit-learn
    version mlapi runs (so the exported pipeline loads as trained)."""
    venv = (root / f"{peer.name}-venv").resolve()
    executable = venv / "bin" / peer.executable
    stamp = venv / ".installed"
    wanted = " ".join([*peer.requirements, f"scikit-learn=={_sklearn_version()}"])
    if stamp.exists() and stamp.read_text() == wanted:
        return executable
    print(f"creating the {peer.name} venv in {venv} (once; a minute or two) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *wanted.split(" ")],
        check=True,
    )
    stamp.write_text(wanted)
    return executable


def export_pipeline(model_dir: Path, out_dir: Path) -> Path:
    """The bundled pipeline as a joblib file in `out_dir`; returns its path."""
    import joblib  # type: ignore[import-untyped]

    from benchmarks.probes import load_bundled

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.joblib"
    joblib.dump(load_bundled(model_dir).estimator, path)
    return path


def mlserver_folder(model_dir: Path, out_dir: Path, ports: tuple[int, int, int]) -> Path:
    """The joblib artifact and MLServer's two settings files; returns the folder `mlserver start` takes."""
    spec = ModelSpec.read(model_dir)
    export_pipeline(model_dir, out_dir)
    http, grpc, metrics = ports
    server = {"debug": False, "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
              "parallel_workers": 0}  # fmt: skip
    model_settings = {
        "name": spec.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": MLSERVER_MAX_BATCH_SIZE,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
        "parameters": {"uri": "./model.joblib", "version": str(spec.version)},
    }
    (out_dir / "settings.json").write_text(json.dumps(server, indent=2))
    (out_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return out_dir


def v2_body(spec: ModelSpec, sample: dict[str, Any]) -> bytes:
    """The sample as a V2 inference request decoded into a one-row DataFrame by MLServer's pandas codec."""
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


def bentoml_body(sample: dict[str, Any]) -> bytes:
    """A batchable BentoML API takes a list: the sample as a batch of one."""
    return json.dumps({"rows": [sample]}).encode()
