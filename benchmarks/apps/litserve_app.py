"""LitServe serving the exported pipeline with batching on, run by the LitServe venv's Python:

python litserve_app.py MODEL.joblib LABELS_JSON PORT WORKERS FAST_QUEUE(0|1) MAX_BATCH BATCH_TIMEOUT_S
"""

import json
import sys
from typing import Any

import joblib  # type: ignore[import-untyped]
import litserve as ls
import pandas as pd


class Pipeline(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, path: str, labels: list[str], max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.path, self.labels = path, labels

    def setup(self, device: str) -> None:
        self.model = joblib.load(self.path)

    def decode_request(self, request: dict[str, Any]) -> dict[str, Any]:
        return request

    def batch(self, inputs: list[dict[str, Any]]) -> pd.DataFrame:
        return pd.DataFrame(inputs)

    def predict(self, frame: pd.DataFrame) -> Any:
        return self.model.predict_proba(frame)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, probabilities: Any) -> dict[str, Any]:
        k = int(probabilities.argmax())
        return {"prediction": k, "label": self.labels[k], "probability": float(probabilities[k])}


def main(argv: list[str]) -> None:
    path, labels, port, workers, fast_queue, max_batch, timeout = argv
    api = Pipeline(path, json.loads(labels), int(max_batch), float(timeout))
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=int(workers), fast_queue=fast_queue == "1")
    server.run(host="127.0.0.1", port=int(port), generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
