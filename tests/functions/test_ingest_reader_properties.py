"""Hostile files at the ingest reader and function: rows, bad rows quarantined, or the file refused.

Any bytes named ``.csv``, ``.jsonl`` or ``.parquet``, valid Parquet files cut
or with bytes flipped, CSV with odd quoting, NUL bytes, other encodings and
very wide rows, JSON lines that are not objects or hold nested values and
numbers past every machine type: the reader gives chunks that validate into
good and rejected rows (each with its reasons), or refuses the file with a
``SchemaError`` that names it, never another exception. Through the whole
function a corrupt file is quarantined whole, its bytes kept beside the
reason, under any key and object version: nothing is lost.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from falaj.demo.data import generate_transactions
from falaj.errors import SchemaError
from falaj.events import DataIngested, DataRejected, EventType
from falaj.schema import load_schema
from falaj.settings import Settings
from falaj.validation import SeenKeys, validate_table
from functions.ingest import reader
from functions.ingest.reader import FileKind, kind_of, read_chunks
from tests.functions.test_ingest import (
    CapturingIngest,
    created,
    land,
    offline_files,
    running_ingest,
)
from tests.support.hostile import bounded, huge_numbers, json_bytes, json_values

pytestmark = pytest.mark.timeout(600)
SCHEMA = load_schema(Settings())
COLUMNS = list(SCHEMA.column_names)
SUFFIXES = (".csv", ".jsonl", ".parquet", ".csv.gz", ".jsonl.zst")


def read_and_validated(path: Path, kind: FileKind, chunk_rows: int) -> int | None:
    """The rows read, every one validated as good or rejected with reasons; None when the
    file is refused whole (it cannot be read, or lacks the schema's columns)."""
    try:
        chunks = list(read_chunks(path, kind, chunk_rows=chunk_rows))
    except SchemaError as exc:
        assert str(exc).startswith(f"{path.name} cannot be parsed as {kind}: "), str(exc)
        return None
    rows, seen = 0, SeenKeys()
    for chunk in chunks:
        assert chunk.num_rows <= chunk_rows
        try:
            validated = validate_table(SCHEMA, chunk, first_row_number=rows + 1, seen=seen)
        except SchemaError as exc:  # the file is refused whole, naming what it lacks
            assert "expected" in str(exc).lower(), str(exc)
            return None
        assert validated.rows_total == chunk.num_rows
        for rejected in validated.rejected:
            assert rejected.reasons and rows < rejected.row_number <= rows + chunk.num_rows
        rows += chunk.num_rows
    return rows


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-files")


counter = itertools.count()


def written(folder: Path, suffix: str, content: bytes) -> tuple[Path, FileKind]:
    path = folder / f"f{next(counter)}{suffix}"
    path.write_bytes(content)
    return path, kind_of(path.name, "")


@bounded
@given(
    suffix=st.sampled_from(SUFFIXES),
    content=st.one_of(st.binary(max_size=600), json_values.map(json_bytes)),
    chunk_rows=st.integers(1, 50),
)
def test_any_bytes_are_rows_or_a_file_refused_by_name(
    folder: Path, suffix: str, content: bytes, chunk_rows: int
) -> None:
    path, kind = written(folder, suffix, content)
    read_and_validated(path, kind, chunk_rows)


# -- Parquet: valid files, then cut or with bytes flipped ---------------------------


def parquet_of(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def _transactions() -> pa.Table:
    rows = generate_transactions(40, seed=5, cards=10, bad_rows=3)
    return pa.Table.from_pandas(rows, preserve_index=False)


#: Text that is not UTF-8 in a string column, in a file without page checksums: it
#: reads, and no later step could (validation failed on it with UnicodeDecodeError).
NOT_UTF8_PARQUET = parquet_of(_transactions(), compression="none").replace(
    b"card-00006", b"c\xe1rd-00006", 1
)
VALID_PARQUET = (
    parquet_of(_transactions()),
    parquet_of(_transactions(), row_group_size=10, compression="none", write_page_checksum=True),
    parquet_of(_transactions().cast(pa.schema([pa.field(c, pa.string()) for c in COLUMNS]))),
    parquet_of(_transactions(), compression="zstd", use_dictionary=False, data_page_size=256),
)


@st.composite
def corrupted(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` cut short, with bytes flipped, or with a run of bytes overwritten."""
    content = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        if not content:
            break
        change = draw(st.sampled_from(["cut", "flip", "overwrite"]))
        at = draw(st.integers(0, len(content) - 1))
        if change == "cut":
            del content[at:]
        elif change == "flip":
            content[at] ^= draw(st.integers(1, 255))
        else:
            run = draw(st.binary(min_size=1, max_size=16))
            content[at : at + len(run)] = run
    return bytes(content)


@bounded
@given(
    content=st.sampled_from(VALID_PARQUET).flatmap(corrupted), chunk_rows=st.sampled_from([7, 100])
)
@example(content=VALID_PARQUET[1], chunk_rows=7)  # as written: every row read
@example(content=NOT_UTF8_PARQUET, chunk_rows=100)
def test_a_cut_or_corrupted_parquet_file_is_rows_or_refused(
    folder: Path, content: bytes, chunk_rows: int
) -> None:
    path, kind = written(folder, ".parquet", content)
    rows = read_and_validated(path, kind, chunk_rows)
    if content in VALID_PARQUET:
        assert rows == _transactions().num_rows


#: Columns of other types than the schema's, and values at their edges, for any column.
ODD_COLUMNS = (
    pa.array([b"\xff\xfe", b"card-1", None], pa.binary()),
    pa.array(["card-1", "", None], pa.large_string()),
    pa.array(["2025-01-03T10:15:00Z", "2025-01-03", "x"]).dictionary_encode(),
    pa.array([[1, 2], None, []], pa.list_(pa.int64())),
    pa.array([{"x": 1}, None, {"x": 2}]),
    pa.array([Decimal("1e20"), Decimal("-0.5"), None], pa.decimal128(38, 10)),
    pa.array([2**64 - 1, 0, None], pa.uint64()),
    pa.array([-(2**63), 2**63 - 1, None], pa.int64()),
    pa.array([float("nan"), float("inf"), -0.0]),
    pa.array([datetime(9999, 12, 31), datetime(1, 1, 1), None], pa.timestamp("s")),
    pa.array([date(1, 1, 1), date(9999, 12, 31), None], pa.date32()),
    pa.array([True, False, None]),
    pa.nulls(3),
    pa.array([timedelta(days=1), None, timedelta(0)], pa.duration("ms")),
)


@st.composite
def odd_parquet(draw: st.DrawFn) -> bytes:
    """A valid Parquet file whose columns (the schema's names, maybe some missing) are of
    any of the types above."""
    names = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, unique=True))
    columns = [draw(st.sampled_from(ODD_COLUMNS)) for _ in names]
    return parquet_of(pa.table(dict(zip(names, columns, strict=True))))


@bounded
@given(content=odd_parquet(), chunk_rows=st.sampled_from([1, 100]))
def test_parquet_of_any_column_types_is_rows_or_refused(
    folder: Path, content: bytes, chunk_rows: int
) -> None:
    path, kind = written(folder, ".parquet", content)
    read_and_validated(path, kind, chunk_rows)


# -- CSV: the schema's header, then odd cells, quoting, encodings, wide rows ----------

CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['"', '""', '"a', 'a"b', '"x\ny"', "\x00", "\r", "\n", "\ufeff", " , "]),
    huge_numbers.map(str),
    st.sampled_from(["card-1", "2025-01-03T10:15:00Z", "2025-01-03", "1.5", "-3", "NaN", "inf"]),
)
LINES = st.one_of(
    st.lists(CELLS, min_size=len(COLUMNS), max_size=len(COLUMNS)).map(",".join),
    st.lists(CELLS, max_size=2 * len(COLUMNS)).map(",".join),
    st.integers(1, 20_000).map(lambda n: ",".join("x" * (n % 7) for _ in range(n))),  # wide
)
HEADERS = st.one_of(
    st.just(",".join(COLUMNS)),
    st.permutations(COLUMNS).map(",".join),
    st.just(",".join([*COLUMNS, COLUMNS[0]])),  # a column twice
    st.just(",".join(f'"{c}"' for c in COLUMNS) + ',"extra ""quoted"""'),
    st.lists(CELLS, max_size=4).map(",".join),
)


@st.composite
def encoded(draw: st.DrawFn, text: str) -> bytes:
    """``text`` as UTF-8 (with or without a BOM), or in another encoding, or with raw bytes."""
    how = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "raw"]))
    if how == "raw":
        content = bytearray(text.encode("utf-8", "surrogatepass"))
        at = draw(st.integers(0, len(content)))
        content[at:at] = draw(st.binary(min_size=1, max_size=8))
        return bytes(content)
    return text.encode(how, "replace")


@bounded
@given(
    content=st.tuples(HEADERS, st.lists(LINES, max_size=12), st.sampled_from(["\n", "\r\n", "\r"]))
    .map(lambda parts: parts[2].join([parts[0], *parts[1]]))
    .flatmap(encoded),
    block=st.sampled_from([64, 1024, reader.CSV_BLOCK_BYTES]),
    chunk_rows=st.integers(1, 20),
)
def test_hostile_csv_is_rows_or_a_file_refused_by_name(
    folder: Path, content: bytes, block: int, chunk_rows: int
) -> None:
    # Small blocks make a wide row straddle them, and rows cross batch edges.
    with mock.patch.object(reader, "CSV_BLOCK_BYTES", block):
        path, kind = written(folder, ".csv", content)
        read_and_validated(path, kind, chunk_rows)


# -- JSON lines: objects with odd values, other JSON, not JSON at all ----------------

FIELD_VALUES = st.one_of(json_values, huge_numbers)
OBJECTS = st.dictionaries(
    st.one_of(st.sampled_from(COLUMNS), st.text(max_size=8)), FIELD_VALUES, max_size=12
)
JSON_LINES = st.one_of(
    st.fixed_dictionaries({c: FIELD_VALUES for c in COLUMNS}).map(json_bytes),
    OBJECTS.map(json_bytes),
    json_values.map(json_bytes),  # arrays, strings, numbers, null
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
    st.sampled_from([b"", b"{", b'{"card_id": "c"', b"NaN", b"1" + b"0" * 400, b"\xff\xfe{}"]),
)


@bounded
@given(
    lines=st.lists(JSON_LINES, max_size=15),
    compress=st.booleans(),
    chunk_rows=st.integers(1, 10),
)
def test_hostile_json_lines_are_rows_or_a_file_refused_by_name(
    folder: Path, lines: list[bytes], compress: bool, chunk_rows: int
) -> None:
    content = b"\n".join(lines)
    if compress:
        path, kind = written(folder, ".jsonl.gz", gzip.compress(content))
    else:
        path, kind = written(folder, ".jsonl", content)
    read_and_validated(path, kind, chunk_rows)


# -- the whole function: a corrupt file is quarantined whole ---------------------------


@pytest.fixture(scope="module")
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapturingIngest]:
    """One started function for every example (Feast's start costs seconds)."""
    with running_ingest(tmp_path_factory.mktemp("hostile-ingest") / ".falaj") as started:
        yield started


#: Names a landed file may have: any characters a file name holds, up to the limit.
NAMES = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\\\x00"), max_size=30),
    st.integers(150, 230).map(lambda n: "n" * n),
)
CORRUPT = st.one_of(
    st.sampled_from(VALID_PARQUET).flatmap(corrupted).map(lambda c: (".parquet", c)),
    odd_parquet().map(lambda c: (".parquet", c)),
    st.tuples(st.sampled_from(SUFFIXES), st.binary(max_size=300)),
    st.tuples(st.just(".csv"), st.binary(max_size=200).map(lambda b: b"\x00" + b)),
)


@bounded
@given(
    name=NAMES,
    version=st.one_of(st.text(min_size=1, max_size=20), st.text(min_size=200, max_size=400)),
    corrupt=CORRUPT,
)
@example(name="n" * 230, version="v" * 300, corrupt=(".csv", b"\x00"))  # too long a name
@example(name="x", version="1", corrupt=(".parquet", NOT_UTF8_PARQUET))
def test_a_corrupt_file_is_quarantined_whole_and_nothing_is_lost(
    function: CapturingIngest, name: str, version: str, corrupt: tuple[str, bytes]
) -> None:
    ctx = function.ctx
    suffix, content = corrupt
    key = f"bad-{next(counter)}-{name}"[:240] + suffix
    before = set(offline_files(ctx))
    land(ctx, key, content)
    function.emitted.clear()
    function.handle(created(ctx, key, version_id=version))

    ((event_type, data),) = function.emitted
    added = sorted(set(offline_files(ctx)) - before)
    if isinstance(data, DataRejected):
        assert event_type is EventType.DATA_REJECTED and data.reason
        assert Path(data.quarantine_location).read_bytes() == content, "the file was not kept"
        kept = Path(data.quarantine_location).with_suffix(".reason.json")
        assert json.loads(kept.read_text())["reason"] == data.reason
        assert added == [], "a file refused whole left rows behind"
        return
    # A flipped byte can leave a Parquet file readable: then every row is accounted for.
    assert isinstance(data, DataIngested) and event_type is EventType.DATA_INGESTED
    assert data.rows_ingested + data.rows_quarantined == data.rows_total
    stored = pd.concat([pd.read_parquet(p) for p in added]) if added else pd.DataFrame()
    assert len(stored) == data.rows_ingested
    if data.rows_quarantined:
        assert data.quarantine_location is not None
        lines = Path(data.quarantine_location).read_text().splitlines()
        assert len(lines) == data.rows_quarantined
