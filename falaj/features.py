"""The feature store of a platform: Feast, pointed at the platform's own folders.

The Feast objects (entity, sources, feature view, feature service) are built
from the feature schema by ``feast_definitions``, once, for both uses:
``feature_repo/definitions.py`` calls it for ``feast apply`` on a cluster, and
``FeatureStoreClient`` calls it with the paths of a local home (``<home>/offline``
for the parquet dataset, ``<home>/feast`` for the registry and the SQLite online
store), building the ``RepoConfig`` in code so no YAML file is rewritten.

``import feast`` costs seconds, so it happens on first use, not on import.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from falaj.context import Context
from falaj.errors import SchemaError
from falaj.schema import DType, FeatureSchema

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource, PushSource

PROJECT = "falaj"
ENTITY = "card"
FEATURE_VIEW = "transaction_features"
PUSH_SOURCE = "transactions_push"
FEATURE_SERVICE = "fraud_model"
#: When a row reached the offline store; Feast keeps the latest of equal keys.
INGESTED_AT = "ingested_at"
#: How far back a point-in-time join looks for a card's features. Training rows
#: are joined at their own timestamps (they are feature rows too), so this only
#: bounds how stale a feature may be for a row between a card's transactions;
#: a week covers the demo's cards, which transact every few days over 30 days.
TTL = timedelta(days=7)
PARTITION = "date"


@dataclass(frozen=True)
class FeastDefinitions:
    entity: Entity
    batch_source: FileSource
    push_source: PushSource
    feature_view: FeatureView
    feature_service: FeatureService

    def objects(self) -> list[Any]:
        return [
            self.entity,
            self.batch_source,
            self.push_source,
            self.feature_view,
            self.feature_service,
        ]


def feast_definitions(schema: FeatureSchema, *, offline_path: str) -> FeastDefinitions:
    """The Feast objects of a dataset whose parquet files live under ``offline_path``."""
    from feast import (
        Entity,
        FeatureService,
        FeatureView,
        Field,
        FileSource,
        PushSource,
        ValueType,
    )
    from feast.types import Float64, Int64, String

    feast_types = {DType.FLOAT: Float64, DType.INT: Int64, DType.STRING: String}
    # Feast needs an entity's value type stated, or it guesses (STACK.md).
    entity = Entity(
        name=ENTITY,
        join_keys=[schema.entity],
        value_type=ValueType.STRING,
        description=schema.column(schema.entity).description,
    )
    batch = FileSource(
        name=f"{schema.dataset}_offline",
        path=offline_path,
        timestamp_field=schema.timestamp,
        created_timestamp_column=INGESTED_AT,
    )
    push = PushSource(name=PUSH_SOURCE, batch_source=batch)
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[entity],
        ttl=TTL,
        schema=[
            Field(
                name=name,
                dtype=feast_types[schema.column(name).dtype],
                description=schema.column(name).description,
            )
            for name in schema.stored_features
        ],
        source=push,
        online=True,
    )
    service = FeatureService(
        name=FEATURE_SERVICE,
        features=[view[list(schema.feature_names)]],
        description="the inputs of the fraud model, in its input order",
    )
    return FeastDefinitions(entity, batch, push, view, service)


@dataclass(frozen=True)
class DroppedRows:
    """Entity rows that did not make it into a training set, and why."""

    count: int = 0
    #: One sentence per reason, for logs and events.
    reason: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSet:
    #: card_id, event_timestamp, the model inputs and the label, one row per labelled row.
    frame: pd.DataFrame
    dropped: DroppedRows


class FeatureStoreClient:
    """Feast for one platform home: apply, write offline, push online, read both."""

    def __init__(self, ctx: Context, schema: FeatureSchema) -> None:
        self.ctx = ctx
        self.schema = schema
        self.offline_root = ctx.paths.offline / schema.dataset
        self._store: FeatureStore | None = None
        self._definitions: FeastDefinitions | None = None

    # -- Feast, built on first use ---------------------------------------------

    @property
    def definitions(self) -> FeastDefinitions:
        if self._definitions is None:
            self._definitions = feast_definitions(self.schema, offline_path=str(self.offline_root))
        return self._definitions

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            from feast import FeatureStore, RepoConfig
            from feast.repo_config import RegistryConfig

            feast_dir = self.ctx.paths.feast
            feast_dir.mkdir(parents=True, exist_ok=True)
            config = RepoConfig(
                project=PROJECT,
                provider="local",
                registry=RegistryConfig(
                    path=str(feast_dir / "registry.db"),
                    # Another process (ingest, training) may apply; a short cache sees it.
                    cache_ttl_seconds=5,
                ),
                online_store={"type": "sqlite", "path": str(feast_dir / "online.db")},
                offline_store={"type": "file"},
                entity_key_serialization_version=3,
                repo_path=str(feast_dir),
            )
            self._store = FeatureStore(config=config)
        return self._store

    def apply(self) -> None:
        """Register the definitions and create the online tables; a second call changes nothing."""
        self.offline_root.mkdir(parents=True, exist_ok=True)
        self.store.apply(self.definitions.objects())

    # -- writing ----------------------------------------------------------------

    def write_offline(self, frame: pd.DataFrame) -> str:
        """Append validated rows to the offline dataset, one file per event date.

        Returns the dataset's location. Each file is written under a dot-name and
        renamed into place, so a reader never sees half a file.
        """
        location = str(self.offline_root)
        self.ctx.policy.check_location(location)
        if frame.empty:
            return location
        table_schema = self._arrow_schema()
        stamped = frame[list(self.schema.column_names)].copy()
        stamped[INGESTED_AT] = pd.Timestamp(datetime.now(UTC)).as_unit("ns")
        dates = stamped[self.schema.timestamp].dt.strftime("%Y-%m-%d")
        part = uuid.uuid4().hex
        for date, rows in stamped.groupby(dates, sort=True):
            folder = self.offline_root / f"{PARTITION}={date}"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"part-{part}.parquet"
            partial = folder / f".part-{part}.parquet.tmp"
            table = pa.Table.from_pandas(rows, schema=table_schema, preserve_index=False)
            pq.write_table(table, partial)
            os.replace(partial, final)
        return location

    def push_online(self, frame: pd.DataFrame) -> int:
        """Make each card's newest row its online features; returns the cards updated.

        The SQLite online store overwrites whatever is there, so rows older than
        what is already online (a late file) are left out here.
        """
        from feast.data_source import PushMode

        if frame.empty:
            return 0
        entity, ts = self.schema.entity, self.schema.timestamp
        newest = frame.sort_values(ts, kind="mergesort").drop_duplicates(entity, keep="last")
        online = self._online_seconds(newest[entity].tolist())
        pushed_seconds = newest[ts].astype("int64").to_numpy() // 1_000_000_000
        # Equal times go through: a later ingest of the same key wins, as offline.
        fresher = newest[pushed_seconds >= online]
        if fresher.empty:
            return 0
        columns = [entity, ts, *self.schema.stored_features]
        pushed = fresher[columns].reset_index(drop=True)
        pushed[INGESTED_AT] = pd.Timestamp(datetime.now(UTC)).as_unit("ns")
        self.store.push(PUSH_SOURCE, pushed, to=PushMode.ONLINE)
        return len(fresher)

    def _online_seconds(self, card_ids: list[str]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The event time (epoch seconds) of each card's online row; -1 where it has none."""
        from feast.online_response import TIMESTAMP_POSTFIX

        first = self.schema.stored_features[0]
        response = self.store.get_online_features(
            features=[f"{FEATURE_VIEW}:{first}"],
            entity_rows=[{self.schema.entity: card} for card in card_ids],
        ).to_dict(include_event_timestamps=True)
        values = response[first]
        seconds = response[first + TIMESTAMP_POSTFIX]
        return np.array(
            [s if v is not None else -1 for v, s in zip(values, seconds, strict=True)],
            dtype=np.int64,
        )

    # -- reading ----------------------------------------------------------------

    def online_features(self, card_ids: Sequence[str]) -> dict[str, list[Any]]:
        """The model inputs of each card, as served (None where a card is unknown)."""
        response = self.store.get_online_features(
            features=self.store.get_feature_service(FEATURE_SERVICE),
            entity_rows=[{self.schema.entity: card} for card in card_ids],
        ).to_dict()
        names = [self.schema.entity, *self.schema.feature_names]
        return {name: list(response[name]) for name in names}

    def labelled_rows(self) -> pd.DataFrame:
        """Every labelled row in the offline store: entity, timestamp, label, ingest time."""
        columns = [self.schema.entity, self.schema.timestamp, self.schema.label, INGESTED_AT]
        if not self.offline_root.exists():
            return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
        dataset = pads.dataset(
            self.offline_root, format="parquet", partitioning="hive", schema=self._arrow_schema()
        )
        return dataset.to_table(columns=columns).to_pandas()

    def training_frame(self, entity_rows: pd.DataFrame | None = None) -> TrainingSet:
        """A point-in-time correct training set, with every row left out accounted for.

        By default the entity rows are every labelled row in the offline store
        (the latest ingest of each key). Feast's file store drops an entity row
        whose card has data but none within ``TTL`` before the row (e.g. the row
        is older than all of its card's data) instead of returning nulls; those
        rows, and rows of cards with no data at all, are counted with their reason.
        """
        entity, ts, label = self.schema.entity, self.schema.timestamp, self.schema.label
        by_reason: dict[str, int] = {}
        stored = self.labelled_rows()
        if entity_rows is None:
            ordered = stored.sort_values(INGESTED_AT, kind="mergesort")
            unique = ordered.drop_duplicates([entity, ts], keep="last")
            _count(
                by_reason,
                "ingested more than once (the latest ingest is kept)",
                len(ordered) - len(unique),
            )
            entity_rows = unique[[entity, ts, label]]
        missing = [c for c in (entity, ts) if c not in entity_rows.columns]
        if missing:
            raise SchemaError(
                f"entity rows lack {missing}; expected {entity!r} and {ts!r}, "
                f"got {list(entity_rows.columns)}"
            )
        wanted = entity_rows.reset_index(drop=True).copy()
        wanted[ts] = pd.to_datetime(wanted[ts], utc=True)
        wanted["_row"] = np.arange(len(wanted))
        # Feast's file store fails on rows of cards it has never seen (their
        # null created-timestamps break its sort), so they are counted here.
        known = wanted[entity].isin(stored[entity])
        _count(by_reason, "whose card has no feature data at all", int((~known).sum()))
        wanted = wanted[known]
        names = list(self.schema.feature_names)
        columns = [c for c in wanted.columns if c != "_row"] + names
        if wanted.empty:
            empty = wanted.reindex(columns=columns)
            return TrainingSet(frame=empty.reset_index(drop=True), dropped=_dropped(by_reason))
        with warnings.catch_warnings():
            # dask, inside Feast's file store, warns about pandas' future downcasting.
            warnings.simplefilter("ignore", FutureWarning)
            joined = self.store.get_historical_features(
                entity_df=wanted,
                features=self.store.get_feature_service(FEATURE_SERVICE),
            ).to_df()
        lost = wanted[~wanted["_row"].isin(joined["_row"])]
        if len(lost):
            first_seen = stored.groupby(entity)[ts].min()
            older = lost[ts] < lost[entity].map(first_seen)
            _count(by_reason, "older than all of their card's feature data", int(older.sum()))
            _count(
                by_reason,
                f"with no feature row of their card in the ttl ({TTL.days} days) before them",
                int((~older).sum()),
            )
        empty_rows = joined[names].isna().all(axis=1)
        _count(by_reason, "for which Feast returned no feature values", int(empty_rows.sum()))
        kept = joined[~empty_rows].sort_values("_row").reset_index(drop=True)
        return TrainingSet(frame=kept[columns], dropped=_dropped(by_reason))

    def _arrow_schema(self) -> pa.Schema:
        arrow_types = {
            DType.STRING: pa.string(),
            DType.TIMESTAMP: pa.timestamp("ns", tz="UTC"),
            DType.FLOAT: pa.float64(),
            DType.INT: pa.int64(),
        }
        fields = [pa.field(c.name, arrow_types[c.dtype]) for c in self.schema.columns]
        fields.append(pa.field(INGESTED_AT, pa.timestamp("ns", tz="UTC")))
        return pa.schema(fields)


def _count(by_reason: dict[str, int], reason: str, count: int) -> None:
    if count:
        by_reason[reason] = by_reason.get(reason, 0) + count


def _dropped(by_reason: dict[str, int]) -> DroppedRows:
    total = sum(by_reason.values())
    reason = "; ".join(f"{count} row(s) {why}" for why, count in by_reason.items())
    return DroppedRows(count=total, reason=reason, by_reason=dict(by_reason))
