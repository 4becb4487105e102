"""Reading a landed file in chunks, so a file of any size is held a chunk at a time.

Values are read as they are written (CSV cells as strings), so validation sees
exactly what came and a quarantined row shows it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from falaj.errors import SchemaError

CHUNK_ROWS = 50_000


class FileFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    JSONL = "jsonl"


_BY_SUFFIX = {
    ".csv": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET,
    ".jsonl": FileFormat.JSONL,
    ".ndjson": FileFormat.JSONL,
}
_BY_CONTENT_TYPE = {
    "text/csv": FileFormat.CSV,
    "application/vnd.apache.parquet": FileFormat.PARQUET,
    "application/jsonl": FileFormat.JSONL,
    "application/x-ndjson": FileFormat.JSONL,
}


def format_of(name: str, content_type: str) -> FileFormat:
    """The file's format, by its name's suffix first, then by its content type."""
    suffix = Path(name).suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in _BY_CONTENT_TYPE:
        return _BY_CONTENT_TYPE[kind]
    raise SchemaError(
        f"cannot tell how to read {name!r} (content type {content_type!r}); expected a "
        f"name ending in {', '.join(sorted(_BY_SUFFIX))} or a content type of "
        + ", ".join(sorted(_BY_CONTENT_TYPE))
    )


def read_chunks(
    path: Path, file_format: FileFormat, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The file's rows, ``chunk_rows`` at a time; ``SchemaError`` when it cannot be parsed."""
    try:
        yield from _chunks(path, file_format, chunk_rows)
    except (ValueError, UnicodeDecodeError, pa.ArrowException, pd.errors.ParserError) as exc:
        # pandas' EmptyDataError and ParserError are ValueErrors too.
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise SchemaError(f"{path.name} cannot be parsed as {file_format}: {detail}") from exc


def _chunks(path: Path, file_format: FileFormat, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if file_format is FileFormat.CSV:
        with pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            chunksize=chunk_rows,
            encoding="utf-8",
        ) as reader:
            yield from reader
    elif file_format is FileFormat.PARQUET:
        parquet = pq.ParquetFile(path)
        batches = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            batches += 1
            yield batch.to_pandas()
        if batches == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
    else:
        with pd.read_json(
            path, lines=True, chunksize=chunk_rows, dtype=False, convert_dates=False
        ) as reader:
            yield from reader
