"""The broker's durable queue: accepted events, their deliveries, and dead letters.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before the
ingress answers 202, so a ``kill -9`` loses no accepted event. An event and one
delivery row per matching Trigger are written in the same transaction, so there
is never an accepted event that nobody will deliver. A delivery stays
``pending`` until a subscriber answers 2xx (at-least-once); after a crash every
pending delivery is simply due again.

One connection is shared by the ingress and the dispatcher threads behind a
lock; SQLite serialises writers anyway, and the lock keeps the Python
connection object safe.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    pk INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    data BLOB,
    received REAL NOT NULL,
    UNIQUE (source, id)
);
CREATE INDEX IF NOT EXISTS events_type ON events (type, received);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_pk INTEGER NOT NULL REFERENCES events (pk),
    trigger TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT,
    last_status_code INTEGER,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, trigger, next_attempt_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_pk INTEGER REFERENCES events (pk),
    delivery_id INTEGER REFERENCES deliveries (id),
    trigger TEXT,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status_code INTEGER,
    raw_headers TEXT,
    raw_body BLOB,
    created REAL NOT NULL,
    replayed REAL
);
"""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True)
class Target:
    """Where one accepted event must go: a Trigger and its subscriber."""

    trigger: str
    subscriber: str


@dataclass(frozen=True)
class StoredEvent:
    pk: int
    id: str
    source: str
    type: str
    attributes: Mapping[str, Any]
    data: bytes | None
    received: float

    def to_cloudevent(self) -> CloudEvent:
        # The data stays the bytes that came in, so a subscriber receives the
        # body exactly as the producer sent it.
        return CloudEvent(dict(self.attributes), self.data)


@dataclass(frozen=True)
class Delivery:
    id: int
    event_pk: int
    trigger: str
    subscriber: str
    attempts: int
    next_attempt_at: float
    status: DeliveryStatus
    last_error: str | None
    last_status_code: int | None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    event_pk: int | None
    delivery_id: int | None
    trigger: str | None
    reason: str
    attempts: int
    status_code: int | None
    created: float
    replayed: float | None
    event_id: str | None
    event_type: str | None
    subscriber: str | None


class ReplayOutcome(StrEnum):
    REQUEUED = "requeued"
    NOT_FOUND = "not-found"
    #: Rejected at ingress: there is no delivery to re-queue; fix the event and publish it again.
    NOT_DELIVERABLE = "not-deliverable"
    ALREADY_PENDING = "already-pending"
    #: Replayed before, and delivered since: replaying would deliver it twice.
    ALREADY_DONE = "already-done"


def event_row(event: CloudEvent) -> tuple[dict[str, Any], bytes | None]:
    """The attributes and data bytes that store an event without changing its body."""
    attributes = dict(event.get_attributes())
    data = event.get_data()
    if data is None or isinstance(data, bytes):
        return attributes, data
    if isinstance(data, str):
        return attributes, data.encode()
    # A structured-mode event carries its JSON data already decoded.
    attributes.setdefault("datacontenttype", "application/json")
    return attributes, json.dumps(data).encode()


class EventQueue:
    """The broker's store, ``<home>/broker/queue.db``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsynced before it returns, so 202 means on disk.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- ingress ---------------------------------------------------------

    def append(
        self, batch: Sequence[tuple[CloudEvent, Sequence[Target]]], *, now: float | None = None
    ) -> list[bool]:
        """Store events and their deliveries in one commit; False marks a duplicate.

        A duplicate is an event whose (source, id) is already stored: a producer
        that retried after a lost 202. It is acknowledged, not delivered twice.
        """
        received = time.time() if now is None else now
        stored: list[bool] = []
        with self._write() as db:
            for event, targets in batch:
                attributes, data = event_row(event)
                cursor = db.execute(
                    "INSERT OR IGNORE INTO events (id, source, type, attributes, data, received)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        str(event["id"]),
                        str(event["source"]),
                        str(event["type"]),
                        json.dumps(attributes, default=str),
                        data,
                        received,
                    ),
                )
                if cursor.rowcount == 0:
                    stored.append(False)
                    continue
                db.executemany(
                    "INSERT INTO deliveries (event_pk, trigger, subscriber, next_attempt_at,"
                    " status, updated) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (cursor.lastrowid, t.trigger, t.subscriber, received, "pending", received)
                        for t in targets
                    ],
                )
                stored.append(True)
        return stored

    def reject(
        self,
        reason: str,
        *,
        raw_headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
        trigger: str | None = None,
    ) -> int:
        """Keep an event the ingress refused (or a reply it could not accept), as it came."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO dead_letters (trigger, reason, raw_headers, raw_body, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    trigger,
                    reason,
                    json.dumps(dict(raw_headers)) if raw_headers is not None else None,
                    raw_body,
                    time.time(),
                ),
            )
        return int(cursor.lastrowid or 0)

    # -- dispatcher --------------------------------------------------------

    def next_due(self, trigger: str, *, now: float, exclude: Sequence[int] = ()) -> Delivery | None:
        """The oldest pending delivery of a Trigger whose time has come, not already in hand."""
        rows = self._select_pending(trigger, exclude, "AND next_attempt_at <= ?", (now,))
        return _delivery(rows[0]) if rows else None

    def next_due_at(self, trigger: str, *, exclude: Sequence[int] = ()) -> float | None:
        """When the next pending delivery of a Trigger is due, or None when none is pending."""
        rows = self._select_pending(trigger, exclude, "", ())
        return float(rows[0]["next_attempt_at"]) if rows else None

    def _select_pending(
        self, trigger: str, exclude: Sequence[int], condition: str, params: tuple[Any, ...]
    ) -> list[sqlite3.Row]:
        skip = ",".join("?" * len(exclude))
        sql = (
            "SELECT * FROM deliveries WHERE status = 'pending' AND trigger = ? "
            + condition
            + (f" AND id NOT IN ({skip})" if exclude else "")
            + " ORDER BY next_attempt_at, id LIMIT 1"
        )
        with self._lock:
            return self._db.execute(sql, (trigger, *params, *exclude)).fetchall()

    def event(self, pk: int) -> StoredEvent:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE pk = ?", (pk,)).fetchone()
        if row is None:
            raise LookupError(f"no stored event with pk {pk}")
        return _event(row)

    def mark_done(self, delivery_id: int, *, status_code: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET status = 'done', attempts = attempts + 1,"
                " last_status_code = ?, last_error = NULL, updated = ? WHERE id = ?",
                (status_code, time.time(), delivery_id),
            )

    def mark_retry(
        self, delivery_id: int, *, next_attempt_at: float, error: str, status_code: int | None
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
                (next_attempt_at, error, status_code, time.time(), delivery_id),
            )

    def defer(self, delivery_id: int, *, next_attempt_at: float, error: str) -> None:
        """Try later without counting an attempt: nothing was sent."""
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, updated = ?"
                " WHERE id = ?",
                (next_attempt_at, error, time.time(), delivery_id),
            )

    def mark_dead(
        self, delivery_id: int, *, reason: str, status_code: int | None, attempted: bool = True
    ) -> int:
        """Give up on a delivery; returns the dead letter's id. One commit for both rows."""
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET status = 'dead', attempts = attempts + ?,"
                " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
                (int(attempted), reason, status_code, now, delivery_id),
            )
            row = db.execute(
                "SELECT event_pk, trigger, attempts FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO dead_letters (event_pk, delivery_id, trigger, reason, attempts,"
                " status_code, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row["event_pk"],
                    delivery_id,
                    row["trigger"],
                    reason,
                    row["attempts"],
                    status_code,
                    now,
                ),
            )
        return int(cursor.lastrowid or 0)

    # -- reads and operator actions ---------------------------------------

    def events(
        self, *, event_type: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[StoredEvent]:
        """The newest ``limit`` events (received after ``since``), oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if event_type:
            clauses.append("type = ?")
            params.append(event_type)
        if since is not None:
            clauses.append("received > ?")
            params.append(since)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM events {where} ORDER BY pk DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_event(row) for row in reversed(rows)]

    def deliveries(self, *, event_pk: int | None = None) -> list[Delivery]:
        sql = "SELECT * FROM deliveries"
        params: tuple[int, ...] = ()
        if event_pk is not None:
            sql, params = sql + " WHERE event_pk = ?", (event_pk,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [_delivery(row) for row in rows]

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT d.*, e.id AS event_id, e.type AS event_type, v.subscriber AS subscriber"
                " FROM dead_letters d LEFT JOIN events e ON e.pk = d.event_pk"
                " LEFT JOIN deliveries v ON v.id = d.delivery_id"
                " ORDER BY d.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_dead_letter(row) for row in reversed(rows)]

    def dead_letter_body(self, dead_letter_id: int) -> tuple[dict[str, str] | None, bytes | None]:
        """What an ingress rejection kept of the request: its headers and body."""
        with self._lock:
            row = self._db.execute(
                "SELECT raw_headers, raw_body FROM dead_letters WHERE id = ?", (dead_letter_id,)
            ).fetchone()
        if row is None:
            return None, None
        headers = json.loads(row["raw_headers"]) if row["raw_headers"] else None
        return headers, row["raw_body"]

    def replay(self, dead_letter_id: int) -> tuple[ReplayOutcome, int | None]:
        """Put a dead delivery back in the queue, due now, with a fresh retry budget."""
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "SELECT d.delivery_id, v.status FROM dead_letters d"
                " LEFT JOIN deliveries v ON v.id = d.delivery_id WHERE d.id = ?",
                (dead_letter_id,),
            ).fetchone()
            if row is None:
                return ReplayOutcome.NOT_FOUND, None
            if row["delivery_id"] is None:
                return ReplayOutcome.NOT_DELIVERABLE, None
            if row["status"] == DeliveryStatus.PENDING:
                return ReplayOutcome.ALREADY_PENDING, int(row["delivery_id"])
            if row["status"] == DeliveryStatus.DONE:
                return ReplayOutcome.ALREADY_DONE, int(row["delivery_id"])
            db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
                " updated = ? WHERE id = ?",
                (now, now, row["delivery_id"]),
            )
            db.execute("UPDATE dead_letters SET replayed = ? WHERE id = ?", (now, dead_letter_id))
        return ReplayOutcome.REQUEUED, int(row["delivery_id"])

    def trigger_of(self, delivery_id: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT trigger FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return None if row is None else str(row["trigger"])

    def pending_triggers(self) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT trigger FROM deliveries WHERE status = 'pending'"
            ).fetchall()
        return {str(row["trigger"]) for row in rows}

    def retire(self, trigger: str, *, reason: str) -> list[int]:
        """Dead-letter every pending delivery of a Trigger that no longer exists."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM deliveries WHERE status = 'pending' AND trigger = ?", (trigger,)
            ).fetchall()
        return [
            self.mark_dead(int(row["id"]), reason=reason, status_code=None, attempted=False)
            for row in rows
        ]

    def ping(self) -> None:
        """Raise when the database cannot be read (the readiness probe)."""
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _event(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(
        pk=int(row["pk"]),
        id=str(row["id"]),
        source=str(row["source"]),
        type=str(row["type"]),
        attributes=json.loads(row["attributes"]),
        data=row["data"],
        received=float(row["received"]),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=int(row["id"]),
        event_pk=int(row["event_pk"]),
        trigger=str(row["trigger"]),
        subscriber=str(row["subscriber"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        status=DeliveryStatus(row["status"]),
        last_error=row["last_error"],
        last_status_code=row["last_status_code"],
    )


def _dead_letter(row: sqlite3.Row) -> DeadLetter:
    return DeadLetter(
        id=int(row["id"]),
        event_pk=row["event_pk"],
        delivery_id=row["delivery_id"],
        trigger=row["trigger"],
        reason=str(row["reason"]),
        attempts=int(row["attempts"]),
        status_code=row["status_code"],
        created=float(row["created"]),
        replayed=row["replayed"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        subscriber=row["subscriber"],
    )
