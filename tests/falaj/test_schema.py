"""The feature schema: loading the contract, and every reason a row can fail it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from falaj.errors import ConfigError, SchemaError
from falaj.schema import FeatureSchema, load_schema, load_schemas
from falaj.settings import Settings
from falaj.validation import SeenKeys, validate_frame

GOOD: dict[str, Any] = {
    "card_id": "card-00001",
    "event_timestamp": "2025-01-03T10:15:00Z",
    "amount": "42.50",
    "hour": "10",
    "distance_km": "3.2",
    "card_age_days": "400",
    "tx_count_24h": "2",
    "is_foreign": "0",
    "merchant_category": "grocery",
    "is_fraud": "0",
}


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return load_schema(Settings())


def frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{**GOOD, **row} for row in rows])


def test_the_contract_names_entity_timestamp_label_and_stored_features(
    schema: FeatureSchema,
) -> None:
    assert schema.dataset == "transactions"
    assert (schema.entity, schema.timestamp, schema.label) == (
        "card_id",
        "event_timestamp",
        "is_fraud",
    )
    assert schema.stored_features == (
        "amount",
        "hour",
        "distance_km",
        "card_age_days",
        "tx_count_24h",
        "is_foreign",
        "merchant_category",
    )
    assert schema.pii_columns == ()


def test_good_rows_come_back_typed(schema: FeatureSchema) -> None:
    result = validate_frame(schema, frame({}, {"card_id": "card-00002", "amount": "7"}))
    assert result.rejected == []
    good = result.good
    assert list(good.columns) == list(schema.column_names)
    assert str(good["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert good["amount"].tolist() == [42.5, 7.0]
    assert good["hour"].dtype == "int64"
    assert good["is_fraud"].dtype == "int64"
    assert good["event_timestamp"].iloc[0] == pd.Timestamp("2025-01-03 10:15:00", tz="UTC")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": "-3"}, "amount: expected > 0, got -3"),
        ({"amount": "0"}, "amount: expected > 0, got 0"),
        ({"amount": "50000.01"}, "amount: expected <= 50000, got 50000.01"),
        ({"amount": "twelve"}, "amount: expected a finite number, got 'twelve'"),
        ({"amount": "inf"}, "amount: expected a finite number, got 'inf'"),
        ({"hour": "25"}, "hour: expected <= 23, got 25"),
        ({"hour": "3.5"}, "hour: expected a whole number, got 3.5"),
        ({"distance_km": "-0.1"}, "distance_km: expected >= 0, got -0.1"),
        ({"is_foreign": "2"}, "is_foreign: expected <= 1, got 2"),
        ({"tx_count_24h": None}, "tx_count_24h: missing; expected a value of type int"),
        ({"card_id": None}, "card_id: missing; expected a value of type string"),
        ({"card_id": "   "}, "card_id: missing; expected a value of type string"),
        (
            {"merchant_category": "casino"},
            "merchant_category: expected one of grocery, fuel, travel, electronics, dining, "
            "online, other; got 'casino'",
        ),
        (
            {"event_timestamp": "yesterday"},
            "event_timestamp: expected an ISO 8601 timestamp (UTC), got 'yesterday'",
        ),
    ],
)
def test_each_reason(schema: FeatureSchema, change: dict[str, Any], reason: str) -> None:
    result = validate_frame(schema, frame({}, change), first_row_number=10)
    assert len(result.good) == 1
    assert len(result.rejected) == 1
    rejection = result.rejected[0]
    assert rejection.row_number == 11
    assert rejection.reasons == [reason]
    assert rejection.row == {**GOOD, **change}


def test_every_reason_of_a_row_is_collected(schema: FeatureSchema) -> None:
    result = validate_frame(
        schema, frame({"card_id": "", "amount": "-1", "hour": "25", "merchant_category": "casino"})
    )
    (rejection,) = result.rejected
    assert [r.split(":")[0] for r in rejection.reasons] == [
        "card_id",
        "amount",
        "hour",
        "merchant_category",
    ]
    assert result.good.empty


def test_typed_frames_are_validated_too(schema: FeatureSchema) -> None:
    typed = frame({}).astype({"amount": "float64", "hour": "int64"})
    typed["event_timestamp"] = pd.to_datetime(typed["event_timestamp"])
    typed.loc[0, "amount"] = -2.0
    (rejection,) = validate_frame(schema, typed).rejected
    assert rejection.reasons == ["amount: expected > 0, got -2.0"]
    assert rejection.row["amount"] == -2.0
    assert rejection.row["event_timestamp"] == "2025-01-03T10:15:00+00:00"


def test_a_duplicate_key_is_rejected_naming_the_first_row(schema: FeatureSchema) -> None:
    same_instant = {"event_timestamp": "2025-01-03 10:15:00+00:00", "is_fraud": "1"}
    result = validate_frame(schema, frame({}, {"card_id": "card-00002"}, same_instant))
    assert len(result.good) == 2
    (rejection,) = result.rejected
    assert rejection.row_number == 3
    assert rejection.reasons == ["duplicate (card_id, event_timestamp): the same key came at row 1"]


def test_a_bad_first_row_does_not_make_its_twin_a_duplicate(schema: FeatureSchema) -> None:
    result = validate_frame(schema, frame({"amount": "-1"}, {}))
    assert len(result.good) == 1
    assert [r.row_number for r in result.rejected] == [1]


def test_duplicates_are_found_across_chunks(schema: FeatureSchema) -> None:
    seen = SeenKeys()
    first = validate_frame(schema, frame({}, {"card_id": "card-00002"}), seen=seen)
    second = validate_frame(
        schema,
        frame({"card_id": "card-00003"}, {"card_id": "card-00002"}),
        first_row_number=3,
        seen=seen,
    )
    assert first.rejected == []
    assert len(second.good) == 1
    (rejection,) = second.rejected
    assert rejection.row_number == 4
    assert rejection.reasons[0].endswith("at row 2")


def test_a_file_without_required_columns_is_refused_whole(schema: FeatureSchema) -> None:
    with pytest.raises(SchemaError) as refused:
        validate_frame(schema, frame({}).drop(columns=["amount", "is_fraud"]))
    message = str(refused.value)
    assert "missing columns ['amount', 'is_fraud']" in message
    assert "found ['card_id', 'event_timestamp', 'hour'" in message


def test_extra_columns_are_ignored_but_kept_in_rejections(schema: FeatureSchema) -> None:
    result = validate_frame(schema, frame({"note": "x"}, {"note": "y", "hour": "-1"}))
    assert "note" not in result.good.columns
    assert result.rejected[0].row["note"] == "y"


def test_a_malformed_schema_file_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(
        "dataset: t\nentity: id\ntimestamp: ts\nlabel: y\ncolumns:\n"
        "  - {name: id, dtype: string}\n  - {name: ts, dtype: timestamp}\n"
        "  - {name: y, dtype: int}\n  - {name: x, dtype: float, allowed: [a]}\n"
    )
    with pytest.raises(ConfigError, match=r"columns\.3.*allowed values apply to string"):
        FeatureSchema.load(path)
    path.write_text(
        "dataset: t\nentity: id\ntimestamp: ts\nlabel: y\n"
        "columns:\n  - {name: id, dtype: string}\n  - {name: x, dtype: float}\n"
    )
    with pytest.raises(ConfigError, match="timestamp 'ts' is not among the columns"):
        FeatureSchema.load(path)


def test_pii_is_for_string_columns_and_never_the_entity(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "dataset: t\nentity: id\ntimestamp: ts\nlabel: y\ncolumns:\n"
        "  - {name: id, dtype: string, pii: true}\n  - {name: ts, dtype: timestamp}\n"
        "  - {name: y, dtype: int}\n"
    )
    with pytest.raises(ConfigError, match="entity 'id' cannot be pii"):
        FeatureSchema.load(path)
    path.write_text(
        path.read_text().replace("pii: true", "pii: false")
        + "  - {name: n, dtype: int, pii: true}\n"
    )
    with pytest.raises(ConfigError, match=r"columns\.3.*pii applies to string columns, not int"):
        FeatureSchema.load(path)


DATASET = (
    "dataset: {name}\nentity: id\ntimestamp: ts\nlabel: y\ncolumns:\n"
    "  - {{name: id, dtype: string}}\n  - {{name: ts, dtype: timestamp}}\n"
    "  - {{name: y, dtype: int}}\n"
)


def write_dataset(repo: Path, name: str, declared: str | None = None) -> None:
    (repo / "datasets").mkdir(parents=True, exist_ok=True)
    (repo / "datasets" / f"{name}.yaml").write_text(DATASET.format(name=declared or name))


def test_load_schema_reads_the_feature_repo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FALAJ_FEATURE_REPO"):
        load_schema(Settings(feature_repo=tmp_path))


def test_each_dataset_is_a_file_named_after_it(tmp_path: Path) -> None:
    write_dataset(tmp_path, "loans")
    write_dataset(tmp_path, "payments")
    assert list(load_schemas(tmp_path)) == ["loans", "payments"]
    settings = Settings(feature_repo=tmp_path)
    assert load_schema(settings, "loans").dataset == "loans"
    with pytest.raises(ConfigError, match=r"holds 2 datasets \(loans, payments\); name the one"):
        load_schema(settings)
    with pytest.raises(ConfigError, match=r"no dataset 'cards'.*add datasets/cards\.yaml"):
        load_schema(settings, "cards")
    write_dataset(tmp_path, "misnamed", declared="other")
    write_dataset(tmp_path, "Bad", declared="Bad")
    with pytest.raises(ConfigError) as refused:
        load_schemas(tmp_path)
    # Every file's problem at once.
    assert "Bad.yaml does not fit" in str(refused.value)
    assert "declares dataset 'other'; expected 'misnamed'" in str(refused.value)
