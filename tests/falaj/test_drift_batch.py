"""Batch drift scoring of a file: the same scores as in memory, whatever the file's format."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from falaj.drift_batch import BatchReport, ColumnDrift, Progress, Shares, score_file
from falaj.drift_statistics import DEFAULT_THRESHOLDS, StatisticValue, score_column
from falaj.errors import SchemaError
from falaj.profile import OTHER, PREDICTION, FeatureProfile, ReferenceProfile

TRAINING_ROWS = 2000
ROWS = 1500


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    return ReferenceProfile.from_columns(
        {
            "amount": rng.lognormal(3.0, 1.0, TRAINING_ROWS),
            "hour": rng.integers(0, 24, TRAINING_ROWS).astype(np.float64),
            "region": rng.choice(["north", "south", "east"], TRAINING_ROWS),
            "is_foreign": rng.integers(0, 2, TRAINING_ROWS),
        },
        predictions=rng.uniform(0.0, 0.3, TRAINING_ROWS),
        categorical=["is_foreign"],
    )


def production(rng: np.random.Generator, *, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Rows like the training rows; ``shift`` moves ``amount`` (log scale) and the predictions."""
    return {
        "amount": rng.lognormal(3.0 + shift, 1.0, ROWS),
        "hour": rng.integers(0, 24, ROWS).astype(np.float64),
        "region": rng.choice(["north", "south", "east"], ROWS),
        "is_foreign": rng.integers(0, 2, ROWS),
        PREDICTION: rng.uniform(0.0, 0.3 + shift, ROWS),
    }


def write(columns: Mapping[str, np.ndarray], path: Path) -> Path:
    frame = pd.DataFrame(dict(columns))
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:  # JSON lines, written by json (shortest round-tripping floats, unlike pandas)
        with path.open("w") as out:
            for row in frame.to_dict(orient="records"):
                out.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
    return path


def _plain(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def score(
    profile: ReferenceProfile, path: Path, *, progress: Progress | None = None
) -> BatchReport:
    return score_file(profile, path, thresholds=DEFAULT_THRESHOLDS, progress=progress)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_each_format_scores_as_score_column_does_in_memory(
    profile: ReferenceProfile, tmp_path: Path, suffix: str
) -> None:
    columns = production(np.random.default_rng(2), shift=0.5)
    columns["amount"][:25] = np.nan
    report = score(profile, write(columns, tmp_path / f"data{suffix}"))

    assert [c.name for c in report.columns] == [*profile.features, PREDICTION]
    for column in report.columns:
        reference = (
            profile.prediction if column.name == PREDICTION else profile.features[column.name]
        )
        assert reference is not None
        assert dict(column.values) == score_column(reference, columns[column.name]), column.name
    amount = next(c for c in report.columns if c.name == "amount")
    assert (amount.rows, amount.missing) == (ROWS - 25, 25)
    assert report.rows == ROWS


def test_a_shifted_feature_drifts_and_a_steady_one_does_not(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    report = score(
        profile, write(production(np.random.default_rng(3), shift=1.0), tmp_path / "d.parquet")
    )
    by_name = {c.name: c for c in report.columns}

    assert by_name["amount"].any_drifted and by_name["amount"].drifted["psi"]
    assert not any(by_name[name].any_drifted for name in ("hour", "region", "is_foreign"))
    # Prediction drift is scored and flagged, but never counts (as in the drift policy).
    assert by_name[PREDICTION].any_drifted
    assert report.drifted_features == ("amount",)
    assert [c.name for c in report.features] == list(profile.features)


def test_plots_get_reference_and_file_shares_per_bin_and_category(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    columns = production(np.random.default_rng(4))
    columns["region"][:300] = "west"  # a region training never saw: __other__
    report = score(profile, write(columns, tmp_path / "d.parquet"))
    by_name = {c.name: c for c in report.columns}

    region = by_name["region"].shares
    assert region.labels[-1] == OTHER
    assert region.current[-1] == pytest.approx(300 / ROWS)
    assert region.reference == profile.features["region"].proportions
    amount = by_name["amount"]
    assert len(amount.shares.labels) == len(amount.shares.reference) == len(amount.shares.current)
    assert sum(amount.shares.current) == pytest.approx(1.0)
    reference_median, median = amount.quantiles["p50"]
    assert median == pytest.approx(np.median(columns["amount"]))
    reference = profile.features["amount"]
    assert isinstance(reference, FeatureProfile)
    assert reference_median == reference.quantiles["p50"]


def test_codes_match_whether_read_as_numbers_or_as_text(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    columns = production(np.random.default_rng(5))
    expected = score_column(profile.features["is_foreign"], columns["is_foreign"])
    as_floats = {**columns, "is_foreign": columns["is_foreign"].astype(np.float64)}  # "1.0"
    as_text = {**columns, "is_foreign": columns["is_foreign"].astype(str)}  # "1"
    as_booleans = {**columns, "is_foreign": columns["is_foreign"].astype(bool)}  # true

    for name, data in [
        ("floats.csv", as_floats),
        ("text.parquet", as_text),
        ("booleans.jsonl", as_booleans),
        ("floats.jsonl", as_floats),
    ]:
        report = score(profile, write(data, tmp_path / name))
        flag = next(c for c in report.columns if c.name == "is_foreign")
        assert dict(flag.values) == expected, name


def test_missing_and_unknown_columns_are_listed_not_scored(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    columns = production(np.random.default_rng(6))
    del columns["hour"], columns[PREDICTION]
    columns["merchant"] = np.arange(ROWS)
    report = score(profile, write(columns, tmp_path / "d.csv"))

    assert [c.name for c in report.columns] == ["amount", "region", "is_foreign"]
    assert report.missing_features == ("hour",)
    assert report.unknown_columns == ("merchant",)


def test_a_column_of_only_missing_values_is_scored_by_nothing(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    columns = production(np.random.default_rng(7))
    columns["amount"] = np.full(ROWS, np.nan)
    report = score(profile, write(columns, tmp_path / "d.parquet"))
    amount = next(c for c in report.columns if c.name == "amount")

    assert (amount.rows, amount.missing, dict(amount.values)) == (0, ROWS, {})
    assert not amount.any_drifted


def test_only_the_statistics_asked_for_are_scored_and_only_thresholds_decide(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    path = write(production(np.random.default_rng(8), shift=1.0), tmp_path / "d.parquet")
    report = score_file(profile, path, statistics=["psi", "ks"], thresholds={"ks": 0.5})
    amount = next(c for c in report.columns if c.name == "amount")

    assert set(amount.values) == {"psi", "ks"}
    assert set(amount.drifted) == {"ks"}  # psi has no threshold: shown, decides nothing
    assert report.thresholds == {"ks": 0.5}
    with pytest.raises(SchemaError, match="unknown drift statistic 'mmd'"):
        score_file(profile, path, statistics=["mmd"], thresholds={})


def test_progress_is_reported_once_per_column_in_order(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    calls: list[tuple[str, int, int]] = []
    path = write(production(np.random.default_rng(9)), tmp_path / "d.parquet")
    score(profile, path, progress=lambda *call: calls.append(call))

    assert calls == [
        (name, done, 5) for done, name in enumerate([*profile.features, PREDICTION], start=1)
    ]


def test_at_most_two_columns_are_in_memory(tmp_path: Path) -> None:
    """Read, sorted and binned without a copy: NumPy's peak is two columns (one
    scored, the next read), whatever the file's width. KS and Wasserstein are
    left out: their own temporaries are ``drift_statistics``' to bound."""
    rng = np.random.default_rng(12)
    rows, names = 1_000_000, ["a", "b", "c", "d"]
    profile = ReferenceProfile.from_columns({name: rng.normal(size=1000) for name in names})
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({name: rng.normal(size=rows) for name in names}), path)

    tracemalloc.start()
    try:
        score_file(profile, path, statistics=["psi"], thresholds={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * rows * 8


def test_the_report_is_json_without_infinities(profile: ReferenceProfile, tmp_path: Path) -> None:
    report = score(profile, write(production(np.random.default_rng(10)), tmp_path / "d.parquet"))
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))

    assert [c["name"] for c in data["columns"]] == [*profile.features, PREDICTION]
    assert set(data["columns"][0]["statistics"]["ks"]) == {"value", "p_value", "drifted"}
    assert data["path"] == str(tmp_path / "d.parquet")
    # A constant training column that moved is infinitely far (JSON has no infinity).
    moved = ColumnDrift(
        name="fee",
        kind="numeric",
        rows=3,
        missing=0,
        values={"wasserstein": StatisticValue("wasserstein", math.inf)},
        drifted={"wasserstein": True},
        shares=Shares(labels=("<= 1", "> 1"), reference=(1.0, 0.0), current=(0.0, 1.0)),
    )
    assert moved.to_json()["statistics"]["wasserstein"] == {
        "value": None,
        "p_value": None,
        "drifted": True,
    }


def test_a_file_without_any_profiled_feature_is_refused(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,name\n1,a\n")
    with pytest.raises(SchemaError) as refused:
        score(profile, path)
    message = str(refused.value)
    assert "none of the profile's features" in message
    assert "['amount', 'hour', 'is_foreign', 'region']" in message
    assert "['id', 'name']" in message


def test_an_unsupported_file_is_refused_naming_the_supported_ones(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"")
    with pytest.raises(
        SchemaError, match=r"expected a file ending in \.parquet, .*\.csv.*'\.xlsx'"
    ):
        score(profile, path)


def test_text_in_a_numeric_feature_is_refused_naming_the_column(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("region,amount\nnorth,1.5\nsouth,lots\n")
    with pytest.raises(SchemaError, match=r"column 'amount' is numeric.*invalid value 'lots'"):
        score(profile, csv)

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"amount": ["1.5", "lots"], "hour": ["x", "y"]}), parquet)
    with pytest.raises(SchemaError) as refused:  # both columns' problems, in one error
        score(profile, parquet)
    assert "column 'amount'" in str(refused.value) and "column 'hour'" in str(refused.value)


def test_json_lines_that_are_not_objects_are_refused(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    path = tmp_path / "d.json"
    path.write_text('[{"amount": 1.0}]\n')
    with pytest.raises(SchemaError, match="line 1: expected one JSON object a line"):
        score(profile, path)
