"""Quantile reference profiles and the population stability index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falaj.errors import ArtifactError, SchemaError
from falaj.profile import PREDICTION, FeatureProfile, ReferenceProfile, psi, psi_scores


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_bins_are_quantiles_with_open_outer_bins(rng: np.random.Generator) -> None:
    values = rng.normal(size=5000)
    profile = FeatureProfile.from_values("amount", values, bins=10)
    assert len(profile.edges) == 9
    assert len(profile.proportions) == 10
    assert sum(profile.proportions) == pytest.approx(1.0)
    assert all(p == pytest.approx(0.1, abs=0.002) for p in profile.proportions)
    # Values far outside anything trained on still land in a bin, the outer ones.
    assert psi(profile, np.full(100, 1e9)) > 1.0
    assert psi(profile, np.full(100, -1e9)) > 1.0


def test_identical_distribution_scores_near_zero(rng: np.random.Generator) -> None:
    profile = FeatureProfile.from_values("amount", rng.normal(size=2000))
    assert psi(profile, rng.normal(size=2000)) < 0.05


def test_shifted_distribution_scores_above_point_two(rng: np.random.Generator) -> None:
    profile = FeatureProfile.from_values("amount", rng.normal(size=2000))
    shifted = psi(profile, rng.normal(loc=1.0, size=2000))
    widened = psi(profile, rng.normal(scale=2.5, size=2000))
    assert shifted > 0.2
    assert widened > 0.2


def test_psi_matches_the_formula_by_hand() -> None:
    profile = FeatureProfile(name="x", edges=(0.0,), proportions=(0.5, 0.5))
    values = np.array([-1.0] * 8 + [1.0] * 2)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(profile, values) == pytest.approx(expected)


def test_empty_bins_give_a_finite_score() -> None:
    profile = FeatureProfile(name="x", edges=(0.0,), proportions=(1.0, 0.0))
    score = psi(profile, np.array([5.0, 6.0]))
    assert np.isfinite(score) and score > 5


def test_constant_column_still_detects_a_move() -> None:
    profile = FeatureProfile.from_values("flag", np.zeros(500))
    assert profile.edges == (0.0,)
    assert psi(profile, np.zeros(50)) == pytest.approx(0.0)
    assert psi(profile, np.ones(50)) > 1.0


def test_non_finite_values_are_left_out_and_all_missing_is_refused() -> None:
    profile = FeatureProfile.from_values("x", np.arange(100.0))
    with_nan = np.concatenate([np.arange(100.0), [np.nan, np.inf]])
    assert psi(profile, with_nan) == pytest.approx(0.0)
    with pytest.raises(SchemaError, match="no finite values"):
        psi(profile, np.array([np.nan, np.nan]))


def test_reference_profile_roundtrips_through_json(rng: np.random.Generator) -> None:
    columns = {"amount": rng.lognormal(size=300), "hour": rng.integers(0, 24, 300).astype(float)}
    profile = ReferenceProfile.from_columns(columns, predictions=rng.random(300), bins=5)
    restored = ReferenceProfile.from_json(json.loads(json.dumps(profile.to_json())))
    assert restored == profile
    assert restored.rows == 300
    assert restored.prediction is not None and restored.prediction.name == PREDICTION
    scores = psi_scores(restored, {**columns, "unprofiled": np.ones(300)})
    assert set(scores) == {"amount", "hour"}
    assert all(score < 0.01 for score in scores.values())


def test_from_columns_refuses_bad_columns(rng: np.random.Generator) -> None:
    with pytest.raises(SchemaError, match="differ in length"):
        ReferenceProfile.from_columns({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(SchemaError, match="reserved"):
        ReferenceProfile.from_columns({PREDICTION: np.ones(3)})
    with pytest.raises(SchemaError, match="at least one"):
        ReferenceProfile.from_columns({})


def test_from_json_refuses_malformed_profiles() -> None:
    with pytest.raises(ArtifactError, match="format"):
        ReferenceProfile.from_json({"features": {}})
    with pytest.raises(ArtifactError, match="proportions"):
        ReferenceProfile.from_json(
            {"format": 1, "rows": 3, "features": {"a": {"edges": [1.0]}}, "prediction": None}
        )
    with pytest.raises(ArtifactError, match="need 2 proportions"):
        ReferenceProfile.from_json(
            {
                "format": 1,
                "rows": 3,
                "features": {"a": {"edges": [1.0], "proportions": [1.0]}},
                "prediction": None,
            }
        )
