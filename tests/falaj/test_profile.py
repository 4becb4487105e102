"""Quantile reference profiles and the population stability index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from falaj.drift_statistics import psi, psi_scores
from falaj.errors import ArtifactError, SchemaError
from falaj.feature_repo import load_repo
from falaj.profile import (
    OTHER,
    PREDICTION,
    TOP_K,
    CategoryProfile,
    FeatureProfile,
    ReferenceProfile,
    categorical_columns,
)
from falaj.schema import ColumnSpec, DType, FeatureSchema
from falaj.settings import Settings


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
    with pytest.raises(ArtifactError, match="format 1, 2, 3, got None"):
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


# -- quantiles ----------------------------------------------------------------


def test_numeric_profiles_record_quantiles() -> None:
    profile = FeatureProfile.from_values("x", np.arange(1001.0))
    assert list(profile.quantiles) == ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
    assert profile.quantiles["p01"] == pytest.approx(10.0)
    assert profile.quantiles["p50"] == pytest.approx(500.0)
    assert profile.quantiles["p99"] == pytest.approx(990.0)


# -- categories ---------------------------------------------------------------


def test_categories_keep_the_top_k_by_share_and_pool_the_rest() -> None:
    # 25 categories: "c00" most frequent (25 rows) down to "c24" (1 row).
    values = np.array([f"c{i:02d}" for i in range(25) for _ in range(25 - i)])
    profile = CategoryProfile.from_values("merchant", values)
    assert TOP_K == 20
    assert profile.categories == tuple(f"c{i:02d}" for i in range(20))
    total = values.size
    assert profile.proportions[0] == pytest.approx(25 / total)
    # c20..c24 share the last bucket: 5 + 4 + 3 + 2 + 1 rows.
    assert profile.proportions[-1] == pytest.approx(15 / total)
    assert sum(profile.proportions) == pytest.approx(1.0)


def test_category_ties_are_ordered_by_name() -> None:
    profile = CategoryProfile.from_values("c", np.array(["b", "a", "c", "a", "b", "c"]))
    assert profile.categories == ("a", "b", "c")
    assert profile.proportions[-1] == 0.0


def test_category_psi_matches_the_formula_by_hand() -> None:
    profile = CategoryProfile(name="c", categories=("a", "b"), proportions=(0.5, 0.5, 0.0))
    values = np.array(["a"] * 8 + ["b"] * 2)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi(profile, values) == pytest.approx(expected)


def test_an_unseen_category_counts_as_other_and_shows_as_drift() -> None:
    profile = CategoryProfile.from_values("c", np.array(["a", "b"] * 100))
    assert profile.proportions == (0.5, 0.5, 0.0)
    assert psi(profile, np.array(["a", "b"] * 50)) == pytest.approx(0.0)
    # 10% of a category training never saw: its empty bucket counts as EPSILON.
    unseen = psi(profile, np.array(["a", "b"] * 45 + ["z"] * 10))
    assert np.isfinite(unseen) and unseen > 0.2
    with pytest.raises(SchemaError, match="no values among 2"):
        psi(profile, np.array([None, np.nan], dtype=object))


def test_integer_codes_match_whatever_numeric_type_they_come_back_as() -> None:
    trained = np.array([0, 0, 0, 1], dtype=np.float32)
    profile = CategoryProfile.from_values("is_foreign", trained)
    assert profile.categories == ("0", "1")
    assert psi(profile, np.array([0.0, 0.0, 0.0, 1.0, np.nan])) == pytest.approx(0.0)
    assert psi(profile, np.array([False, False, False, True])) == pytest.approx(0.0)
    assert psi(profile, np.array([0, 0, 0, 1], dtype=object)) == pytest.approx(0.0)
    assert psi(profile, np.array([1.0, 1.0, 1.0, 0.0])) > 1.0


def test_from_columns_profiles_strings_booleans_and_named_codes_as_categories(
    rng: np.random.Generator,
) -> None:
    columns = {
        "amount": rng.lognormal(size=400),
        "country": rng.choice(["AE", "SA", "OM"], 400),
        "is_weekend": rng.random(400) < 0.3,
        "is_foreign": (rng.random(400) < 0.1).astype(np.float32),
    }
    profile = ReferenceProfile.from_columns(columns, categorical=("is_foreign",))
    kinds = {name: type(p).__name__ for name, p in profile.features.items()}
    assert kinds == {
        "amount": "FeatureProfile",
        "country": "CategoryProfile",
        "is_weekend": "CategoryProfile",
        "is_foreign": "CategoryProfile",
    }
    with pytest.raises(SchemaError, match=r"categorical columns \['hour'\]"):
        ReferenceProfile.from_columns(columns, categorical=("hour",))


def test_psi_scores_use_categories_for_categorical_columns() -> None:
    reference = {"country": np.array(["AE"] * 50 + ["SA"] * 50), "amount": np.arange(100.0)}
    profile = ReferenceProfile.from_columns(reference)
    window = {"country": np.array(["AE"] * 80 + ["SA"] * 20), "amount": np.arange(100.0)}
    scores = psi_scores(profile, window)
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert scores["country"] == pytest.approx(expected)
    assert scores["amount"] == pytest.approx(0.0)


def test_profiles_with_categories_and_quantiles_roundtrip_through_json(
    rng: np.random.Generator,
) -> None:
    columns = {"amount": rng.lognormal(size=300), "country": rng.choice(["AE", "SA"], 300)}
    profile = ReferenceProfile.from_columns(columns, predictions=rng.random(300))
    stored = json.loads(json.dumps(profile.to_json(), allow_nan=False))
    assert stored["format"] == 3
    assert stored["features"]["country"]["kind"] == "categorical"
    assert stored["features"]["amount"]["quantiles"]["p50"] > 0
    restored = ReferenceProfile.from_json(stored)
    assert restored == profile
    amount, restored_amount = profile.features["amount"], restored.features["amount"]
    assert isinstance(amount, FeatureProfile) and isinstance(restored_amount, FeatureProfile)
    assert amount.distribution is not None and restored_amount.distribution is not None
    np.testing.assert_array_equal(restored_amount.distribution.knots, amount.distribution.knots)
    np.testing.assert_array_equal(
        restored_amount.distribution.cumulative, amount.distribution.cumulative
    )
    assert isinstance(restored.features["country"], CategoryProfile)


def test_a_format_1_profile_as_older_registries_hold_it_still_loads() -> None:
    stored = {
        "format": 1,
        "rows": 10,
        "features": {"amount": {"edges": [0.0], "proportions": [0.5, 0.5]}},
        "prediction": {"edges": [0.5], "proportions": [0.9, 0.1]},
    }
    profile = ReferenceProfile.from_json(stored)
    amount = profile.features["amount"]
    assert isinstance(amount, FeatureProfile)
    assert amount.quantiles == {}
    assert amount.distribution is None
    assert psi_scores(profile, {"amount": np.array([-1.0, 1.0])}) == {"amount": 0.0}


def test_malformed_categorical_profiles_are_refused() -> None:
    def stored(feature: object) -> dict[str, object]:
        return {"format": 2, "rows": 3, "features": {"c": feature}, "prediction": None}

    with pytest.raises(ArtifactError, match="'categories'"):
        ReferenceProfile.from_json(stored({"kind": "categorical", "proportions": [1.0]}))
    with pytest.raises(ArtifactError, match=f"proportions \\(the last for '{OTHER}'\\)"):
        ReferenceProfile.from_json(
            stored({"kind": "categorical", "categories": ["a"], "proportions": [1.0]})
        )
    with pytest.raises(ArtifactError, match="distinct"):
        CategoryProfile(name="c", categories=("a", OTHER), proportions=(0.5, 0.5, 0.0))
    with pytest.raises(ArtifactError, match="expected kind 'numeric' or 'categorical'"):
        ReferenceProfile.from_json(stored({"kind": "ordinal"}))


# -- which columns are categorical -----------------------------------------------


def test_the_schema_decides_which_columns_are_categorical() -> None:
    def column(name: str, dtype: DType, **bounds: float) -> ColumnSpec:
        return ColumnSpec(name=name, dtype=dtype, **bounds)

    schema = FeatureSchema(
        dataset="t",
        entity="id",
        timestamp="ts",
        label="y",
        columns=(
            column("id", DType.STRING),
            column("ts", DType.TIMESTAMP),
            column("y", DType.INT, min=0, max=1),
            column("flag", DType.INT, min=0, max=1),
            column("code", DType.INT, min=1, max=20),
            column("hour", DType.INT, min=0, max=23),
            column("count", DType.INT, min=0),
            column("ratio", DType.FLOAT, min=0, max=1),
            column("country", DType.STRING),
        ),
    )
    names = ("flag", "code", "hour", "count", "ratio", "country")
    assert categorical_columns(schema, names) == ("flag", "code", "country")
    assert categorical_columns(schema, names, top_k=2) == ("flag", "country")


def test_the_fraud_model_profiles_its_flag_as_categories(settings: Settings) -> None:
    repo = load_repo(settings)
    spec = repo.model("fraud")
    schema = repo.dataset(spec.dataset)
    # Its inputs are numeric; of them only is_foreign is a declared 0/1 code.
    assert categorical_columns(schema, spec.features) == ("is_foreign",)
