"""Reading a landed file a chunk at a time, so a file of any size is held a chunk at a time.

CSV and Parquet are read by pyarrow (its CSV reader parses in C++, several
times faster than pandas here); every CSV column is read as text, so
validation sees exactly what came and a quarantined row shows it unchanged.
JSON Lines is read a line at a time with orjson: pyarrow's JSON reader refuses
a whole file when one value has another type than the rest of its column,
which is exactly the bad row ingest must quarantine while the others go in.

A row that cannot be split into columns (a CSV line with more or fewer values
than the header, a JSON Lines line that is not a JSON object) is a bad row,
not a bad file: it comes in its place among the others, marked with the
reserved columns of ``falaj.validation``, and is quarantined with its reason.
A file none of whose rows can be split is refused whole. So is a file that is
not UTF-8 text, with a message that says so, and a Parquet file whose columns do
not hold what their types say (a damaged page, text that is not UTF-8). Blank
lines are not rows: row numbers count the rows that came, from 1, as
``validate_table`` numbers them.

A name ending in ``.gz``/``.gzip`` or ``.zst``/``.zstd`` is decompressed as
it is read, in the same bounded chunks.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from falaj.errors import SchemaError
from falaj.validation import UNPARSED_REASON, UNPARSED_TEXT

CHUNK_ROWS = 50_000
#: Bytes of CSV parsed at a time; a chunk is this or ``chunk_rows``, whichever is smaller.
#: A CSV line (the header too) must fit in one.
CSV_BLOCK_BYTES = 4 << 20
#: What the reason of a row that could not be split into columns names as its column.
ROW = "row"
#: Byte order marks of encodings a CSV may come in that are not UTF-8 (UTF-32 first:
#: its little-endian mark begins with UTF-16's).
_OTHER_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_AS_UTF8 = "expected UTF-8 text: save or export the file as UTF-8"
#: pyarrow's error for a CSV row that does not split (the header counts as row 1).
_UNSPLIT_NOT_UTF8 = re.compile(r"CSV parse error: (?:Row #(\d+): )?Expected \d+ columns, got \d+")


class FileFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    JSONL = "jsonl"


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


@dataclass(frozen=True)
class FileKind:
    file_format: FileFormat
    compression: Compression = Compression.NONE

    def __str__(self) -> str:
        if self.compression is Compression.NONE:
            return str(self.file_format)
        return f"{self.file_format} ({self.compression})"


_BY_SUFFIX = {
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
}
_COMPRESSED = {
    ".gz": Compression.GZIP,
    ".gzip": Compression.GZIP,
    ".zst": Compression.ZSTD,
    ".zstd": Compression.ZSTD,
}
_BY_CONTENT_TYPE = {
    "text/csv": FileFormat.CSV,
    "application/vnd.apache.parquet": FileFormat.PARQUET,
    "application/jsonl": FileFormat.JSONL,
    "application/x-ndjson": FileFormat.JSONL,
}


def kind_of(name: str, content_type: str) -> FileKind:
    """How to read a file: by its name's suffixes first, then by its content type."""
    path = Path(name)
    compression = _COMPRESSED.get(path.suffix.lower(), Compression.NONE)
    if compression is not Compression.NONE:
        path = path.with_suffix("")
    suffix = path.suffix.lower()
    if suffix in _BY_SUFFIX:
        file_format = _BY_SUFFIX[suffix]
    else:
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind not in _BY_CONTENT_TYPE:
            raise SchemaError(
                f"cannot tell how to read {name!r} (content type {content_type!r}); expected a "
                f"name ending in {', '.join(sorted(_BY_SUFFIX))} (optionally followed by "
                f"{', '.join(sorted(_COMPRESSED))}) or a content type of "
                + ", ".join(sorted(_BY_CONTENT_TYPE))
            )
        file_format = _BY_CONTENT_TYPE[kind]
    if file_format is FileFormat.PARQUET and compression is not Compression.NONE:
        raise SchemaError(
            f"{name!r}: a Parquet file compresses its own pages; expected it without "
            f"an outer {compression} layer"
        )
    return FileKind(file_format, compression)


def read_chunks(path: Path, kind: FileKind, *, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """The file's rows, ``chunk_rows`` at a time at most; ``SchemaError`` if it cannot be parsed."""
    try:
        for chunk in _chunks(path, kind, chunk_rows):
            for start in range(0, max(chunk.num_rows, 1), chunk_rows):
                yield chunk.slice(start, chunk_rows)
    except (
        ValueError,
        OSError,
        EOFError,
        pa.ArrowException,
        csv.Error,
    ) as exc:
        raise SchemaError(f"{path.name} cannot be parsed as {kind}: {_detail(exc)}") from exc


def _detail(exc: BaseException) -> str:
    """What went wrong, in a line, never quoting the file's content."""
    if isinstance(exc, UnicodeDecodeError):
        where = f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start} of its first line"
        return f"it is not UTF-8 text ({where}); {_AS_UTF8}"
    text = str(exc).strip()
    if "invalid UTF8" in text:  # pyarrow's CSV reader, past the first lines
        return f"it is not UTF-8 text; {_AS_UTF8}"
    unsplit = _UNSPLIT_NOT_UTF8.match(text)
    if unsplit:
        # _CsvUnsplit keeps every row that does not split; pyarrow raises this instead
        # only for a row it could not hand over, as it cannot decode the row's text.
        where = f" (row {int(unsplit[1]) - 1})" if unsplit[1] else ""
        return f"it is not UTF-8 text{where}; {_AS_UTF8}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _stream(path: Path, kind: FileKind) -> pa.NativeFile:
    compression = None if kind.compression is Compression.NONE else str(kind.compression)
    return pa.input_stream(str(path), compression=compression)


def _chunks(path: Path, kind: FileKind, chunk_rows: int) -> Iterator[pa.Table]:
    if kind.file_format is FileFormat.PARQUET:
        # A page whose checksum does not match is an error, not silently other values
        # (for files written with checksums; without them there is nothing to check).
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
        batches = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            batches += 1
            yield _valid(pa.Table.from_batches([batch]), path, kind)
        if batches == 0:
            yield parquet.schema_arrow.empty_table()
    elif kind.file_format is FileFormat.CSV:
        yield from _csv(path, kind)
    else:
        yield from _jsonl(path, kind, chunk_rows)


def _valid(table: pa.Table, path: Path, kind: FileKind) -> pa.Table:
    """``table``, once each column holds what its type says. Pages without checksums can
    decode, damaged, into text that is not UTF-8, which no later step could read."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise SchemaError(
                f"{path.name} cannot be parsed as {kind}: column {name!r} does not hold valid "
                f"{column.type} values ({_detail(exc)}); expected the file as its writer made "
                "it, with text in UTF-8: was it damaged on the way?"
            ) from None
    return table


class _Unsplit:
    """The counts of a file's rows: split into columns, and not (with the first such)."""

    def __init__(self) -> None:
        self.split = 0
        self.unsplit = 0
        self.first: tuple[int, str] | None = None

    def count(self, table: pa.Table) -> pa.Table:
        unsplit = 0
        if UNPARSED_REASON in table.column_names:
            reasons = table.column(UNPARSED_REASON)
            unsplit = table.num_rows - reasons.null_count
            if unsplit and self.first is None:
                at = int(np.flatnonzero(reasons.is_valid().to_numpy(zero_copy_only=False))[0])
                self.first = (self.split + self.unsplit + at + 1, str(reasons[at].as_py()))
        self.split += table.num_rows - unsplit
        self.unsplit += unsplit
        return table

    def check(self, path: Path, kind: FileKind) -> None:
        """Refuse the file when it had rows and not one could be split into columns."""
        if self.split or not self.unsplit or self.first is None:
            return
        number, reason = self.first
        raise SchemaError(
            f"{path.name} cannot be parsed as {kind}: none of its {self.unsplit} rows could be "
            f"split into columns; row {number}: {reason}"
        )


# -- CSV ---------------------------------------------------------------------------


def _csv(path: Path, kind: FileKind) -> Iterator[pa.Table]:
    names, rows_follow = _header(path, kind)
    if not names:
        raise SchemaError(f"{path.name} cannot be parsed as {kind}: it is empty (no header)")
    if not rows_follow:  # a header alone (pyarrow refuses one without a line break)
        yield pa.schema([pa.field(n, pa.string()) for n in names]).empty_table()
        return
    unsplit = _CsvUnsplit()
    counts = _Unsplit()
    with _stream(path, kind) as stream:
        reader = pcsv.open_csv(
            stream,
            # One thread: rows that do not split are then reported with their row
            # numbers, in order, so each goes back in its place (measured: no slower).
            read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
            # A quoted value may hold a line break (a comment, an address): without this a
            # block edge inside one throws the parser out of sync (measured: 5% slower).
            parse_options=pcsv.ParseOptions(invalid_row_handler=unsplit, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                # Text, every column: validation parses, and says why it could not.
                column_types=dict.fromkeys(names, pa.string()),
                # Only an empty cell is no value: pyarrow's other null markers ("NA",
                # "null", "N/A", "NaN"...) are text that came (Namibia's code is NA).
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        first = 1  # the row number of the next chunk's first row
        for batch in reader:
            chunk = counts.count(unsplit.merge(pa.Table.from_batches([batch]), first))
            first += chunk.num_rows
            yield chunk
        rest = unsplit.rest(reader.schema, first)
        if rest is not None:
            yield counts.count(rest)
        elif first == 1:  # a header and no rows
            yield reader.schema.empty_table()
    counts.check(path, kind)


class _CsvUnsplit:
    """pyarrow's handler of CSV rows that do not split into the header's columns.

    Each is skipped by the parser and kept here with its row number, to be put
    back in its place among the parsed rows, marked, as a bad row.
    """

    def __init__(self) -> None:
        #: (row number, from 1, or None when pyarrow did not say; reason; the line)
        self.pending: deque[tuple[int | None, str, str]] = deque()

    def __call__(self, row: Any) -> str:
        # pyarrow numbers the header as row 1; its rows count from 1 here.
        number = row.number - 1 if row.number is not None else None
        reason = (
            f"{ROW}: expected {row.expected_columns} values, one per column of the header, "
            f"got {row.actual_columns}"
        )
        self.pending.append((number, reason, row.text))
        return "skip"

    def merge(self, batch: pa.Table, first: int) -> pa.Table:
        """The batch with the rows that did not split among it put back, in file order."""
        placed: list[tuple[int, str, str]] = []  # (position in the chunk, reason, line)
        while self.pending:
            number, reason, line = self.pending[0]
            last = first + batch.num_rows + len(placed)  # the chunk's last row, with this one
            if number is not None and number > last:
                break
            self.pending.popleft()
            position = last - first if number is None else number - first
            if placed:  # in order and distinct, whatever pyarrow said
                position = max(position, placed[-1][0] + 1)
            placed.append((max(position, 0), reason, line))
        if not placed:
            return batch
        return _with_unsplit(batch, placed)

    def rest(self, schema: pa.Schema, first: int) -> pa.Table | None:
        """Rows that did not split after the last parsed one, as a chunk of their own."""
        if not self.pending:
            return None
        return self.merge(schema.empty_table(), first)


def _with_unsplit(batch: pa.Table, placed: list[tuple[int, str, str]]) -> pa.Table:
    """``batch`` and the unsplit rows as one table: each unsplit row at its position."""
    m, k = batch.num_rows, len(placed)
    parsed = batch.append_column(UNPARSED_REASON, pa.nulls(m, pa.string())).append_column(
        UNPARSED_TEXT, pa.nulls(m, pa.string())
    )
    arrays = [pa.nulls(k, field.type) for field in batch.schema]
    arrays.append(pa.array([reason for _, reason, _ in placed], pa.string()))
    arrays.append(pa.array([line for _, _, line in placed], pa.string()))
    unsplit = pa.Table.from_arrays(arrays, schema=parsed.schema)
    at = np.zeros(m + k, dtype=bool)
    at[[position for position, _, _ in placed]] = True
    order = np.empty(m + k, dtype=np.int64)
    order[at] = m + np.arange(k)
    order[~at] = np.arange(m)
    return pa.concat_tables([parsed, unsplit]).take(pa.array(order))


def _header(path: Path, kind: FileKind) -> tuple[list[str], bool]:
    """The CSV's column names (its first line that is not blank, as the csv module reads
    it), and whether anything follows that line."""
    with _stream(path, kind) as stream:
        lines = io.BufferedReader(stream)
        raw = b""
        while not raw.strip():
            raw = lines.readline(CSV_BLOCK_BYTES)
            if not raw:
                return [], False
            if len(raw) >= CSV_BLOCK_BYTES and not raw.endswith(b"\n"):
                raise SchemaError(
                    f"{path.name} cannot be parsed as {kind}: its first line is longer than "
                    f"{CSV_BLOCK_BYTES >> 20} MiB; expected a header line of column names"
                )
        more = bool(lines.peek(1)) if raw.endswith((b"\n", b"\r")) else False
    for mark, encoding in _OTHER_ENCODINGS:
        if raw.startswith(mark):
            raise SchemaError(
                f"{path.name} cannot be parsed as {kind}: it is {encoding} text (it starts "
                f"with a {encoding} byte order mark); {_AS_UTF8}"
            )
    if b"\0" in raw:
        raise SchemaError(
            f"{path.name} cannot be parsed as {kind}: its first line holds NUL bytes, as "
            f"UTF-16 text or a binary file does; {_AS_UTF8}"
        )
    first = raw.decode("utf-8-sig")  # a UnicodeDecodeError says which byte (read_chunks)
    return next(csv.reader([first.rstrip("\r\n")]), []), more


# -- JSON Lines --------------------------------------------------------------------


def _jsonl(path: Path, kind: FileKind, chunk_rows: int) -> Iterator[pa.Table]:
    keys: dict[str, None] = {}  # every key seen so far in the file, in order
    rows: list[dict[str, Any] | tuple[str, str]] = []  # an object, or (reason, line)
    counts = _Unsplit()
    with _stream(path, kind) as stream:
        for number, line in enumerate(io.BufferedReader(stream)):
            if number == 0:
                line = line.removeprefix(codecs.BOM_UTF8)
            if not line.strip():
                continue  # a blank line is not a row
            row = _json_row(line)
            if isinstance(row, dict):
                keys.update(dict.fromkeys(row))
            rows.append(row)
            if len(rows) == chunk_rows:
                yield counts.count(_json_table(rows, keys))
                rows = []
    if rows:
        yield counts.count(_json_table(rows, keys))
    counts.check(path, kind)


def _json_row(line: bytes) -> dict[str, Any] | tuple[str, str]:
    """The line's object, or why it is not one and the line as text."""
    try:
        value = orjson.loads(line)  # an integer past 64 bits comes as a float, as JSON allows
    except orjson.JSONDecodeError as exc:
        reason = f"{ROW}: expected a JSON object, got a line that is not JSON ({exc})"
        return reason, line.decode("utf-8", errors="replace").rstrip("\r\n")
    if isinstance(value, dict):
        return value
    reason = f"{ROW}: expected a JSON object, got a JSON {_json_kind(value)}"
    return reason, line.decode("utf-8", errors="replace").rstrip("\r\n")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def _json_table(rows: list[dict[str, Any] | tuple[str, str]], keys: dict[str, None]) -> pa.Table:
    """One chunk's rows as columns: one per key seen so far in the file, typed where
    a column's values agree, as JSON text where they do not (validation says why)."""
    columns = {
        key: _json_column([row.get(key) if isinstance(row, dict) else None for row in rows])
        for key in keys
    }
    if any(not isinstance(row, dict) for row in rows):
        unsplit = [None if isinstance(row, dict) else row for row in rows]
        columns[UNPARSED_REASON] = pa.array([u and u[0] for u in unsplit], pa.string())
        columns[UNPARSED_TEXT] = pa.array([u and u[1] for u in unsplit], pa.string())
    if not columns:  # objects with no key at all: a table with no column has no rows
        return pa.table({UNPARSED_REASON: pa.nulls(len(rows), pa.string())})
    return pa.table(columns)


def _json_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        # Values of more than one type (a string among numbers): each as its JSON text.
        return pa.array([_json_text(v) for v in values], pa.string())


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
