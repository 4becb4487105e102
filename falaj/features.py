"""The feature store of a platform: Feast, pointed at the platform's own folders.

The Feast objects of a dataset (its entity, sources and feature view) and of
each model reading it (a feature service) are built from the dataset's schema
and the models' specs by ``feast_definitions``, once, for both uses:
``feature_repo/definitions.py`` calls it for ``feast apply`` on a cluster, and
``FeatureStoreClient`` calls it with the paths of a local home (``<home>/offline``
for the parquet datasets, ``<home>/feast`` for the registry and the SQLite online
store), building the ``RepoConfig`` in code so no YAML file is rewritten. Their
names come from the dataset and the model (``feature_view_name`` and the others
below): the entity is named after its join key, so datasets keyed by the same
column share it. With
``FALAJ_ONLINE_STORE`` / ``FALAJ_FEATURE_REGISTRY`` set, the online store is
Redis and the registry PostgreSQL instead (``falaj/feast_stores.py``).

``import feast`` costs seconds, so it happens on first use, not on import.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from falaj.context import Context
from falaj.errors import SchemaError
from falaj.feast_stores import FeastStores, SqliteOnline
from falaj.feature_repo import FeatureRepo
from falaj.model_spec import ModelSpec
from falaj.online_times import OnlineTimes
from falaj.schema import DType, FeatureSchema
from falaj.validation import UTC_NS, arrow_schema

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureStore, FeatureView, FileSource, PushSource

PROJECT = "falaj"
#: When a row reached the offline store; Feast keeps the latest of equal keys.
INGESTED_AT = "ingested_at"
#: How far back a point-in-time join looks for an entity's features. Training
#: rows are joined at their own timestamps (they are feature rows too), so this
#: only bounds how stale a feature may be for a row between an entity's rows; a
#: week covers the demo's cards, which transact every few days over 30 days.
TTL = timedelta(days=7)
PARTITION = "date"
NS_PER_DAY = 86_400 * 10**9
EPOCH_DATE = datetime(1970, 1, 1).date()


def batch_source_name(dataset: str) -> str:
    return f"{dataset}_offline"


def push_source_name(dataset: str) -> str:
    return f"{dataset}_push"


def feature_view_name(dataset: str) -> str:
    return f"{dataset}_features"


def feature_service_name(model: str) -> str:
    """A model's feature service: its inputs, in its input order."""
    return f"{model}_model"


def online_times_file(dataset: str) -> str:
    """Beside Feast's SQLite online store: each entity's newest event time in a dataset's view.

    One per dataset: two datasets may share entity values (and an entity) but
    not their rows' times.
    """
    return f"online_times_{dataset}.db"


@dataclass(frozen=True)
class FeastDefinitions:
    entity: Entity
    batch_source: FileSource
    push_source: PushSource
    feature_view: FeatureView
    #: One per model that reads the dataset, by model name.
    feature_services: dict[str, FeatureService] = field(default_factory=dict)

    def objects(self) -> list[Any]:
        return [
            self.entity,
            self.batch_source,
            self.push_source,
            self.feature_view,
            *self.feature_services.values(),
        ]


def feast_definitions(
    schema: FeatureSchema,
    *,
    offline_path: str,
    models: Sequence[ModelSpec] = (),
    entity: Entity | None = None,
) -> FeastDefinitions:
    """The Feast objects of a dataset whose parquet files live under ``offline_path``.

    ``models`` read the dataset (a feature service each); ``entity`` is the
    entity another dataset keyed by the same column already made, to share it.
    """
    from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
    from feast.types import Float64, Int64, String

    feast_types = {DType.FLOAT: Float64, DType.INT: Int64, DType.STRING: String}
    if entity is None:
        # Feast needs an entity's value type stated, or it guesses (STACK.md).
        entity = Entity(
            name=schema.entity,
            join_keys=[schema.entity],
            value_type=ValueType.STRING,
            description=schema.column(schema.entity).description,
        )
    elif entity.join_key != schema.entity:
        raise SchemaError(
            f"dataset {schema.dataset!r} is keyed by {schema.entity!r}; the entity given joins "
            f"on {entity.join_key!r}"
        )
    batch = FileSource(
        name=batch_source_name(schema.dataset),
        path=offline_path,
        timestamp_field=schema.timestamp,
        created_timestamp_column=INGESTED_AT,
    )
    push = PushSource(name=push_source_name(schema.dataset), batch_source=batch)
    view = FeatureView(
        name=feature_view_name(schema.dataset),
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
    services = {spec.name: model_feature_service(view, spec) for spec in models}
    return FeastDefinitions(entity, batch, push, view, services)


def repo_definitions(repo: FeatureRepo, *, offline_root: str) -> list[FeastDefinitions]:
    """The Feast objects of every dataset and model of ``repo``, one entity per join key.

    Each dataset's parquet files live under ``<offline_root>/<dataset>``.
    """
    entities: dict[str, Entity] = {}
    definitions = []
    for name, schema in repo.datasets.items():
        made = feast_definitions(
            schema,
            offline_path=f"{offline_root}/{name}",
            models=repo.models_of(name),
            entity=entities.get(schema.entity),
        )
        entities.setdefault(schema.entity, made.entity)
        definitions.append(made)
    return definitions


def model_feature_service(view: FeatureView, spec: ModelSpec) -> FeatureService:
    """The feature service of a model reading ``view``: its inputs, in its input order."""
    from feast import FeatureService

    if view.name != feature_view_name(spec.dataset):
        raise SchemaError(
            f"model {spec.name!r} reads dataset {spec.dataset!r} (feature view "
            f"{feature_view_name(spec.dataset)!r}), not the feature view {view.name!r}"
        )
    return FeatureService(
        name=feature_service_name(spec.name),
        features=[view[list(spec.features)]],
        description=f"the inputs of the {spec.name} model, in its input order",
    )


@dataclass(frozen=True)
class DroppedRows:
    """Entity rows that did not make it into a training set, and why."""

    count: int = 0
    #: One sentence per reason, for logs and events.
    reason: str = ""
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSet:
    #: The entity key, the timestamp, the label and the model's inputs, one row per labelled row.
    frame: pd.DataFrame
    dropped: DroppedRows


class FeatureStoreClient:
    """Feast for one dataset of a platform home: apply, write offline, push online, read both.

    ``models`` are the models reading the dataset whose feature services
    ``apply`` registers; a model not among them can still be read for.
    """

    def __init__(
        self, ctx: Context, schema: FeatureSchema, models: Sequence[ModelSpec] = ()
    ) -> None:
        self.ctx = ctx
        self.schema = schema
        self.models = tuple(models)
        self.offline_root = ctx.paths.offline / schema.dataset
        self._store: FeatureStore | None = None
        self._definitions: FeastDefinitions | None = None
        self._feature_services: dict[str, FeatureService] = {}
        #: Only for the SQLite online store (``falaj.online_times``); Redis needs none.
        self._online_times: OnlineTimes | None = None

    # -- Feast, built on first use ---------------------------------------------

    @property
    def definitions(self) -> FeastDefinitions:
        if self._definitions is None:
            self._definitions = feast_definitions(
                self.schema, offline_path=str(self.offline_root), models=self.models
            )
        return self._definitions

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            from feast import FeatureStore, RepoConfig

            feast_dir = self.ctx.paths.feast
            stores = FeastStores.of(self.ctx.settings, feast_dir)
            # Before Feast connects to a store or a file of theirs is made.
            stores.check(self.ctx.policy)
            feast_dir.mkdir(parents=True, exist_ok=True)
            config = RepoConfig(
                project=PROJECT,
                provider="local",
                # Another process (ingest, training) may apply; a short cache sees it.
                registry=stores.registry.feast_config(cache_ttl_seconds=5),
                online_store=stores.online.feast_config(),
                offline_store={"type": "file"},
                entity_key_serialization_version=3,
                repo_path=str(feast_dir),
            )
            self._store = FeatureStore(config=config)
            if isinstance(stores.online, SqliteOnline):
                self._online_times = OnlineTimes(
                    stores.online.path.with_name(online_times_file(self.schema.dataset))
                )
        return self._store

    def feature_service(self, model: ModelSpec) -> FeatureService:
        """A model's feature service, from the registry once: looking it up on every
        read cost 5 ms of a 5.2 ms single-entity read (benchmarks/ingest.py). Feast
        reads through a service only once it is registered (``apply``)."""
        if model.dataset != self.schema.dataset:
            raise SchemaError(
                f"model {model.name!r} reads dataset {model.dataset!r}, not "
                f"{self.schema.dataset!r}; read it through a client of its own dataset"
            )
        if model.name not in self._feature_services:
            from feast.errors import FeatureServiceNotFoundException

            name = feature_service_name(model.name)
            try:
                service = self.store.get_feature_service(name)
            except FeatureServiceNotFoundException:
                raise SchemaError(
                    f"the feature service {name!r} of model {model.name!r} is not registered; "
                    f"expected it applied with dataset {self.schema.dataset!r}: apply a "
                    "FeatureStoreClient given the model (ingest does at its start)"
                ) from None
            self._feature_services[model.name] = service
        return self._feature_services[model.name]

    @property
    def feature_refs(self) -> list[str]:
        """Every feature the dataset stores, as Feast references (``view:feature``)."""
        view = feature_view_name(self.schema.dataset)
        return [f"{view}:{name}" for name in self.schema.stored_features]

    def apply(self) -> None:
        """Register the definitions and create the online tables; a second call changes nothing."""
        store = self.store  # its stores' residency is checked first
        # The batch source names the offline dataset: checked before its folder is made.
        self.ctx.policy.check_location(str(self.offline_root))
        self.offline_root.mkdir(parents=True, exist_ok=True)
        store.apply(self.definitions.objects())

    # -- writing ----------------------------------------------------------------

    def offline_batch(self) -> OfflineBatch:
        """Rows for the offline dataset, staged until ``commit`` (residency checked first)."""
        self.ctx.policy.check_location(str(self.offline_root))
        return OfflineBatch(self.offline_root, self.timestamp_column, self._arrow_schema())

    def write_offline(self, frame: pd.DataFrame) -> str:
        """Append validated rows (typed) to the offline dataset; returns its location."""
        batch = self.offline_batch()
        batch.write(pa.Table.from_pandas(frame, preserve_index=False))
        batch.commit()
        return str(self.offline_root)

    @property
    def timestamp_column(self) -> str:
        return self.schema.timestamp

    def push_online(self, frame: pd.DataFrame) -> int:
        """Make each entity's newest row its online features; returns the entities updated.

        A row older than what the store already serves for its entity (a late
        file) is left out: Feast's Redis store skips it by itself, and for the
        SQLite store, which takes whatever comes, ``falaj.online_times`` says
        which rows are fresher under the same lock as the push.
        """
        if frame.empty:
            return 0
        entity, ts = self.schema.entity, self.schema.timestamp
        newest = frame.sort_values(ts, kind="mergesort").drop_duplicates(entity, keep="last")
        online_times = self.online_times
        if online_times is None:
            self._push(newest)
            return len(newest)
        entities = newest[entity].astype(str).tolist()
        seconds = newest[ts].astype("int64").to_numpy() // 1_000_000_000
        with online_times.guard() as times:
            fresher = times.fresher(entities, seconds)
            if fresher.any():
                self._push(newest[fresher])
                times.record(
                    [e for e, f in zip(entities, fresher, strict=True) if f], seconds[fresher]
                )
        return int(fresher.sum())

    @property
    def online_times(self) -> OnlineTimes | None:
        """The SQLite online store's index of event times; None for Redis (opened with it)."""
        if self._store is None:
            self.store.config  # noqa: B018 - building the store opens the index
        return self._online_times

    def _push(self, rows: pd.DataFrame) -> None:
        from feast.data_source import PushMode

        columns = [self.schema.entity, self.schema.timestamp, *self.schema.stored_features]
        pushed = rows[columns].reset_index(drop=True)
        pushed[INGESTED_AT] = pd.Timestamp(datetime.now(UTC)).as_unit("ns")
        self.store.push(push_source_name(self.schema.dataset), pushed, to=PushMode.ONLINE)

    # -- reading ----------------------------------------------------------------

    def online_features(
        self, keys: Sequence[str], model: ModelSpec | None = None
    ) -> dict[str, list[Any]]:
        """Each entity's features as served (None where an entity is unknown), by name.

        With a model, its inputs in its input order; without, every feature the
        dataset stores. ``keys`` are values of the dataset's entity key.
        """
        response = self.store.get_online_features(
            features=self.feature_service(model) if model is not None else self.feature_refs,
            entity_rows=[{self.schema.entity: key} for key in keys],
        ).to_dict()
        features = model.features if model is not None else self.schema.stored_features
        names = [self.schema.entity, *features]
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

    def training_frame(
        self, model: ModelSpec, entity_rows: pd.DataFrame | None = None
    ) -> TrainingSet:
        """``model``'s point-in-time correct training set, every row left out accounted for.

        By default the entity rows are every labelled row in the offline store
        (the latest ingest of each key). Feast's file store drops an entity row
        whose entity has data but none within ``TTL`` before the row (e.g. the
        row is older than all of its entity's data) instead of returning nulls;
        those rows, and rows of entities with no data at all, are counted with
        their reason.
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
        # Feast's file store fails on rows of entities it has never seen (their
        # null created-timestamps break its sort), so they are counted here.
        known = wanted[entity].isin(stored[entity])
        _count(by_reason, "whose entity has no feature data at all", int((~known).sum()))
        wanted = wanted[known]
        names = list(model.features)
        columns = [c for c in wanted.columns if c != "_row"] + names
        if wanted.empty:
            empty = wanted.reindex(columns=columns)
            return TrainingSet(frame=empty.reset_index(drop=True), dropped=_dropped(by_reason))
        with warnings.catch_warnings():
            # dask, inside Feast's file store, warns about pandas' future downcasting.
            warnings.simplefilter("ignore", FutureWarning)
            joined = self.store.get_historical_features(
                entity_df=wanted,
                features=self.feature_service(model),
            ).to_df()
        lost = wanted[~wanted["_row"].isin(joined["_row"])]
        if len(lost):
            first_seen = stored.groupby(entity)[ts].min()
            older = lost[ts] < lost[entity].map(first_seen)
            _count(by_reason, "older than all of their entity's feature data", int(older.sum()))
            _count(
                by_reason,
                f"with no feature row of their entity in the ttl ({TTL.days} days) before them",
                int((~older).sum()),
            )
        empty_rows = joined[names].isna().all(axis=1)
        _count(by_reason, "for which Feast returned no feature values", int(empty_rows.sum()))
        kept = joined[~empty_rows].sort_values("_row").reset_index(drop=True)
        return TrainingSet(frame=kept[columns], dropped=_dropped(by_reason))

    def _arrow_schema(self) -> pa.Schema:
        """The offline rows: the schema's columns, then when each was ingested."""
        return arrow_schema(self.schema).append(pa.field(INGESTED_AT, UTC_NS))


class OfflineBatch:
    """One ingest's rows for the offline dataset, staged until committed.

    Rows go into one hidden Parquet file per event date (``date=YYYY-MM-DD``,
    one row group per ``write``) while a file is read. ``commit`` renames them
    into the dataset, so readers (Feast, training) never see half a file, nor
    any row of a file that turned out unreadable half-way; ``abort`` deletes
    them.

    Encoding and compressing Parquet releases the GIL, so each write runs on a
    thread of its own while the caller validates the next chunk. One write is
    in flight at a time: memory holds two row groups at most, whatever the
    file's size, and a failed write is raised by the next ``write`` or by
    ``commit``.
    """

    def __init__(self, root: Path, timestamp: str, table_schema: pa.Schema) -> None:
        self.root = root
        self.timestamp = timestamp
        self.table_schema = table_schema
        self.part = uuid.uuid4().hex
        self._writers: dict[str, tuple[pq.ParquetWriter, Path]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Typed rows of the schema's columns; stamped with when they were ingested."""
        if not table.num_rows:
            return
        ingested_at = _now_ns()
        self._wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-write")
        self._pending = self._pool.submit(self._write, table, ingested_at)
        self.rows += table.num_rows

    def _write(self, table: pa.Table, ingested_at: int) -> None:
        now = pa.array(np.full(table.num_rows, ingested_at, dtype=np.int64)).cast(UTC_NS)
        stamped = (
            table.select(self.table_schema.names[:-1])
            .append_column(INGESTED_AT, now)
            .cast(self.table_schema)
        )
        for date, rows in _by_date(stamped, self.timestamp):
            self._writer(date).write_table(rows)

    def _wait(self) -> None:
        """Let the write in flight finish; raise its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _writer(self, date: str) -> pq.ParquetWriter:
        if date not in self._writers:
            folder = self.root / f"{PARTITION}={date}"
            folder.mkdir(parents=True, exist_ok=True)
            # A dot-name: Feast's and pyarrow's dataset readers skip it until renamed.
            staged = folder / f".part-{self.part}.parquet.staged"
            self._writers[date] = (pq.ParquetWriter(staged, self.table_schema), staged)
        return self._writers[date][0]

    def commit(self) -> list[Path]:
        """Close and move every staged file into the dataset; returns where they went."""
        try:
            self._wait()
        except BaseException:
            self.abort()
            raise
        moved = []
        for writer, staged in self._writers.values():
            writer.close()
            final = staged.with_name(f"part-{self.part}.parquet")
            os.replace(staged, final)
            moved.append(final)
        self._writers.clear()
        self._stop()
        return moved

    def abort(self) -> None:
        """Close and delete every staged file: none of this batch reaches the dataset."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()  # waits; the error is the reason for aborting, or moot
        for writer, staged in self._writers.values():
            writer.close()
            staged.unlink(missing_ok=True)
        self._writers.clear()
        self._stop()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _by_date(table: pa.Table, timestamp: str) -> list[tuple[str, pa.Table]]:
    """The table's rows grouped by the UTC date of ``timestamp``, in date order.

    Integer days and one stable sort, not ``strftime`` and a filter per date:
    formatting every timestamp cost more than the rest of the offline write.
    """
    column = table.column(timestamp)
    if column.null_count:  # validation refuses these; a partition cannot hold them
        raise ValueError(f"{column.null_count} row(s) without {timestamp!r} cannot be dated")
    days = column.cast(pa.int64()).to_numpy() // NS_PER_DAY
    if days[0] == days[-1] and (days == days[0]).all():  # most chunks: one day
        return [(_date_of(days[0]), table)]
    order = np.argsort(days, kind="stable")
    ordered_days = days[order]
    edges = [0, *(np.flatnonzero(np.diff(ordered_days)) + 1).tolist(), len(days)]
    ordered = table.take(order)
    return [
        (_date_of(ordered_days[start]), ordered.slice(start, stop - start))
        for start, stop in itertools.pairwise(edges)
    ]


def _date_of(day: np.int64) -> str:
    return (EPOCH_DATE + timedelta(days=int(day))).isoformat()


def _now_ns() -> int:
    return time.time_ns()


def _count(by_reason: dict[str, int], reason: str, count: int) -> None:
    if count:
        by_reason[reason] = by_reason.get(reason, 0) + count


def _dropped(by_reason: dict[str, int]) -> DroppedRows:
    total = sum(by_reason.values())
    reason = "; ".join(f"{count} row(s) {why}" for why, count in by_reason.items())
    return DroppedRows(count=total, reason=reason, by_reason=dict(by_reason))
