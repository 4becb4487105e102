"""Ingest: a landed file, validated against the feature schema, into Feast.

For each ``storage.object.finalized`` event the file is checked against the
residency policy, parsed through once (so a file that breaks half-way is
refused whole, not half-ingested), then read again a chunk at a time: good rows
go to the offline store and the online store, bad rows to
``<quarantine>/<name>-<generation>.jsonl`` with every reason. A file that cannot
be read at all is copied whole to the quarantine beside a reason file, and
``data.rejected`` goes out instead of ``data.ingested``. Nothing is dropped.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from falaj.audit import Outcome
from falaj.errors import EventError, FalajError, SchemaError
from falaj.events import (
    DataIngested,
    DataRejected,
    EventData,
    EventType,
    ObjectFinalized,
    ParsedEvent,
)
from falaj.features import FeatureStoreClient
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.residency import Boundary
from falaj.schema import FeatureSchema, RowRejection, SeenKeys, load_schema
from functions.ingest.ledger import IngestLedger, Recorded
from functions.ingest.pii import pii_key, pseudonymize
from functions.ingest.reader import CHUNK_ROWS, FileFormat, format_of, read_chunks

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Counts:
    rows_total: int = 0
    rows_ingested: int = 0
    rows_quarantined: int = 0


class IngestFunction(CloudEventFunction):
    name = "ingest"
    accepts = frozenset({EventType.OBJECT_FINALIZED})

    def __init__(self, *, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__()
        self.chunk_rows = chunk_rows
        self._schema: FeatureSchema | None = None
        self._features: FeatureStoreClient | None = None
        self._ledger: IngestLedger | None = None
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        self._schema = load_schema(self.ctx.settings)
        self._features = FeatureStoreClient(self.ctx, self._schema)
        self._features.apply()
        self._ledger = IngestLedger(self.ctx.paths.state / self.name / "objects.db")

    @property
    def schema(self) -> FeatureSchema:
        if self._schema is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._schema

    @property
    def features(self) -> FeatureStoreClient:
        if self._features is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._features

    @property
    def ledger(self) -> IngestLedger:
        if self._ledger is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ledger

    def stop(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        super().stop()

    # -- one event --------------------------------------------------------------

    def handle(self, event: ParsedEvent) -> None:
        data = event.data
        if not isinstance(data, ObjectFinalized):
            raise EventError(f"{self.name} reads {EventType.OBJECT_FINALIZED} events only")
        done = self.ledger.get(data.location, data.generation)
        if done is not None:
            self.log.info(
                "object version already ingested",
                location=data.location,
                generation=data.generation,
                emitted=done.emitted,
            )
            if not done.emitted:
                # The rows went in but the event was lost: send it, ingest nothing.
                self._emit_recorded(data, done)
            return
        path = self._local_path(data.location)
        outcome_type, outcome = self._ingest(path, data)
        self.ledger.record(
            data.location, data.generation, outcome_type, outcome.model_dump(mode="json")
        )
        self.emit(outcome_type, outcome, subject=data.name)
        self.ledger.mark_emitted(data.location, data.generation)

    def _emit_recorded(self, data: ObjectFinalized, done: Recorded) -> None:
        model = DataIngested if done.event_type is EventType.DATA_INGESTED else DataRejected
        self.emit(done.event_type, model.model_validate(done.data), subject=data.name)
        self.ledger.mark_emitted(data.location, data.generation)

    def _local_path(self, location: str) -> Path:
        self.ctx.policy.check_location(location, boundary=Boundary.STORAGE_READ)
        parsed = urlparse(location)
        if parsed.scheme == "file":
            path = Path(url2pathname(unquote(parsed.path)))
        elif parsed.scheme == "":
            path = Path(location)
        else:
            raise EventError(
                f"{self.name} reads file:// locations; got {parsed.scheme}:// ({location}). "
                "Land the file in the local landing folder, or run the cloud storage source"
            )
        if not path.is_file():
            raise EventError(
                f"object {location} does not exist or is not a file; was it moved or deleted "
                "before it was ingested?"
            )
        return path

    # -- the work ---------------------------------------------------------------

    def _ingest(self, path: Path, data: ObjectFinalized) -> tuple[EventType, EventData]:
        try:
            file_format = format_of(data.name, data.content_type)
            self._check_parses(path, file_format)
        except SchemaError as exc:
            return EventType.DATA_REJECTED, self._reject_whole(path, data, str(exc))
        quarantine = self.ctx.paths.quarantine / f"{_stem(data)}.jsonl"
        counts, offline = self._load(path, file_format, quarantine)
        ingested = DataIngested(
            dataset=self.schema.dataset,
            location=data.location,
            generation=data.generation,
            rows_total=counts.rows_total,
            rows_ingested=counts.rows_ingested,
            rows_quarantined=counts.rows_quarantined,
            offline_location=offline,
            quarantine_location=str(quarantine) if counts.rows_quarantined else None,
        )
        self.ctx.audit.record(
            "data.ingested",
            actor=self.ctx.actor,
            resource=data.location,
            region=self.ctx.settings.region,
            details={
                "generation": data.generation,
                "rows_total": counts.rows_total,
                "rows_ingested": counts.rows_ingested,
                "rows_quarantined": counts.rows_quarantined,
            },
        )
        self.log.info("ingested", location=data.location, **counts.__dict__)
        return EventType.DATA_INGESTED, ingested

    def _check_parses(self, path: Path, file_format: FileFormat) -> None:
        """Parse the whole file once, keeping nothing, and check its columns."""
        checked = False
        for chunk in read_chunks(path, file_format, chunk_rows=self.chunk_rows):
            if not checked:
                self.schema.require_columns(list(chunk.columns))
                checked = True
        if not checked:
            raise SchemaError(f"{path.name} holds no header and no rows")

    def _load(self, path: Path, file_format: FileFormat, quarantine: Path) -> tuple[Counts, str]:
        total = ingested = quarantined = 0
        offline = str(self.features.offline_root)
        seen = SeenKeys()
        pii = self.schema.pii_columns
        key = pii_key(self.ctx.paths.keys / "pii.key") if pii else b""
        sink: IO[str] | None = None
        try:
            for chunk in read_chunks(path, file_format, chunk_rows=self.chunk_rows):
                result = self.schema.validate(chunk, first_row_number=total + 1, seen=seen)
                total += len(chunk)
                if result.rejected:
                    if sink is None:
                        self.ctx.policy.check_location(str(quarantine))
                        quarantine.parent.mkdir(parents=True, exist_ok=True)
                        # "w": a retried ingest of this version rewrites its file.
                        sink = open(quarantine, "w", encoding="utf-8")  # noqa: SIM115
                    _write_rejections(sink, result.rejected)
                    quarantined += len(result.rejected)
                if len(result.good):
                    # PII never leaves this function in the clear (DESIGN.md).
                    good = pseudonymize(result.good, pii, key)
                    offline = self.features.write_offline(good)
                    self.features.push_online(good)
                    ingested += len(good)
        finally:
            if sink is not None:
                sink.close()
        return Counts(total, ingested, quarantined), offline

    def _reject_whole(self, path: Path, data: ObjectFinalized, reason: str) -> DataRejected:
        stem = _stem(data)
        copy = self.ctx.paths.quarantine / f"{stem}.original"
        self.ctx.policy.check_location(str(copy))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        (self.ctx.paths.quarantine / f"{stem}.reason.json").write_text(
            json.dumps(
                {"location": data.location, "generation": data.generation, "reason": reason},
                indent=1,
            )
            + "\n"
        )
        self.ctx.audit.record(
            "data.rejected",
            actor=self.ctx.actor,
            resource=data.location,
            region=self.ctx.settings.region,
            outcome=Outcome.REFUSED,
            details={"generation": data.generation, "reason": reason},
        )
        self.log.warning("rejected", location=data.location, reason=reason)
        return DataRejected(
            dataset=self.schema.dataset,
            location=data.location,
            reason=reason,
            quarantine_location=str(copy),
        )


def _stem(data: ObjectFinalized) -> str:
    """A file name for an object version: its name and generation, made safe."""
    return _UNSAFE.sub("_", f"{data.name}-{data.generation}")


def _write_rejections(sink: IO[str], rejected: list[RowRejection]) -> None:
    sink.writelines(json.dumps(r.to_json(), default=str) + "\n" for r in rejected)
    sink.flush()
