"""At-least-once delivery means duplicates: one effect per (source, id).

``once(source, id)`` runs a handler's work at most once per event: it opens a
transaction, and yields ``None`` when the event was handled before, else the
connection. The key is written in that transaction when the block ends
without an error, so:

* an effect written with the yielded connection commits with the key, or not
  at all (a crash or an exception in the block leaves neither, and the
  redelivery does the work again): exactly once;
* an effect outside this database (a feature-store push, a job submission)
  happens before the key is written: a crash in between repeats it on
  redelivery, so such an effect must be idempotent itself (keyed on the
  object version, the job id, ...).

Concurrent deliveries of the same event (a retry sent while the first attempt
still runs) are serialised by the transaction: the second one sees the key.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class IdempotencyKeys:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS done (source TEXT, id TEXT, PRIMARY KEY (source, id))"
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """The database the keys live in, for a handler's own tables (create them once)."""
        return self._db

    @contextmanager
    def once(self, source: str, event_id: str) -> Iterator[sqlite3.Connection | None]:
        """Do the block's work once per (source, id); None: it was done before."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seen = self._db.execute(
                    "SELECT 1 FROM done WHERE source = ? AND id = ?", (source, event_id)
                ).fetchone()
                if seen:
                    yield None
                else:
                    yield self._db
                    self._db.execute("INSERT INTO done VALUES (?, ?)", (source, event_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def seen(self, source: str, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM done WHERE source = ? AND id = ?", (source, event_id)
            ).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()
