"""Reference profiles of training data, and the population stability index that compares a window with one.

A profile is computed where the training data is (`mlapi models add --data`, `mlapi train`, the bundled models'
`profile.json`) and stored with the version; the workers count every answered row into the same bins in SQL
(`mlapi.storage.quality`), and drift compares those counts with the profile's shares (`psi`). NumPy is imported
only by `compute`, so the API reads and checks profiles without it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlapi.models.spec import SpecBody

if TYPE_CHECKING:
    import pandas as pd

PROFILE_FILE = "profile.json"
"""A bundled model's reference profile, beside its spec."""
PREDICTION = ""
"""The name of the profiled column holding the model's answer (no feature has an empty name)."""
DECILES = tuple(i / 10 for i in range(1, 10))
EMPTY_SHARE = 1e-4
"""The share an empty bin counts as in the PSI, so that ln(a/e) is finite."""
Verdict = Literal["stable", "watch", "drifted"]


class Column(BaseModel):
    """One profiled column: a feature, or the prediction (named `PREDICTION`).

    A number's bins are (-inf, e0), [e0, e1), ..., [e_last, +inf) for its distinct inner decile edges `edges`
    (PostgreSQL's `width_bucket`); a category's (or flag's, or a classifier's predicted label's) are one per
    value of `values`, then one for any other value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=128)
    kind: Literal["number", "category"]
    edges: list[float] = Field([], max_length=9)
    values: list[str] = Field([], max_length=1000)
    shares: list[float] = Field(min_length=1, max_length=1001)
    """The training data's share of each bin."""
    minimum: float | None = None
    maximum: float | None = None
    """A number's training range: values outside it are counted apart."""

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        bins = len(self.edges) + 1 if self.kind == "number" else len(self.values) + 1
        if len(self.shares) != bins:
            raise ValueError(f"column {self.name!r}: {len(self.shares)} shares for {bins} bins")
        if any(not 0 <= s <= 1 for s in self.shares) or not math.isclose(sum(self.shares), 1, abs_tol=1e-6):
            raise ValueError(f"column {self.name!r}: shares must be within [0, 1] and sum to 1")
        if any(not math.isfinite(e) for e in self.edges) or any(a >= b for a, b in itertools.pairwise(self.edges)):
            raise ValueError(f"column {self.name!r}: edges must be finite and increasing")
        if self.kind == "number" and (not self.edges or self.minimum is None or self.maximum is None):
            raise ValueError(f"column {self.name!r}: a number needs edges and its training range (minimum, maximum)")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"column {self.name!r}: values must be distinct")
        return self

    def bin_names(self) -> list[str]:
        """A readable name per bin: `< 20`, `20 to 35`, `≥ 60`; or the value, then `other`."""
        if self.kind == "category":
            return [*self.values, "other"]
        e = [f"{edge:g}" for edge in self.edges]
        if not e:
            return ["all"]
        return [f"< {e[0]}", *(f"{a} to {b}" for a, b in itertools.pairwise(e)), f"≥ {e[-1]}"]


class Profile(BaseModel):
    """The reference a version's drift is measured against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int = Field(ge=1)
    """Rows of the training data it was computed on."""
    columns: list[Column] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("profiled column names must be unique")
        return self

    def check(self, spec: SpecBody) -> None:
        """Raise `ValueError` unless every column is a feature of `spec` (or its prediction) of a matching kind."""
        kinds = {f.name: "number" if f.kind == "number" else "category" for f in spec.features}
        kinds[PREDICTION] = "number" if spec.task == "regression" else "category"
        for column in self.columns:
            if column.name not in kinds:
                raise ValueError(f"the profile's column {column.name!r} is not a feature of the spec")
            if kinds[column.name] != column.kind:
                raise ValueError(
                    f"the profile's column {column.name!r} is a {column.kind}, the spec's a different kind"
                )


def compute(spec: SpecBody, frame: pd.DataFrame, predicted: Sequence[str] | Sequence[float]) -> Profile:
    """The profile of training rows `frame` (every feature of `spec`) and the model's answers on them (a
    classifier's labels or a regressor's values, one per row)."""
    import numpy as np

    columns = []
    for f in spec.features:
        if f.kind == "number":
            columns.append(_number(f.name, frame[f.name].to_numpy(dtype=np.float64)))
        else:
            values = spec_values(f.kind, f.values)
            columns.append(_category(f.name, [_text(v) for v in frame[f.name]], values))
    if spec.task == "regression":
        columns.append(_number(PREDICTION, np.asarray(predicted, dtype=np.float64)))
    else:
        columns.append(_category(PREDICTION, [str(p) for p in predicted], list(spec.labels)))
    return Profile(rows=len(frame), columns=columns)


def spec_values(kind: str, values: list[str] | None) -> list[str]:
    """The bins of a category or flag feature, as its values read from the stored JSON text."""
    return ["0", "1"] if kind == "flag" else list(values or [])


def _text(value: object) -> str:
    """A value as PostgreSQL's `#>> '{}'` prints the JSON the history stores (a flag's 1 as `1`, not `1.0`)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value.item() if hasattr(value, "item") else value)  # NumPy scalars


def _number(name: str, values: object) -> Column:
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    edges = np.unique(np.quantile(x, DECILES))
    counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
    return Column(
        name=name, kind="number", edges=[float(e) for e in edges], shares=_shares(counts.tolist()),
        minimum=float(x.min()), maximum=float(x.max()),
    )  # fmt: skip


def _category(name: str, observed: Sequence[str], values: list[str]) -> Column:
    index = {v: i for i, v in enumerate(values)}
    counts = [0] * (len(values) + 1)
    for v in observed:
        counts[index.get(v, len(values))] += 1
    return Column(name=name, kind="category", values=values, shares=_shares(counts))


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts]


def psi(counts: Sequence[int], shares: Sequence[float]) -> float | None:
    """The population stability index Σ(a-e)·ln(a/e) of a window's bin counts against the reference shares, with
    an empty bin's share taken as `EMPTY_SHARE`; None for an empty window."""
    total = sum(counts)
    if total == 0:
        return None
    out = 0.0
    for count, expected in zip(counts, shares, strict=True):
        a = count / total if count else EMPTY_SHARE
        e = expected if expected else EMPTY_SHARE
        out += (a - e) * math.log(a / e)
    return out


def verdict(value: float, watch: float, drifted: float) -> Verdict:
    """stable below `watch`, watch below `drifted`, drifted above."""
    return "stable" if value < watch else "watch" if value < drifted else "drifted"
