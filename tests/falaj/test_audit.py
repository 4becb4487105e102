from __future__ import annotations

import json
from pathlib import Path

import pytest

from falaj.audit import AuditLog, Outcome
from falaj.errors import AuditTampered


def _log_with(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path / "audit")
    for i in range(n):
        log.record(f"action-{i}", actor="alice", resource=f"res-{i}", region="me-central-1")
    return log


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[1]["prev_hash"] == entries[0]["hash"]
    report = log.verify()
    assert report.entries == 3
    assert report.head_hash == entries[-1]["hash"]


def test_refusal_outcome_is_recorded(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    entry = log.record(
        "policy.refused",
        actor="ingest",
        resource="s3://x",
        region="eu-west-1",
        outcome=Outcome.REFUSED,
        details={"boundary": "storage-write"},
    )
    assert entry.outcome == "refused"
    assert next(log.entries())["details"] == {"boundary": "storage-write"}


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(lines))


def test_edited_entry_fails_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["actor"] = "mallory"
    lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    _rewrite(log, lines)
    with pytest.raises(AuditTampered, match="line 2 was edited"):
        log.verify()


def test_removed_entry_fails_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines(keepends=True)
    _rewrite(log, [lines[0], lines[2]])
    with pytest.raises(AuditTampered, match="removed or reordered"):
        log.verify()


def test_reordered_entries_fail_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines(keepends=True)
    _rewrite(log, [lines[1], lines[0], lines[2]])
    with pytest.raises(AuditTampered):
        log.verify()


def test_truncated_tail_fails_verify(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    lines = log.path.read_text().splitlines(keepends=True)
    _rewrite(log, lines[:2])
    with pytest.raises(AuditTampered, match="removed from the end"):
        log.verify()


def test_empty_log_verifies(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "audit").verify().entries == 0
