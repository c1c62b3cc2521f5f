"""The ONNX runtime (onnxruntime): models exported to ONNX, classifier or regressor, as skl2onnx writes them.

Inputs: either one tensor of numbers `[rows, features]` (the spec's features in order) or one input per
column named after the spec's features (what skl2onnx makes of a mixed frame: string tensors for categories),
each fed `[rows, 1]` with the type it declares. Outputs: a regressor's one number per row; a classifier's label
output, with its probabilities either as ZipMap's sequence of maps or as a plain tensor `[rows, classes]`. The
classes come from the graph's `classlabels_*` where it records them. One intra-op and one inter-op thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from mlapi.contract import Output, Value
from mlapi.models.spec import Feature, ModelSpec, Task
from mlapi.runtimes import Inspection, LoadError

log = logging.getLogger(__name__)

Feed = Callable[[Sequence[dict[str, Value]]], dict[str, np.ndarray]]
Class = int | str

# Tensor types a feature can be fed as; strings only for categories.
_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(string)": np.object_,
}
_NUMBERS = ("tensor(float)", "tensor(double)")
_LABELS = ("tensor(int64)", "tensor(int32)", "tensor(string)")
# Ops that carry a classifier's label to the graph's output unchanged (skl2onnx's Identity, Cast, Reshape).
_LABEL_PATH = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : (/\S+:\d+ [^)]*\) )?")


class Outputs(NamedTuple):
    """Which of a model's outputs mlapi reads, and what they make of it."""

    task: Task
    first: str
    """The regressor's value or the classifier's label."""
    probabilities: str | None = None
    zipmap: bool = False
    """Whether the probabilities are ZipMap's sequence of maps (else a tensor `[rows, classes]`)."""


def _reason(e: Exception) -> str:
    """onnxruntime's message without its error-code prefix and C++ source location."""
    text = str(e).strip()
    match = _ORT_PREFIX.match(text)
    return f"{match.group(1)}: {text[match.end() :]}" if match else f"{type(e).__name__}: {text}"


def _session(artifact: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # its warnings (unused initializers and the like) would flood worker logs
    try:
        return ort.InferenceSession(artifact, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # invalid or truncated protobuf, unsupported opsets or operators: onnxruntime's reason
        raise LoadError(f"not a loadable ONNX model: {_reason(e)}") from e


def _graph(artifact: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(artifact)
    except Exception as e:  # onnxruntime parsed it already; only a protobuf it is lenient with lands here
        raise LoadError(f"not a loadable ONNX model: {type(e).__name__}: {e}") from e
    return model


def _describe(args: Sequence[Any]) -> str:
    return ", ".join(f"{a.name!r} {a.type} {list(a.shape)}" for a in args)


def _width(arg: Any) -> int | None:
    """The size of a tensor's second dimension where the graph fixes it; None where it is free."""
    return arg.shape[1] if len(arg.shape) == 2 and isinstance(arg.shape[1], int) else None


def _one_per_row(arg: Any) -> bool:
    return len(arg.shape) == 1 or (len(arg.shape) == 2 and _width(arg) in (1, None))


def read_outputs(session: Any) -> Outputs:
    """A regressor's one number output, or a classifier's label output and optional probabilities output."""
    outputs = session.get_outputs()
    if len(outputs) == 1 and outputs[0].type in _NUMBERS and _one_per_row(outputs[0]):
        return Outputs("regression", outputs[0].name)
    if len(outputs) == 1 and outputs[0].type in _LABELS and _one_per_row(outputs[0]):
        return Outputs("classification", outputs[0].name)
    labels = [o for o in outputs if o.type in _LABELS and _one_per_row(o)]
    scores = [o for o in outputs if o.type.startswith("seq(map(") or (o.type in _NUMBERS and len(o.shape) == 2)]
    if len(outputs) == 2 and len(labels) == 1 and len(scores) == 1:
        return Outputs("classification", labels[0].name, scores[0].name, scores[0].type.startswith("seq("))
    raise LoadError(
        "mlapi serves a regressor with one number output, or a classifier with a label output and optionally "
        f"a probabilities output, as skl2onnx writes them; this model's outputs are {_describe(outputs)}"
    )


def _plain(values: Sequence[Any]) -> list[Class]:
    return [v.decode() if isinstance(v, bytes) else int(v) if isinstance(v, np.integer) else v for v in values]


def _classlabels(node: onnx.NodeProto) -> list[Class] | None:
    for attribute in node.attribute:
        if attribute.name.startswith("classlabels_") and (attribute.strings or attribute.ints):
            return _plain(list(attribute.strings) or list(attribute.ints))
    return None


def graph_classes(model: onnx.ModelProto, outputs: Outputs) -> list[Class] | None:
    """The classes in the order of the probability columns, where the graph records them.

    ZipMap's `classlabels_*` name its keys; otherwise the label output is followed back to the classifier node
    (its `classlabels_*`) or to the constant it picks the label from (skl2onnx's one-vs-rest, for one).
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    constants = {t.name: t for t in model.graph.initializer}
    if outputs.zipmap and outputs.probabilities in producers:
        return _classlabels(producers[outputs.probabilities])
    name = outputs.first
    while (node := producers.get(name)) is not None:
        found = _classlabels(node)
        if found is not None:
            return found
        if node.op_type == "ArrayFeatureExtractor" and node.input[0] in constants:
            return _plain(numpy_helper.to_array(constants[node.input[0]]).ravel().tolist())
        if node.op_type not in _LABEL_PATH or not node.input:
            return None
        name = node.input[0]
    return None


def _mismatch(feature: Feature, dtype: type[np.generic], arg: Any) -> str | None:
    """Why `feature` cannot be fed to `arg`, a tensor of `dtype`, or None."""
    where = f"the model's input {arg.name!r} takes {arg.type}, but the spec's feature {feature.name!r}"
    if feature.kind == "category" and dtype is not np.object_:
        return f"{where} is a category (text)"
    if feature.kind != "category" and dtype is np.object_:
        return f"{where} is a {feature.kind} (a number)"
    if np.issubdtype(dtype, np.integer) and feature.kind == "number" and not feature.integer:
        return f"{where} is a number that may have a fraction (not `integer`)"
    return None


def _check_batch(arg: Any) -> None:
    if arg.shape and isinstance(arg.shape[0], int):
        raise LoadError(
            f"the model's input {arg.name!r} takes a fixed batch of {arg.shape[0]} rows ({list(arg.shape)}); "
            "export it with a free first dimension (skl2onnx: `[None, ...]`)"
        )


def _tensor_feed(arg: Any, spec: ModelSpec) -> Feed:
    """One tensor `[rows, features]`, the spec's features in order."""
    names = [f.name for f in spec.features]
    dtype = _DTYPES.get(arg.type)
    if dtype is None or dtype is np.object_ or len(arg.shape) != 2:
        raise LoadError(
            f"the model's one input is {_describe([arg])}: mlapi feeds a model with one input a tensor of numbers "
            "[rows, features], or one input per feature named after it"
        )
    _check_batch(arg)
    width = _width(arg)
    if width is not None and width != len(names):
        raise LoadError(
            f"the model's input {arg.name!r} takes {width} features per row, the spec lists {len(names)}: {names}"
        )
    for feature in spec.features:
        reason = _mismatch(feature, dtype, arg)
        if reason:
            raise LoadError(reason)

    def feed(rows: Sequence[dict[str, Value]]) -> dict[str, np.ndarray]:
        return {arg.name: np.array([[row[n] for n in names] for row in rows], dtype=dtype)}

    return feed


def _column_feed(args: Sequence[Any], spec: ModelSpec) -> Feed:
    """One input per spec feature, of the input's name, each `[rows, 1]` (or `[rows]`) of its declared type."""
    features = {f.name: f for f in spec.features}
    names = [a.name for a in args]
    lacking = [n for n in names if n not in features]
    unknown = [n for n in features if n not in names]
    if lacking or unknown:
        parts = [f"the model takes inputs {lacking}, which the spec lacks"] if lacking else []
        parts += [f"the spec lists {unknown}, which the model does not take as inputs"] if unknown else []
        raise LoadError("the features do not match the model's inputs: " + "; ".join(parts))
    columns: list[tuple[str, type[np.generic], tuple[int, ...]]] = []
    for arg in args:
        dtype = _DTYPES.get(arg.type)
        if dtype is None or not _one_per_row(arg):
            raise LoadError(f"the model's input {_describe([arg])} is not one column of numbers or text")
        _check_batch(arg)
        reason = _mismatch(features[arg.name], dtype, arg)
        if reason:
            raise LoadError(reason)
        columns.append((arg.name, dtype, (-1, 1) if len(arg.shape) == 2 else (-1,)))

    def feed(rows: Sequence[dict[str, Value]]) -> dict[str, np.ndarray]:
        return {n: np.array([row[n] for row in rows], dtype=t).reshape(shape) for n, t, shape in columns}

    return feed


def _feed(session: Any, spec: ModelSpec) -> Feed:
    args = session.get_inputs()
    if len(args) == 1 and [args[0].name] != [f.name for f in spec.features]:
        return _tensor_feed(args[0], spec)
    return _column_feed(args, spec)


class OnnxModel:
    """An onnxruntime session with its spec, ready to predict batches of validated rows.

    Raises `LoadError` when the model does not match the spec: its inputs, task or classes.
    """

    def __init__(self, spec: ModelSpec, session: Any, graph: onnx.ModelProto) -> None:
        self.spec = spec
        self.session = session
        self._feed = _feed(session, spec)
        self.outputs = read_outputs(session)
        if self.outputs.task != spec.task:
            raise LoadError(f"the spec's task is {spec.task}, but the ONNX model's outputs are a {self.outputs.task}'s")
        self.classes = graph_classes(graph, self.outputs) if spec.task == "classification" else None
        self._index = self._class_index()
        self._read = [self.outputs.first] + ([self.outputs.probabilities] if self.outputs.probabilities else [])

    def _class_index(self) -> dict[Class, int]:
        """Class index by the label output's value: its position among the graph's classes where it records them,
        else the value as the class number (int labels) or as the spec's label (text labels)."""
        labels = self.spec.labels
        classes = self.classes
        if classes is not None:
            if [str(c) for c in classes] != labels and classes != list(range(len(labels))):
                raise LoadError(f"the model's classes {classes} do not match the spec's labels {labels}")
            return {c: i for i, c in enumerate(classes)}
        if self.outputs.zipmap:
            raise LoadError(
                f"the model's {self.outputs.probabilities!r} output is a map whose classes the graph does not name "
                "(no ZipMap `classlabels_*`)"
            )
        if self.outputs.probabilities:
            width = _width(next(o for o in self.session.get_outputs() if o.name == self.outputs.probabilities))
            if width is not None and width != len(labels):
                raise LoadError(f"the model gives {width} probabilities per row for the spec's {len(labels)} labels")
        index: dict[Class, int] = {i: i for i in range(len(labels))}
        index.update({label: i for i, label in enumerate(labels)})
        return index

    def check_probabilities(self) -> None:
        """Read labels only where the probabilities output holds scores (skl2onnx's SVC writes decision values)."""
        if self.outputs.probabilities is None:
            return
        try:
            _, scores = self._run([self.spec.example])
        except Exception as e:  # whatever onnxruntime raises, the user gets the reason
            raise LoadError(f"the model fails on the spec's example row: {_reason(e)}") from e
        if ((scores >= -1e-6) & (scores <= 1 + 1e-6)).all() and np.allclose(scores.sum(axis=1), 1, atol=1e-3):
            return
        log.warning(
            "%s v%d: the output %r holds scores, not probabilities (%s on the example); answering labels only",
            self.spec.name,
            self.spec.version,
            self.outputs.probabilities,
            scores[0].tolist(),
        )
        self.outputs = self.outputs._replace(probabilities=None, zipmap=False)
        self._read = [self.outputs.first]

    def _run(self, rows: Sequence[dict[str, Value]]) -> tuple[np.ndarray, np.ndarray]:
        """The first output, one value per row, and the probabilities `[rows, classes]` (empty without)."""
        results = self.session.run(self._read, self._feed(rows))
        first = np.asarray(results[0])
        if first.size != len(rows):
            raise ValueError(f"the model answers {first.size // max(len(rows), 1)} values per row; mlapi serves one")
        if len(results) == 1:
            return first.reshape(-1), np.empty((len(rows), 0))
        if self.outputs.zipmap:
            assert self.classes is not None  # checked at load
            scores = np.array([[m[c] for c in self.classes] for m in results[1]], dtype=np.float64)
        else:
            scores = np.asarray(results[1], dtype=np.float64)
        if scores.shape != (len(rows), len(self.spec.labels)):
            raise ValueError(f"the model gives {scores.shape[-1]} probabilities for {len(self.spec.labels)} labels")
        return first.reshape(-1), scores

    def predict(self, rows: Sequence[dict[str, Value]]) -> list[Output]:
        if not rows:
            return []
        first, scores = self._run(rows)
        if self.spec.task == "regression":
            return [Output(prediction=v) for v in first.astype(np.float64).tolist()]
        labels = self.spec.labels
        classes = []
        for value in first.tolist():
            k = self._index.get(value)
            if k is None:
                raise ValueError(f"the model predicted {value!r}, which is none of its classes")
            classes.append(k)
        if self.outputs.probabilities is None:
            return [Output(prediction=k, label=labels[k]) for k in classes]
        return [
            Output(prediction=k, label=labels[k], probability=p[k], probabilities=dict(zip(labels, p, strict=True)))
            for k, p in zip(classes, scores.tolist(), strict=True)
        ]


def load(artifact: bytes, spec: ModelSpec) -> OnnxModel:
    """An onnxruntime session on the CPU, one thread each way, checked against the spec."""
    model = OnnxModel(spec, _session(artifact), _graph(artifact))
    model.check_probabilities()
    return model


def inspect_artifact(artifact: bytes) -> Inspection:
    """Inputs, classes and task as the ONNX graph records them; raises `LoadError` where mlapi cannot serve it.

    `features` are the input names of a model with one input per column, None for one tensor input (whose
    features the caller names from the data's columns; `n_features` is the tensor's width where fixed).
    """
    session = _session(artifact)
    outputs = read_outputs(session)
    args = session.get_inputs()
    tensor = len(args) == 1 and args[0].type != "tensor(string)"  # a text input is always one column
    classes = graph_classes(_graph(artifact), outputs) if outputs.task == "classification" else None
    return Inspection(
        features=None if tensor else [a.name for a in args],
        classes=classes,
        task=outputs.task,
        n_features=_width(args[0]) if tensor else len(args),
    )


def dump(model: object) -> bytes | None:
    """An in-memory `onnx.ModelProto` as bytes; None for anything else (a file's bytes are the file already)."""
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else None
