"""At-least-once delivery means duplicates: one effect per (source, id).

A handler asks ``seen`` before doing work and calls ``mark`` after it
succeeded, so an event whose handler failed half-way is done again on
redelivery, and one that succeeded is skipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class IdempotencyKeys:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS done (source TEXT, id TEXT, PRIMARY KEY (source, id))"
        )

    def seen(self, source: str, event_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM done WHERE source = ? AND id = ?", (source, event_id)
        ).fetchone()
        return row is not None

    def mark(self, source: str, event_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO done VALUES (?, ?)", (source, event_id))

    def close(self) -> None:
        self._db.close()
