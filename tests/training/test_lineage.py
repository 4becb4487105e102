"""Lineage digests: the same data and definition give the same digest, any change another."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from falaj.settings import PROJECT_ROOT
from training.lineage import CODE_COMMIT_ENV, code_commit, definition_digest, training_set_digest

COLUMNS = ["card_id", "event_timestamp", "is_fraud", "amount"]
ORDER = ["card_id", "event_timestamp"]


def rows() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "card_id": [f"c{i % 5}" for i in range(50)],
            "event_timestamp": pd.Timestamp("2025-01-01", tz="UTC")
            + pd.to_timedelta(np.arange(50), unit="h"),
            "is_fraud": np.arange(50) % 2,
            "amount": rng.normal(100, 5, 50),
            "ignored": rng.normal(0, 1, 50),
        }
    )


def test_the_same_rows_in_any_order_give_the_same_digest() -> None:
    frame = rows()
    shuffled = frame.sample(frac=1.0, random_state=1)
    digest = training_set_digest(frame, COLUMNS, ORDER)
    assert len(digest) == 64
    assert training_set_digest(shuffled, COLUMNS, ORDER) == digest
    # A column not trained on does not change it.
    assert training_set_digest(frame.assign(ignored=0.0), COLUMNS, ORDER) == digest


@pytest.mark.parametrize(
    "change",
    ["a value", "a label", "a timestamp", "a row less", "a column more"],
)
def test_any_change_to_what_was_trained_on_changes_the_digest(change: str) -> None:
    frame = rows()
    columns = COLUMNS
    changed = frame.copy()
    if change == "a value":
        changed.loc[7, "amount"] += 0.001
    elif change == "a label":
        changed.loc[7, "is_fraud"] = 1 - changed.loc[7, "is_fraud"]
    elif change == "a timestamp":
        changed.loc[7, "event_timestamp"] += timedelta(seconds=1)
    elif change == "a row less":
        changed = changed.drop(index=7)
    else:
        columns = [*COLUMNS, "ignored"]
    assert training_set_digest(changed, columns, ORDER) != training_set_digest(
        frame, COLUMNS, ORDER
    )


def test_a_feature_views_digest_follows_its_definition(tmp_path: Path) -> None:
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, Int64

    card = Entity(name="card_id", join_keys=["card_id"])
    source = FileSource(path=str(tmp_path / "offline"), timestamp_field="event_timestamp")

    def view(*fields: Field) -> FeatureView:
        return FeatureView(
            name="transactions_features", entities=[card], schema=list(fields), source=source
        )

    amount, hour = Field(name="amount", dtype=Float64), Field(name="hour", dtype=Int64)
    assert definition_digest(view(amount, hour)) == definition_digest(view(amount, hour))
    assert definition_digest(view(amount, hour)) != definition_digest(view(amount))


def test_the_code_commit_is_the_checkouts_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CODE_COMMIT_ENV, raising=False)
    head = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    found = code_commit()
    assert found["commit"] == head and isinstance(found["dirty"], bool)


def test_an_image_without_git_says_its_commit_or_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CODE_COMMIT_ENV, raising=False)
    assert code_commit(tmp_path) == {"commit": "unknown", "dirty": None}
    monkeypatch.setenv(CODE_COMMIT_ENV, "0123abc")
    assert code_commit(tmp_path) == {"commit": "0123abc", "dirty": None}
