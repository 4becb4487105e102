"""Rows against the feature schema, a whole batch at a time, with pyarrow compute.

Each check is one kernel over a column of the batch; only rows that fail are
ever looked at one by one, to say why. A column read as text (CSV, JSON
Lines) is parsed with the fast cast first; only when that refuses some value
does the slower path find out which (a regex for numbers, pandas' ISO 8601
parser for timestamps), so clean data never pays for it. Every reason a row
fails is collected, not just the first, and the row is kept as it came.

Typed input (Parquet, JSON numbers) skips the parsing and gets the same checks;
a typed value that cannot be what its column needs (a struct for a string, a
timestamp beyond what 64-bit nanoseconds hold, an integer beyond 64 bits) is
a reason like any other, never an error. A reason quotes the value it is about,
except in a column the schema marks ``pii``.

A reader marks a row it could not split into columns (a CSV line with the wrong
number of values, a JSON Lines line that is not an object) with the reserved
columns ``UNPARSED_REASON`` and ``UNPARSED_TEXT``: the row is rejected for that
reason alone, and kept as the line that came.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from falaj.errors import SchemaError
from falaj.schema import ColumnSpec, DType, FeatureSchema

#: What a number may look like once trimmed: what Arrow's cast to float64 takes.
NUMBER = (
    r"^[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
    r"|[iI][nN][fF]([iI][nN][iI][tT][yY])?|[nN][aA][nN])$"
)
#: A timestamp written with an offset: Z, or +hh, +hhmm, +hh:mm after a time of day.
OFFSET = r"[Tt ].*[0-9]([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)$"
#: How much of a bad value a reason quotes.
QUOTED_CHARS = 80
#: What a reason says in place of a value of a column marked ``pii``.
WITHHELD = "a value withheld (pii)"
#: A reader's reserved columns for a row it could not parse: why, and the line as it came.
UNPARSED_REASON = "__falaj_unparsed_reason__"
UNPARSED_TEXT = "__falaj_unparsed_text__"
#: The key under which a rejected unparsed row keeps its line.
UNPARSED_ROW = "_line"
RESERVED = frozenset({UNPARSED_REASON, UNPARSED_TEXT})
INT64_MAX = 2**63 - 1
#: The nanoseconds a timestamp holds (64 bits), as dates a reason can name.
EARLIEST_DAY, LATEST_DAY = "1677-09-22", "2262-04-11"
UTC_NS = pa.timestamp("ns", tz="UTC")
ARROW_TYPES: Mapping[DType, pa.DataType] = {
    DType.STRING: pa.string(),
    DType.TIMESTAMP: UTC_NS,
    DType.FLOAT: pa.float64(),
    DType.INT: pa.int64(),
}


@dataclass(frozen=True)
class RowRejection:
    """One row that failed the contract, with every reason, and the row as it came."""

    row_number: int
    reasons: list[str]
    row: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"row_number": self.row_number, "reasons": self.reasons, "row": self.row}


@dataclass(frozen=True)
class Validated:
    #: Rows that passed, typed per the schema, in the schema's column order.
    good: pa.Table
    rejected: list[RowRejection]
    #: Rows with no value (null or blank), per column, before any other check.
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def rows_total(self) -> int:
        return self.good.num_rows + len(self.rejected)


class SeenKeys:
    """The (entity, timestamp) keys accepted so far in one file, across its batches.

    Keys are 64-bit hashes beside their row numbers (16 bytes a row), held in a
    few sorted runs merged like a binary counter, so each key is sorted
    O(log n) times in all rather than once per batch.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []

    def __len__(self) -> int:
        return sum(len(hashes) for hashes, _ in self._runs)

    def first_rows(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """The row number each key was first accepted at, or -1 when it is new.

        Sorted ``hashes`` make this several times faster: each binary search
        then lands near the last one, in memory the cache already holds.
        """
        found = np.full(len(hashes), -1, dtype=np.int64)
        for run_hashes, run_rows in self._runs:
            at = np.searchsorted(run_hashes, hashes)
            inside = at < len(run_hashes)
            hit = inside.copy()
            hit[inside] = run_hashes[at[inside]] == hashes[inside]
            found[hit] = run_rows[at[hit]]
        return found

    def add(self, hashes: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]) -> None:
        order = np.argsort(hashes, kind="stable")
        self.add_sorted(hashes[order], rows[order])

    def add_sorted(self, hashes: npt.NDArray[np.uint64], rows: npt.NDArray[np.int64]) -> None:
        """Keys already in hash order (equal hashes in row order)."""
        self._runs.append((hashes, rows))
        while len(self._runs) > 1 and len(self._runs[-1][0]) >= len(self._runs[-2][0]):
            (h2, r2), (h1, r1) = self._runs.pop(), self._runs.pop()
            merged_hashes, merged_rows = np.concatenate([h1, h2]), np.concatenate([r1, r2])
            order = np.argsort(merged_hashes, kind="stable")
            self._runs.append((merged_hashes[order], merged_rows[order]))


@dataclass
class _Reasons:
    """Reasons for failing rows, as (position, message) pairs in the order checks ran."""

    positions: list[npt.NDArray[np.int64]] = field(default_factory=list)
    messages: list[list[str]] = field(default_factory=list)
    #: Rows a reader could not parse: they keep that one reason and get no other.
    settled: npt.NDArray[np.bool_] | None = None

    def add(
        self,
        prefix: str,
        raw: pa.Array,
        mask: pa.Array,
        *,
        quote: bool = False,
        withheld: bool = False,
    ) -> None:
        where = self._where(mask)
        if not len(where):
            return
        self.positions.append(where.astype(np.int64))
        if withheld:  # a pii value never reaches a reason (reasons go to logs, quarantine)
            self.messages.append([prefix + WITHHELD] * len(where))
            return
        shown = raw.take(pa.array(where)).to_pylist()
        self.messages.append([prefix + _shown(value, quote) for value in shown])

    def add_fixed(self, message: str, mask: pa.Array) -> None:
        where = self._where(mask)
        if len(where):
            self.positions.append(where.astype(np.int64))
            self.messages.append([message] * len(where))

    def _where(self, mask: pa.Array) -> npt.NDArray[np.intp]:
        where = np.flatnonzero(_np(mask))
        if self.settled is not None and len(where):
            where = where[~self.settled[where]]
        return where

    def failing(self, n: int) -> npt.NDArray[np.bool_]:
        failed = np.zeros(n, dtype=bool)
        for where in self.positions:
            failed[where] = True
        return failed


def validate_table(
    schema: FeatureSchema,
    table: pa.Table,
    *,
    first_row_number: int = 1,
    seen: SeenKeys | None = None,
) -> Validated:
    """Split a batch into good rows (typed) and rejected ones (with every reason).

    ``first_row_number`` is the number of the batch's first row in its file, so
    reasons point at the right line when a file is read in batches; ``seen``
    carries accepted keys from earlier batches of the same file.
    """
    table = _plain(table)
    n = table.num_rows
    reasons = _Reasons()
    unparsed = _unparsed(table, reasons)
    # A chunk of lines a reader could not parse has no columns to require.
    if unparsed is None or not n or not unparsed.all():
        schema.require_columns([c for c in table.column_names if c not in RESERVED])
    _require_once(schema, table.column_names)
    typed: dict[str, pa.Array] = {}
    missing: dict[str, int] = {}
    for column in schema.columns:
        if column.name in table.column_names:
            raw = table.column(column.name).combine_chunks()
        else:
            raw = pa.nulls(n, pa.string())
        typed[column.name], missing[column.name] = _check(column, raw, reasons)
    ok = ~reasons.failing(n)
    keys = seen if seen is not None else SeenKeys()  # an empty one is falsy (len 0)
    _duplicates(schema, typed, ok, first_row_number, keys, reasons)
    ok = ~reasons.failing(n)
    keep = pa.array(ok)
    good = pa.table(
        {c.name: typed[c.name].filter(keep) for c in schema.columns},
        schema=arrow_schema(schema),
    )
    return Validated(
        good=good, rejected=_rejections(table, reasons, first_row_number), missing=missing
    )


def _plain(table: pa.Table) -> pa.Table:
    """The table with view-typed columns cast to their plain types, which every kernel takes."""
    for at, column in enumerate(table.schema):
        if pa.types.is_string_view(column.type):
            table = table.set_column(at, column.name, table.column(at).cast(pa.string()))
        elif pa.types.is_binary_view(column.type):
            table = table.set_column(at, column.name, table.column(at).cast(pa.binary()))
    return table


def _unparsed(table: pa.Table, reasons: _Reasons) -> npt.NDArray[np.bool_] | None:
    """Which rows a reader could not parse, with their reasons added; None if it marked none."""
    if UNPARSED_REASON not in table.column_names:
        return None
    why = table.column(UNPARSED_REASON).combine_chunks()
    settled = _np(pc.is_valid(why))
    where = np.flatnonzero(settled)
    if len(where):
        reasons.positions.append(where.astype(np.int64))
        reasons.messages.append([str(m) for m in why.take(pa.array(where)).to_pylist()])
    reasons.settled = settled
    return settled


def _require_once(schema: FeatureSchema, names: list[str]) -> None:
    """A column of the schema that comes twice is ambiguous: which one is the value?"""
    counts = Counter(names)
    twice = [name for name in schema.column_names if counts[name] > 1]
    if twice:
        raise SchemaError(
            f"dataset {schema.dataset!r}: columns {twice} come more than once; expected "
            "each column of the schema once, so which value a row has is not ambiguous"
        )


@dataclass(frozen=True)
class ValidatedFrame:
    """``Validated`` for pandas callers: good rows as a DataFrame."""

    #: Typed: strings as ``object``, timestamps as UTC, ints as int64, floats as float64.
    good: pd.DataFrame
    rejected: list[RowRejection]

    @property
    def rows_total(self) -> int:
        return len(self.good) + len(self.rejected)


def validate_frame(
    schema: FeatureSchema,
    frame: pd.DataFrame,
    *,
    first_row_number: int = 1,
    seen: SeenKeys | None = None,
) -> ValidatedFrame:
    """``validate_table`` for a DataFrame (the same checks, the same reasons)."""
    table = frame_as_table(frame)
    validated = validate_table(schema, table, first_row_number=first_row_number, seen=seen)
    return ValidatedFrame(good=validated.good.to_pandas(), rejected=validated.rejected)


def frame_as_table(frame: pd.DataFrame) -> pa.Table:
    """A DataFrame as a table; mixed Python values (a str among numbers) go in as text,
    as a CSV's would."""
    return pa.table(
        {
            str(name): pa.array(values.astype("string"))
            if values.dtype == object
            else pa.Array.from_pandas(values)
            for name, values in frame.reset_index(drop=True).items()
        }
    )


def arrow_schema(schema: FeatureSchema) -> pa.Schema:
    """The typed table of good rows: one field per column, in the schema's order."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.dtype]) for c in schema.columns])


# -- one column ------------------------------------------------------------------


def _check(column: ColumnSpec, raw: pa.Array, reasons: _Reasons) -> tuple[pa.Array, int]:
    """The column typed (null where a value cannot be), and how many values were missing.

    Its bad rows' reasons are added to ``reasons``.
    """
    name, hide = column.name, column.pii
    if pa.types.is_dictionary(raw.type):  # a categorical column: its values, not its codes
        raw = raw.dictionary_decode()
    if pa.types.is_null(raw.type):  # a JSON column with no value at all
        raw = pa.nulls(len(raw), pa.string())
    raw, not_utf8 = _text_of(raw)
    text = pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type)
    values = pc.utf8_trim_whitespace(raw.cast(pa.string())) if text else raw
    missing = pc.is_null(values)
    if text:
        missing = pc.or_(missing, pc.equal(values, ""))
    missing = missing.fill_null(True)
    if not_utf8 is not None:
        reasons.add_fixed(f"{name}: expected UTF-8 text, got bytes that are not", not_utf8)
        missing = pc.and_(missing, pc.invert(not_utf8))
    missing_count = pc.sum(missing).as_py() or 0
    if not column.nullable:
        reasons.add_fixed(f"{name}: missing; expected a value of type {column.dtype}", missing)
    present = pc.invert(missing)
    if not_utf8 is not None:
        present = pc.and_(present, pc.invert(not_utf8))
    if column.dtype is DType.STRING:
        try:
            strings = pc.if_else(present, values.cast(pa.string()), pa.scalar(None, pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # A nested value (a struct, a list) has no text of its own.
            reasons.add(f"{name}: expected a string, got ", raw, present, withheld=hide)
            return pa.nulls(len(raw), pa.string()), missing_count
        if column.allowed is not None:
            known = pc.is_in(strings, value_set=pa.array(list(column.allowed)))
            unknown = pc.and_(present, pc.invert(known))
            prefix = f"{name}: expected one of {', '.join(column.allowed)}; got "
            reasons.add(prefix, raw, unknown, quote=True, withheld=hide)
        return strings, missing_count
    if column.dtype is DType.TIMESTAMP:
        stamps, outside = _timestamps(values, present, text)
        unparsed = pc.and_(pc.and_(present, pc.is_null(stamps)), pc.invert(outside))
        prefix = f"{name}: expected an ISO 8601 timestamp (UTC), got "
        reasons.add(prefix, raw, unparsed, quote=True, withheld=hide)
        prefix = f"{name}: expected a timestamp from {EARLIEST_DAY} to {LATEST_DAY}, got "
        reasons.add(prefix, raw, outside, quote=True, withheld=hide)
        return stamps, missing_count
    numbers = _numbers(values, present, text)
    not_number = pc.and_(
        present, pc.or_(pc.is_null(numbers), pc.invert(pc.is_finite(numbers).fill_null(False)))
    )
    prefix = f"{name}: expected a finite number, got "
    reasons.add(prefix, raw, not_number, quote=True, withheld=hide)
    usable = pc.and_(present, pc.invert(not_number))
    ints = None
    if column.dtype is DType.INT:
        fractional = pc.and_(usable, pc.not_equal(pc.floor(numbers), numbers).fill_null(False))
        reasons.add(f"{name}: expected a whole number, got ", raw, fractional, withheld=hide)
        usable = pc.and_(usable, pc.invert(fractional))
        ints, fits = _ints(values, numbers, usable, text)
        too_large = pc.and_(usable, pc.invert(fits))
        prefix = f"{name}: expected a whole number from -2^63 to 2^63-1 (64 bits), got "
        reasons.add(prefix, raw, too_large, withheld=hide)
        usable = pc.and_(usable, fits)
    _ranges(column, raw, numbers, usable, reasons)
    if ints is not None:
        return pc.if_else(usable, ints, pa.scalar(None, pa.int64())), missing_count
    return pc.if_else(usable, numbers, pa.scalar(None, pa.float64())), missing_count


def _text_of(raw: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Bytes as text, and which values are not UTF-8 (None when every one is, or none is bytes)."""
    if not (pa.types.is_binary(raw.type) or pa.types.is_large_binary(raw.type)):
        return raw, None
    try:
        return raw.cast(pa.string()), None
    except pa.ArrowInvalid:
        pass
    # Value by value, only when some bytes are not UTF-8 (rare: a binary Parquet column).
    decoded: list[str | None] = []
    for value in raw.to_pylist():
        try:
            decoded.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            decoded.append(None)
    bad = pc.and_(pc.is_valid(raw), pc.is_null(pa.array(decoded, pa.string())))
    return pa.array(decoded, pa.string()), bad


def _numbers(values: pa.Array, present: pa.Array, text: bool) -> pa.Array:
    """float64 values, null where a value is absent or is not a number."""
    if not text:
        if pa.types.is_boolean(values.type):
            return values.cast(pa.int8()).cast(pa.float64())
        # Unsafe for integers and decimals: a uint64 past 2^53 rounds here (ranges
        # are checked on these floats) rather than fail the column; ``_ints`` is exact.
        safe = not (pa.types.is_integer(values.type) or pa.types.is_decimal(values.type))
        try:
            return values.cast(pa.float64(), safe=safe)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return pa.nulls(len(values), pa.float64())
    candidates = pc.if_else(present, values, pa.scalar(None, pa.string()))
    try:
        return candidates.cast(pa.float64())
    except pa.ArrowInvalid:
        # Some value is not a number: find which, and parse the others.
        parsable = pc.match_substring_regex(candidates, NUMBER).fill_null(False)
        return pc.if_else(parsable, candidates, pa.scalar(None, pa.string())).cast(pa.float64())


def _ints(
    values: pa.Array, numbers: pa.Array, usable: pa.Array, text: bool
) -> tuple[pa.Array, pa.Array]:
    """The usable values as exact int64, and which of them fit in 64 bits.

    float64 holds whole numbers exactly only up to 2^53, so a value typed as an
    integer, or written in digits alone, is read as an integer, not through it.
    """
    fits = pc.and_(usable, pc.less(pc.abs(numbers), 2.0**63)).fill_null(False)
    exact = pc.if_else(fits, numbers, pa.scalar(None, pa.float64())).cast(pa.int64())
    if pa.types.is_integer(values.type):
        unsigned = values.type == pa.uint64()
        small = pc.less_equal(values, pa.scalar(INT64_MAX, values.type)) if unsigned else usable
        fits = pc.and_(usable, small).fill_null(False)
        kept = pc.if_else(fits, values, pa.scalar(None, values.type))
        return kept.cast(pa.int64()), fits
    if not text:
        return exact, fits
    written = pc.if_else(usable, values, pa.scalar(None, pa.string()))
    try:
        return written.cast(pa.int64()), usable  # the usual case: every value in digits
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Up to 18 digits always fit; 19 and more are rare, and Python's int says.
    # (Arrow's cast takes a "-" but not a "+".)
    short = pc.match_substring_regex(written, r"^[+-]?0*[0-9]{1,18}$").fill_null(False)
    digits = pc.match_substring_regex(written, r"^[+-]?[0-9]+$").fill_null(False)
    unsigned = pc.replace_substring_regex(written, pattern=r"^\+", replacement="")
    shorts = pc.if_else(short, unsigned, pa.scalar(None, pa.string())).cast(pa.int64())
    exact = pc.if_else(short, shorts, exact)
    fits = pc.or_(fits, short)
    long = np.flatnonzero(_np(digits) & ~_np(short))
    if not len(long):
        return exact, fits
    ints, ok = exact.to_pylist(), _np(fits).copy()
    for at in long:
        whole = int(written[at].as_py())
        ok[at] = -(2**63) <= whole <= INT64_MAX
        ints[at] = whole if ok[at] else None
    return pa.array(ints, pa.int64()), pa.array(ok)


def _timestamps(values: pa.Array, present: pa.Array, text: bool) -> tuple[pa.Array, pa.Array]:
    """UTC timestamps (null where a value is absent or not one), and which present
    values are timestamps outside what 64-bit nanoseconds hold.

    A value without an offset is taken to be UTC already; a date is its midnight.
    """
    none = pa.array(np.zeros(len(values), dtype=bool))
    if not text:
        if pa.types.is_date(values.type):
            values = values.cast(pa.timestamp("ms"))
        if not pa.types.is_timestamp(values.type):
            return pa.nulls(len(values), UTC_NS), none
        fits = _fits_ns(values)
        values = pc.if_else(fits, values, pa.scalar(None, values.type))
        outside = pc.and_(present, pc.invert(fits))
        if values.type.tz is None:
            naive = values.cast(pa.timestamp("ns"))
            return pc.assume_timezone(naive, "UTC").cast(UTC_NS), outside
        return values.cast(UTC_NS), outside
    candidates = pc.if_else(present, values, pa.scalar(None, pa.string()))
    try:
        return candidates.cast(UTC_NS), none
    except pa.ArrowInvalid:
        pass
    # Some value has no offset (UTC, then), is a date alone, or is bad. Values with
    # an offset and values without are parsed apart: given both, pandas reads a
    # value without one in the offset of the value before it (2025-01-03T00:00 after
    # one at +04:00 came out 4 hours early).
    aware = pc.match_substring_regex(candidates, OFFSET).fill_null(False)
    none_str = pa.scalar(None, pa.string())
    with_offset = _parsed(pc.if_else(aware, candidates, none_str), UTC_NS)
    without = _parsed(pc.if_else(aware, none_str, candidates), pa.timestamp("ns"))
    stamps = pc.if_else(aware, with_offset, without)
    failed = np.flatnonzero(_np(pc.and_(present, pc.is_null(stamps))))
    outside = np.zeros(len(values), dtype=bool)
    for at in failed:  # only the values that failed: is it a date beyond 64 bits of ns?
        outside[at] = _is_iso_date(candidates[at].as_py())
    return stamps, pa.array(outside)


def _parsed(texts: pa.Array, stamp: pa.DataType) -> pa.Array:
    """UTC timestamps of texts that all have an offset (``stamp`` with a zone) or all
    have none (without: taken as UTC); null where a text is not one."""
    try:
        parsed = texts.cast(stamp)
    except pa.ArrowInvalid:
        # Dates alone, other ISO 8601 forms, or bad ones: pandas' ISO 8601 parser,
        # value by value, so one odd value cannot fail the batch.
        series = pd.to_datetime(
            pd.Series(texts.to_pylist(), dtype=object),
            utc=True,
            errors="coerce",
            format="ISO8601",
        )
        return pa.array(series.astype("datetime64[ns, UTC]"), type=UTC_NS, from_pandas=True)
    if stamp.tz is None:
        return pc.assume_timezone(parsed, "UTC").cast(UTC_NS)
    return parsed.cast(UTC_NS)


def _fits_ns(values: pa.Array) -> pa.Array:
    """Which timestamps (of any unit) fit in 64-bit nanoseconds; null ones do not."""
    per_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[values.type.unit]
    ticks = values.cast(pa.int64())
    low, high = -(2**63 - 1) // per_ns, INT64_MAX // per_ns
    inside = pc.and_(pc.greater_equal(ticks, low), pc.less_equal(ticks, high))
    return inside.fill_null(False)


def _is_iso_date(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _ranges(
    column: ColumnSpec, raw: pa.Array, numbers: pa.Array, usable: pa.Array, reasons: _Reasons
) -> None:
    hide = column.pii
    if column.min is not None:
        low = pc.less_equal if column.min_exclusive else pc.less
        op = ">" if column.min_exclusive else ">="
        mask = pc.and_(usable, low(numbers, column.min).fill_null(False))
        prefix = f"{column.name}: expected {op} {_num(column.min)}, got "
        reasons.add(prefix, raw, mask, withheld=hide)
    if column.max is not None:
        high = pc.greater_equal if column.max_exclusive else pc.greater
        op = "<" if column.max_exclusive else "<="
        mask = pc.and_(usable, high(numbers, column.max).fill_null(False))
        prefix = f"{column.name}: expected {op} {_num(column.max)}, got "
        reasons.add(prefix, raw, mask, withheld=hide)


# -- across rows -------------------------------------------------------------------


def _duplicates(
    schema: FeatureSchema,
    typed: Mapping[str, pa.Array],
    ok: npt.NDArray[np.bool_],
    first_row_number: int,
    seen: SeenKeys,
    reasons: _Reasons,
) -> None:
    """Reasons for otherwise good rows whose (entity, timestamp) came before."""
    positions = np.flatnonzero(ok)
    if not len(positions):
        return
    index = pa.array(positions)
    entities = typed[schema.entity].take(index)
    stamps = typed[schema.timestamp].take(index)
    hashes = key_hashes(entities, stamps)
    rows = positions.astype(np.int64) + first_row_number
    # One stable sort by key serves both questions: within this batch, a key's
    # first row heads its run; and sorted queries make the search of earlier
    # batches' keys cache-friendly.
    order = np.argsort(hashes, kind="stable")
    sorted_hashes, sorted_rows = hashes[order], rows[order]
    heads = np.ones(len(order), dtype=bool)
    heads[1:] = sorted_hashes[1:] != sorted_hashes[:-1]
    first_here = sorted_rows[np.maximum.accumulate(np.where(heads, np.arange(len(order)), 0))]
    earlier = seen.first_rows(sorted_hashes)
    first_sorted = np.where(earlier >= 0, earlier, first_here)
    kept = first_sorted == sorted_rows
    seen.add_sorted(sorted_hashes[kept], sorted_rows[kept])
    first = np.empty_like(first_sorted)
    first[order] = first_sorted
    is_duplicate = first != rows
    if not is_duplicate.any():
        return
    message = f"duplicate ({schema.entity}, {schema.timestamp}): the same key came at row "
    reasons.positions.append(positions[is_duplicate].astype(np.int64))
    reasons.messages.append([message + str(row) for row in first[is_duplicate]])


def key_hashes(entities: pa.Array, stamps: pa.Array) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each (entity, timestamp) pair.

    Entities are dictionary-encoded first, so each distinct one is hashed once
    however many rows carry it.
    """
    encoded = pc.dictionary_encode(entities)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
    by_entity = pd.util.hash_array(distinct.astype(object))[encoded.indices.to_numpy()]
    by_time = pd.util.hash_array(_np(stamps.cast(pa.int64())))
    return by_entity * np.uint64(0x9E3779B97F4A7C15) ^ by_time


# -- the rejected rows --------------------------------------------------------------


def _rejections(table: pa.Table, reasons: _Reasons, first_row_number: int) -> list[RowRejection]:
    if not reasons.positions:
        return []
    positions = np.concatenate(reasons.positions)
    messages = [m for run in reasons.messages for m in run]
    # Stable, so each row's reasons stay in the order the checks ran.
    order = np.argsort(positions, kind="stable")
    by_row: dict[int, list[str]] = {}
    for at in order:
        by_row.setdefault(int(positions[at]), []).append(messages[at])
    rows = table.take(pa.array(list(by_row))).to_pylist()
    return [
        RowRejection(
            row_number=position + first_row_number,
            reasons=row_reasons,
            row=_as_it_came(row),
        )
        for (position, row_reasons), row in zip(by_row.items(), rows, strict=True)
    ]


def _as_it_came(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected row's values as JSON, or the line a reader could not parse."""
    if row.get(UNPARSED_REASON) is not None:
        return {UNPARSED_ROW: row.get(UNPARSED_TEXT)}
    return {str(k): _jsonable(v) for k, v in row.items() if k not in RESERVED}


def _np(array: pa.Array) -> npt.NDArray[Any]:
    return array.to_numpy(zero_copy_only=False)


def _shown(value: Any, quote: bool) -> str:
    text = str(value)[:QUOTED_CHARS]
    return f"'{text}'" if quote else text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
