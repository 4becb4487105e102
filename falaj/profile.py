"""The reference profile of a model version, and the population stability index.

At training time every feature (and the model's predictions) is cut into
quantile bins of the training data; the profile keeps the cut points and the
share of training rows in each bin. It is stored with the model version and
reused for every drift window, never rebuilt from production data.

The outer bins are open-ended, so a production value beyond anything seen in
training still lands in a bin (and shows up as drift) instead of being lost.
Bins are right-closed: bin ``i`` holds ``edges[i-1] < x <= edges[i]``.

PSI = sum over bins of (actual - expected) * ln(actual / expected); a common
reading is < 0.1 stable, 0.1-0.2 a moderate shift, > 0.2 a significant one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from falaj.errors import ArtifactError, SchemaError

#: The key of prediction drift in score mappings; no feature may take it.
PREDICTION = "prediction"
#: Shares below this count as this, so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
PROFILE_FORMAT = 1


@dataclass(frozen=True)
class FeatureProfile:
    """Quantile bins of one column of the training data."""

    name: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]

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
        finite = _finite(name, values)
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        # Ties collapse quantiles into fewer bins; a constant column keeps one
        # edge at its value, so a production value above it still counts as drift.
        edges = np.unique(quantiles)
        return cls(
            name=name,
            edges=tuple(float(e) for e in edges),
            proportions=tuple(float(p) for p in _shares(edges, finite)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_json(cls, name: str, data: Any) -> FeatureProfile:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"profile of {name!r}: expected an object, got {type(data)}")
        try:
            return cls(
                name=name,
                edges=tuple(float(e) for e in data["edges"]),
                proportions=tuple(float(p) for p in data["proportions"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"profile of {name!r}: expected 'edges' and 'proportions' lists of numbers "
                f"({type(exc).__name__}: {exc})"
            ) from None


@dataclass(frozen=True)
class ReferenceProfile:
    """The training-time distribution of every feature and of the predictions."""

    features: Mapping[str, FeatureProfile]
    prediction: FeatureProfile | None
    rows: int

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        *,
        predictions: np.ndarray | None = None,
        bins: int = 10,
    ) -> ReferenceProfile:
        if not columns:
            raise SchemaError("a profile needs at least one feature column, got none")
        if PREDICTION in columns:
            raise SchemaError(
                f"a feature is named {PREDICTION!r}, the name reserved for prediction drift; "
                "rename the feature"
            )
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) != 1:
            raise SchemaError(f"feature columns differ in length: {lengths}")
        return cls(
            features={
                name: FeatureProfile.from_values(name, values, bins=bins)
                for name, values in columns.items()
            },
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
        if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ArtifactError(
                f"expected a reference profile of format {PROFILE_FORMAT}, got {found!r}"
            )
        features = data.get("features")
        if not isinstance(features, Mapping) or not features:
            raise ArtifactError("a reference profile needs a non-empty 'features' object")
        prediction = data.get("prediction")
        rows = data.get("rows")
        if not isinstance(rows, int) or rows < 1:
            raise ArtifactError(f"a reference profile needs 'rows' >= 1, got {rows!r}")
        return cls(
            features={name: FeatureProfile.from_json(name, f) for name, f in features.items()},
            prediction=None
            if prediction is None
            else FeatureProfile.from_json(PREDICTION, prediction),
            rows=rows,
        )


def psi(reference: FeatureProfile, values: np.ndarray) -> float:
    """PSI of ``values`` against the reference bins; non-finite values are left out."""
    actual = _shares(np.asarray(reference.edges, dtype=np.float64), _finite(reference.name, values))
    expected = np.asarray(reference.proportions, dtype=np.float64)
    actual = np.clip(actual, EPSILON, None)
    expected = np.clip(expected, EPSILON, None)
    score = float(np.sum((actual - expected) * np.log(actual / expected)))
    return score if math.isfinite(score) else math.inf


def psi_scores(profile: ReferenceProfile, columns: Mapping[str, np.ndarray]) -> dict[str, float]:
    """PSI of every profiled feature present in ``columns`` (others are not scored)."""
    return {
        name: psi(reference, columns[name])
        for name, reference in profile.features.items()
        if name in columns
    }


def _finite(name: str, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        raise SchemaError(
            f"feature {name!r} has no finite values among {array.size}; "
            "a distribution needs at least one number"
        )
    return finite


def _shares(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> np.ndarray:
    bins = np.searchsorted(edges, values, side="left")
    counts = np.bincount(bins, minlength=edges.size + 1)
    return counts / values.size
