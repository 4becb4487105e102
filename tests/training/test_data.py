"""The time-based split: the newest rows are held out, never a random sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from falaj.errors import SchemaError
from training.data import TrainingData, split_by_time
from training.errors import IncompleteFeatures, NotEnoughData

FEATURES = ("amount", "hour")


def frame(rows: int, *, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01", tz="UTC")
    times = start + pd.to_timedelta(rng.permutation(rows), unit="min")
    return pd.DataFrame(
        {
            "card_id": [f"c{i % 7}" for i in range(rows)],
            "event_timestamp": times,
            "amount": rng.normal(100, 10, rows),
            "hour": rng.uniform(0, 24, rows),
            "is_fraud": np.arange(rows) % 2,
        }
    )


def split(data: pd.DataFrame, *, dropped: int = 0) -> TrainingData:
    return split_by_time(
        data, feature_names=FEATURES, label="is_fraud", timestamp="event_timestamp", dropped=dropped
    )


def test_the_last_fifth_by_time_is_held_out() -> None:
    data = frame(100)
    result = split(data, dropped=3)
    assert (result.train.rows, result.held_out.rows) == (80, 20)
    newest = data.sort_values("event_timestamp").tail(20)
    assert sorted(result.held_out.features[:, 0]) == pytest.approx(sorted(newest["amount"]))
    assert result.cutoff == newest["event_timestamp"].min().isoformat()
    assert result.rows_used == 100
    assert result.rows_dropped == 3
    assert result.train.features.dtype == np.float32
    assert result.feature_names == FEATURES
    assert list(result.columns()) == list(FEATURES)


def test_rows_of_one_instant_stay_on_one_side() -> None:
    data = frame(100)
    ordered = data.sort_values("event_timestamp").reset_index(drop=True)
    # Rows 75..84 share one timestamp: the cut at row 80 moves back to row 75.
    ordered.loc[75:84, "event_timestamp"] = ordered.loc[75, "event_timestamp"]
    result = split(ordered)
    assert (result.train.rows, result.held_out.rows) == (75, 25)


def test_incomplete_rows_are_left_out_and_counted() -> None:
    data = frame(100)
    data.loc[[3, 50], "amount"] = np.nan
    result = split(data, dropped=1)
    assert result.rows_used == 98
    assert result.rows_dropped == 3
    assert np.isfinite(result.train.features).all()


def test_infinite_values_are_incomplete_rows_too() -> None:
    data = frame(100)
    data.loc[7, "hour"] = np.inf
    data.loc[8, "amount"] = -np.inf
    result = split(data)
    assert (result.rows_used, result.rows_dropped) == (98, 2)


def test_more_incomplete_rows_than_the_limit_fail_naming_the_features() -> None:
    data = frame(100)
    data.loc[:9, "amount"] = np.nan  # 10% of the rows
    data.loc[20, "hour"] = np.inf
    with pytest.raises(IncompleteFeatures) as refused:
        split(data)
    message = str(refused.value)
    assert "11 of 100 rows (11%)" in message
    assert "amount 10, hour 1" in message and "at most 5%" in message


def test_too_few_rows_or_one_class_is_refused() -> None:
    with pytest.raises(NotEnoughData, match="at least 40 complete rows"):
        split(frame(10))
    one_class = frame(100).assign(is_fraud=0)
    with pytest.raises(NotEnoughData, match="both classes"):
        split(one_class)


def test_missing_columns_are_named() -> None:
    with pytest.raises(SchemaError, match=r"\['distance_km'\]"):
        split_by_time(
            frame(100),
            feature_names=(*FEATURES, "distance_km"),
            label="is_fraud",
            timestamp="event_timestamp",
        )
