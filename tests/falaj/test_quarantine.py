"""Reading the quarantine: rows with their reasons, queue records, and files refused whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

from falaj.quarantine import quarantined_rows, refused_files


def _lines(path: Path, entries: list[object], mtime: int) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    os.utime(path, ns=(mtime, mtime))


def test_rows_are_read_newest_file_first_with_every_reason(tmp_path: Path) -> None:
    _lines(
        tmp_path / "day1.csv-v1.jsonl",
        [{"row_number": 3, "reasons": ["amount: -5 is below 0"], "row": {"amount": -5}}],
        mtime=1_000,
    )
    _lines(
        tmp_path / "stream-records.jsonl",
        [
            {
                "source": "/rabbitmq",
                "id": "e-1",
                "reasons": ["hour: missing", "x: unknown"],
                "row": {},
            }
        ],
        mtime=2_000,
    )
    rows = quarantined_rows(tmp_path)
    assert [(r.file, r.row_number, r.event_id, r.reasons) for r in rows] == [
        ("stream-records.jsonl", None, "e-1", ["hour: missing", "x: unknown"]),
        ("day1.csv-v1.jsonl", 3, None, ["amount: -5 is below 0"]),
    ]
    assert rows[1].row == {"amount": -5}


def test_a_damaged_quarantine_line_is_shown_as_such_and_the_limit_holds(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"row_number": 1, "reasons": ["r"], "row": {}}\nnot json\n[1]\n' + "{}\n" * 50)
    rows = quarantined_rows(tmp_path, limit=4)
    assert len(rows) == 4
    assert rows[1].reasons == ["line 2 of this quarantine file is not a JSON object"]
    assert rows[2].reasons == ["line 3 of this quarantine file is not a JSON object"]
    assert rows[3].reasons == []


def test_files_refused_whole_are_listed_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "junk.bin-v1.reason.json").write_text(
        json.dumps({"location": "file:///l/junk.bin", "object_version": "v1", "reason": "not CSV"})
    )
    (tmp_path / "broken.reason.json").write_text("{")
    refused = {f.file: f for f in refused_files(tmp_path)}
    assert refused["junk.bin-v1"].reason == "not CSV"
    assert refused["junk.bin-v1"].location == "file:///l/junk.bin"
    assert refused["broken"].reason == "broken.reason.json cannot be read as JSON"


def test_no_quarantine_folder_is_an_empty_quarantine(tmp_path: Path) -> None:
    assert quarantined_rows(tmp_path / "absent") == []
    assert refused_files(tmp_path / "absent") == []
