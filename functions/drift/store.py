"""The drift function's durable state: open windows, score history, last alerts.

One SQLite file (WAL) under ``<home>/drift`` holds, per (model, version):

- ``window``: the inference rows of the window being filled, keyed by the
  event id and row index so a redelivered event is not counted twice;
- ``scores``: one row per (window end, feature) — the time series the CLI shows;
- ``alerts``: when drift was last announced, for the cool-down.

The window survives a restart of the function (scale to zero included).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from falaj.context import Context

_SCHEMA = """
CREATE TABLE IF NOT EXISTS window (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    row_index INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    prediction REAL,
    PRIMARY KEY (model, version, event_id, row_index)
);
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    window_end TEXT NOT NULL,
    feature TEXT NOT NULL,
    score REAL NOT NULL,
    window_rows INTEGER NOT NULL,
    PRIMARY KEY (model, version, window_end, feature)
);
CREATE TABLE IF NOT EXISTS alerts (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    alerted_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
"""


@dataclass(frozen=True)
class DriftScore:
    """The PSI of one feature (or of the predictions) over one closed window."""

    model: str
    version: int
    window_end: str
    feature: str
    score: float
    window_rows: int


@dataclass(frozen=True)
class Window:
    """The rows of a full window, as columns ready for scoring."""

    columns: Mapping[str, np.ndarray]
    predictions: np.ndarray
    rows: int


class DriftStore:
    """Reads and writes the drift state of one platform."""

    def __init__(self, ctx: Context) -> None:
        directory = ctx.paths.drift
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "drift.db"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def append(
        self,
        model: str,
        version: int,
        event_id: str,
        rows: Sequence[Mapping[str, float]],
        predictions: Sequence[float | None],
    ) -> None:
        """Add an event's rows to the open window; a redelivered event adds nothing."""
        self._db.executemany(
            "INSERT OR IGNORE INTO window VALUES (?, ?, ?, ?, ?, ?)",
            [
                (model, version, event_id, index, json.dumps(dict(row)), prediction)
                for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True))
            ],
        )

    def window_size(self, model: str, version: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM window WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        return int(row[0])

    def window(self, model: str, version: int) -> Window:
        cursor = self._db.execute(
            "SELECT inputs, prediction FROM window WHERE model = ? AND version = ? ORDER BY rowid",
            (model, version),
        )
        values: dict[str, list[float]] = {}
        predictions: list[float] = []
        count = 0
        for raw_inputs, prediction in cursor:
            count += 1
            inputs: dict[str, Any] = json.loads(raw_inputs)
            for name, value in inputs.items():
                values.setdefault(name, []).append(float(value))
            if prediction is not None:
                predictions.append(float(prediction))
        return Window(
            columns={name: np.asarray(v, dtype=np.float64) for name, v in values.items()},
            predictions=np.asarray(predictions, dtype=np.float64),
            rows=count,
        )

    def close_window(
        self,
        model: str,
        version: int,
        *,
        window_end: str,
        scores: Mapping[str, float],
        window_rows: int,
        alerted_at: float | None,
    ) -> None:
        """Store the window's scores and empty it, in one transaction."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (model, version, window_end, feature, score, window_rows)
                    for feature, score in scores.items()
                ],
            )
            self._db.execute("DELETE FROM window WHERE model = ? AND version = ?", (model, version))
            if alerted_at is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?)", (model, version, alerted_at)
                )

    def last_alert(self, model: str, version: int) -> float | None:
        row = self._db.execute(
            "SELECT alerted_at FROM alerts WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        return None if row is None else float(row[0])

    def scores(self, model: str, version: int | None = None) -> list[DriftScore]:
        """The score history of a model (optionally one version), oldest window first."""
        query = "SELECT model, version, window_end, feature, score, window_rows FROM scores "
        params: tuple[Any, ...]
        if version is None:
            query += "WHERE model = ?"
            params = (model,)
        else:
            query += "WHERE model = ? AND version = ?"
            params = (model, version)
        cursor = self._db.execute(query + " ORDER BY window_end, version, feature", params)
        return [
            DriftScore(
                model=str(m),
                version=int(v),
                window_end=str(end),
                feature=str(f),
                score=float(s),
                window_rows=int(n),
            )
            for m, v, end, f, s, n in cursor
        ]

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection autocommits; IMMEDIATE takes the write lock up front so
        # a second writer waits (busy_timeout) instead of failing mid-way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
