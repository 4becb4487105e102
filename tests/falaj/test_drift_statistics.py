"""Each drift statistic equals SciPy's on fixed inputs; the sketch stays close on large ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats
from scipy.spatial import distance

from falaj.distribution import EXACT_LIMIT, CumulativeDistribution
from falaj.drift_statistics import (
    DEFAULT_THRESHOLDS,
    STATISTICS,
    chi_square,
    ks_p_value,
    ks_statistic,
    psi_of_shares,
    score_column,
    statistic,
    wasserstein_distance,
)
from falaj.errors import SchemaError
from falaj.profile import CategoryProfile, FeatureProfile

# Fixed inputs: small, with ties, negative values and a value only one side has.
REFERENCE = np.array([0.5, -1.25, 3.0, 3.0, 2.5, 0.0, 7.75, -4.0, 2.5, 2.5, 1.0, 9.0])
PRODUCTION = np.array([1.5, 3.0, 3.0, 11.0, 2.5, -0.5, 6.0, 4.25])


def exact(values: np.ndarray) -> CumulativeDistribution:
    distribution = CumulativeDistribution.from_values(values)
    assert distribution.exact
    return distribution


def test_ks_equals_scipy_two_sample_on_fixed_inputs() -> None:
    expected = stats.ks_2samp(REFERENCE, PRODUCTION, method="asymp")
    d = ks_statistic(exact(REFERENCE), np.sort(PRODUCTION))
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    p_value = ks_p_value(d, REFERENCE.size, PRODUCTION.size)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-12)


def test_wasserstein_equals_scipy_on_fixed_inputs() -> None:
    expected = stats.wasserstein_distance(REFERENCE, PRODUCTION)
    assert wasserstein_distance(exact(REFERENCE), np.sort(PRODUCTION)) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_and_wasserstein_equal_scipy_on_random_samples_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = rng.integers(-30, 30, 1500).astype(np.float64)
    production = rng.integers(-25, 40, 700).astype(np.float64)
    distribution = exact(reference)
    ordered = np.sort(production)
    ks = stats.ks_2samp(reference, production, method="asymp")
    assert ks_statistic(distribution, ordered) == pytest.approx(ks.statistic, abs=1e-12)
    assert wasserstein_distance(distribution, ordered) == pytest.approx(
        stats.wasserstein_distance(reference, production), abs=1e-10
    )


def test_the_sketch_of_a_large_column_stays_within_1e5_of_scipy() -> None:
    rng = np.random.default_rng(3)
    reference = rng.lognormal(size=200_000)  # heavy right tail: the hard case for a sketch
    production = rng.lognormal(0.1, 1.0, 50_000)
    distribution = CumulativeDistribution.from_values(reference)
    assert not distribution.exact and reference.size > EXACT_LIMIT
    ordered = np.sort(production)
    assert ks_statistic(distribution, ordered) == pytest.approx(
        stats.ks_2samp(reference, production).statistic, abs=1e-4
    )
    normed = wasserstein_distance(distribution, ordered) / reference.std()
    expected = stats.wasserstein_distance(reference, production) / reference.std()
    assert normed == pytest.approx(expected, abs=1e-4)


def test_chi_square_equals_scipy_contingency_on_fixed_counts() -> None:
    reference = np.array([120.0, 60.0, 15.0, 5.0, 0.0])
    production = np.array([40.0, 35.0, 20.0, 4.0, 0.0])  # the last category: empty on both
    expected = stats.chi2_contingency(np.vstack((reference, production))[:, :4], correction=False)
    statistic_, p_value = chi_square(reference, production)
    assert statistic_ == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_jensen_shannon_and_psi_equal_their_scipy_definitions() -> None:
    reference = CategoryProfile.from_values("country", np.array(["AE"] * 6 + ["SA"] * 3 + ["QA"]))
    production = np.array(["AE"] * 2 + ["SA"] * 5 + ["OM"] * 3)  # OM: never seen in training
    scores = score_column(reference, production)
    shares = reference.shares(production)
    assert scores["jensen_shannon"].value == pytest.approx(
        distance.jensenshannon(reference.proportions, shares), abs=1e-12
    )
    # PSI is the symmetrised Kullback-Leibler divergence over clipped shares.
    clipped_expected = np.clip(reference.proportions, 1e-4, None)
    clipped_actual = np.clip(shares, 1e-4, None)
    symmetric_kl = np.sum(
        special.rel_entr(clipped_actual, clipped_expected)
        + special.rel_entr(clipped_expected, clipped_actual)
    )
    assert psi_of_shares(reference.proportions, shares) == pytest.approx(symmetric_kl, abs=1e-12)
    assert scores["psi"].value == pytest.approx(symmetric_kl, abs=1e-12)


def test_score_column_picks_the_statistics_of_the_column_kind() -> None:
    rng = np.random.default_rng(4)
    numeric = FeatureProfile.from_values("amount", rng.normal(size=500))
    categorical = CategoryProfile.from_values("hour", rng.integers(0, 5, 500))
    assert set(score_column(numeric, rng.normal(size=100))) == {"psi", "ks", "wasserstein"}
    assert set(score_column(categorical, rng.integers(0, 5, 100))) == {
        "psi",
        "chi_square",
        "jensen_shannon",
    }
    assert set(score_column(numeric, rng.normal(size=100), ["ks"])) == {"ks"}


def test_a_profile_from_before_distributions_is_scored_by_psi_alone() -> None:
    old = FeatureProfile(name="amount", edges=(0.0,), proportions=(0.5, 0.5))
    assert set(score_column(old, np.array([-1.0, 1.0]))) == {"psi"}
    old_categories = CategoryProfile(name="hour", categories=("1",), proportions=(1.0, 0.0))
    assert set(score_column(old_categories, np.array([1, 1]))) == {"psi", "jensen_shannon"}


def test_wasserstein_is_normed_by_the_reference_spread() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(0.0, 1.0, 3000)
    for scale in (1.0, 1000.0):
        profile = FeatureProfile.from_values("x", reference * scale)
        value = score_column(profile, (reference[:1000] + 0.5) * scale)["wasserstein"].value
        assert value == pytest.approx(0.5, abs=0.05)  # half a standard deviation, at any scale


def test_a_constant_reference_that_moves_is_infinitely_far() -> None:
    profile = FeatureProfile.from_values("flag", np.ones(100))
    assert score_column(profile, np.ones(10))["wasserstein"].value == 0.0
    assert score_column(profile, np.full(10, 2.0))["wasserstein"].value == float("inf")


def test_thresholds_and_directions() -> None:
    assert set(DEFAULT_THRESHOLDS) == set(STATISTICS)
    ks, psi = statistic("ks"), statistic("psi")
    assert ks.decides_by_p_value and not psi.decides_by_p_value
    rng = np.random.default_rng(6)
    profile = FeatureProfile.from_values("x", rng.normal(size=2000))
    moved = score_column(profile, rng.normal(1.0, 1.0, 400))
    still = score_column(profile, rng.normal(0.0, 1.0, 400))
    for name in ("psi", "ks", "wasserstein"):
        assert statistic(name).drifted(moved[name], DEFAULT_THRESHOLDS[name])
        assert not statistic(name).drifted(still[name], DEFAULT_THRESHOLDS[name])
    with pytest.raises(SchemaError, match="unknown drift statistic 'kl'; expected one of psi"):
        statistic("kl")


@pytest.mark.parametrize("size", [500, 5000])
def test_taking_a_column_in_chunks_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    import falaj.drift_statistics as statistics

    rng = np.random.default_rng(size)
    reference = np.round(rng.normal(size=size), 1 if size == 500 else 4)  # ties; exact and sketch
    production = np.sort(np.round(rng.normal(0.3, 1.2, 999), 1))
    distribution = CumulativeDistribution.from_values(reference)
    whole = (
        ks_statistic(distribution, production),
        wasserstein_distance(distribution, production),
    )
    monkeypatch.setattr(statistics, "CHUNK", 7)
    chunked = (
        ks_statistic(distribution, production),
        wasserstein_distance(distribution, production),
    )
    assert chunked[0] == whole[0]
    assert chunked[1] == pytest.approx(whole[1], rel=1e-12)
    if distribution.exact:
        assert chunked[1] == pytest.approx(
            stats.wasserstein_distance(reference, production), rel=1e-10
        )
