"""The drift function's open windows, in the drift history's SQLite file.

Per (model, version) the window being filled is one row per inference event
(``window_batches``: its columns as one float64 block, keyed by the event id so
a redelivered event is not counted twice) and a running count with the time
its first row came (``window_state``). Reading a window back is then one query
and one ``frombuffer`` per event, not a JSON parse per row: a 10,000-event
window is read in milliseconds. Closing a window stores its scores in the
history and empties it in one transaction, so a crash in between neither loses
nor double-counts it. The window survives a restart (scale to zero included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from falaj.drift_history import DriftHistory
from falaj.drift_policy import DriftVerdict, WindowScores

_SCHEMA = """
CREATE TABLE IF NOT EXISTS window_batches (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    rows INTEGER NOT NULL,
    names TEXT NOT NULL,
    inputs BLOB NOT NULL,
    predictions BLOB NOT NULL,
    PRIMARY KEY (model, version, event_id)
);
CREATE TABLE IF NOT EXISTS window_state (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
DROP TABLE IF EXISTS window;
"""


@dataclass(frozen=True)
class WindowState:
    rows: int
    #: When the window's first row came (seconds since the epoch).
    opened_at: float


@dataclass
class _Cached:
    """This process's copy of an open window it saw from its first row: the batches as stored."""

    rows: int = 0
    batches: list[tuple[str, bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """The rows of a window, as columns ready for scoring."""

    columns: Mapping[str, np.ndarray]
    predictions: np.ndarray
    rows: int


class WindowStore:
    def __init__(self, history: DriftHistory) -> None:
        self.history = history
        self._db = history.connection
        # The first format kept rows one by one in ``window``: an open window of
        # that format is dropped (at most ``drift_window`` rows, never scored).
        self._db.executescript(_SCHEMA)
        self._names: dict[str, tuple[str, ...]] = {}
        # The open windows this process saw begin, as stored: a window is scored
        # from here, not read back from SQLite (61 ms of a 10,000-event window).
        # The file stays the truth: a window begun before a restart, or grown by
        # another writer, has a count this copy does not match, and is read back.
        self._cached: dict[tuple[str, int], _Cached] = {}

    def append(
        self,
        model: str,
        version: int,
        event_id: str,
        inputs: Mapping[str, Sequence[float]],
        predictions: Sequence[float | None],
        *,
        now: float,
    ) -> WindowState:
        """Add an event's rows to the open window (a redelivered event adds nothing)."""
        names = sorted(inputs)
        block = np.asarray([inputs[n] for n in names], dtype=np.float64).T
        predicted = np.asarray([np.nan if p is None else p for p in predictions], dtype=np.float64)
        stored = (json.dumps(names), np.ascontiguousarray(block).tobytes(), predicted.tobytes())
        with self.history.transaction():
            added = self._db.execute(
                "INSERT OR IGNORE INTO window_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, version, event_id, block.shape[0], *stored),
            ).rowcount
            if added:
                self._db.execute(
                    "INSERT INTO window_state VALUES (?, ?, ?, ?) ON CONFLICT (model, version) "
                    "DO UPDATE SET rows = rows + excluded.rows",
                    (model, version, block.shape[0], now),
                )
            state = self.state(model, version)
        if added:
            key = (model, version)
            cached = self._cached.get(key)
            if cached is not None and cached.rows + block.shape[0] != state.rows:
                # Another writer added to (or closed) this window meanwhile: the
                # copy no longer matches the file, which is read back instead.
                del self._cached[key]
                cached = None
            if cached is None and state.rows == block.shape[0]:  # this event began the window
                cached = self._cached[key] = _Cached()
            if cached is not None:
                cached.rows += block.shape[0]
                cached.batches.append(stored)
        return state

    def state(self, model: str, version: int) -> WindowState:
        row = self._db.execute(
            "SELECT rows, opened_at FROM window_state WHERE model = ? AND version = ?",
            (model, version),
        ).fetchone()
        return WindowState(0, 0.0) if row is None else WindowState(int(row[0]), float(row[1]))

    def window(self, model: str, version: int) -> Window:
        cached = self._cached.get((model, version))
        if cached is not None and cached.rows == self.state(model, version).rows:
            return self._columns(cached.batches)
        cursor = self._db.execute(
            "SELECT names, inputs, predictions FROM window_batches "
            "WHERE model = ? AND version = ? ORDER BY rowid",
            (model, version),
        )
        return self._columns(cursor)

    def _columns(self, batches: Iterable[tuple[str, bytes, bytes]]) -> Window:
        # Events of one model carry the same names: their blocks are joined as
        # bytes and read as one matrix per set of names, not sliced per event.
        blocks: dict[str, list[bytes]] = {}
        predictions: list[bytes] = []
        for raw_names, raw_inputs, raw_predictions in batches:
            blocks.setdefault(raw_names, []).append(raw_inputs)
            predictions.append(raw_predictions)
        parts: dict[str, list[np.ndarray]] = {}
        rows = 0
        for raw_names, chunks in blocks.items():
            names = self._names.get(raw_names)
            if names is None:
                names = self._names[raw_names] = tuple(json.loads(raw_names))
            matrix = np.frombuffer(b"".join(chunks), dtype=np.float64).reshape(-1, len(names))
            for index, name in enumerate(names):
                parts.setdefault(name, []).append(matrix[:, index])
            rows += matrix.shape[0]
        predicted = np.frombuffer(b"".join(predictions), dtype=np.float64)
        return Window(
            columns={
                name: chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                for name, chunks in parts.items()
            },
            predictions=predicted[np.isfinite(predicted)],
            rows=rows,
        )

    def close_window(
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
        """Store the window's scores in the history and empty it, in one transaction."""
        with self.history.transaction():
            self.history.record(
                model,
                version,
                window_end=window_end,
                rows=rows,
                scores=scores,
                verdict=verdict,
                alerted_at=alerted_at,
            )
            for table in ("window_batches", "window_state"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE model = ? AND version = ?", (model, version)
                )
        self._cached.pop((model, version), None)
