"""The broker's durable queue: accepted events, their deliveries, and dead letters.

SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk before the
ingress answers 202, so a ``kill -9`` loses no accepted event. An event and one
delivery row per matching Trigger are written in the same transaction, so there
is never an accepted event that nobody will deliver. A delivery stays
``pending`` until a subscriber answers 2xx (at-least-once); after a crash every
pending delivery is simply due again.

One connection per process, behind a lock that keeps the Python connection
object safe. Only the broker process writes, all through its ``QueueWriter``
(``eventing.writer``: what is asked for in one turn of its event loop shares
one commit and one fsync); the dispatcher process only reads, so nobody waits
on SQLite's write lock. Commits never checkpoint the WAL: ``Checkpointer``
does that beside them.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from cloudevents.http import CloudEvent

from falaj.logs import get_logger

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
-- A lane reads its pending deliveries in id order; done and dead rows leave the index.
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries (trigger, id) WHERE status = 'pending';
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


#: A dead letter with what is known of its event and delivery.
DEAD_LETTERS = (
    "SELECT d.*, e.id AS event_id, e.type AS event_type, v.subscriber AS subscriber,"
    " json_extract(e.attributes, '$.dataregion') AS region"
    " FROM dead_letters d LEFT JOIN events e ON e.pk = d.event_pk"
    " LEFT JOIN deliveries v ON v.id = d.delivery_id"
)


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
    #: The event's ``dataregion``, when the dead letter has an event.
    region: str | None = None


class ReplayOutcome(StrEnum):
    REQUEUED = "requeued"
    NOT_FOUND = "not-found"
    #: Rejected at ingress: there is no delivery to re-queue; fix the event and publish it again.
    NOT_DELIVERABLE = "not-deliverable"
    ALREADY_PENDING = "already-pending"
    #: Replayed before, and delivered since: replaying would deliver it twice.
    ALREADY_DONE = "already-done"


@dataclass(slots=True, eq=False)
class PendingDelivery:
    """A delivery the dispatcher holds in memory, with the event it sends.

    Mutable on purpose: the dispatcher counts attempts and moves ``due_at``
    as it retries, and writes both back through ``DeliveryUpdate``.
    """

    id: int
    trigger: str
    subscriber: str
    event: CloudEvent
    attempts: int
    due_at: float
    #: The last error written to the queue, so a waiting delivery is not re-written every second.
    last_error: str | None = None
    #: The event in binary content mode, encoded once and reused by every retry.
    binary: tuple[dict[str, str], bytes] | None = None


class UpdateKind(StrEnum):
    DONE = "done"
    RETRY = "retry"
    #: Nothing was sent (no endpoint yet): a new due time, no attempt counted.
    DEFER = "defer"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class DeliveryUpdate:
    """What came of one attempt at a delivery; many are written in one commit."""

    delivery_id: int
    kind: UpdateKind
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: float | None = None
    #: For DEAD: whether the update counts an attempt (a retired Trigger's deliveries do not).
    attempted: bool = True

    @classmethod
    def done(cls, delivery_id: int, status_code: int) -> DeliveryUpdate:
        return cls(delivery_id, UpdateKind.DONE, status_code=status_code)

    @classmethod
    def retry(
        cls, delivery_id: int, *, next_attempt_at: float, error: str, status_code: int | None
    ) -> DeliveryUpdate:
        return cls(
            delivery_id,
            UpdateKind.RETRY,
            status_code=status_code,
            error=error,
            next_attempt_at=next_attempt_at,
        )

    @classmethod
    def defer(cls, delivery_id: int, *, next_attempt_at: float, error: str) -> DeliveryUpdate:
        return cls(delivery_id, UpdateKind.DEFER, error=error, next_attempt_at=next_attempt_at)

    @classmethod
    def dead(
        cls, delivery_id: int, *, reason: str, status_code: int | None, attempted: bool = True
    ) -> DeliveryUpdate:
        return cls(
            delivery_id, UpdateKind.DEAD, status_code=status_code, error=reason, attempted=attempted
        )


@dataclass(frozen=True)
class Appended:
    """What one ``append`` stored: a flag per event (False: a duplicate) and the new deliveries."""

    stored: list[bool]
    deliveries: list[PendingDelivery]


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


Batch = Sequence[tuple[CloudEvent, Sequence[Target]]]
#: How often the queue's owner moves the WAL into the database.
CHECKPOINT_INTERVAL_S = 0.1
#: What a WAL file is cut back to when it starts over.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

#: The statement for each kind of update but DEAD, and the parameters it takes.
_UPDATES: Mapping[UpdateKind, tuple[str, Callable[[DeliveryUpdate, float], tuple[Any, ...]]]] = {
    UpdateKind.DONE: (
        "UPDATE deliveries SET status = 'done', attempts = attempts + 1,"
        " last_status_code = ?, last_error = NULL, updated = ? WHERE id = ?",
        lambda u, now: (u.status_code, now, u.delivery_id),
    ),
    UpdateKind.RETRY: (
        "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
        " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
        lambda u, now: (u.next_attempt_at, u.error, u.status_code, now, u.delivery_id),
    ),
    UpdateKind.DEFER: (
        "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, updated = ? WHERE id = ?",
        lambda u, now: (u.next_attempt_at, u.error, now, u.delivery_id),
    ),
}


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
        # No checkpoint inside a commit: it copies the WAL into the database
        # and fsyncs that too, tens of ms on the ingress's path. The queue's
        # owner runs them beside it (``Checkpointer``).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        # A burst can leave a large WAL; once started over it is cut back to this.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
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

    # -- writes ----------------------------------------------------------

    def append(self, batch: Batch, *, now: float | None = None) -> Appended:
        """Store events and their deliveries in one commit; False marks a duplicate.

        A duplicate is an event whose (source, id) is already stored: a producer
        that retried after a lost 202. It is acknowledged, not delivered twice.
        """
        [appended], _ = self.write([batch], [], now=now)
        return appended

    def update(self, updates: Sequence[DeliveryUpdate]) -> dict[int, int]:
        """Record what came of attempts, in one commit; returns {delivery id: dead letter id}."""
        _, dead_letters = self.write([], updates)
        return dead_letters

    def write(
        self,
        batches: Sequence[Batch],
        updates: Sequence[DeliveryUpdate],
        *,
        now: float | None = None,
    ) -> tuple[list[Appended], dict[int, int]]:
        """Appends and updates from several callers in one transaction (group commit)."""
        received = time.time() if now is None else now
        with self._write() as db:
            appended = [self._append(db, batch, received) for batch in batches]
            dead_letters = self._update(db, updates, received)
        return appended, dead_letters

    @staticmethod
    def _append(db: sqlite3.Connection, batch: Batch, received: float) -> Appended:
        stored: list[bool] = []
        deliveries: list[PendingDelivery] = []
        for event, targets in batch:
            attributes, data = event_row(event)
            cursor = db.execute(
                "INSERT OR IGNORE INTO events (id, source, type, attributes, data, received)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    str(event["id"]),
                    str(event["source"]),
                    str(event["type"]),
                    orjson.dumps(attributes, default=str).decode(),
                    data,
                    received,
                ),
            )
            if cursor.rowcount == 0:
                stored.append(False)
                continue
            event_pk = cursor.lastrowid
            # What a subscriber gets is what is stored, whether the dispatcher
            # takes it from memory now or reads it back after a restart.
            stored_event = CloudEvent(attributes, data)
            for target in targets:
                row = db.execute(
                    "INSERT INTO deliveries (event_pk, trigger, subscriber, next_attempt_at,"
                    " status, updated) VALUES (?, ?, ?, ?, 'pending', ?)",
                    (event_pk, target.trigger, target.subscriber, received, received),
                )
                deliveries.append(
                    PendingDelivery(
                        id=int(row.lastrowid or 0),
                        trigger=target.trigger,
                        subscriber=target.subscriber,
                        event=stored_event,
                        attempts=0,
                        due_at=received,
                    )
                )
            stored.append(True)
        return Appended(stored, deliveries)

    @staticmethod
    def _update(
        db: sqlite3.Connection, updates: Sequence[DeliveryUpdate], now: float
    ) -> dict[int, int]:
        # In the order given, a run of one kind per statement: a retry and the
        # success that followed it land in that order even in one commit.
        dead_letters: dict[int, int] = {}
        for kind, run in itertools.groupby(updates, key=lambda u: u.kind):
            if kind == UpdateKind.DEAD:
                for update in run:
                    dead_letters[update.delivery_id] = EventQueue._bury(db, update, now)
            else:
                sql, row = _UPDATES[kind]
                db.executemany(sql, [row(update, now) for update in run])
        return dead_letters

    @staticmethod
    def _bury(db: sqlite3.Connection, update: DeliveryUpdate, now: float) -> int:
        db.execute(
            "UPDATE deliveries SET status = 'dead', attempts = attempts + ?,"
            " last_error = ?, last_status_code = ?, updated = ? WHERE id = ?",
            (int(update.attempted), update.error, update.status_code, now, update.delivery_id),
        )
        row = db.execute(
            "SELECT event_pk, trigger, attempts FROM deliveries WHERE id = ?",
            (update.delivery_id,),
        ).fetchone()
        cursor = db.execute(
            "INSERT INTO dead_letters (event_pk, delivery_id, trigger, reason, attempts,"
            " status_code, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row["event_pk"],
                update.delivery_id,
                row["trigger"],
                update.error or "",
                row["attempts"],
                update.status_code,
                now,
            ),
        )
        return int(cursor.lastrowid or 0)

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

    # -- the dispatcher's reads ------------------------------------------------

    def pending(self, trigger: str, *, after_id: int, limit: int) -> list[PendingDelivery]:
        """A Trigger's pending deliveries with ids above ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.id, d.trigger, d.subscriber, d.attempts, d.next_attempt_at,"
                " d.last_error, e.attributes, e.data FROM deliveries d"
                " JOIN events e ON e.pk = d.event_pk"
                " WHERE d.status = 'pending' AND d.trigger = ? AND d.id > ?"
                " ORDER BY d.id LIMIT ?",
                (trigger, after_id, limit),
            ).fetchall()
        return [_pending(row) for row in rows]

    def pending_delivery(self, delivery_id: int) -> PendingDelivery | None:
        """One delivery, if it is pending (a replayed dead letter)."""
        with self._lock:
            row = self._db.execute(
                "SELECT d.id, d.trigger, d.subscriber, d.attempts, d.next_attempt_at,"
                " d.last_error, e.attributes, e.data FROM deliveries d"
                " JOIN events e ON e.pk = d.event_pk WHERE d.status = 'pending' AND d.id = ?",
                (delivery_id,),
            ).fetchone()
        return None if row is None else _pending(row)

    def event(self, pk: int) -> StoredEvent:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE pk = ?", (pk,)).fetchone()
        if row is None:
            raise LookupError(f"no stored event with pk {pk}")
        return _event(row)

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
                DEAD_LETTERS + " ORDER BY d.id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_dead_letter(row) for row in reversed(rows)]

    def dead_letter(self, dead_letter_id: int) -> DeadLetter | None:
        with self._lock:
            row = self._db.execute(DEAD_LETTERS + " WHERE d.id = ?", (dead_letter_id,)).fetchone()
        return None if row is None else _dead_letter(row)

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
        buried = self.update(
            [
                DeliveryUpdate.dead(
                    int(row["id"]), reason=reason, status_code=None, attempted=False
                )
                for row in rows
            ]
        )
        return list(buried.values())

    def checkpoint(self) -> tuple[int, int]:
        """Copy what is left of the WAL into the database, on the writer's connection.

        Cheap right after a ``Checkpointer`` pass (a few frames); with nothing
        committed in between, the next write transaction starts the WAL over.
        Returns the frames in the WAL and how many of them are now copied.
        """
        with self._lock:
            _, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames), int(copied)

    def ping(self) -> None:
        """Raise when the database cannot be read (the readiness probe)."""
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Checkpointer:
    """Moves the WAL into the database now and then, on its own connection and thread.

    A commit never checkpoints (``wal_autocheckpoint=0``): that copied the WAL
    into the database and fsynced it on the ingress's path. Here, the bulk of
    the copying runs beside the writer (a PASSIVE checkpoint waits for no
    writer and blocks none); ``caught_up`` then asks the writer, between its
    own commits, to copy the few frames committed meanwhile. Only a WAL copied
    to its last frame is started over by the next commit, and under steady
    writes the bulk copy alone never ends on the last frame (SQLite's
    checkpoint starvation: the WAL reached 420 MB in a benchmark run). Started
    over, the WAL file is reused instead of growing, so a commit's fdatasync
    stops waiting on the file system's journal.
    """

    def __init__(
        self,
        path: Path,
        *,
        caught_up: Callable[[], None],
        interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        self.path = path
        self.caught_up = caught_up
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-checkpoints", daemon=True)
        self.log = get_logger(component="broker.checkpoints")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    self.log.warning(
                        "checkpoint failed; the WAL grows until one works", error=str(exc)
                    )
                    continue
                self.caught_up()
        finally:
            db.close()


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


def _pending(row: sqlite3.Row) -> PendingDelivery:
    return PendingDelivery(
        id=int(row["id"]),
        trigger=str(row["trigger"]),
        subscriber=str(row["subscriber"]),
        # The data stays the bytes that came in (see StoredEvent.to_cloudevent).
        event=CloudEvent(orjson.loads(row["attributes"]), row["data"]),
        attempts=int(row["attempts"]),
        due_at=float(row["next_attempt_at"]),
        last_error=row["last_error"],
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
        region=row["region"],
    )
