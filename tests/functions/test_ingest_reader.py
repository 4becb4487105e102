"""Reading landed files in chunks: rows in file order, bad lines in their place, bad files named."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falaj.errors import SchemaError
from falaj.validation import UNPARSED_REASON, UNPARSED_TEXT
from functions.ingest import reader
from functions.ingest.reader import Compression, FileFormat, FileKind, kind_of, read_chunks

CSV = FileKind(FileFormat.CSV)
JSONL = FileKind(FileFormat.JSONL)
PARQUET = FileKind(FileFormat.PARQUET)


def rows_of(path: Path, kind: FileKind, chunk_rows: int = 100) -> pa.Table:
    """Every chunk read, checked for size, as one table (reserved columns where there were)."""
    chunks = list(read_chunks(path, kind, chunk_rows=chunk_rows))
    assert all(c.num_rows <= chunk_rows for c in chunks), [c.num_rows for c in chunks]
    return pa.concat_tables(chunks, promote_options="default")


def written(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content_type", "kind"),
    [
        ("day1.csv", "", FileKind(FileFormat.CSV)),
        ("day1.CSV.GZ", "", FileKind(FileFormat.CSV, Compression.GZIP)),
        ("day1.jsonl.zst", "", FileKind(FileFormat.JSONL, Compression.ZSTD)),
        ("day1.ndjson.gzip", "", FileKind(FileFormat.JSONL, Compression.GZIP)),
        ("day1", "text/csv; charset=utf-8", FileKind(FileFormat.CSV)),
        ("day1.parquet", "text/csv", FileKind(FileFormat.PARQUET)),
    ],
)
def test_the_kind_comes_from_the_name_then_the_content_type(
    name: str, content_type: str, kind: FileKind
) -> None:
    assert kind_of(name, content_type) == kind


def test_a_parquet_file_in_an_outer_compression_is_refused() -> None:
    with pytest.raises(SchemaError, match="compresses its own pages; expected it without"):
        kind_of("day1.parquet.gz", "")


# -- CSV rows that do not split into the header's columns ------------------------

#: One line of a generated CSV: a row of the header's width (one with a quoted
#: line break in a value), a ragged row (its number of values), or a blank line.
Line = tuple[str, int]
lines = st.lists(
    st.one_of(
        st.just(("row", 3)),
        st.just(("multiline", 3)),
        st.tuples(st.just("ragged"), st.sampled_from([1, 2, 4, 7])),
        st.just(("blank", 0)),
    ),
    max_size=120,
)


def csv_of(plan: list[Line]) -> tuple[bytes, list[tuple[str, int]]]:
    """A CSV with columns a, b, c; and what each row (not blank line) should read as:
    ("row", its sequence number) or ("ragged", its sequence number)."""
    out, expected = ["a,b,c"], []
    for seq, (kind, width) in enumerate(plan):
        if kind == "blank":
            out.append("")
            continue
        if kind == "multiline":
            out.append(f'v{seq},"two\nlines",x')
            expected.append(("row", seq))
            continue
        values = [f"v{seq}"] + [f"x{i}" for i in range(width - 1)]
        out.append(",".join(values))
        expected.append((kind, seq))
    return ("\n".join(out) + "\n").encode(), expected


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one file per example
)
@given(plan=lines, block=st.sampled_from([64, 256, 4096]), chunk_rows=st.integers(1, 50))
def test_ragged_rows_come_back_in_their_place_whatever_the_blocks_and_chunks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plan: list[Line],
    block: int,
    chunk_rows: int,
) -> None:
    # Small blocks make pyarrow parse many batches, so rows cross batch and chunk edges.
    monkeypatch.setattr(reader, "CSV_BLOCK_BYTES", block)
    content, expected = csv_of(plan)
    path = written(tmp_path, "lines.csv", content)
    if expected and all(kind == "ragged" for kind, _ in expected):
        with pytest.raises(SchemaError, match=f"none of its {len(expected)} rows could be split"):
            rows_of(path, CSV, chunk_rows)
        return
    table = rows_of(path, CSV, chunk_rows)
    assert table.num_rows == len(expected)
    got = table.to_pylist()
    for number, ((kind, seq), row) in enumerate(zip(expected, got, strict=True), start=1):
        if kind == "row":
            assert row["a"] == f"v{seq}", f"row {number}: expected v{seq}, got {row}"
            assert row.get(UNPARSED_REASON) is None
        else:
            width = plan[seq][1]
            assert row[UNPARSED_REASON] == (
                f"row: expected 3 values, one per column of the header, got {width}"
            ), f"row {number}"
            assert str(row[UNPARSED_TEXT]).startswith(f"v{seq}")
            assert row["a"] is None


def test_a_header_alone_is_an_empty_batch_with_or_without_its_line_break(tmp_path: Path) -> None:
    for content in (b"a,b\n", b"a,b", b"a,b\r\n", b"a,b\n\n\n"):
        table = rows_of(written(tmp_path, "header.csv", content), CSV)
        assert (table.num_rows, table.column_names) == (0, ["a", "b"]), content


def test_only_an_empty_cell_is_no_value(tmp_path: Path) -> None:
    # Not "NA" (Namibia), "null" or "NaN": validation sees them, and says what they are.
    path = written(tmp_path, "day.csv", b'a,b\nNA,null\nN/A,NaN\n"",x\n,y\n')
    assert rows_of(path, CSV).to_pylist() == [
        {"a": "NA", "b": "null"},
        {"a": "N/A", "b": "NaN"},
        {"a": "", "b": "x"},
        {"a": None, "b": "y"},
    ]


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    # Read as text like any other column, "1.50" stays "1.50" (not inferred as 1.5).
    path = written(tmp_path, "bom.csv", b"\xef\xbb\xbfamount,b\n1.50,x\n")
    table = rows_of(path, CSV)
    assert table.to_pylist() == [{"amount": "1.50", "b": "x"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a,b\n" + b"1,x\n" * 5_000 + "2,caf\xe9\n".encode("latin-1"), "it is not UTF-8 text;"),
        ("caf\xe9,b\n1,2\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 3 of"),
        ("a,b\n1,2\n".encode("utf-16"), "it is UTF-16 text (it starts with a UTF-16 byte"),
        ("a,b\n1,2\n".encode("utf-16-le"), "its first line holds NUL bytes"),
        ("a,b\n1,2\n".encode("utf-32"), "it is UTF-32 text"),
    ],
)
def test_a_csv_that_is_not_utf8_text_is_refused_saying_so(
    tmp_path: Path, content: bytes, message: str
) -> None:
    with pytest.raises(SchemaError) as refused:
        rows_of(written(tmp_path, "day.csv", content), CSV)
    assert str(refused.value).startswith("day.csv cannot be parsed as csv: ")
    assert message in str(refused.value)
    assert str(refused.value).endswith("expected UTF-8 text: save or export the file as UTF-8")


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\r\n"])
def test_a_csv_without_a_header_is_refused(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(SchemaError, match=r"^day.csv cannot be parsed as csv: it is empty \("):
        rows_of(written(tmp_path, "day.csv", content), CSV)


def test_a_corrupt_gzip_is_refused_and_a_good_one_read(tmp_path: Path) -> None:
    content = b"a,b\n" + b"1,x\n" * 1000
    packed = gzip.compress(content)
    gz = FileKind(FileFormat.CSV, Compression.GZIP)
    assert rows_of(written(tmp_path, "good.csv.gz", packed), gz).num_rows == 1000
    with pytest.raises(SchemaError, match="cannot be parsed as csv \\(gzip\\): Truncated"):
        rows_of(written(tmp_path, "cut.csv.gz", packed[: len(packed) // 2]), gz)
    with pytest.raises(SchemaError, match="cannot be parsed as csv \\(gzip\\): zlib inflate"):
        rows_of(written(tmp_path, "plain.csv.gz", content), gz)


# -- JSON Lines --------------------------------------------------------------------


def test_json_lines_keep_each_bad_line_in_its_place(tmp_path: Path) -> None:
    lines_ = [
        '{"a": 1, "b": "x"}',
        "",  # blank: not a row
        '{"a": "one", "b": "y"}',  # a string among numbers: the column becomes text
        "[1, 2]",
        '{"a": 2, "b"',
        '{"a": 123456789012345678901234567890}',  # past 64 bits: a float, as JSON allows
        '{"a": NaN}',  # not JSON
        '"just a string"',
    ]
    content = b"\xef\xbb\xbf" + "\n".join(lines_).encode()
    table = rows_of(written(tmp_path, "day.jsonl", content), JSONL)
    rows = table.to_pylist()
    assert [r["a"] for r in rows] == ["1", "one", None, None, "1.2345678901234568e+29", None, None]
    reasons = [r[UNPARSED_REASON] for r in rows]
    assert reasons[:2] == [None, None] and reasons[4] is None
    assert reasons[2] == "row: expected a JSON object, got a JSON array"
    assert reasons[3].startswith("row: expected a JSON object, got a line that is not JSON (")
    assert reasons[5].startswith("row: expected a JSON object, got a line that is not JSON (")
    assert reasons[6] == "row: expected a JSON object, got a JSON string"
    assert [r[UNPARSED_TEXT] for r in rows][2:4] == ["[1, 2]", '{"a": 2, "b"']


def test_json_keys_seen_earlier_are_columns_of_later_chunks(tmp_path: Path) -> None:
    content = "\n".join([json.dumps({"a": 1, "b": 2})] * 3 + [json.dumps({"a": 3})] * 3).encode()
    chunks = list(read_chunks(written(tmp_path, "day.jsonl", content), JSONL, chunk_rows=3))
    assert [c.column_names for c in chunks] == [["a", "b"], ["a", "b"]]
    assert chunks[1].column("b").null_count == 3


def test_json_lines_none_of_which_is_an_object_are_refused(tmp_path: Path) -> None:
    path = written(tmp_path, "day.jsonl", b"a,b\n1,2\n")
    with pytest.raises(SchemaError, match="none of its 2 rows could be split into columns; row 1"):
        rows_of(path, JSONL)


def test_json_lines_with_no_line_are_no_rows(tmp_path: Path) -> None:
    # No header to check either: JSON Lines has none, so nothing came, and nothing is wrong.
    for content in (b"", b"\n \n"):
        assert list(read_chunks(written(tmp_path, "day.jsonl", content), JSONL)) == []


# -- Parquet -------------------------------------------------------------------------


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_a_truncated_parquet_is_refused(tmp_path: Path) -> None:
    content = parquet_bytes(pa.table({"a": list(range(1000))}))
    for cut in (len(content) // 2, len(content) - 3, 0):
        with pytest.raises(SchemaError, match="cannot be parsed as parquet: Parquet"):
            rows_of(written(tmp_path, "day.parquet", content[:cut]), PARQUET)


def test_a_parquet_of_no_rows_is_an_empty_batch_with_its_columns(tmp_path: Path) -> None:
    content = parquet_bytes(pa.table({"a": pa.array([], pa.int64())}))
    table = rows_of(written(tmp_path, "day.parquet", content), PARQUET)
    assert (table.num_rows, table.column_names) == (0, ["a"])
