"""Which object versions were ingested, and whether their event went out.

The function adapter skips a redelivered event id; this ledger skips a
redelivered object version, (location, object version), whatever event carries
it: the storage source's, or an S3 or MinIO notification for the same object.
The outcome event is kept, so one whose ingest succeeded but whose emit failed
is emitted on redelivery without ingesting the rows a second time.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falaj.events import EventType


@dataclass(frozen=True)
class Recorded:
    event_type: EventType
    data: dict[str, Any]
    emitted: bool


class IngestLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS object_versions ("
            " location TEXT, object_version TEXT, event_type TEXT, data TEXT, emitted INTEGER,"
            " PRIMARY KEY (location, object_version))"
        )

    def get(self, location: str, object_version: str) -> Recorded | None:
        row = self._db.execute(
            "SELECT event_type, data, emitted FROM object_versions"
            " WHERE location = ? AND object_version = ?",
            (location, object_version),
        ).fetchone()
        if row is None:
            return None
        return Recorded(EventType(row[0]), json.loads(row[1]), bool(row[2]))

    def record(
        self, location: str, object_version: str, event_type: EventType, data: dict[str, Any]
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO object_versions VALUES (?, ?, ?, ?, 0)",
            (location, object_version, str(event_type), json.dumps(data, sort_keys=True)),
        )

    def mark_emitted(self, location: str, object_version: str) -> None:
        self._db.execute(
            "UPDATE object_versions SET emitted = 1 WHERE location = ? AND object_version = ?",
            (location, object_version),
        )

    def close(self) -> None:
        self._db.close()
