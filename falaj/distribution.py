"""A numeric column's cumulative distribution, small enough to store with a model version.

The Kolmogorov-Smirnov and Wasserstein drift tests compare a production window
against the *whole* training distribution, not against a handful of PSI bins.
Keeping every training value would make a reference as large as the training
set, so a ``CumulativeDistribution`` keeps one of two forms:

- **exact**: when the column has at most ``EXACT_LIMIT`` distinct values (a
  training set of a few thousand rows, a count, a rounded amount), the distinct
  values and how many rows hold each. The statistics then equal SciPy's on the
  raw training values.
- **sketch**: otherwise ``SKETCH_POINTS`` + 1 quantiles, the minimum and
  maximum included, and the CDF taken as linear between them. The quantiles'
  probabilities are spaced as the arcsine, (1 - cos(pi k / N)) / 2: dense in
  the tails, where a linear ramp up to a far maximum would otherwise invent
  mass (Wasserstein on a lognormal column was off by 5e-3 with even spacing,
  1e-5 with this). What is left is the training ECDF's own wiggle inside a
  slice: KS within ~1e-5 of SciPy's on the raw values at a million rows
  (README: measured on the drift benchmark).

Both are held as the knots of one piecewise-linear, right-continuous CDF: a
value repeated among the knots is a jump (an exact value's rows), a run of
distinct knots a linear ramp (a sketch). Every statistic works on that one
shape, so neither form needs code of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from falaj.errors import ArtifactError, SchemaError

#: Distinct values up to which a column is kept exactly (values and counts).
EXACT_LIMIT = 2048
#: Slices of a sketch: N + 1 quantiles of the training values (4,096: ~80 kB of
#: JSON a feature; half as many doubled the Wasserstein error on heavy tails).
SKETCH_POINTS = 4096

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class CumulativeDistribution:
    """The CDF through ``knots`` (non-decreasing) at ``cumulative`` (0 to 1)."""

    knots: FloatArray
    cumulative: FloatArray
    #: Training values the distribution was made from (finite ones).
    count: int
    #: Mean and population standard deviation of those values (for a normed Wasserstein).
    mean: float
    std: float
    #: Whether every training value is kept (the steps of an empirical CDF).
    exact: bool

    @classmethod
    def from_values(cls, values: npt.ArrayLike, *, name: str = "values") -> CumulativeDistribution:
        array = np.asarray(values, dtype=np.float64).ravel()
        finite = np.sort(array[np.isfinite(array)])
        if finite.size == 0:
            raise SchemaError(
                f"feature {name!r} has no finite values among {array.size}; "
                "a distribution needs at least one number"
            )
        return cls.from_sorted(finite)

    @classmethod
    def from_sorted(cls, finite: FloatArray) -> CumulativeDistribution:
        """From finite values already sorted (at least one): no second sort of a large column."""
        mean, std = float(finite.mean()), float(finite.std())
        distinct, counts = _runs(finite)
        if distinct.size <= EXACT_LIMIT:
            knots, cumulative = _steps(distinct, counts)
            exact = True
        else:
            exact = False
            cumulative = sketch_probabilities(SKETCH_POINTS)
            # numpy's "inverted_cdf" on sorted values: the first value whose ECDF
            # reaches p. Training values, never points between two of them, so a
            # sketch of integer data holds integers.
            ranks = np.ceil(cumulative * finite.size).astype(np.intp) - 1
            knots = finite[np.clip(ranks, 0, finite.size - 1)]
        return cls(
            knots=knots,
            cumulative=cumulative,
            count=int(finite.size),
            mean=mean,
            std=std,
            exact=exact,
        )

    def at(self, x: FloatArray, *, ordered: bool = False) -> FloatArray:
        """F(x): the share of the distribution at or below each ``x``.

        ``ordered``: ``x`` is sorted, which lets a long array be placed among
        the knots in one pass instead of one binary search per value.
        """
        # Knots <= x: past every repeat of a jump knot, so the jump is included.
        return self._interpolate(x, self._knots_below(x, side="right", ordered=ordered))

    def before(self, x: FloatArray, *, ordered: bool = False) -> FloatArray:
        """F(x-): the share strictly below each ``x`` (differs from ``at`` only on a jump)."""
        return self._interpolate(x, self._knots_below(x, side="left", ordered=ordered))

    @functools.cached_property
    def continuous(self) -> bool:
        """Whether F has no jump, so ``before`` equals ``at`` everywhere."""
        return bool(np.all(np.diff(self.knots) > 0))

    def _knots_below(
        self, x: FloatArray, *, side: Literal["left", "right"], ordered: bool
    ) -> npt.NDArray[np.intp]:
        """How many knots lie below each x (``right``: at or below)."""
        if not ordered or x.size <= self.knots.size:
            return np.searchsorted(self.knots, x, side=side)
        # Knot k is at or below x[i] exactly when fewer than i+1 values of x lie
        # below the knot: count, for each i, the knots whose place in x is <= i.
        places = np.searchsorted(x, self.knots, side="left" if side == "right" else "right")
        return np.cumsum(np.bincount(places, minlength=x.size + 1))[: x.size]

    def _interpolate(self, x: FloatArray, index: npt.NDArray[np.intp]) -> FloatArray:
        # x lies on segment ``index``: between knots[index-1] and knots[index].
        origin, start, slope = self._segments
        return start[index] + (x - origin[index]) * slope[index]

    @functools.cached_property
    def _segments(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per segment (one more than knots; the outer two open): its first knot, F there, slope.

        Left of every knot F is 0, right of every knot 1: the outer segments are flat.
        """
        knots, cumulative = self.knots, self.cumulative
        width = np.diff(knots)
        with np.errstate(invalid="ignore", divide="ignore"):
            inner = np.where(width > 0, np.diff(cumulative) / width, 0.0)
        origin = np.concatenate(([0.0], knots))
        start = np.concatenate(([0.0], cumulative[:-1], [1.0]))
        slope = np.concatenate(([0.0], inner, [0.0]))
        return origin, start, slope

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"count": self.count, "mean": self.mean, "std": self.std}
        if self.exact:
            distinct = self.knots[0::2]
            counts = np.diff(self.cumulative[1::2], prepend=0.0) * self.count
            data["values"] = distinct.tolist()
            data["counts"] = np.rint(counts).astype(np.int64).tolist()
        else:
            data["quantiles"] = self.knots.tolist()
        return data

    @classmethod
    def from_json(cls, name: str, data: Any) -> CumulativeDistribution:
        try:
            if not isinstance(data, Mapping):
                raise TypeError(f"expected an object, got {type(data).__name__}")
            count, mean, std = int(data["count"]), float(data["mean"]), float(data["std"])
            if "values" in data:
                distinct = np.asarray(data["values"], dtype=np.float64)
                counts = np.asarray(data["counts"], dtype=np.int64)
                if distinct.shape != counts.shape or int(counts.sum()) != count:
                    raise ValueError(
                        "'values' and 'counts' differ in length or do not sum to count"
                    )
                knots, cumulative = _steps(distinct, counts)
                exact = True
            else:
                exact = False
                knots = np.asarray(data["quantiles"], dtype=np.float64)
                cumulative = sketch_probabilities(knots.size - 1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"distribution of {name!r}: expected 'count', 'mean', 'std' and either "
                f"'values' with 'counts' or 'quantiles' ({type(exc).__name__}: {exc})"
            ) from None
        if knots.size < 2 or np.any(np.diff(knots) < 0) or not np.all(np.isfinite(knots)):
            raise ArtifactError(
                f"distribution of {name!r}: expected at least two finite, non-decreasing "
                f"knots, got {knots.size}"
            )
        return cls(knots=knots, cumulative=cumulative, count=count, mean=mean, std=std, exact=exact)


def sketch_probabilities(slices: int) -> FloatArray:
    """The probabilities of a sketch's quantiles: arcsine-spaced, 0 and 1 included."""
    return (1.0 - np.cos(np.pi * np.arange(slices + 1) / max(slices, 1))) / 2.0


def _runs(ordered: FloatArray) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """The distinct values of a sorted array and how often each occurs."""
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, ordered.size))
    return ordered[starts], counts.astype(np.int64)


def _steps(distinct: FloatArray, counts: npt.NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
    """The empirical CDF as knots: each value twice, the share below it, then up to it."""
    above = np.cumsum(counts) / counts.sum()
    below = np.concatenate(([0.0], above[:-1]))
    return np.repeat(distinct, 2), np.column_stack((below, above)).ravel()
