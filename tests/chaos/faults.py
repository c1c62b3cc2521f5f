"""The chaos suite's model runtime, loaded by the workers as a plugin (`MLAPI_WORKER__RUNTIME_PLUGINS=
{"chaos": "tests.chaos.faults"}`): a regressor answering 2x + 1 that, on a row whose `mode` is `hang`, hangs
holding the GIL, and on `crash` kills its own process. A whole batch shares the fate of such a row.

Imported by workers, so it needs nothing beyond `mlapi` itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Sequence

from mlapi.contract import Output, Value
from mlapi.models.spec import Feature, ModelSpec, SpecBody
from mlapi.runtimes import LoadError

MODEL = "chaos-faults"
RUNTIME = "chaos"
HANG, CRASH = "hang", "crash"
SPEC = SpecBody(
    runtime=RUNTIME,
    task="regression",
    description="The chaos suite's model: 2x + 1, or a hang or a crash on a marked row",
    features=[
        Feature(name="x", kind="number", minimum=-1e6, maximum=1e6, example=1.0),
        Feature(name="mode", kind="category", values=["ok", HANG, CRASH], example="ok"),
    ],
)
ARTIFACT = b"chaos-faults: the runtime is the model\n"


def row(x: float, mode: str = "ok") -> dict[str, Value]:
    """A sample of the model: a normal one, or one marked to hang or crash its worker."""
    return {"x": x, "mode": mode}


class FaultyModel:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        for r in rows:
            if r["mode"] == HANG:
                # The worst case for a watchdog: a native call that keeps the GIL (PyDLL does not release it).
                ctypes.PyDLL(None).sleep(3600)
            elif r["mode"] == CRASH:
                os.kill(os.getpid(), signal.SIGKILL)
        return [Output(prediction=2.0 * float(r["x"]) + 1.0) for r in rows]


def load(artifact: bytes, spec: ModelSpec) -> FaultyModel:
    if artifact != ARTIFACT:
        raise LoadError("not the chaos suite's artifact")
    return FaultyModel(spec)
