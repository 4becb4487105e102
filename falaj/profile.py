"""The reference profile of a model version: the baseline every drift statistic reads.

At training time every numeric feature (and the model's predictions) is cut
into quantile bins of the training data; the profile keeps the cut points, the
share of training rows in each bin, and a few quantiles (``QUANTILES``) for
people to read. It is stored with the model version and reused for every drift
window, never rebuilt from production data.

The outer bins are open-ended, so a production value beyond anything seen in
training still lands in a bin (and shows up as drift) instead of being lost.
Bins are right-closed: bin ``i`` holds ``edges[i-1] < x <= edges[i]``.

A categorical feature (strings, booleans, or integer codes the schema declares
in a range of at most ``TOP_K`` values, see ``categorical_columns``) keeps the
share of each of its ``TOP_K`` most frequent training categories instead, and
one ``__other__`` share for the rest. A category production sends that training
never saw counts as ``__other__``: with ``__other__`` empty in training, that
shows up as drift rather than being dropped. Integer codes and booleans are
keyed by their integer value (``"0"``, ``"1"``), so a flag trained as float32
and sent back as a JSON number lands in the same category.

A numeric feature also keeps its cumulative distribution (``distribution``),
for the Kolmogorov-Smirnov and Wasserstein statistics (``drift_statistics``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from falaj.distribution import CumulativeDistribution
from falaj.errors import ArtifactError, SchemaError
from falaj.schema import DType, FeatureSchema

#: The key of prediction drift in score mappings; no feature may take it.
PREDICTION = "prediction"
#: Format 2 added categorical features and quantiles, format 3 each numeric
#: feature's cumulative distribution (for KS and Wasserstein). Format 1 and 2
#: files are still read; their numeric features are scored by PSI alone.
PROFILE_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
#: The quantiles a numeric profile records, for reading, not for scoring.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: A categorical profile names its most frequent categories up to this many;
#: the rest share ``OTHER``. Twenty keeps every value of a small code (a flag,
#: a weekday, a region) by name while a high-cardinality column (merchant ids)
#: cannot grow the profile without bound.
TOP_K = 20
OTHER = "__other__"
NUMERIC_KIND = "numeric"
CATEGORICAL_KIND = "categorical"


@dataclass(frozen=True)
class FeatureProfile:
    """Quantile bins of one numeric column of the training data."""

    name: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    #: ``{"p01": ..., "p99": ...}`` of the training values; empty in format 1 files.
    quantiles: Mapping[str, float] = field(default_factory=dict)
    #: The whole distribution, for KS and Wasserstein; None in format 1 and 2 files.
    distribution: CumulativeDistribution | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.edges) + 1:
            raise ArtifactError(
                f"profile of {self.name!r}: {len(self.edges)} edges need "
                f"{len(self.edges) + 1} proportions, got {len(self.proportions)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ArtifactError(f"profile of {self.name!r}: edges must strictly increase")

    @classmethod
    def from_values(cls, name: str, values: npt.ArrayLike, *, bins: int = 10) -> FeatureProfile:
        if bins < 2:
            raise SchemaError(f"a profile needs at least 2 bins, got {bins}")
        # Sorted once: the bins, the quantiles and the distribution all read it.
        finite = np.sort(_finite(name, values))
        cuts = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        values_at = np.quantile(finite, np.concatenate((cuts, QUANTILES)))
        # Ties collapse quantiles into fewer bins; a constant column keeps one
        # edge at its value, so a production value above it still counts as drift.
        edges = np.unique(values_at[: cuts.size])
        return cls(
            name=name,
            edges=tuple(float(e) for e in edges),
            proportions=tuple(float(p) for p in sorted_bin_shares(edges, finite)),
            quantiles={
                _quantile_key(q): float(v)
                for q, v in zip(QUANTILES, values_at[cuts.size :], strict=True)
            },
            distribution=CumulativeDistribution.from_sorted(finite),
        )

    def shares(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The share of ``values`` in each bin; non-finite values are left out."""
        return _bin_shares(np.asarray(self.edges, dtype=np.float64), _finite(self.name, values))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": NUMERIC_KIND,
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "quantiles": dict(self.quantiles),
        }
        if self.distribution is not None:
            data["distribution"] = self.distribution.to_json()
        return data

    @classmethod
    def from_json(cls, name: str, data: Any) -> FeatureProfile:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"profile of {name!r}: expected an object, got {type(data)}")
        try:
            return cls(
                name=name,
                edges=tuple(float(e) for e in data["edges"]),
                proportions=tuple(float(p) for p in data["proportions"]),
                quantiles={str(k): float(v) for k, v in data.get("quantiles", {}).items()},
                distribution=(
                    CumulativeDistribution.from_json(name, data["distribution"])
                    if "distribution" in data
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"profile of {name!r}: expected 'edges' and 'proportions' lists of numbers "
                f"and an optional 'quantiles' object ({type(exc).__name__}: {exc})"
            ) from None


@dataclass(frozen=True)
class CategoryProfile:
    """The share of each frequent category of one categorical column, and of the rest."""

    name: str
    #: The most frequent training categories, most frequent first (at most TOP_K).
    categories: tuple[str, ...]
    #: One share per category, then ``OTHER``'s (0 when every category is named).
    proportions: tuple[float, ...]
    #: Training values the shares were counted from (missing ones left out), for
    #: the two-sample chi-square; None in format 1 and 2 files.
    count: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if len(self.proportions) != len(self.categories) + 1:
            problems.append(
                f"{len(self.categories)} categories need {len(self.categories) + 1} "
                f"proportions (the last for {OTHER!r}), got {len(self.proportions)}"
            )
        if len(set(self.categories)) != len(self.categories) or OTHER in self.categories:
            problems.append(f"categories must be distinct and not {OTHER!r}")
        if problems:
            raise ArtifactError(f"profile of {self.name!r}: " + "; ".join(problems))

    @classmethod
    def from_values(
        cls, name: str, values: npt.ArrayLike, *, top_k: int = TOP_K
    ) -> CategoryProfile:
        if top_k < 1:
            raise SchemaError(f"a categorical profile needs top_k >= 1, got {top_k}")
        counts = _category_counts(name, values)
        total = sum(counts.values())
        # Most frequent first; ties by name, so the same data gives the same profile.
        ranked = sorted(counts, key=lambda category: (-counts[category], category))
        kept = ranked[:top_k]
        shares = [counts[category] / total for category in kept]
        return cls(
            name=name,
            categories=tuple(kept),
            proportions=(*shares, sum(counts[c] for c in ranked[top_k:]) / total),
            count=total,
        )

    def counts(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """How many ``values`` fall in each category (unseen ones in ``OTHER``; missing: none)."""
        counts = _category_counts(self.name, values)
        named = [counts.pop(category, 0) for category in self.categories]
        other = sum(counts.values())  # what is left: categories the profile does not name
        return np.asarray([*named, other], dtype=np.float64)

    def shares(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The share of ``values`` in each category (unseen ones in ``OTHER``); missing left out."""
        counts = self.counts(values)
        return counts / counts.sum()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": CATEGORICAL_KIND,
            "categories": list(self.categories),
            "proportions": list(self.proportions),
        }
        if self.count is not None:
            data["count"] = self.count
        return data

    @classmethod
    def from_json(cls, name: str, data: Any) -> CategoryProfile:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"profile of {name!r}: expected an object, got {type(data)}")
        try:
            return cls(
                name=name,
                categories=tuple(str(c) for c in data["categories"]),
                proportions=tuple(float(p) for p in data["proportions"]),
                count=int(data["count"]) if "count" in data else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"profile of {name!r}: expected 'categories' (strings) and 'proportions' "
                f"(numbers) lists ({type(exc).__name__}: {exc})"
            ) from None


ColumnProfile: TypeAlias = FeatureProfile | CategoryProfile


@dataclass(frozen=True)
class ReferenceProfile:
    """The training-time distribution of every feature and of the predictions."""

    features: Mapping[str, ColumnProfile]
    prediction: FeatureProfile | None
    rows: int

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        *,
        predictions: np.ndarray | None = None,
        bins: int = 10,
        categorical: Collection[str] = (),
        top_k: int = TOP_K,
    ) -> ReferenceProfile:
        """Profile every column; categorical: those named, and any of strings or booleans."""
        if not columns:
            raise SchemaError("a profile needs at least one feature column, got none")
        if PREDICTION in columns:
            raise SchemaError(
                f"a feature is named {PREDICTION!r}, the name reserved for prediction drift; "
                "rename the feature"
            )
        unknown = sorted(set(categorical) - set(columns))
        if unknown:
            raise SchemaError(
                f"categorical columns {unknown} are not among the columns {sorted(columns)}; "
                "name only columns that are profiled"
            )
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) != 1:
            raise SchemaError(f"feature columns differ in length: {lengths}")
        features: dict[str, ColumnProfile] = {}
        for name, values in columns.items():
            if name in categorical or not _is_numeric(values):
                features[name] = CategoryProfile.from_values(name, values, top_k=top_k)
            else:
                features[name] = FeatureProfile.from_values(name, values, bins=bins)
        return cls(
            features=features,
            prediction=(
                None
                if predictions is None
                else FeatureProfile.from_values(PREDICTION, predictions, bins=bins)
            ),
            rows=next(iter(lengths.values())),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": {name: f.to_json() for name, f in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReferenceProfile:
        if not isinstance(data, Mapping) or data.get("format") not in READABLE_FORMATS:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ArtifactError(
                f"expected a reference profile of format "
                f"{', '.join(map(str, READABLE_FORMATS))}, got {found!r}"
            )
        features = data.get("features")
        if not isinstance(features, Mapping) or not features:
            raise ArtifactError("a reference profile needs a non-empty 'features' object")
        prediction = data.get("prediction")
        rows = data.get("rows")
        if not isinstance(rows, int) or rows < 1:
            raise ArtifactError(f"a reference profile needs 'rows' >= 1, got {rows!r}")
        return cls(
            features={name: _column_from_json(name, f) for name, f in features.items()},
            prediction=None
            if prediction is None
            else FeatureProfile.from_json(PREDICTION, prediction),
            rows=rows,
        )


def categorical_columns(
    schema: FeatureSchema, names: Sequence[str], *, top_k: int = TOP_K
) -> tuple[str, ...]:
    """Which of ``names`` the schema declares categorical.

    Strings are; so are integer columns whose declared ``min``..``max`` holds
    at most ``top_k`` values (a 0/1 flag, a weekday): each value then keeps a
    share of its own, where quantile bins would merge or split them by the
    accident of where the quantiles fall. An int without both bounds is a count
    or an amount, and stays numeric.
    """
    chosen = []
    for name in names:
        column = schema.column(name)
        small_code = (
            column.dtype is DType.INT
            and column.min is not None
            and column.max is not None
            and math.floor(column.max) - math.ceil(column.min) + 1 <= top_k
        )
        if column.dtype is DType.STRING or small_code:
            chosen.append(name)
    return tuple(chosen)


def _column_from_json(name: str, data: Any) -> ColumnProfile:
    kind = data.get("kind", NUMERIC_KIND) if isinstance(data, Mapping) else NUMERIC_KIND
    if kind == CATEGORICAL_KIND:
        return CategoryProfile.from_json(name, data)
    if kind == NUMERIC_KIND:
        return FeatureProfile.from_json(name, data)
    raise ArtifactError(
        f"profile of {name!r}: expected kind {NUMERIC_KIND!r} or {CATEGORICAL_KIND!r}, got {kind!r}"
    )


def _quantile_key(q: float) -> str:
    return f"p{round(q * 100):02d}"


def _is_numeric(values: np.ndarray) -> bool:
    # Booleans are numbers to numpy, but a flag's two values are categories.
    return np.asarray(values).dtype.kind in "iuf"


def _finite(name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise SchemaError(
            f"feature {name!r} has no finite values among {array.size}; "
            "a distribution needs at least one number"
        )
    return finite


def _category_counts(name: str, values: npt.ArrayLike) -> dict[str, int]:
    """How often each category occurs; missing values (None, NaN) are left out."""
    array = np.asarray(values).ravel()
    if array.dtype.kind in "biuf":
        numbers = array.astype(np.float64)
        present = numbers[np.isfinite(numbers)]
        unique, counts = np.unique(present, return_counts=True)
        keys = [_number_key(float(v)) for v in unique]
    else:
        # Objects may mix numbers in (a pandas column of codes): key them as numbers.
        present = np.asarray([_object_key(v) for v in array if not _missing(v)], dtype=str)
        unique, counts = np.unique(present, return_counts=True)
        keys = [str(v) for v in unique]
    if not keys:
        raise SchemaError(
            f"feature {name!r} has no values among {array.size} (all missing); "
            "a distribution needs at least one category"
        )
    totals: dict[str, int] = {}
    for key, count in zip(keys, counts, strict=True):
        totals[key] = totals.get(key, 0) + int(count)
    return totals


def _number_key(value: float) -> str:
    """An integer code as its integer ("1", not "1.0"); any other number as Python writes it."""
    return str(int(value)) if value.is_integer() else repr(value)


def _object_key(value: object) -> str:
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return _number_key(float(value))
    return str(value)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def sorted_bin_shares(
    edges: npt.NDArray[np.float64], ordered: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``_bin_shares`` of values already sorted: one binary search per edge, not per value.

    Bins are right-closed, so the values at or below edge i fill bins 0..i.
    """
    upto = np.searchsorted(ordered, edges, side="right")
    shares: npt.NDArray[np.float64] = np.diff(np.concatenate(([0], upto, [ordered.size]))) / (
        ordered.size
    )
    return shares


def _bin_shares(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="left")
    counts = np.bincount(bins, minlength=edges.size + 1)
    return counts / values.size
