"""The launcher's durable state: training runs per model, and coalesced requests.

One SQLite file (WAL) under ``<home>/training`` holds

- ``runs``: every job the launcher submitted, with the last status it saw. A
  partial unique index allows at most one *active* (not yet ended) run per
  model, so two launcher replicas cannot both start one;
- ``pending``: at most one waiting request per model. Requests that arrive
  while a run is active are merged into it (an urgent one makes it urgent and
  takes its reason) and launched when the launcher next sees the run ended.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from falaj.closeable import Closeable
from falaj.events import TrainingReason

DB_FILE = "jobs.db"
#: Ray's job states that mean the job still holds (or will hold) the cluster.
ACTIVE_STATES = frozenset({"PENDING", "RUNNING"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    cause_event_id TEXT,
    submitted TEXT NOT NULL,
    status TEXT NOT NULL,
    ended TEXT,
    active INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_run ON runs (model) WHERE active = 1;
CREATE TABLE IF NOT EXISTS pending (
    model TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    cause_event_id TEXT,
    requested TEXT NOT NULL,
    requests INTEGER NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True)
class TrainingRequest:
    """A reason to train ``model``, from one event (or several, coalesced)."""

    model: str
    reason: TrainingReason
    urgent: bool = False
    cause_event_id: str | None = None
    #: How many events this request stands for.
    requests: int = 1

    def merged(self, later: TrainingRequest) -> TrainingRequest:
        """This request with ``later`` folded in; an urgent request sets the reason."""
        take_later = later.urgent and not self.urgent
        return TrainingRequest(
            model=self.model,
            reason=later.reason if take_later else self.reason,
            urgent=self.urgent or later.urgent,
            cause_event_id=later.cause_event_id if take_later else self.cause_event_id,
            requests=self.requests + later.requests,
        )


@dataclass(frozen=True, kw_only=True)
class TrainingRun:
    job_id: str
    model: str
    reason: TrainingReason
    urgent: bool
    cause_event_id: str | None
    submitted: str
    status: str
    ended: str | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATES


class TrainingJobs(Closeable):
    """Runs and pending requests in ``<home>/training/jobs.db``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILE
        # Autocommit: each change below is one explicit transaction.
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    # -- runs --------------------------------------------------------------

    def active(self, model: str) -> TrainingRun | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE model = ? AND active = 1", (model,)
        ).fetchone()
        return _run(row) if row else None

    def runs(self, model: str) -> list[TrainingRun]:
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE model = ? ORDER BY submitted, job_id", (model,)
        ).fetchall()
        return [_run(row) for row in rows]

    def record_launch(self, job_id: str, request: TrainingRequest) -> TrainingRun:
        """Record a submitted job as active, and clear the model's pending request with it."""
        submitted = _now()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, 'PENDING', NULL, 1)",
                (
                    job_id,
                    request.model,
                    str(request.reason),
                    int(request.urgent),
                    request.cause_event_id,
                    submitted,
                ),
            )
            self._db.execute("DELETE FROM pending WHERE model = ?", (request.model,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return TrainingRun(
            job_id=job_id,
            model=request.model,
            reason=request.reason,
            urgent=request.urgent,
            cause_event_id=request.cause_event_id,
            submitted=submitted,
            status="PENDING",
            ended=None,
        )

    def update_status(self, job_id: str, status: str) -> None:
        """Store the status Ray reported; an ended run frees its model for the next."""
        ended = status not in ACTIVE_STATES
        self._db.execute(
            "UPDATE runs SET status = ?, active = ?, ended = CASE WHEN ? THEN ? ELSE ended END"
            " WHERE job_id = ?",
            (status, int(not ended), int(ended), _now(), job_id),
        )

    # -- pending -----------------------------------------------------------

    def pending(self, model: str) -> TrainingRequest | None:
        row = self._db.execute(
            "SELECT model, reason, urgent, cause_event_id, requests FROM pending WHERE model = ?",
            (model,),
        ).fetchone()
        if row is None:
            return None
        return TrainingRequest(
            model=row[0],
            reason=TrainingReason(row[1]),
            urgent=bool(row[2]),
            cause_event_id=row[3],
            requests=int(row[4]),
        )

    def add_pending(self, request: TrainingRequest) -> TrainingRequest:
        """Merge ``request`` into the model's pending request; return the merged one."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            earlier = self.pending(request.model)
            merged = request if earlier is None else earlier.merged(request)
            self._db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?)",
                (
                    merged.model,
                    str(merged.reason),
                    int(merged.urgent),
                    merged.cause_event_id,
                    _now(),
                    merged.requests,
                ),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return merged

    def close(self) -> None:
        self._db.close()


_RUN_COLUMNS = "job_id, model, reason, urgent, cause_event_id, submitted, status, ended"


def _run(row: tuple[str, str, str, int, str | None, str, str, str | None]) -> TrainingRun:
    job_id, model, reason, urgent, cause, submitted, status, ended = row
    return TrainingRun(
        job_id=job_id,
        model=model,
        reason=TrainingReason(reason),
        urgent=bool(urgent),
        cause_event_id=cause,
        submitted=submitted,
        status=status,
        ended=ended,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
