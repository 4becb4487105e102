"""Records from a queue, one event each: online at once, offline in batches.

A record (a RabbitMQ message or a Kafka record, ``StreamRecord``) is checked
against the same feature schema as a landed file's rows. A good one is pushed
online before the function answers, so it is served within the broker's
delivery time; it is also appended to this journal (SQLite, fsynced: the
answer means it is kept), and the journal is rolled into the offline store as
one Parquet file per date every ``roll_rows`` records or ``roll_s`` seconds,
since a Parquet file per record would leave the offline store unreadable.
Each roll is a batch with its own data-quality report.

Records are keyed by their event's (source, id), so a redelivered record is
not journalled twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Roll the journal into the offline store after this many records ...
ROLL_ROWS = 5_000
#: ... or once its oldest record has waited this long.
ROLL_S = 30.0


@dataclass(frozen=True)
class Taken:
    """What one roll takes from the journal."""

    keys: list[tuple[str, str]]
    rows: list[dict[str, Any]]
    #: Records quarantined since the last roll (they count in its quality report).
    quarantined: int


class RecordJournal:
    def __init__(self, path: Path, *, roll_rows: int = ROLL_ROWS, roll_s: float = ROLL_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.roll_rows = roll_rows
        self.roll_s = roll_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an answered record is on disk
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (source TEXT, id TEXT, received REAL,"
            " row TEXT, PRIMARY KEY (source, id))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS quarantined (one INTEGER PRIMARY KEY CHECK (one = 1),"
            " count INTEGER NOT NULL)"
        )
        self._db.execute("INSERT OR IGNORE INTO quarantined VALUES (1, 0)")

    def append(self, source: str, event_id: str, row: dict[str, Any]) -> bool:
        """Keep a good record; False when it was kept before (a redelivery)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?)",
                (source, event_id, time.time(), json.dumps(row, default=str)),
            )
        return cursor.rowcount == 1

    def quarantined(self) -> None:
        with self._lock:
            self._db.execute("UPDATE quarantined SET count = count + 1")

    def due(self, now: float | None = None) -> bool:
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT count(*), min(received) FROM records"
            ).fetchone()
            quarantined = self._db.execute("SELECT count FROM quarantined").fetchone()[0]
        if count >= self.roll_rows:
            return True
        waited = ((now or time.time()) - oldest) if oldest is not None else 0.0
        return (count > 0 and waited >= self.roll_s) or (count == 0 and quarantined > 0)

    def take(self) -> Taken:
        with self._lock:
            rows = self._db.execute(
                "SELECT source, id, row FROM records ORDER BY received"
            ).fetchall()
            quarantined = self._db.execute("SELECT count FROM quarantined").fetchone()[0]
        return Taken(
            keys=[(source, event_id) for source, event_id, _ in rows],
            rows=[json.loads(row) for _, _, row in rows],
            quarantined=int(quarantined),
        )

    def done(self, taken: Taken) -> None:
        """What a roll took is in the offline store now: forget it, in one commit."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM records WHERE source = ? AND id = ?", taken.keys)
                self._db.execute(
                    "UPDATE quarantined SET count = max(0, count - ?)", (taken.quarantined,)
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
