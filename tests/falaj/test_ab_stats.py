"""A/B significance: the numbers a statistician would compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from falaj.ab_stats import MIN_SAMPLE, compare_means, compare_rates
from falaj.errors import ConfigError


def test_two_proportions_match_the_textbook_z() -> None:
    # 20% against 25% of 1,000 each: pooled 22.5%, z = 0.05 / sqrt(.225 * .775 * 2/1000).
    result = compare_rates(200, 1000, 250, 1000)
    z = 0.05 / math.sqrt(0.225 * 0.775 * 2 / 1000)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert result.p_value == pytest.approx(0.00742, abs=1e-5)
    assert (result.difference, result.significant()) == (pytest.approx(0.05), True)


def test_equal_rates_and_small_samples_are_not_called_different() -> None:
    assert not compare_rates(100, 1000, 100, 1000).significant()
    assert compare_rates(0, 500, 0, 500).p_value == 1.0
    few = compare_rates(1, MIN_SAMPLE - 1, 20, MIN_SAMPLE - 1)
    assert few.p_value < 0.05 and not few.enough_data and not few.significant()


def test_impossible_counts_say_what_was_expected() -> None:
    with pytest.raises(ConfigError, match="expected 0 <= successes <= n, got 12 of 10"):
        compare_rates(12, 10, 1, 10)


def test_welch_matches_its_formula_and_the_normal_tail_for_large_samples() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(10.0, 1.0, 2000)
    b = rng.normal(10.1, 3.0, 2500)  # the canary: slower on average, far more spread
    result = compare_means(a, b)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    t = (b.mean() - a.mean()) / se
    assert result.statistic == pytest.approx(t, rel=1e-12)
    # With thousands of degrees of freedom the t tail is the normal one, to 3 places.
    assert result.p_value == pytest.approx(math.erfc(abs(t) / math.sqrt(2)), abs=1e-3)
    assert result.difference == pytest.approx(b.mean() - a.mean())


def test_means_of_one_distribution_are_not_different_and_nans_are_left_out() -> None:
    rng = np.random.default_rng(8)
    same = compare_means(rng.normal(0, 1, 500), np.append(rng.normal(0, 1, 500), np.nan))
    assert same.n_b == 500 and not same.significant()
    shifted = compare_means(rng.normal(0, 1, 500), rng.normal(0.5, 1, 500))
    assert shifted.significant() and shifted.difference > 0
    empty = compare_means([1.0], [])
    assert math.isnan(empty.p_value) and not empty.enough_data
