"""The storage source: a landing folder watched like a bucket.

Run as ``python -m eventing.storage_source --watch DIR [--bucket NAME]``.

The folder is a bucket, named after the folder unless ``--bucket`` names it,
and each file in it an object whose key is its path relative to the folder,
with ``/`` separators. Each new or changed file becomes one
``dev.falaj.storage.object.created`` event whose data is the record an S3 or
MinIO bucket notification carries (``falaj.events.ObjectCreated``): the key
URL-encoded as S3 sends it, the size, an ``eTag`` that is the MD5 hex of the
content (as S3 gives for a single-part upload), a ``versionId`` that is the
SHA-256 of the content (rewriting the same bytes is not a new version), and a
``sequencer`` that is greater for every later event. Writers write then rename,
so names starting with ``.`` or ending in ``.tmp``/``.part`` are files still
being written and are skipped.

A file whose key would leave the bucket is never published: every file goes
through ``falaj.objects.Buckets.locate``, the same check the ingest function
reads through, so a symlink to something outside the folder is refused (logged
and audited once, not at every scan). A file whose name is not UTF-8 is refused
too (logged once): no notification can name it.

What was published is remembered (SQLite under ``<home>/state/storage-source``),
so a restart does not publish an unchanged file again. The event id is derived
from the bucket, the key and the version, so a publish repeated after a crash
is a duplicate the broker and the functions recognise.
"""

from __future__ import annotations

import argparse
import hashlib
import mimetypes
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloudevents.http import CloudEvent

from falaj.context import Context
from falaj.errors import ConfigError, FalajError, ObjectKeyError, PublishError
from falaj.events import (
    EventType,
    ObjectCreated,
    S3Bucket,
    S3Entity,
    S3Object,
    make_event,
)
from falaj.logs import configure_logging, get_logger
from falaj.objects import Buckets, ObjectLocation, bucket_problem, encode_key
from falaj.publisher import EventPublisher
from falaj.runtime.processes import stop_on_signals
from falaj.settings import Settings

SKIPPED_SUFFIXES = (".tmp", ".part")
#: How often the folder is scanned: a file is online within a second of landing
#: (issue 4), and a scan of a landing folder is a few stat calls.
SCAN_INTERVAL_S = 0.2
#: Extensions mimetypes does not know on every system.
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".parquet": "application/vnd.apache.parquet",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
HASH_CHUNK = 1024 * 1024
#: The record fields that say who sent it: S3 writes aws:s3, MinIO minio:s3.
EVENT_SOURCE = "falaj:storage"
#: The version of S3's notification structure the records follow.
EVENT_VERSION = "2.1"
S3_SCHEMA_VERSION = "1.0"
#: A file that appears by rename is what S3 reports for a single-part PUT.
EVENT_NAME = "ObjectCreated:Put"


def is_in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith(SKIPPED_SUFFIXES)


def content_type_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or DEFAULT_CONTENT_TYPE


@dataclass(frozen=True)
class ContentDigest:
    """What S3 would say about a file's bytes: its ETag, and a version for them."""

    size: int
    #: MD5 hex, as S3 gives for an object uploaded in one part.
    etag: str
    #: SHA-256 of the content: the same bytes written again are the same version.
    version_id: str


def digest_of(path: Path) -> ContentDigest:
    """Read the file once for both digests; the size is what was read, not a racy stat."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return ContentDigest(size, md5.hexdigest(), "sha256:" + sha256.hexdigest())


def event_id_of(bucket: str, key: str, version_id: str) -> str:
    """One id per object version, so publishing it again is a duplicate."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"s3://{bucket}/{key}?versionId={version_id}"))


@dataclass(frozen=True)
class Seen:
    mtime_ns: int
    size: int
    version_id: str


class Ledger:
    """What the source has published: one row per object with its last version, and the
    last sequencer handed out (kept here so it keeps growing across restarts)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS published_objects (bucket TEXT, key TEXT,"
            " mtime_ns INTEGER, size INTEGER, version_id TEXT, event_id TEXT, published REAL,"
            " PRIMARY KEY (bucket, key))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sequencer (id INTEGER PRIMARY KEY CHECK (id = 0),"
            " value INTEGER NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO sequencer VALUES (0, 0)")

    def get(self, bucket: str, key: str) -> Seen | None:
        row = self._db.execute(
            "SELECT mtime_ns, size, version_id FROM published_objects WHERE bucket = ? AND key = ?",
            (bucket, key),
        ).fetchone()
        return None if row is None else Seen(int(row[0]), int(row[1]), str(row[2]))

    def record(self, bucket: str, key: str, seen: Seen, event_id: str | None) -> None:
        self._db.execute(
            "INSERT INTO published_objects VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (bucket, key) DO UPDATE"
            " SET mtime_ns = excluded.mtime_ns, size = excluded.size,"
            " version_id = excluded.version_id,"
            " event_id = COALESCE(excluded.event_id, event_id),"
            " published = COALESCE(excluded.published, published)",
            (
                bucket,
                key,
                seen.mtime_ns,
                seen.size,
                seen.version_id,
                event_id,
                time.time() if event_id else None,
            ),
        )

    def next_sequencer(self) -> str:
        """A sequencer greater than every earlier one: S3's form, hex, fixed width.

        Nanoseconds since the epoch, or one more than the last when the clock
        stepped back, so ordering by it is ordering by publication.
        """
        (value,) = self._db.execute(
            "UPDATE sequencer SET value = MAX(value + 1, ?) WHERE id = 0 RETURNING value",
            (time.time_ns(),),
        ).fetchone()
        return f"{int(value):016X}"

    def close(self) -> None:
        self._db.close()


class StorageSource:
    """Turns files in one folder, a bucket, into ObjectCreated events."""

    def __init__(
        self,
        ctx: Context,
        watch: Path,
        publisher: EventPublisher,
        ledger: Ledger,
        *,
        bucket: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.watch = watch.resolve()
        self.bucket = bucket or self.watch.name
        problem = bucket_problem(self.bucket)
        if problem is not None:
            raise ConfigError(
                f"--bucket {self.bucket!r} cannot name the bucket: {problem}; "
                "expected a name such as 'landing'"
            )
        self.buckets = Buckets(policy=ctx.policy, local={self.bucket: self.watch}, audit=ctx.audit)
        self.publisher = publisher
        self.ledger = ledger
        # key -> lstat mtime of a refused file: it is logged and audited once,
        # not at every scan, until the file is replaced.
        self._refused: dict[str, int] = {}
        self.log = get_logger(component="storage-source", watch=str(self.watch), bucket=self.bucket)

    def check_residency(self) -> None:
        """Refuse to watch a location outside the allowed regions (audited by the policy)."""
        self.ctx.policy.check_location(self.watch.as_uri())

    def files(self) -> Iterator[Path]:
        # os.walk does not descend into symlinked folders; a symlinked file is
        # listed, and locate() refuses it when it points outside the bucket.
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
        key = path.relative_to(self.watch).as_posix()
        location = self._locate(path, key)
        if location is None or location.path is None:
            return None
        stat = location.path.stat()
        before = self.ledger.get(self.bucket, key)
        if before is not None and (before.mtime_ns, before.size) == (
            stat.st_mtime_ns,
            stat.st_size,
        ):
            return None  # unchanged since last seen: skip without reading it
        digest = digest_of(location.path)
        seen = Seen(stat.st_mtime_ns, digest.size, digest.version_id)
        if before is not None and before.version_id == digest.version_id:
            self.ledger.record(self.bucket, key, seen, None)  # touched, same bytes
            return None
        data = self._record(key, stat.st_mtime_ns, digest, content_type_of(path))
        event = make_event(
            EventType.OBJECT_CREATED, data, region=self.ctx.settings.region, subject=key
        )
        event["id"] = event_id_of(self.bucket, key, digest.version_id)
        self.publisher.publish(event)
        self.ledger.record(self.bucket, key, seen, str(event["id"]))
        self.log.info("object created", key=key, version_id=digest.version_id)
        return event

    def _locate(self, path: Path, key: str) -> ObjectLocation | None:
        """The object's checked location, or None for a file whose key leaves the bucket
        or that no key can name."""
        mtime_ns = path.lstat().st_mtime_ns
        if self._refused.get(key) == mtime_ns:
            return None
        try:
            location = self.buckets.locate(self.bucket, self._nameable(key))
        except ObjectKeyError as exc:
            self._refused[key] = mtime_ns
            self.log.warning("object refused; not published", key=_shown(key), error=str(exc))
            return None
        self._refused.pop(key, None)
        return location

    def _nameable(self, key: str) -> str:
        """``key``, when a notification can carry it. A file name that is not UTF-8 comes
        from the OS with its bytes as surrogates, which no JSON or URL-encoding can hold."""
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ObjectKeyError(
                f"file {_shown(key)!r} in bucket {self.bucket!r} is refused: its name is not "
                f"UTF-8 (byte 0x{ord(key[exc.start]) & 0xFF:02x} at character {exc.start}); "
                "expected a UTF-8 file name: rename the file"
            ) from None
        return key

    def _record(
        self, key: str, mtime_ns: int, digest: ContentDigest, content_type: str
    ) -> ObjectCreated:
        """The S3 notification record for one object version."""
        return ObjectCreated(
            eventVersion=EVENT_VERSION,
            eventSource=EVENT_SOURCE,
            awsRegion=self.ctx.settings.region,
            # S3 stamps when it finished the write; the file's mtime is that moment.
            eventTime=datetime.fromtimestamp(mtime_ns / 1e9, UTC),
            eventName=EVENT_NAME,
            s3=S3Entity(
                s3SchemaVersion=S3_SCHEMA_VERSION,
                bucket=S3Bucket(name=self.bucket),
                object=S3Object(
                    key=encode_key(key),
                    size=digest.size,
                    eTag=digest.etag,
                    versionId=digest.version_id,
                    sequencer=self.ledger.next_sequencer(),
                    contentType=content_type,
                ),
            ),
        )


def _shown(key: str) -> str:
    """A key as logs show it: bytes that are not UTF-8 as ``\\xNN`` escapes."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eventing.storage_source")
    parser.add_argument("--watch", type=Path, help="the landing folder (default <home>/landing)")
    parser.add_argument(
        "--bucket", help="the bucket the folder is (default: the folder's name, e.g. landing)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=SCAN_INTERVAL_S,
        help="seconds between scans of the folder",
    )
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
        publisher = EventPublisher.from_context(ctx)
        source = StorageSource(ctx, watch, publisher, ledger, bucket=args.bucket)
        source.check_residency()
    except FalajError as exc:
        print(f"storage-source: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
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
