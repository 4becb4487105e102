"""The demo generator: deterministic, a learnable signal, a shift drift can see."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from falaj.demo.data import BAD_ROW_KINDS, generate_transactions, inference_rows
from falaj.drift_statistics import psi_scores
from falaj.profile import ReferenceProfile
from falaj.schema import FeatureSchema, load_schema
from falaj.settings import Settings
from falaj.validation import validate_frame

SHIFTED = ("amount", "distance_km", "tx_count_24h")


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return load_schema(Settings())


def test_the_same_seed_gives_the_same_rows() -> None:
    first = generate_transactions(500, seed=3, bad_rows=5)
    pd.testing.assert_frame_equal(first, generate_transactions(500, seed=3, bad_rows=5))
    assert not first.equals(generate_transactions(500, seed=4, bad_rows=5))
    assert inference_rows(20, seed=3, shift=0.5) == inference_rows(20, seed=3, shift=0.5)


def test_rows_fit_the_schema_and_span_the_window(schema: FeatureSchema) -> None:
    start = datetime(2025, 3, 1, tzinfo=UTC)
    rows = generate_transactions(3000, seed=1, start=start, days=30, cards=200)
    result = validate_frame(schema, rows)
    assert result.rejected == []
    assert list(rows.columns) == list(schema.column_names)
    stamps = result.good["event_timestamp"]
    assert stamps.min() >= pd.Timestamp(start)
    assert stamps.max() < pd.Timestamp(start) + pd.Timedelta(days=30)
    assert result.good["card_id"].nunique() <= 200


def test_fraud_is_rare_and_learnable() -> None:
    rows = generate_transactions(5000, seed=2)
    rate = rows["is_fraud"].mean()
    assert 0.03 <= rate <= 0.08
    fraud, legit = rows[rows["is_fraud"] == 1], rows[rows["is_fraud"] == 0]
    for column in ("amount", "distance_km", "is_foreign", "tx_count_24h"):
        assert fraud[column].median() >= legit[column].median(), column
        assert fraud[column].mean() > 2 * legit[column].mean(), column
    assert fraud["card_age_days"].median() < legit["card_age_days"].median()
    assert (fraud["hour"] < 6).mean() > 2 * (legit["hour"] < 6).mean()


def _psi(reference: pd.DataFrame, shift: float, seed: int) -> dict[str, float]:
    names = ("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "is_foreign")
    profile = ReferenceProfile.from_columns({n: reference[n].to_numpy(float) for n in names})
    rows = inference_rows(400, seed=seed, shift=shift)
    assert set(rows[0]) == set(names)
    return psi_scores(profile, {n: np.array([r[n] for r in rows]) for n in names})


def test_shift_moves_the_legitimate_traffic_enough_for_psi() -> None:
    reference = generate_transactions(4000, seed=5)
    calm = _psi(reference, 0.0, seed=6)
    shifted = _psi(reference, 1.0, seed=6)
    assert max(calm.values()) < 0.1, calm
    for name in SHIFTED:
        assert shifted[name] > 0.2, shifted
    assert shifted["hour"] < 0.1, shifted


def test_bad_rows_break_the_schema_in_every_way(schema: FeatureSchema) -> None:
    rows = generate_transactions(300, seed=9, bad_rows=len(BAD_ROW_KINDS) * 2)
    result = validate_frame(schema, rows)
    assert len(result.rejected) == len(BAD_ROW_KINDS) * 2
    assert len(result.good) == 300 - len(BAD_ROW_KINDS) * 2
    reasons = " | ".join(r for rejection in result.rejected for r in rejection.reasons)
    for expected in (
        "amount: expected > 0",
        "merchant_category: expected one of",
        "card_id: missing",
        "hour: expected <= 23, got 25",
        "amount: expected a finite number, got 'twelve'",
    ):
        assert expected in reasons


def test_impossible_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="bad_rows"):
        generate_transactions(5, seed=0, bad_rows=6)
