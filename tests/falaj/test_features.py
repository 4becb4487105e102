"""The feature store client on a real Feast (SQLite online, file offline) in a temp home."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from falaj.audit import AuditLog
from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.errors import ResidencyViolation
from falaj.feature_repo import load_repo
from falaj.features import TTL, FeatureStoreClient
from falaj.model_spec import ModelSpec
from falaj.schema import FeatureSchema, load_schema
from falaj.settings import Settings
from falaj.validation import validate_frame

T0 = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return load_schema(Settings())


@pytest.fixture(scope="module")
def fraud() -> ModelSpec:
    return load_repo(Settings()).model("fraud")


def client_in(home: Path, schema: FeatureSchema, **settings: object) -> FeatureStoreClient:
    ctx = Context.create(Settings(home=home, **settings), actor="test")  # type: ignore[arg-type]
    return FeatureStoreClient(ctx, schema, load_repo(ctx.settings).models_of(schema.dataset))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, schema: FeatureSchema) -> FeatureStoreClient:
    """One applied store for the module: Feast's import and first apply cost seconds."""
    store = client_in(tmp_path_factory.mktemp("features") / ".falaj", schema)
    store.apply()
    return store


def rows(
    schema: FeatureSchema, card: str, at: Sequence[datetime], *, amounts: Sequence[float]
) -> pd.DataFrame:
    """Valid, typed rows of one card; the amount tells the rows apart."""
    raw = pd.DataFrame(
        {
            "card_id": card,
            "event_timestamp": [t.isoformat() for t in at],
            "amount": [str(a) for a in amounts],
            "hour": [str(t.hour) for t in at],
            "distance_km": "1.5",
            "card_age_days": [str(100 + i) for i in range(len(at))],
            "tx_count_24h": [str(i) for i in range(len(at))],
            "is_foreign": "0",
            "merchant_category": "fuel",
            "is_fraud": [str(i % 2) for i in range(len(at))],
        }
    )
    result = validate_frame(schema, raw)
    assert result.rejected == []
    return result.good


def test_apply_registers_the_definitions_and_is_idempotent(
    client: FeatureStoreClient, fraud: ModelSpec
) -> None:
    client.apply()  # a second apply changes nothing and does not fail
    store = client.store
    view = store.get_feature_view("transactions_features")
    assert [f.name for f in view.features] == list(client.schema.stored_features)
    assert view.ttl == TTL
    # One feature service per model reading the dataset, named after the model.
    (service,) = store.list_feature_services()
    assert service.name == "fraud_model"
    (projection,) = service.feature_view_projections
    assert [f.name for f in projection.features] == list(fraud.features)
    (entity,) = store.list_entities()
    assert (entity.name, entity.join_key, entity.value_type.name) == (
        "card_id",
        "card_id",
        "STRING",
    )
    sources = sorted(s.name for s in store.list_data_sources())
    assert sources == ["transactions_offline", "transactions_push"]
    assert (client.ctx.paths.feast / "registry.db").is_file()
    assert (client.ctx.paths.feast / "online.db").is_file()


def test_offline_rows_are_partitioned_by_date(
    client: FeatureStoreClient, schema: FeatureSchema
) -> None:
    frame = rows(schema, "card-part", [T0, T0 + timedelta(days=1)], amounts=[1.0, 2.0])
    location = client.write_offline(frame)
    assert location == str(client.ctx.paths.offline / "transactions")
    for day in ("2025-01-10", "2025-01-11"):
        folder = Path(location) / f"date={day}"
        names = [p.name for p in folder.iterdir()]
        assert len(names) >= 1
        assert all(n.startswith("part-") and n.endswith(".parquet") for n in names), names
    stored = client.labelled_rows()
    mine = stored[stored["card_id"] == "card-part"].sort_values("event_timestamp")
    assert mine["is_fraud"].tolist() == [0, 1]


def test_each_partition_holds_exactly_its_dates_rows_in_arrival_order(
    client: FeatureStoreClient, schema: FeatureSchema
) -> None:
    """Dates interleaved within one write, both sides of midnight, and before 1970."""
    midnight = datetime(2025, 3, 2, tzinfo=UTC)
    at = [
        midnight,
        midnight - timedelta(microseconds=1),
        midnight + timedelta(hours=23, minutes=59, seconds=59),
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        midnight - timedelta(hours=5),
        datetime(1970, 1, 1, tzinfo=UTC),
    ]
    frame = rows(schema, "card-days", at, amounts=[float(i) for i in range(1, len(at) + 1)])
    batch = client.offline_batch()
    batch.write(pa.Table.from_pandas(frame, preserve_index=False))
    moved = batch.commit()
    found = {path.parent.name: pq.read_table(path).column("amount").to_pylist() for path in moved}
    assert found == {
        "date=2025-03-02": [1.0, 3.0],
        "date=2025-03-01": [2.0, 5.0],
        "date=1969-12-31": [4.0],
        "date=1970-01-01": [6.0],
    }
    assert batch.rows == len(at)


def test_a_write_that_fails_is_raised_and_leaves_no_file(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    """A write runs on the batch's thread: its error comes back at commit, nothing lands."""
    store = client_in(tmp_path / ".falaj", schema)
    good = pa.Table.from_pandas(
        rows(schema, "card-fail", [T0], amounts=[1.0]), preserve_index=False
    )
    undated = good.set_column(
        good.schema.get_field_index("event_timestamp"),
        "event_timestamp",
        pa.nulls(1, good.schema.field("event_timestamp").type),
    )
    batch = store.offline_batch()
    batch.write(good)
    batch.write(undated)
    with pytest.raises(ValueError, match="without 'event_timestamp' cannot be dated"):
        batch.commit()
    assert [p for p in store.offline_root.rglob("*") if p.is_file()] == []


def test_a_home_out_of_region_gets_no_byte(tmp_path: Path, schema: FeatureSchema) -> None:
    foreign = client_in(tmp_path / ".falaj", schema, region="eu-west-1")
    frame = rows(schema, "card-eu", [T0], amounts=[1.0])
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        foreign.write_offline(frame)
    assert not foreign.offline_root.exists()
    actions = [e["action"] for e in AuditLog(foreign.ctx.paths.audit).entries()]
    assert actions == ["policy.refused"]


def test_online_holds_each_cards_newest_row(
    client: FeatureStoreClient, schema: FeatureSchema, fraud: ModelSpec
) -> None:
    both = pd.concat(
        [
            rows(schema, "card-on-a", [T0 + timedelta(hours=2), T0], amounts=[20.0, 10.0]),
            rows(schema, "card-on-b", [T0], amounts=[30.0]),
        ]
    )
    assert client.push_online(both) == 2
    online = client.online_features(["card-on-a", "card-on-b", "card-never"])
    assert list(online) == ["card_id", *schema.stored_features]
    assert online["amount"] == [20.0, 30.0, None]
    assert online["hour"] == [14, 12, None]
    # Through a model's feature service: its inputs alone, in its input order.
    inputs = client.online_features(["card-on-b"], fraud)
    assert list(inputs) == ["card_id", *fraud.features]
    assert inputs["amount"] == [30.0]
    # A late file with an older row must not overwrite what is online.
    late = rows(schema, "card-on-a", [T0 - timedelta(days=1)], amounts=[5.0])
    assert client.push_online(late) == 0
    assert client.online_features(["card-on-a"])["amount"] == [20.0]


def test_training_rows_get_features_as_of_their_time(
    client: FeatureStoreClient, schema: FeatureSchema, fraud: ModelSpec
) -> None:
    history = [T0, T0 + timedelta(days=2), T0 + timedelta(days=4)]
    client.write_offline(rows(schema, "card-pit", history, amounts=[100.0, 200.0, 300.0]))
    client.write_offline(rows(schema, "card-pit-other", [T0], amounts=[999.0]))
    entity_rows = pd.DataFrame(
        {
            "card_id": ["card-pit"] * 5 + ["card-unknown"],
            "event_timestamp": [
                T0 + timedelta(days=1),  # sees the first row only
                T0 + timedelta(days=4),  # exactly at the third row: sees it
                T0 + timedelta(days=3, hours=23),  # just before the third row
                T0 - timedelta(hours=1),  # before all of the card's data
                T0 + timedelta(days=4) + TTL + timedelta(hours=1),  # everything too stale
                T0,
            ],
            "is_fraud": [0, 1, 0, 1, 0, 1],
        }
    )
    training = client.training_frame(fraud, entity_rows)
    frame = training.frame
    assert list(frame.columns) == ["card_id", "event_timestamp", "is_fraud", *fraud.features]
    assert frame["amount"].tolist() == [100.0, 300.0, 200.0]
    assert frame["is_fraud"].tolist() == [0, 1, 0]
    assert frame["tx_count_24h"].tolist() == [0, 2, 1]
    assert training.dropped.count == 3
    assert training.dropped.by_reason == {
        "whose entity has no feature data at all": 1,
        "older than all of their entity's feature data": 1,
        f"with no feature row of their entity in the ttl ({TTL.days} days) before them": 1,
    }
    assert "1 row(s) older than all of their entity's feature data" in training.dropped.reason


def test_by_default_every_labelled_row_trains_once(
    tmp_path: Path, schema: FeatureSchema, fraud: ModelSpec
) -> None:
    store = client_in(tmp_path / ".falaj", schema)
    store.apply()
    times = [T0 + timedelta(hours=h) for h in range(4)]
    first = rows(schema, "card-x", times, amounts=[1.0, 2.0, 3.0, 4.0])
    store.write_offline(first)
    store.write_offline(first.iloc[:2])  # the same rows ingested a second time
    store.write_offline(rows(schema, "card-y", times[:1], amounts=[9.0]))
    training = store.training_frame(fraud)
    frame = training.frame.sort_values(["card_id", "event_timestamp"])
    assert frame["card_id"].tolist() == ["card-x"] * 4 + ["card-y"]
    assert frame["amount"].tolist() == [1.0, 2.0, 3.0, 4.0, 9.0]
    assert frame["is_fraud"].tolist() == [0, 1, 0, 1, 0]
    assert training.dropped.by_reason == {"ingested more than once (the latest ingest is kept)": 2}


def test_an_empty_store_gives_an_empty_training_set(
    tmp_path: Path, schema: FeatureSchema, fraud: ModelSpec
) -> None:
    training = client_in(tmp_path / ".falaj", schema).training_frame(fraud)
    assert training.frame.empty
    assert training.dropped.count == 0


def test_the_feature_repo_holds_the_same_definitions_for_feast_apply() -> None:
    """What `feast apply` in feature_repo/ would collect, read the way it reads it."""
    from feast import FileSource
    from feast.repo_config import load_repo_config
    from feast.repo_operations import parse_repo

    repo = Settings().feature_repo
    config = load_repo_config(repo, repo / "feature_store.yaml")
    assert (config.project, config.provider) == ("falaj", "local")
    assert config.online_store.type == "sqlite"
    contents = parse_repo(repo)
    # parse_repo adds its own "__dummy" entity for entity-less views.
    assert [e.name for e in contents.entities if e.name != "__dummy"] == ["card_id"]
    assert [v.name for v in contents.feature_views] == ["transactions_features"]
    assert [s.name for s in contents.feature_services] == ["fraud_model"]
    sources = {s.name: s for s in contents.data_sources}
    assert set(sources) == {"transactions_offline", "transactions_push"}
    offline = sources["transactions_offline"]
    assert isinstance(offline, FileSource)
    assert offline.path == "data/offline/transactions"


def test_a_push_from_another_thread_uses_the_same_online_index(ctx: Context) -> None:
    # functions-framework serves each request on a thread of its own.
    import threading

    schema = load_schema(ctx.settings)
    client = FeatureStoreClient(ctx, schema)
    client.apply()
    rows = validate_frame(schema, generate_transactions(60, seed=5, cards=6)).good
    assert client.push_online(rows) == 6
    pushed: list[int] = []
    worker = threading.Thread(target=lambda: pushed.append(client.push_online(rows)))
    worker.start()
    worker.join(timeout=60)
    assert pushed == [6]  # equal times go through: a re-ingest of the same rows wins


def test_a_late_file_does_not_replace_newer_online_features(ctx: Context) -> None:
    schema = load_schema(ctx.settings)
    client = FeatureStoreClient(ctx, schema)
    client.apply()
    newer = validate_frame(schema, generate_transactions(40, seed=6, cards=4)).good
    older = newer.copy()
    older["event_timestamp"] = older["event_timestamp"] - pd.Timedelta(days=60)
    older["amount"] = 1.0
    assert client.push_online(newer) == 4
    assert client.push_online(older) == 0
    latest = newer.sort_values("event_timestamp").groupby("card_id").last()
    cards = sorted(latest.index)
    assert client.online_features(cards)["amount"] == latest.loc[cards, "amount"].tolist()
