"""An append-only, hash-chained audit log of every lifecycle action.

Each entry is one JSON line holding the SHA-256 of the entry before it, so an
edited, removed or reordered line breaks the chain. A separate head file holds
the last sequence number and hash, so a truncated tail is caught too. Writers
in several processes serialise on an advisory file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from falaj.errors import AuditError, AuditTampered

GENESIS = "0" * 64


class Outcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    seq: int
    time: str
    action: str
    actor: str
    role: str
    resource: str
    region: str
    outcome: str
    details: Mapping[str, Any] = field(default_factory=dict)
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "action": self.action,
            "actor": self.actor,
            "role": self.role,
            "resource": self.resource,
            "region": self.region,
            "outcome": self.outcome,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    head_hash: str


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """The audit log of one platform, kept under ``<home>/audit/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "audit.jsonl"
        self.head_path = directory / "head.json"
        self._lock_path = directory / ".lock"

    def record(
        self,
        action: str,
        *,
        actor: str,
        resource: str,
        region: str,
        outcome: Outcome | str = Outcome.SUCCESS,
        role: str = "service",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry and return it; never rewrites an earlier line."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                seq, prev_hash = self._read_head()
                body: dict[str, Any] = {
                    "seq": seq + 1,
                    "time": datetime.now(UTC).isoformat(),
                    "action": action,
                    "actor": actor,
                    "role": role,
                    "resource": resource,
                    "region": region,
                    "outcome": str(outcome),
                    "details": dict(details or {}),
                    "prev_hash": prev_hash,
                }
                entry_hash = _digest(body)
                line = json.dumps({**body, "hash": entry_hash}, sort_keys=True, default=str)
                with open(self.path, "a", encoding="utf-8") as log:
                    log.write(line + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                tmp = self.head_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"seq": seq + 1, "hash": entry_hash}))
                os.replace(tmp, self.head_path)
        except OSError as exc:
            raise AuditError(f"cannot write the audit log at {self.path}: {exc}") from exc
        return AuditEntry(**{**body, "hash": entry_hash})

    def _read_head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            return 0, GENESIS
        head = json.loads(self.head_path.read_text())
        return int(head["seq"]), str(head["hash"])

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as log:
            for line in log:
                if line.strip():
                    yield json.loads(line)

    def newest(self, limit: int, *, action_prefix: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first; a line that is not JSON is left out.

        (``verify`` is what names a broken line; a reader still shows the rest.)
        """
        kept: deque[dict[str, Any]] = deque(maxlen=limit)
        for raw in self._raw_lines():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if action_prefix is None or str(entry.get("action", "")).startswith(action_prefix):
                kept.append(entry)
        return list(reversed(kept))

    def verify(self) -> VerifyReport:
        """Walk the chain; raise ``AuditTampered`` naming the first broken line."""
        prev_hash, count = GENESIS, 0
        for lineno, raw in enumerate(self._raw_lines(), start=1):
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                raise AuditTampered(f"line {lineno} is not JSON: the log was edited") from None
            claimed = entry.pop("hash", None)
            if entry.get("seq") != lineno:
                raise AuditTampered(
                    f"line {lineno} has sequence number {entry.get('seq')}, expected {lineno}: "
                    "an entry was removed or reordered"
                )
            if entry.get("prev_hash") != prev_hash:
                raise AuditTampered(
                    f"line {lineno} does not follow line {lineno - 1}: "
                    "an entry was removed, inserted or reordered"
                )
            if _digest(entry) != claimed:
                raise AuditTampered(
                    f"line {lineno} was edited: its hash does not match its content"
                )
            prev_hash, count = str(claimed), lineno
        head_seq, head_hash = self._read_head()
        if (head_seq, head_hash) != (count, prev_hash):
            raise AuditTampered(
                f"the log ends at entry {count} but its head records entry {head_seq}: "
                "entries were removed from the end"
            )
        return VerifyReport(entries=count, head_hash=prev_hash)

    def _raw_lines(self) -> Iterator[str]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as log:
            for line in log:
                if line.strip():
                    yield line
