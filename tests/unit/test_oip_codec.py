"""The Open Inference Protocol's tensors <-> rows: every accepted form, every refusal naming its input, the framing."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from mlapi.contract import Result
from mlapi.models.spec import Feature, ModelSpec
from mlapi.oip import codec
from mlapi.oip.codec import Input, InvalidTensor

MIXED = ModelSpec(
    name="shop", version=1, labels=["stays", "leaves"],
    features=[
        Feature(name="colour", kind="category", values=["red", "blue"], example="red"),
        Feature(name="member", kind="flag", example=0),
        Feature(name="visits", kind="number", integer=True, minimum=0, example=3),
        Feature(name="spend", kind="number", example=1.5),
    ],
)  # fmt: skip
NUMERIC = ModelSpec(
    name="flowers", version=2, task="regression",
    features=[Feature(name="width", kind="number", example=1.0), Feature(name="petals", kind="flag", example=1)],
)  # fmt: skip
ROWS = [
    {"colour": "red", "member": 1, "visits": 4, "spend": 2.5},
    {"colour": "blue", "member": 0, "visits": 0, "spend": -1.0},
]


def framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def values() -> list[Input]:
    """ROWS as JSON would carry them."""
    return [
        Input("colour", "BYTES", [2], ["red", "blue"]),
        Input("member", "INT64", [2], [1, 0]),
        Input("visits", "INT64", [2, 1], [[4], [0]]),
        Input("spend", "FP64", [2], [2.5, -1.0]),
    ]


def raw() -> list[Input]:
    """ROWS as raw tensors (the binary extension, gRPC's raw_input_contents), in other accepted datatypes."""
    return [
        Input("colour", "BYTES", [2], framed([b"red", b"blue"])),
        Input("member", "BOOL", [2], np.array([True, False]).tobytes()),
        Input("visits", "FP32", [2], np.array([4, 0], "<f4").tobytes()),
        Input("spend", "FP32", [2, 1], np.array([2.5, -1.0], "<f4").tobytes()),
    ]


def test_metadata_declares_a_datatype_per_feature_and_the_outputs() -> None:
    assert [(m.name, m.datatype, m.shape) for m in codec.inputs(MIXED)] == [
        ("colour", "BYTES", [-1]), ("member", "INT64", [-1]), ("visits", "INT64", [-1]), ("spend", "FP64", [-1])
    ]  # fmt: skip
    assert [(m.name, m.datatype, m.shape) for m in codec.outputs(MIXED)] == [
        ("prediction", "INT64", [-1]), ("label", "BYTES", [-1]), ("probabilities", "FP64", [-1, 2]),
        ("prediction_ids", "BYTES", [-1]),
    ]  # fmt: skip
    assert [m.name for m in codec.outputs(NUMERIC)] == ["prediction", "prediction_ids"]


def test_values_and_raw_tensors_give_the_same_rows() -> None:
    assert codec.rows(MIXED, values(), 10) == ROWS
    assert codec.rows(MIXED, list(reversed(raw())), 10) == ROWS  # inputs in any order
    typed = codec.rows(MIXED, raw(), 10)
    assert [type(typed[0][k]) for k in ("colour", "member", "visits", "spend")] == [str, int, int, float]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("INT32", [1, 0]), ("INT64", [1, 0]), ("BOOL", [True, False])],
)
def test_a_flag_takes_int32_int64_and_bool(datatype: str, data: list[Any]) -> None:
    given = [i if i.name != "member" else Input("member", datatype, [2], data) for i in values()]
    assert [r["member"] for r in codec.rows(MIXED, given, 10)] == [1, 0]


def test_the_matrix_form_of_an_all_numeric_model() -> None:
    matrix = Input("input", "FP32", [2, 2], np.array([[0.5, 1], [2.25, 0]], "<f4").tobytes())
    assert codec.rows(NUMERIC, [matrix], 10) == [{"width": 0.5, "petals": 1}, {"width": 2.25, "petals": 0}]
    with pytest.raises(InvalidTensor, match=r"input 'input' has shape \[2, 3\]; it takes \[N, 2\]"):
        codec.rows(NUMERIC, [Input("input", "FP64", [2, 3], [[0.0] * 3] * 2)], 10)
    with pytest.raises(InvalidTensor, match=r"'petals' takes whole numbers; row 1 is 0\.5"):
        codec.rows(NUMERIC, [Input("input", "FP64", [2, 2], [[1.0, 1.0], [1.0, 0.5]])], 10)
    with pytest.raises(InvalidTensor, match="unknown input 'input'"):  # a model with a category has no matrix form
        codec.rows(MIXED, [Input("input", "FP64", [1, 4], [[0.0] * 4])], 10)


def change(name: str, **fields: Any) -> list[Input]:
    """ROWS as values with one input's fields changed."""
    return [Input(**{**i.__dict__, **fields}) if i.name == name else i for i in values()]


REFUSALS: list[tuple[str, list[Input], str]] = [
    ("unknown input", [*values(), Input("age", "FP64", [2], [1.0, 2.0])], "unknown input 'age'"),
    ("input twice", [*values(), values()[0]], "input 'colour' is given twice"),
    ("missing input", values()[1:], "missing input(s): 'colour'"),
    ("category as a number", change("colour", datatype="FP64", data=[1.0, 2.0]), "'colour' has datatype 'FP64'"),
    ("flag as a float", change("member", datatype="FP64", data=[1.0, 0.0]), "'member' has datatype 'FP64'"),
    ("number as text", change("spend", datatype="BYTES", data=["1", "2"]), "'spend' has datatype 'BYTES'; it takes"),
    ("a datatype nobody takes", change("spend", datatype="FP16"), "'spend' has datatype 'FP16'"),
    ("three dimensions", change("spend", shape=[2, 1, 1]), r"'spend' has shape [2, 1, 1]; it takes [N] or [N, 1]"),
    ("two columns", change("spend", shape=[1, 2]), "'spend' has shape [1, 2]"),
    ("a scalar", change("spend", shape=[]), "'spend' has shape []"),
    ("negative rows", change("spend", shape=[-1]), "'spend' has shape [-1]"),
    ("no rows", [Input(i.name, i.datatype, [0], []) for i in values()], "input 'colour' has no rows"),
    ("too many rows", change("colour", shape=[11]), "'colour' has 11 rows; at most 10 per request"),
    ("rows differ", change("spend", shape=[3], data=[1.0, 2.0, 3.0]), "input 'spend' has 3 rows, input 'visits' has 2"),
    ("values short of the shape", change("spend", data=[1.0]), "'spend' holds 1 values; its shape needs 2"),
    ("ragged values", change("spend", data=[[1.0], [2.0, 3.0]]), "'spend': its data are not a regular array"),
    ("text in numbers", change("spend", data=["1", "2"]), "'spend': its data do not all fit FP64"),
    ("a float in INT64", change("visits", data=[1.5, 2]), "'visits': its data do not all fit INT64"),
    ("a bool in INT64", change("visits", data=[True, False]), "'visits': its data do not all fit INT64"),
    ("null in numbers", change("spend", data=[1.0, None]), "'spend': its data do not all fit FP64"),
    (
        "out of INT32",
        change("visits", datatype="INT32", data=[2**40, 1]),
        "'visits': a value is out of the range of INT32",
    ),
    ("a number in BYTES", change("colour", data=["red", 3]), "'colour': BYTES elements must be strings, not int"),
    ("not whole", change("visits", datatype="FP64", data=[1.0, 2.5]), "'visits' takes whole numbers; row 1 is 2.5"),
    ("infinite", change("visits", datatype="FP64", data=[1.0, float("inf")]), "'visits' takes whole numbers; row 1"),
    ("raw not whole elements", change("spend", data=b"\x00" * 9), "'spend' has 9 bytes, not a whole number of FP64"),
    ("raw BOOL not 0 or 1", change("member", datatype="BOOL", data=b"\x01\x02"), "'member': BOOL bytes must be 0 or 1"),
    (
        "raw BYTES cut in a length",
        change("colour", data=framed([b"red"]) + b"\x01\x00"),
        "'colour': BYTES data end inside",
    ),
    ("raw BYTES too long", change("colour", data=b"\x09\x00\x00\x00red"), "'colour': a BYTES element of 9 bytes runs"),
    ("raw BYTES not UTF-8", change("colour", data=framed([b"\xff", b"red"])), "'colour': BYTES elements must be UTF-8"),
]


@pytest.mark.parametrize(("case", "given", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_refusal_names_the_input(case: str, given: list[Input], message: str) -> None:
    with pytest.raises(InvalidTensor) as refused:
        codec.rows(MIXED, given, 10)
    assert message in str(refused.value)


def test_bytes_framing_round_trips_empty_and_binary_elements() -> None:
    items = [b"", b"\x00\x01", "Ωmega".encode(), b"x" * 300]
    assert list(codec.split_bytes("t", framed(items))) == items
    tensor = codec.Tensor("label", "BYTES", [4], np.array(items, dtype=object))
    assert codec.to_bytes(tensor) == framed(items)
    assert list(codec.split_bytes("t", b"")) == []


def results(probabilities: bool = True) -> list[Result]:
    first, second = ({"stays": 0.25, "leaves": 0.75}, {"stays": 0.5, "leaves": 0.5}) if probabilities else (None, None)
    return [
        Result(id="a", prediction=1, label="leaves", probabilities=first),
        Result(id="b", prediction=0, label="stays", probabilities=second),
    ]


def test_encode_answers_every_output_or_those_asked_in_their_order() -> None:
    every = codec.encode(MIXED, results())
    assert [(t.name, t.datatype, t.shape) for t in every] == [
        ("prediction", "INT64", [2]), ("label", "BYTES", [2]), ("probabilities", "FP64", [2, 2]),
        ("prediction_ids", "BYTES", [2]),
    ]  # fmt: skip
    assert codec.to_values(every[2]) == [0.25, 0.75, 0.5, 0.5]  # flat, row-major, in the labels' order
    assert np.frombuffer(codec.to_bytes(every[0]), "<i8").tolist() == [1, 0]
    assert np.frombuffer(codec.to_bytes(every[2]), "<f8").reshape(2, 2).tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert codec.to_values(every[1]) == ["leaves", "stays"]
    asked = codec.encode(MIXED, results(), ["prediction_ids", "label"])
    assert [t.name for t in asked] == ["prediction_ids", "label"]
    assert [t.name for t in codec.encode(MIXED, results(probabilities=False))] == [
        "prediction",
        "label",
        "prediction_ids",
    ]
    regression = codec.encode(NUMERIC, [Result(id="c", prediction=2.5)])
    assert [(t.name, t.datatype, codec.to_values(t)) for t in regression] == [
        ("prediction", "FP64", [2.5]), ("prediction_ids", "BYTES", ["c"])
    ]  # fmt: skip


def test_unknown_or_repeated_outputs_are_refused() -> None:
    codec.check_outputs(MIXED, ["label", "probabilities"])
    with pytest.raises(InvalidTensor, match="unknown output 'colour'; the model's outputs: prediction, label"):
        codec.check_outputs(MIXED, ["colour"])
    with pytest.raises(InvalidTensor, match="unknown output 'label'"):
        codec.check_outputs(NUMERIC, ["label"])
    with pytest.raises(InvalidTensor, match="requested twice"):
        codec.check_outputs(MIXED, ["label", "label"])
