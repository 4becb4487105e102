"""The quarantine as people read it: rows that broke their dataset's contract, and refused files.

The ingest function writes it (``functions/ingest``): one JSON line per bad row in
``<quarantine>/<file>.jsonl`` (``row_number``, ``reasons``, ``row`` with PII
already hidden), records from a queue in ``stream-records.jsonl`` (``source``,
``id``, ``reasons``, ``row``), and a file that could not be read at all copied
whole beside ``<file>.reason.json``. This module only reads; nothing here
changes what was kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

#: Suffix of the note beside a file refused whole.
REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class QuarantinedRow:
    """One row (or queue record) kept aside, with every reason it broke the contract."""

    file: str
    reasons: list[str]
    row: dict[str, Any] = field(default_factory=dict)
    #: The row's number in its file; None for a record from a queue.
    row_number: int | None = None
    #: The event a queue record came in; None for a row of a file.
    event_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RefusedFile:
    """A landed file that could not be read at all, kept whole."""

    file: str
    location: str
    object_version: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _newest_first(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def quarantined_rows(directory: Path, *, limit: int = 200) -> list[QuarantinedRow]:
    """Up to ``limit`` quarantined rows, newest file first, in file order within a file."""
    if not directory.is_dir():
        return []
    rows: list[QuarantinedRow] = []
    for path in _newest_first(list(directory.glob("*.jsonl"))):
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(islice(lines, limit - len(rows)), start=1):
                rows.append(_row(path.name, number, line))
        if len(rows) >= limit:
            break
    return rows


def _row(file: str, line_number: int, line: str) -> QuarantinedRow:
    try:
        entry = json.loads(line)
        if not isinstance(entry, dict):
            raise ValueError("not an object")
    except ValueError:
        # Shown, not hidden: a damaged quarantine line is itself something to look at.
        return QuarantinedRow(
            file=file,
            reasons=[f"line {line_number} of this quarantine file is not a JSON object"],
        )
    row = entry.get("row")
    number = entry.get("row_number")
    return QuarantinedRow(
        file=file,
        reasons=[str(reason) for reason in entry.get("reasons") or []],
        row=row if isinstance(row, dict) else {},
        row_number=number if isinstance(number, int) else None,
        event_id=None if entry.get("id") is None else str(entry["id"]),
    )


def refused_files(directory: Path) -> list[RefusedFile]:
    """Every file refused whole, newest first."""
    if not directory.is_dir():
        return []
    refused = []
    for path in _newest_first(list(directory.glob("*" + REASON_SUFFIX))):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = {"reason": f"{path.name} cannot be read as JSON"}
        refused.append(
            RefusedFile(
                file=path.name.removesuffix(REASON_SUFFIX),
                location=str(note.get("location", "")),
                object_version=str(note.get("object_version", "")),
                reason=str(note.get("reason", "")),
            )
        )
    return refused
