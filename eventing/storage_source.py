"""The storage source: a landing folder watched like a bucket.

Run as ``python -m eventing.storage_source --watch DIR``.

Each new or changed file becomes one ``dev.falaj.storage.object.finalized``
event sent to the broker, as a GCS/S3 object notification would be. Writers
write then rename, so names starting with ``.`` or ending in ``.tmp``/``.part``
are files still being written and are skipped.

What was published is remembered (SQLite under ``<home>/state/storage-source``),
so a restart does not publish an unchanged file again; a file whose content
changed is a new *generation* and is published. The event id is derived from
the location and the generation, so a publish repeated after a crash is a
duplicate the broker and the functions recognise.
"""

from __future__ import annotations

import argparse
import hashlib
import mimetypes
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cloudevents.http import CloudEvent

from falaj.context import Context
from falaj.errors import FalajError, PublishError
from falaj.events import EventType, ObjectFinalized, make_event
from falaj.logs import configure_logging, get_logger
from falaj.publisher import EventPublisher
from falaj.settings import Settings

SKIPPED_SUFFIXES = (".tmp", ".part")
#: Extensions mimetypes does not know on every system.
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
HASH_CHUNK = 1024 * 1024


def is_in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith(SKIPPED_SUFFIXES)


def content_type_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or DEFAULT_CONTENT_TYPE


def generation_of(path: Path) -> str:
    """The object's generation: a digest of its content, so rewriting the same bytes is not new."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def event_id_of(location: str, generation: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{location}#{generation}"))


@dataclass(frozen=True)
class Seen:
    mtime_ns: int
    size: int
    generation: str


class Ledger:
    """What the source has published: one row per file, its last generation."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS published (location TEXT PRIMARY KEY, mtime_ns INTEGER,"
            " size INTEGER, generation TEXT, event_id TEXT, published REAL)"
        )

    def get(self, location: str) -> Seen | None:
        row = self._db.execute(
            "SELECT mtime_ns, size, generation FROM published WHERE location = ?", (location,)
        ).fetchone()
        return None if row is None else Seen(int(row[0]), int(row[1]), str(row[2]))

    def record(self, location: str, seen: Seen, event_id: str | None) -> None:
        self._db.execute(
            "INSERT INTO published VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (location) DO UPDATE"
            " SET mtime_ns = excluded.mtime_ns, size = excluded.size,"
            " generation = excluded.generation,"
            " event_id = COALESCE(excluded.event_id, event_id),"
            " published = COALESCE(excluded.published, published)",
            (
                location,
                seen.mtime_ns,
                seen.size,
                seen.generation,
                event_id,
                time.time() if event_id else None,
            ),
        )

    def close(self) -> None:
        self._db.close()


class StorageSource:
    """Turns files in one folder into ObjectFinalized events."""

    def __init__(
        self, ctx: Context, watch: Path, publisher: EventPublisher, ledger: Ledger
    ) -> None:
        self.ctx = ctx
        self.watch = watch.resolve()
        self.publisher = publisher
        self.ledger = ledger
        self.log = get_logger(component="storage-source", watch=str(self.watch))

    def check_residency(self) -> None:
        """Refuse to watch a location outside the allowed regions (audited by the policy)."""
        self.ctx.policy.check_location(self.watch.as_uri())

    def files(self) -> Iterator[Path]:
        for root, dirs, names in os.walk(self.watch):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if not is_in_progress(name):
                    yield Path(root) / name

    def scan(self) -> list[CloudEvent]:
        """Publish every file that is new or changed since it was last published."""
        published = []
        for path in self.files():
            try:
                event = self._consider(path)
            except FileNotFoundError:
                continue  # renamed or removed between listing and reading
            except PublishError as exc:
                # The broker is down or refused: not recorded, so the next scan tries again.
                self.log.warning("publish failed; will retry", path=str(path), error=str(exc))
                continue
            if event is not None:
                published.append(event)
        return published

    def _consider(self, path: Path) -> CloudEvent | None:
        stat = path.stat()
        location = path.as_uri()
        before = self.ledger.get(location)
        if before is not None and (before.mtime_ns, before.size) == (
            stat.st_mtime_ns,
            stat.st_size,
        ):
            return None  # unchanged since last seen: skip without reading it
        generation = generation_of(path)
        seen = Seen(stat.st_mtime_ns, stat.st_size, generation)
        if before is not None and before.generation == generation:
            self.ledger.record(location, seen, None)  # touched, same bytes
            return None
        data = ObjectFinalized(
            location=location,
            name=str(path.relative_to(self.watch)),
            size=stat.st_size,
            generation=generation,
            content_type=content_type_of(path),
        )
        event = make_event(
            EventType.OBJECT_FINALIZED, data, region=self.ctx.settings.region, subject=data.name
        )
        event["id"] = event_id_of(location, generation)
        self.publisher.publish(event)
        self.ledger.record(location, seen, str(event["id"]))
        self.log.info("object finalized", name=data.name, generation=generation)
        return event


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eventing.storage_source")
    parser.add_argument("--watch", type=Path, help="the landing folder (default <home>/landing)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scans")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("storage-source", settings.log_level)
        ctx = Context.create(settings, actor="storage-source")
        watch: Path = args.watch or ctx.paths.landing
        watch.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(ctx.paths.state / "storage-source" / "published.db")
        publisher = EventPublisher(settings.broker_ingress, settings.bearer_token())
        source = StorageSource(ctx, watch, publisher, ledger)
        source.check_residency()
    except FalajError as exc:
        print(f"storage-source: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    source.log.info("watching", interval_s=args.interval)
    try:
        while not stop.is_set():
            source.scan()
            stop.wait(args.interval)
    finally:
        publisher.close()
        ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
