"""Training runs per model and the requests that wait: the training launcher's durable state.

The launcher writes it; ``falaj train status`` reads it.

One SQLite file (WAL) under ``<home>/training`` holds

- ``runs``: every job the launcher submitted, with the last status it saw and
  the last word the job itself sent (its stage, epoch and loss, and whether it
  announced its end). A launch is recorded in an immediate transaction that
  counts the model's *active* (not yet ended) runs first, so two launcher
  replicas cannot exceed ``settings.training_max_concurrent`` between them;
- ``pending``: at most one waiting request per model. Requests that cannot
  start yet (the model is busy, or the off-peak window is closed) are merged
  into it (an urgent one makes it urgent and takes its reason) and launched
  when a slot and the window allow.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from falaj.closeable import Closeable
from falaj.errors import ModelBusy
from falaj.events import TrainingReason, TrainingStage

DB_FILE = "jobs.db"
#: A run whose slot is claimed and whose job is being submitted (the launcher's own state).
SUBMITTING = "SUBMITTING"
#: The states of a run that still holds (or will hold) the cluster: Ray's, and ours before it.
ACTIVE_STATES = frozenset({SUBMITTING, "PENDING", "RUNNING"})

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
    active INTEGER NOT NULL,
    run_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stage TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    epochs INTEGER NOT NULL DEFAULT 0,
    train_loss REAL,
    announced TEXT,
    message TEXT
);
CREATE INDEX IF NOT EXISTS active_runs ON runs (model) WHERE active = 1;
CREATE TABLE IF NOT EXISTS pending (
    model TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    cause_event_id TEXT,
    requested TEXT NOT NULL,
    requests INTEGER NOT NULL,
    run_name TEXT,
    attempt INTEGER NOT NULL
);
"""

#: Columns added since the first schema, with declarations SQLite can add in place.
_ADDED_COLUMNS = (
    ("runs", "run_name", "TEXT NOT NULL DEFAULT ''"),
    ("runs", "attempt", "INTEGER NOT NULL DEFAULT 1"),
    ("runs", "stage", "TEXT"),
    ("runs", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("runs", "epochs", "INTEGER NOT NULL DEFAULT 0"),
    ("runs", "train_loss", "REAL"),
    ("runs", "announced", "TEXT"),
    ("runs", "message", "TEXT"),
    ("pending", "run_name", "TEXT"),
    ("pending", "attempt", "INTEGER NOT NULL DEFAULT 1"),
)


@dataclass(frozen=True, kw_only=True)
class TrainingRequest:
    """A reason to train ``model``, from one event (or several, coalesced)."""

    model: str
    reason: TrainingReason
    urgent: bool = False
    cause_event_id: str | None = None
    #: How many events this request stands for.
    requests: int = 1
    #: The Ray Train run to resume: set when a lost job is retried, so the
    #: retry continues from the lost run's last checkpoint.
    run_name: str | None = None
    #: 1 for a first try; a lost job's retry counts up (``MAX_ATTEMPTS``).
    attempt: int = 1

    def merged(self, later: TrainingRequest) -> TrainingRequest:
        """This request with ``later`` folded in; an urgent request sets the reason.

        A retry's run name and attempt survive the merge: the retry still
        resumes its checkpoint, and still counts against its attempts.
        """
        take_later = later.urgent and not self.urgent
        return TrainingRequest(
            model=self.model,
            reason=later.reason if take_later else self.reason,
            urgent=self.urgent or later.urgent,
            cause_event_id=later.cause_event_id if take_later else self.cause_event_id,
            requests=self.requests + later.requests,
            run_name=self.run_name or later.run_name,
            attempt=max(self.attempt, later.attempt),
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
    run_name: str
    attempt: int
    #: The job's own word: its stage, epochs done, last loss, and the end it announced.
    stage: TrainingStage | None = None
    epoch: int = 0
    epochs: int = 0
    train_loss: float | None = None
    announced: str | None = None
    #: Why it ended, when Ray or the launcher said so.
    message: str | None = None

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
        # A store from before runs had more than one active per model.
        self._db.execute("DROP INDEX IF EXISTS one_active_run")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a store written by an earlier launcher up to this schema, keeping its runs."""
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    # -- runs --------------------------------------------------------------

    def active(self, model: str) -> list[TrainingRun]:
        """The model's runs that have not ended, oldest first."""
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE model = ? AND active = 1"
            " ORDER BY submitted, job_id",
            (model,),
        ).fetchall()
        return [_run(row) for row in rows]

    def run(self, job_id: str) -> TrainingRun | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE job_id = ?", (job_id,)
        ).fetchone()
        return _run(row) if row else None

    def runs(self, model: str | None = None) -> list[TrainingRun]:
        """Every run of ``model`` (of every model when None), oldest first."""
        where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
        rows = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY submitted, job_id", args
        ).fetchall()
        return [_run(row) for row in rows]

    def models(self) -> list[str]:
        """The models with a run that has not ended or a request that waits."""
        rows = self._db.execute(
            "SELECT model FROM runs WHERE active = 1 UNION SELECT model FROM pending ORDER BY model"
        ).fetchall()
        return [row[0] for row in rows]

    def record_launch(self, job_id: str, request: TrainingRequest, *, limit: int) -> TrainingRun:
        """Claim a slot for a job about to be submitted (``SUBMITTING``), and clear the
        model's pending request with it.

        Raises ``ModelBusy`` when the model has ``limit`` active runs already
        (another launcher replica launched in between): then nothing is submitted.
        """
        submitted = _now()
        run_name = request.run_name or job_id
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (active,) = self._db.execute(
                "SELECT count(*) FROM runs WHERE model = ? AND active = 1", (request.model,)
            ).fetchone()
            if active >= limit:
                raise ModelBusy(
                    f"model {request.model!r} has {active} training run(s) going, the most "
                    f"allowed (FALAJ_TRAINING_MAX_CONCURRENT={limit})"
                )
            self._db.execute(
                "INSERT INTO runs (job_id, model, reason, urgent, cause_event_id, submitted,"
                " status, ended, active, run_name, attempt)"
                f" VALUES (?, ?, ?, ?, ?, ?, '{SUBMITTING}', NULL, 1, ?, ?)",
                (
                    job_id,
                    request.model,
                    str(request.reason),
                    int(request.urgent),
                    request.cause_event_id,
                    submitted,
                    run_name,
                    request.attempt,
                ),
            )
            self._db.execute("DELETE FROM pending WHERE model = ?", (request.model,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        run = self.run(job_id)
        assert run is not None  # committed just above
        return run

    def withdraw_launch(self, job_id: str, request: TrainingRequest) -> None:
        """Undo ``record_launch`` for a job that was never submitted: the slot is free
        again and the request waits once more (merged with any that came since)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "DELETE FROM runs WHERE job_id = ? AND status = ?", (job_id, SUBMITTING)
            )
            self._merge_pending(request)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def update_status(self, job_id: str, status: str, message: str | None = None) -> None:
        """Store the status Ray reported; an ended run frees its model for the next."""
        ended = status not in ACTIVE_STATES
        self._db.execute(
            "UPDATE runs SET status = ?, active = ?, ended = CASE WHEN ? THEN ? ELSE ended END,"
            " message = coalesce(?, message) WHERE job_id = ?",
            (status, int(not ended), int(ended), _now(), message, job_id),
        )

    def record_progress(
        self,
        job_id: str,
        *,
        stage: TrainingStage,
        epoch: int,
        epochs: int,
        train_loss: float | None,
    ) -> bool:
        """Store what the job said of its progress; False for a job this store never launched.

        Events may arrive out of order: an earlier epoch never overwrites a later one.
        """
        cursor = self._db.execute(
            "UPDATE runs SET stage = ?, epoch = max(epoch, ?), epochs = max(epochs, ?),"
            " train_loss = CASE WHEN ? >= epoch THEN coalesce(?, train_loss) ELSE train_loss END"
            " WHERE job_id = ?",
            (str(stage), epoch, epochs, epoch, train_loss, job_id),
        )
        return cursor.rowcount == 1

    def record_announced(self, job_id: str, outcome: str, message: str | None = None) -> bool:
        """Store the end the job (or the launcher for it) announced: completed or failed."""
        cursor = self._db.execute(
            "UPDATE runs SET announced = ?, message = coalesce(?, message) WHERE job_id = ?",
            (outcome, message, job_id),
        )
        return cursor.rowcount == 1

    # -- pending -----------------------------------------------------------

    def pending(self, model: str) -> TrainingRequest | None:
        row = self._db.execute(
            "SELECT model, reason, urgent, cause_event_id, requests, run_name, attempt"
            " FROM pending WHERE model = ?",
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
            run_name=row[5],
            attempt=int(row[6]),
        )

    def add_pending(self, request: TrainingRequest) -> TrainingRequest:
        """Merge ``request`` into the model's pending request; return the merged one."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            merged = self._merge_pending(request)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return merged

    def _merge_pending(self, request: TrainingRequest) -> TrainingRequest:
        """``add_pending``'s write, inside the caller's transaction."""
        earlier = self.pending(request.model)
        merged = request if earlier is None else earlier.merged(request)
        self._db.execute(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                merged.model,
                str(merged.reason),
                int(merged.urgent),
                merged.cause_event_id,
                _now(),
                merged.requests,
                merged.run_name,
                merged.attempt,
            ),
        )
        return merged

    def close(self) -> None:
        self._db.close()


_RUN_COLUMNS = (
    "job_id, model, reason, urgent, cause_event_id, submitted, status, ended, run_name, attempt,"
    " stage, epoch, epochs, train_loss, announced, message"
)


def _run(row: tuple[Any, ...]) -> TrainingRun:
    (job_id, model, reason, urgent, cause, submitted, status, ended, run_name, attempt) = row[:10]
    stage, epoch, epochs, train_loss, announced, message = row[10:]
    return TrainingRun(
        job_id=job_id,
        model=model,
        reason=TrainingReason(reason),
        urgent=bool(urgent),
        cause_event_id=cause,
        submitted=submitted,
        status=status,
        ended=ended,
        run_name=run_name,
        attempt=int(attempt),
        stage=TrainingStage(stage) if stage else None,
        epoch=int(epoch),
        epochs=int(epochs),
        train_loss=train_loss,
        announced=announced,
        message=message,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
