"""Ingest: a landed file, validated against its dataset's feature schema, into Feast.

For each ``storage.object.created`` event (an S3 or MinIO notification record,
or the local storage source's) the bucket and key are located through
``falaj.objects.Buckets``, which refuses a key that would leave its bucket and
a location outside the allowed regions before a byte is read (a 422 or 403:
dead-lettered with its reason, never retried). The key's first folder names the
file's dataset (``<dataset>/...``; anywhere, when the feature repository holds
one dataset); a file of no dataset is rejected whole. Records from a queue go to
``FALAJ_RECORDS_DATASET`` (or the only dataset). The file is then parsed through
a chunk at a time, once: good rows are staged for the offline store and
each entity's newest kept for the online store, bad rows go to
``<quarantine>/<key>-<object version>.jsonl`` with every reason; only when the
whole file has read do the staged rows go in and the newest rows online (so a
file that breaks half-way is refused whole, not half-ingested). Each batch's
data-quality report is stored under ``<home>/quality`` and sent as
``data.quality``. A file that cannot be read at all is copied whole to the quarantine
beside a reason file, and ``data.rejected`` goes out instead of
``data.ingested``. Nothing is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa

from falaj.audit import Outcome
from falaj.errors import EventError, FalajError, SchemaError
from falaj.events import (
    DataIngested,
    DataQuality,
    DataRejected,
    EventData,
    EventType,
    ObjectCreated,
    ParsedEvent,
    StreamRecord,
)
from falaj.feature_repo import FeatureRepo, load_repo
from falaj.features import FeatureStoreClient
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.metrics import FileOutcome, RowOutcome
from falaj.objects import Buckets, ObjectLocation
from falaj.schema import FeatureSchema
from falaj.validation import RowRejection, SeenKeys, frame_as_table, validate_table
from functions.ingest.ledger import IngestLedger, Recorded
from functions.ingest.newest import NewestRows
from functions.ingest.pii import pii_key, pseudonymize, pseudonymize_rejections
from functions.ingest.quality import QualityReport
from functions.ingest.read_ahead import ReadAhead
from functions.ingest.reader import CHUNK_ROWS, FileKind, kind_of, read_chunks
from functions.ingest.stream import ROLL_ROWS, ROLL_S, RecordJournal

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Characters of a file name made from a key and a version, at most: file systems take
#: 255 bytes a name, and a key (1024 in S3) or a version may be longer than that alone.
_MAX_NAME = 200
#: Records that broke the contract, one JSON line each, under the quarantine folder.
STREAM_QUARANTINE = "stream-records.jsonl"


@dataclass(frozen=True)
class Landed:
    """One object version to ingest: where it is, which version, and what it claims to be."""

    location: ObjectLocation
    object_version: str
    content_type: str


@dataclass(frozen=True)
class Counts:
    rows_total: int = 0
    rows_ingested: int = 0
    rows_quarantined: int = 0


class IngestFunction(CloudEventFunction):
    name = "ingest"
    accepts = frozenset(
        {EventType.OBJECT_CREATED, EventType.RABBITMQ_MESSAGE, EventType.KAFKA_RECORD}
    )

    def __init__(
        self, *, chunk_rows: int = CHUNK_ROWS, roll_rows: int = ROLL_ROWS, roll_s: float = ROLL_S
    ) -> None:
        super().__init__()
        self.chunk_rows = chunk_rows
        self.roll_rows = roll_rows
        self.roll_s = roll_s
        self._repo: FeatureRepo | None = None
        #: One client per dataset of the feature repository.
        self._clients: dict[str, FeatureStoreClient] = {}
        self._ledger: IngestLedger | None = None
        self._buckets: Buckets | None = None
        self._journal: RecordJournal | None = None
        # Records and rolls take turns; a file's ingest does not wait on them.
        self._records = threading.Lock()
        self._roller: threading.Thread | None = None
        self._stopping = threading.Event()
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        repo = load_repo(self.ctx.settings)
        records = self.ctx.settings.records_dataset
        if records is not None:
            repo.dataset(records)  # a misnamed one stops the start, naming the datasets
        self._repo = repo
        self._clients = {
            name: FeatureStoreClient(self.ctx, schema, repo.models_of(name))
            for name, schema in repo.datasets.items()
        }
        for client in self._clients.values():
            client.apply()
        self._ledger = IngestLedger(self.ctx.paths.state / self.name / "objects.db")
        self._buckets = Buckets.of(self.ctx)
        self._journal = RecordJournal(
            self.ctx.paths.state / self.name / "records.db",
            roll_rows=self.roll_rows,
            roll_s=self.roll_s,
        )
        self._stopping.clear()
        # Rolls records into the offline store when they have waited long enough,
        # also when no new record comes to notice it.
        self._roller = threading.Thread(target=self._roll_when_due, name="roll", daemon=True)
        self._roller.start()

    @property
    def schema(self) -> FeatureSchema:
        """The schema of the dataset records go to (see ``features``)."""
        return self.features.schema

    @property
    def features(self) -> FeatureStoreClient:
        """The dataset records go to: ``FALAJ_RECORDS_DATASET``, or the only dataset.

        With several datasets and none named, a record is refused (422, dead-lettered).
        """
        if self._repo is None:
            raise FalajError(f"function {self.name} used before start()")
        named = self.ctx.settings.records_dataset
        if named is None and len(self._clients) > 1:
            raise SchemaError(
                f"records go to one dataset, and the feature repository holds "
                f"{len(self._clients)} ({', '.join(self._clients)}): set "
                "FALAJ_RECORDS_DATASET to the one records are for"
            )
        return self._clients[named] if named is not None else next(iter(self._clients.values()))

    def features_of(self, key: str) -> FeatureStoreClient:
        """The dataset a landed object's key belongs to (SchemaError: none)."""
        if self._repo is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._clients[self._repo.dataset_of_key(key).dataset]

    @property
    def buckets(self) -> Buckets:
        if self._buckets is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._buckets

    @property
    def ledger(self) -> IngestLedger:
        if self._ledger is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ledger

    def stop(self) -> None:
        self._stopping.set()
        if self._roller is not None:
            self._roller.join(timeout=30)
            self._roller = None
        if self._journal is not None:
            self.roll()  # what is journalled goes offline before the process ends
            self._journal.close()
            self._journal = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        super().stop()

    # -- one event --------------------------------------------------------------

    def handle(self, event: ParsedEvent) -> None:
        data = event.data
        if isinstance(data, StreamRecord):
            self._ingest_record(event, data)
            return
        if not isinstance(data, ObjectCreated):
            raise EventError(
                f"{self.name} reads {', '.join(sorted(self.accepts))} events only, got {event.type}"
            )
        # Before anything else: a key that leaves its bucket, or a bucket out of
        # region, is refused here, whatever the ledger holds.
        landed = Landed(
            location=self.buckets.locate(data.bucket, data.key),
            object_version=data.object_version,
            content_type=data.s3.object.content_type or "",
        )
        uri, version = landed.location.uri, landed.object_version
        done = self.ledger.get(uri, version)
        if done is not None:
            self.log.info(
                "object version already ingested",
                location=uri,
                object_version=version,
                emitted=done.emitted,
            )
            if not done.emitted:
                # The rows went in but the event was lost: send it, ingest nothing.
                self._emit_recorded(landed, done)
            return
        path = self.buckets.local_file(landed.location)
        outcome_type, outcome = self._ingest(path, landed)
        # Recorded before anything is sent: a send that fails is repeated on
        # redelivery (below), the ingest is not.
        self.ledger.record(uri, version, outcome_type, outcome.model_dump(mode="json"))
        self._emit(landed, outcome_type, outcome)

    def _emit_recorded(self, landed: Landed, done: Recorded) -> None:
        model = DataIngested if done.event_type is EventType.DATA_INGESTED else DataRejected
        self._emit(landed, done.event_type, model.model_validate(done.data))

    def _emit(self, landed: Landed, outcome_type: EventType, outcome: EventData) -> None:
        """The batch's quality report (read back from where it is kept), then its outcome."""
        subject = landed.location.key
        if isinstance(outcome, DataIngested) and outcome.quality_location:
            report = DataQuality.model_validate_json(Path(outcome.quality_location).read_text())
            self.emit(EventType.DATA_QUALITY, report, subject=subject)
        self.emit(outcome_type, outcome, subject=subject)
        self.ledger.mark_emitted(landed.location.uri, landed.object_version)

    # -- the work ---------------------------------------------------------------

    def _ingest(self, path: Path, landed: Landed) -> tuple[EventType, EventData]:
        uri = landed.location.uri
        quarantine = self.ctx.paths.quarantine / f"{_stem(landed)}.jsonl"
        features: FeatureStoreClient | None = None
        try:
            features = self.features_of(landed.location.key)
            kind = kind_of(landed.location.key, landed.content_type)
            counts, quality = self._load(path, kind, quarantine, landed, features)
        except SchemaError as exc:
            dataset = features.schema.dataset if features is not None else ""
            return EventType.DATA_REJECTED, self._reject_whole(path, landed, str(exc), dataset)
        ingested = DataIngested(
            dataset=features.schema.dataset,
            location=uri,
            object_version=landed.object_version,
            rows_total=counts.rows_total,
            rows_ingested=counts.rows_ingested,
            rows_quarantined=counts.rows_quarantined,
            offline_location=str(features.offline_root),
            quarantine_location=str(quarantine) if counts.rows_quarantined else None,
            quality_location=quality.report_location,
        )
        self.ctx.audit.record(
            "data.ingested",
            actor=self.ctx.actor,
            resource=uri,
            region=self.ctx.settings.region,
            details={
                "object_version": landed.object_version,
                "rows_total": counts.rows_total,
                "rows_ingested": counts.rows_ingested,
                "rows_quarantined": counts.rows_quarantined,
            },
        )
        self.log.info("ingested", location=uri, dataset=features.schema.dataset, **counts.__dict__)
        dataset = features.schema.dataset
        self._count_rows(
            dataset, ingested=counts.rows_ingested, quarantined=counts.rows_quarantined
        )
        self.metrics.ingest_files.labels(dataset, FileOutcome.INGESTED).inc()
        return EventType.DATA_INGESTED, ingested

    def _count_rows(self, dataset: str, *, ingested: int = 0, quarantined: int = 0) -> None:
        rows = self.metrics.ingest_rows
        if ingested:
            rows.labels(dataset, RowOutcome.INGESTED).inc(ingested)
        if quarantined:
            rows.labels(dataset, RowOutcome.QUARANTINED).inc(quarantined)

    def _load(
        self,
        path: Path,
        kind: FileKind,
        quarantine: Path,
        landed: Landed,
        features: FeatureStoreClient,
    ) -> tuple[Counts, DataQuality]:
        """One pass over the file; its good rows reach the stores only if all of it reads.

        Offline rows are staged and committed at the end, and online rows (each
        entity's newest) are pushed at the end: a file that turns out unreadable
        half-way (``SchemaError``) leaves no row behind, and is quarantined whole.
        """
        schema = features.schema
        offline = features.offline_batch()
        newest = NewestRows(schema.entity, schema.timestamp)
        quality = QualityReport(schema)
        seen = SeenKeys()
        sink: IO[str] | None = None
        try:
            with ReadAhead(read_chunks(path, kind, chunk_rows=self.chunk_rows)) as chunks:
                for chunk in chunks:
                    validated = validate_table(
                        schema, chunk, first_row_number=quality.rows_total + 1, seen=seen
                    )
                    quality.add(validated)
                    if validated.rejected:
                        if sink is None:
                            self.ctx.policy.check_location(str(quarantine))
                            quarantine.parent.mkdir(parents=True, exist_ok=True)
                            # "w": a retried ingest of this version rewrites its file.
                            sink = open(quarantine, "w", encoding="utf-8")  # noqa: SIM115
                        _write_rejections(sink, self._hidden(validated.rejected, schema))
                    # PII never leaves this function in the clear (DESIGN.md).
                    good = self._pseudonymized(validated.good, schema)
                    offline.write(good)
                    newest.add(good)
        except BaseException:
            offline.abort()
            if sink is not None:
                sink.close()
                sink = None
                quarantine.unlink(missing_ok=True)  # the whole file is quarantined instead
            raise
        finally:
            if sink is not None:
                sink.close()
        offline.commit()
        online = newest.table()
        if online is not None:
            features.push_online(online.to_pandas())
        report = self._store_quality(
            quality, location=landed.location.uri, version=landed.object_version
        )
        counts = Counts(quality.rows_total, quality.rows_ingested, quality.rows_quarantined)
        return counts, report

    def _store_quality(self, quality: QualityReport, *, location: str, version: str) -> DataQuality:
        """Keep a batch's quality report beside the others (the caller sends it)."""
        folder = self.ctx.paths.quality / quality.schema.dataset
        where = folder / f"{_file_name(f'{location}-{version}')}.json"
        self.ctx.policy.check_location(str(where))
        report = quality.report(
            location=location, object_version=version, report_location=str(where)
        )
        folder.mkdir(parents=True, exist_ok=True)
        where.write_text(report.model_dump_json(indent=1) + "\n")
        return report

    # -- records, one event each (functions.ingest.stream) ------------------------

    def _ingest_record(self, event: ParsedEvent, record: StreamRecord) -> None:
        """Check one record; a good one is online when this returns, and journalled."""
        journal = self.journal
        # Before anything is kept: with no dataset for records, a 422 (dead-lettered).
        schema = self.schema
        row = record.model_dump(mode="json")
        with self._records:
            try:
                validated = validate_table(schema, frame_as_table(pd.DataFrame([row])))
            except SchemaError as exc:  # columns missing: it can never fit
                self._quarantine_record(event, RowRejection(1, [str(exc)], row), schema)
                return
            if validated.rejected:
                (rejection,) = validated.rejected
                self._quarantine_record(event, rejection, schema)
                return
            good = self._pseudonymized(validated.good, schema)
            self.features.push_online(good.to_pandas())
            journal.append(event.source, event.id, _json_row(good))
            self._count_rows(schema.dataset, ingested=1)
        if journal.due():
            self.roll()

    def _quarantine_record(
        self, event: ParsedEvent, rejection: RowRejection, schema: FeatureSchema
    ) -> None:
        (hidden,) = self._hidden([rejection], schema)
        self._write_quarantined(event.source, event.id, hidden.reasons, hidden.row)
        self.journal.quarantined()
        self._count_rows(schema.dataset, quarantined=1)

    def _write_quarantined(
        self, source: str, event_id: str, reasons: list[str], row: dict[str, object]
    ) -> None:
        where = self.ctx.paths.quarantine / STREAM_QUARANTINE
        self.ctx.policy.check_location(str(where))
        where.parent.mkdir(parents=True, exist_ok=True)
        entry = {"source": source, "id": event_id, "reasons": reasons, "row": row}
        with open(where, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(entry, default=str) + "\n")
        self.log.warning("record quarantined", event_id=event_id, reasons=reasons)

    def roll(self) -> DataQuality | None:
        """Journalled records into the offline store as one batch, with its quality report."""
        with self._records:
            taken = self.journal.take()
            if not taken.rows and not taken.quarantined:
                return None
            quality = QualityReport(self.schema)
            offline = self.features.offline_batch()
            try:
                if taken.rows:
                    table = frame_as_table(pd.DataFrame(taken.rows))
                    # Journalled rows hold tokens where PII was: the stored contract.
                    validated = validate_table(self.schema.as_stored(), table)
                    quality.add(validated)
                    offline.write(validated.good)
                    # Checked one by one, two records can still share (entity, time):
                    # the later is a duplicate here, and quarantined, not dropped.
                    for rejection in validated.rejected:
                        source, event_id = taken.keys[rejection.row_number - 1]
                        self._write_quarantined(source, event_id, rejection.reasons, rejection.row)
                    # Counted as ingested when they came; quarantined now all the same.
                    self._count_rows(self.schema.dataset, quarantined=len(validated.rejected))
            except BaseException:
                offline.abort()
                raise
            offline.commit()
            quality.rows_total += taken.quarantined
            quality.rows_quarantined += taken.quarantined
            batch = f"records-{uuid.uuid4().hex[:12]}"
            report = self._store_quality(quality, location=f"stream:{batch}", version=batch)
            self.journal.done(taken)
        self.emit(EventType.DATA_QUALITY, report, subject=batch)
        self.log.info("records rolled", rows=quality.rows_ingested, batch=batch)
        return report

    def _roll_when_due(self) -> None:
        while not self._stopping.wait(min(1.0, self.roll_s)):
            try:
                if self.journal.due():
                    self.roll()
            except Exception:
                # The journal keeps the records; the next tick tries again.
                self.log.exception("rolling records failed")

    @property
    def journal(self) -> RecordJournal:
        if self._journal is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._journal

    def _hidden(self, rejected: list[RowRejection], schema: FeatureSchema) -> list[RowRejection]:
        """Rejected rows as quarantine keeps them: raw PII stays in what landed, never here."""
        pii = schema.pii_columns
        if not pii:
            return rejected
        return pseudonymize_rejections(rejected, pii, pii_key(self.ctx.paths.keys / "pii.key"))

    def _pseudonymized(self, table: pa.Table, schema: FeatureSchema) -> pa.Table:
        pii = schema.pii_columns
        if not pii:
            return table
        return pseudonymize(table, pii, pii_key(self.ctx.paths.keys / "pii.key"))

    def _reject_whole(self, path: Path, landed: Landed, reason: str, dataset: str) -> DataRejected:
        uri, version = landed.location.uri, landed.object_version
        stem = _stem(landed)
        copy = self.ctx.paths.quarantine / f"{stem}.original"
        self.ctx.policy.check_location(str(copy))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        (self.ctx.paths.quarantine / f"{stem}.reason.json").write_text(
            json.dumps(
                {"location": uri, "object_version": version, "reason": reason},
                indent=1,
            )
            + "\n"
        )
        self.ctx.audit.record(
            "data.rejected",
            actor=self.ctx.actor,
            resource=uri,
            region=self.ctx.settings.region,
            outcome=Outcome.REFUSED,
            details={"object_version": version, "reason": reason},
        )
        self.log.warning("rejected", location=uri, reason=reason)
        # A file of no dataset is counted under dataset="" (its key named none).
        self.metrics.ingest_files.labels(dataset, FileOutcome.REJECTED).inc()
        return DataRejected(
            dataset=dataset,
            location=uri,
            reason=reason,
            quarantine_location=str(copy),
            object_version=version,
        )


def _stem(landed: Landed) -> str:
    """A file name for an object version: its key and version, made safe (no separators)."""
    return _file_name(f"{landed.location.key}-{landed.object_version}")


def _file_name(text: str) -> str:
    """``text`` as one safe file name; a long one cut, with a digest of the whole so that
    two objects never share a name."""
    safe = _UNSAFE.sub("_", text)
    if len(safe) <= _MAX_NAME:
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe[: _MAX_NAME - len(digest) - 1]}-{digest}"


def _json_row(table: pa.Table) -> dict[str, object]:
    """A one-row table as JSON values (timestamps as ISO 8601), as the journal keeps it."""
    (row,) = table.to_pylist()
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def _write_rejections(sink: IO[str], rejected: list[RowRejection]) -> None:
    sink.writelines(json.dumps(r.to_json(), default=str) + "\n" for r in rejected)
    sink.flush()
