"""The significance of a difference between two variants of a model (an A/B test).

Rates (errors, approvals, confirmed fraud among flagged) are compared with the
two-proportion z-test, means (latency, predicted probability) with Welch's
t-test, which does not assume the variants' variances are equal (a canary's
latency seldom has the stable's spread). Both are two-sided. The canary is
``b``, the stable version ``a``: a positive difference means the canary's is
higher. Too few observations give no verdict rather than a misleading one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from falaj.errors import ConfigError

#: Below this many observations per variant a test says nothing (normal
#: approximation and variance estimates are not trustworthy yet).
MIN_SAMPLE = 30
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    test: str
    a: float
    b: float
    #: b - a.
    difference: float
    statistic: float
    p_value: float
    n_a: int
    n_b: int

    @property
    def enough_data(self) -> bool:
        return min(self.n_a, self.n_b) >= MIN_SAMPLE and math.isfinite(self.p_value)

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.enough_data and self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        """JSON-safe: a rate or p-value that does not exist yet (no data) is null, not NaN."""
        fields = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(self).items()
        }
        return {**fields, "enough_data": self.enough_data, "significant": self.significant()}


def compare_rates(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Comparison:
    """Two-proportion z-test with the pooled proportion (the test for H0: equal rates)."""
    problems = [
        f"{name}: expected 0 <= successes <= n, got {k} of {n}"
        for name, k, n in (("a", successes_a, n_a), ("b", successes_b, n_b))
        if not 0 <= k <= n
    ]
    if problems:
        raise ConfigError("cannot compare rates: " + "; ".join(problems))
    rate_a = successes_a / n_a if n_a else math.nan
    rate_b = successes_b / n_b if n_b else math.nan
    pooled = (successes_a + successes_b) / (n_a + n_b) if n_a + n_b else math.nan
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b)) if n_a and n_b else 0.0
    if spread > 0:
        z = (rate_b - rate_a) / spread
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        # Both rates 0 or both 1 (or no data): no difference to test.
        z, p_value = 0.0, 1.0 if n_a and n_b else math.nan
    return Comparison("two-proportion z", rate_a, rate_b, rate_b - rate_a, z, p_value, n_a, n_b)


def compare_means(a: npt.ArrayLike, b: npt.ArrayLike) -> Comparison:
    """Welch's t-test of the two variants' means; NaNs are left out."""
    first = _finite(a)
    second = _finite(b)
    if min(first.size, second.size) < 2:
        return Comparison(
            "welch t",
            float(first.mean()) if first.size else math.nan,
            float(second.mean()) if second.size else math.nan,
            math.nan,
            math.nan,
            math.nan,
            int(first.size),
            int(second.size),
        )
    result = stats.ttest_ind(second, first, equal_var=False)
    mean_a, mean_b = float(first.mean()), float(second.mean())
    return Comparison(
        "welch t",
        mean_a,
        mean_b,
        mean_b - mean_a,
        float(result.statistic),
        float(result.pvalue),
        int(first.size),
        int(second.size),
    )


def _finite(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]
