"""Drift statistics: how far a column of production values is from its reference.

Each statistic is a ``DriftStatistic`` (the extension point: a new test is one
subclass in ``STATISTICS``) that scores one column against the column's
reference profile — stored once with the model version, never rebuilt from
training data:

============== =========== ===================================================
statistic      columns     value (drift when)
============== =========== ===================================================
psi            both        population stability index over the profile's
                           quantile bins or categories: sum of (actual -
                           expected) * ln(actual / expected); < 0.1 reads as
                           stable, > 0.2 as a significant shift (above)
ks             numeric     Kolmogorov-Smirnov D, the largest gap between the
                           two CDFs, and the p-value of SciPy's asymptotic
                           two-sample test (p-value below threshold)
wasserstein    numeric     Wasserstein-1 distance divided by the reference's
                           standard deviation, so one threshold fits every
                           scale, as Evidently's ``wasserstein`` (above)
chi_square     categorical Pearson's chi-square of the two-sample table
                           (training counts, production counts), as SciPy's
                           ``chi2_contingency`` (p-value below threshold)
jensen_shannon categorical Jensen-Shannon distance (natural log, SciPy's
                           ``jensenshannon``) of the two share vectors (above)
============== =========== ===================================================

Both tests are two-sample: the training data is a sample too, and a
goodness-of-fit test that took its shares as exact would call a large window
drifted for the reference's own sampling noise (measured: a chi-square against
2,000 training rows gave p < 1e-5 to one in a thousand unshifted 10,000-row
windows). The default thresholds (``default_threshold``) keep unshifted
200-row windows, the default, quiet: each is above the 99.9th percentile of its
statistic over such windows, measured against 2,000- and 100,000-row
references (README), and a half-standard-deviation shift is far past each.

KS and Wasserstein read the reference's ``CumulativeDistribution``: exact for a
column of few distinct values, a quantile sketch otherwise (``distribution``).
A production value no category names counts as the profile's ``__other__``.

SciPy is imported where a p-value or a distance is computed, not here: the
settings read ``DEFAULT_THRESHOLDS`` at start-up in every process, and
``scipy.stats`` alone takes ~0.3 s to import.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from falaj.distribution import CumulativeDistribution, FloatArray
from falaj.errors import SchemaError
from falaj.profile import (
    CATEGORICAL_KIND,
    NUMERIC_KIND,
    CategoryProfile,
    ColumnProfile,
    FeatureProfile,
    ReferenceProfile,
    sorted_bin_shares,
)

#: Shares below this count as this, so an empty bin gives a large but finite PSI.
EPSILON = 1e-4
#: KS and Wasserstein take a long column this many values at a time: their
#: temporaries stay a few MB, where whole-column ones took ~1.1 GB at 10M rows.
CHUNK = 1 << 18


@dataclass(frozen=True)
class StatisticValue:
    """One statistic of one column: its value and, for a test, its p-value."""

    statistic: str
    value: float
    p_value: float | None = None


class Column:
    """Production values of one column, prepared once for every statistic that scores it."""

    def __init__(self, reference: ColumnProfile, values: npt.ArrayLike) -> None:
        self.reference = reference
        self._values = values
        self._sorted: FloatArray | None = None
        self._shares: FloatArray | None = None
        self._counts: FloatArray | None = None

    @property
    def kind(self) -> str:
        return CATEGORICAL_KIND if isinstance(self.reference, CategoryProfile) else NUMERIC_KIND

    @property
    def shares(self) -> FloatArray:
        """Shares of the reference's bins (numeric) or categories and ``__other__``."""
        if self._shares is None:
            if isinstance(self.reference, CategoryProfile):
                counts = self.categories
                self._shares = counts / counts.sum()
            elif self.ordered.size:
                edges = np.asarray(self.reference.edges, dtype=np.float64)
                self._shares = sorted_bin_shares(edges, self.ordered)
            else:
                self._shares = self.reference.shares(self._values)  # says what is missing
        return self._shares

    @property
    def categories(self) -> FloatArray:
        """How many values fall in each reference category and ``__other__``."""
        if self._counts is None:
            if not isinstance(self.reference, CategoryProfile):
                raise SchemaError(f"feature {self.reference.name!r} is numeric, not categorical")
            self._counts = self.reference.counts(self._values)
        return self._counts

    @property
    def ordered(self) -> FloatArray:
        """The finite values, sorted (numeric columns)."""
        if self._sorted is None:
            array = np.asarray(self._values, dtype=np.float64).ravel()
            self._sorted = np.sort(array[np.isfinite(array)])
        return self._sorted

    @property
    def count(self) -> int:
        """How many values count: finite numbers, or present categories."""
        if isinstance(self.reference, CategoryProfile):
            return int(self.categories.sum())
        return int(self.ordered.size)


class DriftStatistic(ABC):
    """One way to score a column against its reference."""

    name: ClassVar[str]
    #: Column kinds (``numeric``, ``categorical``) the statistic scores.
    kinds: ClassVar[frozenset[str]]
    #: Drift when the p-value falls below the threshold, rather than the value above it.
    decides_by_p_value: ClassVar[bool] = False
    #: The threshold of the default policy (``Settings.drift_thresholds``).
    default_threshold: ClassVar[float]

    def applies_to(self, column: Column) -> bool:
        return column.kind in self.kinds and self.ready(column.reference)

    def ready(self, reference: ColumnProfile) -> bool:
        """Whether the reference holds what this statistic reads (old profiles may not)."""
        return True

    @abstractmethod
    def score(self, column: Column) -> StatisticValue: ...

    def drifted(self, value: StatisticValue, threshold: float) -> bool:
        if self.decides_by_p_value:
            return value.p_value is not None and value.p_value < threshold
        return value.value > threshold


class PopulationStabilityIndex(DriftStatistic):
    name = "psi"
    kinds = frozenset({NUMERIC_KIND, CATEGORICAL_KIND})
    default_threshold = 0.2

    def score(self, column: Column) -> StatisticValue:
        return StatisticValue(self.name, psi_of_shares(column.reference.proportions, column.shares))


class KolmogorovSmirnov(DriftStatistic):
    name = "ks"
    kinds = frozenset({NUMERIC_KIND})
    decides_by_p_value = True
    default_threshold = 0.001

    def ready(self, reference: ColumnProfile) -> bool:
        return isinstance(reference, FeatureProfile) and reference.distribution is not None

    def score(self, column: Column) -> StatisticValue:
        distribution = _distribution(column.reference)
        d = ks_statistic(distribution, column.ordered)
        return StatisticValue(self.name, d, ks_p_value(d, distribution.count, column.ordered.size))


class Wasserstein(DriftStatistic):
    name = "wasserstein"
    kinds = frozenset({NUMERIC_KIND})
    # 0.1, Evidently's, suits 1,000+ rows; over 200 rows noise alone reaches 0.22.
    default_threshold = 0.25

    def ready(self, reference: ColumnProfile) -> bool:
        return isinstance(reference, FeatureProfile) and reference.distribution is not None

    def score(self, column: Column) -> StatisticValue:
        distribution = _distribution(column.reference)
        distance_ = wasserstein_distance(distribution, column.ordered)
        # A constant reference has no scale: any move at all is infinitely far.
        if distribution.std > 0:
            normed = distance_ / distribution.std
        else:
            normed = 0.0 if distance_ == 0 else math.inf
        return StatisticValue(self.name, normed)


class ChiSquare(DriftStatistic):
    name = "chi_square"
    kinds = frozenset({CATEGORICAL_KIND})
    decides_by_p_value = True
    default_threshold = 0.001

    def ready(self, reference: ColumnProfile) -> bool:
        return isinstance(reference, CategoryProfile) and reference.count is not None

    def score(self, column: Column) -> StatisticValue:
        reference = column.reference
        assert isinstance(reference, CategoryProfile) and reference.count is not None
        training = np.asarray(reference.proportions, dtype=np.float64) * reference.count
        statistic, p_value = chi_square(training, column.categories)
        return StatisticValue(self.name, statistic, p_value)


class JensenShannon(DriftStatistic):
    name = "jensen_shannon"
    kinds = frozenset({CATEGORICAL_KIND})
    # Over 200 rows of 20 categories noise alone reaches 0.19.
    default_threshold = 0.2

    def score(self, column: Column) -> StatisticValue:
        from scipy.spatial import distance

        value = float(distance.jensenshannon(column.reference.proportions, column.shares))
        return StatisticValue(self.name, value)


#: Every statistic by name, in the order reports show them.
STATISTICS: Mapping[str, DriftStatistic] = {
    statistic.name: statistic
    for statistic in (
        PopulationStabilityIndex(),
        KolmogorovSmirnov(),
        Wasserstein(),
        ChiSquare(),
        JensenShannon(),
    )
}
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    name: statistic.default_threshold for name, statistic in STATISTICS.items()
}


def import_scipy() -> None:
    """Import what the statistics compute with, now: a long-running scorer calls this at
    start, so its first window does not pay the ~1 s of importing SciPy."""
    import scipy.spatial.distance
    import scipy.stats  # noqa: F401


def statistic(name: str) -> DriftStatistic:
    try:
        return STATISTICS[name]
    except KeyError:
        raise SchemaError(
            f"unknown drift statistic {name!r}; expected one of {', '.join(STATISTICS)}"
        ) from None


def score_column(
    reference: ColumnProfile, values: npt.ArrayLike, names: Iterable[str] = STATISTICS
) -> dict[str, StatisticValue]:
    """Every statistic among ``names`` that applies to the column, by name."""
    column = Column(reference, values)
    chosen = [statistic(name) for name in names]
    return {s.name: s.score(column) for s in chosen if s.applies_to(column)}


# -- the statistics on arrays (tested against SciPy) -----------------------------


def psi(reference: ColumnProfile, values: npt.ArrayLike) -> float:
    """PSI of ``values`` against the reference bins or categories; missing values left out."""
    return psi_of_shares(reference.proportions, reference.shares(values))


def psi_scores(profile: ReferenceProfile, columns: Mapping[str, np.ndarray]) -> dict[str, float]:
    """PSI of every profiled feature present in ``columns`` (others are not scored)."""
    return {
        name: psi(reference, columns[name])
        for name, reference in profile.features.items()
        if name in columns
    }


def psi_of_shares(expected: Iterable[float], actual: npt.ArrayLike) -> float:
    """Sum of (actual - expected) * ln(actual / expected); shares below EPSILON count as it."""
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    e = np.clip(np.asarray(tuple(expected), dtype=np.float64), EPSILON, None)
    score = float(np.sum((a - e) * np.log(a / e)))
    return score if math.isfinite(score) else math.inf


def ks_statistic(reference: CumulativeDistribution, ordered: FloatArray) -> float:
    """sup |F_ref - F_production| over every x, for sorted production values.

    Between two production values F_production is flat and F_ref rises, so the
    gap is largest at a production value: just at it (F_production counts it)
    or just before it. Among tied values the last gives the true count at the
    value and the first the true count before it, so using each value's index
    needs no tie handling. Taken ``CHUNK`` values at a time.
    """
    n = ordered.size
    if n == 0:
        return math.nan
    worst = 0.0
    for start in range(0, n, CHUNK):
        part = ordered[start : start + CHUNK]
        at = reference.at(part, ordered=True)
        before = at if reference.continuous else reference.before(part, ordered=True)
        index = np.arange(start, start + part.size, dtype=np.float64)
        worst = max(worst, float(np.max((index + 1) / n - at)), float(np.max(before - index / n)))
    return worst


def ks_p_value(d: float, reference_count: int, production_count: int) -> float:
    """SciPy's asymptotic two-sided p-value of ``ks_2samp`` (method="asymp")."""
    if not math.isfinite(d) or production_count == 0:
        return math.nan
    m, n = sorted((reference_count, production_count), reverse=True)
    from scipy import stats

    # As scipy.stats.ks_2samp: the Kolmogorov distribution at the effective size.
    en = m * n / (m + n)
    return float(np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))


def wasserstein_distance(reference: CumulativeDistribution, ordered: FloatArray) -> float:
    """The integral of |F_ref - F_production| over x, exactly, for sorted production values.

    Between production values i and i+1, F_production is (i+1)/n and F_ref is
    linear unless a knot lies in between: those slices (most of them, for a
    large window) have a closed-form area from F_ref at their two ends, taken
    ``CHUNK`` slices at a time. The few slices with a knot inside (at most one
    per knot) and the two tails are cut at their knots and summed the same
    way. Ties make empty slices.
    """
    n = ordered.size
    if n == 0:
        return math.nan
    knots = reference.knots
    # Slice j (-1: left of every value, n-1: right of them) holding each knot.
    holding = np.searchsorted(ordered, knots, side="right") - 1
    cut = np.zeros(n + 1, dtype=bool)  # by slice j + 1
    cut[holding + 1] = True
    cut[0] = cut[n] = True
    area = 0.0
    for start in range(0, n - 1, CHUNK):
        stop = min(start + CHUNK, n - 1)  # slices start .. stop-1
        part = ordered[start : stop + 1]
        if reference.continuous:
            at = reference.at(part, ordered=True)
            left_at, right_before = at[:-1], at[1:]
        else:
            left_at = reference.at(part[:-1], ordered=True)
            right_before = reference.before(part[1:], ordered=True)
        level = np.arange(start + 1, stop + 1, dtype=np.float64) / n
        plain = ~cut[start + 1 : stop + 1]
        area += float(
            _slice_areas(
                (left_at - level)[plain], (right_before - level)[plain], np.diff(part)[plain]
            ).sum()
        )
    # The cut slices, split at their knots: their ends and every knot are the points.
    cut_slices = np.flatnonzero(cut[1:n])
    points = np.unique(
        np.concatenate((knots, ordered[cut_slices], ordered[cut_slices + 1], ordered[[0, -1]]))
    )
    left, right = points[:-1], points[1:]
    slice_of = np.searchsorted(ordered, left, side="right") - 1
    kept = cut[slice_of + 1]
    left, right, slice_of = left[kept], right[kept], slice_of[kept]
    level = (slice_of + 1) / n
    at_right = (
        reference.at(right, ordered=True)
        if reference.continuous
        else reference.before(right, ordered=True)
    )
    area += float(
        _slice_areas(reference.at(left, ordered=True) - level, at_right - level, right - left).sum()
    )
    return area


def _slice_areas(start: FloatArray, end: FloatArray, width: FloatArray) -> FloatArray:
    """The integral of |g| over slices where g is linear from ``start`` to ``end``."""
    same_side = start * end >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = (start**2 + end**2) / (2 * np.abs(end - start))
    return np.where(same_side, np.abs(start + end) / 2, crossing) * width


def chi_square(
    reference_counts: npt.ArrayLike, production_counts: npt.ArrayLike
) -> tuple[float, float]:
    """Pearson's chi-square test of homogeneity of two count vectors over the same categories.

    As ``scipy.stats.chi2_contingency`` on the 2 x k table without Yates'
    correction; categories empty on both sides carry no degree of freedom and
    are left out (SciPy refuses a zero expected count).
    """
    table = np.vstack(
        (
            np.asarray(reference_counts, dtype=np.float64),
            np.asarray(production_counts, dtype=np.float64),
        )
    )
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) == 0):
        return 0.0, 1.0
    from scipy import stats

    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def _distribution(reference: ColumnProfile) -> CumulativeDistribution:
    if not isinstance(reference, FeatureProfile) or reference.distribution is None:
        raise SchemaError(f"profile of {reference.name!r} keeps no distribution")
    return reference.distribution
