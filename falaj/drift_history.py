"""The drift time series: every scored window of every model version, and its alerts.

The drift function writes it; ``falaj drift status`` and the control API read
it. One SQLite file (WAL) under ``<home>/drift``:

- ``drift_windows``: one row per scored window — when it closed, its rows,
  whether it alerted, why not when it had findings (``held_back``);
- ``drift_scores``: one row per (window, feature, statistic) with the value,
  the p-value where the statistic has one, and whether it passed its threshold;
- ``alerts``: a version's last ``drift.detected``, for the cool-down.

Files written before there was more than PSI (a ``scores`` table) are carried
over on open, as PSI rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falaj.drift_policy import DriftVerdict, WindowScores

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_windows (
    -- Windows are ordered by when they were scored; two may close in one clock tick.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    window_end TEXT NOT NULL,
    rows INTEGER NOT NULL,
    alerted INTEGER NOT NULL,
    held_back TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS drift_windows_by_model ON drift_windows (model, version);
CREATE TABLE IF NOT EXISTS drift_scores (
    window_id INTEGER NOT NULL REFERENCES drift_windows (id),
    feature TEXT NOT NULL,
    statistic TEXT NOT NULL,
    value REAL,
    p_value REAL,
    drifted INTEGER NOT NULL,
    PRIMARY KEY (window_id, feature, statistic)
);
CREATE TABLE IF NOT EXISTS alerts (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    alerted_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
"""

#: The first format's table, PSI only: carried into ``drift_scores`` on open.
_LEGACY_SCORES = """
INSERT INTO drift_windows (model, version, window_end, rows, alerted)
    SELECT DISTINCT model, version, window_end, window_rows, 0 FROM scores ORDER BY window_end;
INSERT INTO drift_scores
    SELECT w.id, s.feature, 'psi', s.score, NULL, 0 FROM scores s JOIN drift_windows w
    ON w.model = s.model AND w.version = s.version AND w.window_end = s.window_end;
DROP TABLE scores;
"""


@dataclass(frozen=True)
class ScoredWindow:
    """One closed window of one version: its scores per feature and statistic."""

    model: str
    version: int
    window_end: str
    rows: int
    alerted: bool
    held_back: str
    #: feature -> statistic -> (value, p-value, past its threshold)
    scores: Mapping[str, Mapping[str, tuple[float, float | None, bool]]] = field(
        default_factory=dict
    )

    def drifted_features(self) -> list[str]:
        return sorted(
            feature
            for feature, values in self.scores.items()
            if any(drifted for _, _, drifted in values.values())
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "window_end": self.window_end,
            "rows": self.rows,
            "alerted": self.alerted,
            "held_back": self.held_back,
            "drifted_features": self.drifted_features(),
            "scores": {
                feature: {
                    name: {"value": _json_float(v), "p_value": _json_float(p), "drifted": d}
                    for name, (v, p, d) in values.items()
                }
                for feature, values in self.scores.items()
            },
        }


#: The time series' file in ``<home>/drift``.
DB_FILE = "drift.db"


class DriftHistory:
    """Reads and writes the drift time series of one platform."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        self.connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync never corrupts the file; a power cut may lose the
        # last commits, which the broker redelivers (windows are keyed by event id).
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.execute("PRAGMA busy_timeout=5000")
        # Not in a transaction: executescript commits whatever is open first.
        self.connection.executescript(_SCHEMA)
        with self.transaction():
            legacy = self.connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scores'"
            ).fetchone()
            if legacy:
                for statement in _LEGACY_SCORES.split(";"):
                    if statement.strip():
                        self.connection.execute(statement)

    def record(
        self,
        model: str,
        version: int,
        *,
        window_end: str,
        rows: int,
        scores: WindowScores,
        verdict: DriftVerdict,
        alerted_at: float | None,
    ) -> None:
        """Store one scored window; call inside ``transaction`` with what closes the window."""
        drifted = {(f.feature, f.statistic) for f in verdict.findings}
        window_id = self.connection.execute(
            "INSERT INTO drift_windows (model, version, window_end, rows, alerted, held_back) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (model, version, window_end, rows, int(verdict.alert), verdict.held_back),
        ).lastrowid
        self.connection.executemany(
            "INSERT INTO drift_scores VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    window_id,
                    feature,
                    name,
                    value.value,
                    value.p_value,
                    int((feature, name) in drifted),
                )
                for feature, values in scores.items()
                for name, value in values.items()
            ],
        )
        if alerted_at is not None:
            self.connection.execute(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?)", (model, version, alerted_at)
            )

    def last_alert(self, model: str, version: int) -> float | None:
        row = self.connection.execute(
            "SELECT alerted_at FROM alerts WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        return None if row is None else float(row[0])

    def windows(
        self, model: str, version: int | None = None, *, last: int | None = None
    ) -> list[ScoredWindow]:
        """The scored windows of a model (optionally one version), oldest first."""
        where, params = _where(model, version)
        query = (
            "SELECT id, model, version, window_end, rows, alerted, held_back FROM drift_windows "
            f"{where} ORDER BY id DESC"
        )
        if last is not None:
            query += f" LIMIT {int(last)}"
        heads = list(self.connection.execute(query, params))[::-1]
        if not heads:
            return []
        scores: dict[int, dict[str, dict[str, tuple[float, float | None, bool]]]] = {}
        cursor = self.connection.execute(
            "SELECT window_id, feature, statistic, value, p_value, drifted FROM drift_scores "
            "WHERE window_id BETWEEN ? AND ?",
            (heads[0][0], heads[-1][0]),
        )
        for window_id, feature, name, value, p_value, drifted in cursor:
            per_feature = scores.setdefault(int(window_id), {}).setdefault(str(feature), {})
            per_feature[str(name)] = (
                math.nan if value is None else float(value),
                None if p_value is None else float(p_value),
                bool(drifted),
            )
        return [
            ScoredWindow(
                model=str(m),
                version=int(v),
                window_end=str(end),
                rows=int(rows),
                alerted=bool(alerted),
                held_back=str(held_back),
                scores=scores.get(int(window_id), {}),
            )
            for window_id, m, v, end, rows, alerted, held_back in heads
        ]

    def versions(self, model: str) -> list[int]:
        cursor = self.connection.execute(
            "SELECT DISTINCT version FROM drift_windows WHERE model = ? ORDER BY version", (model,)
        )
        return [int(v) for (v,) in cursor]

    def close(self) -> None:
        self.connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # The connection autocommits; IMMEDIATE takes the write lock up front so
        # a second writer waits (busy_timeout) instead of failing mid-way.
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


def _where(model: str, version: int | None) -> tuple[str, Sequence[Any]]:
    if version is None:
        return "WHERE model = ?", (model,)
    return "WHERE model = ? AND version = ?", (model, version)


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return json.dumps(value)  # "Infinity" / "NaN": JSON has no literal for them
