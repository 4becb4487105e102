"""Hypothesis strategies for rows of any feature schema, and what a good row must satisfy.

Each cell is drawn as one of four kinds: a ``VALID`` value of its column (in one
of several spellings), an ``INVALID`` one (a rule broken), a ``MISSING`` one (no
value, a blank), or an ``ODD`` one (any text at all, whose fate the test does
not predict). Entities and instants come from small pools, so rows often share
an (entity, timestamp) key, written in different ways.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import pandas as pd
from hypothesis import strategies as st

from falaj.schema import ColumnSpec, DType, FeatureSchema

ENTITIES = ("card-1", "card-2", "card-3", "card-4")
INSTANTS = (
    datetime(2025, 1, 3, tzinfo=UTC),  # a midnight, so it can be written as a date alone
    datetime(2025, 1, 3, 10, 15, tzinfo=UTC),
    datetime(2025, 1, 3, 10, 15, 0, 250_000, tzinfo=UTC),
    datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC),
)
#: The nanosecond timestamps' range, in whole days inside it.
EARLIEST, LATEST = pd.Timestamp("1677-09-22", tz="UTC"), pd.Timestamp("2262-04-11", tz="UTC")
INT64_MAX = 2**63 - 1


class Kind(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    MISSING = "missing"
    ODD = "odd"


@dataclass(frozen=True)
class Cell:
    kind: Kind
    #: The value as a CSV holds it; None for no value at all.
    text: str | None
    #: What a valid value means: the entity, the instant, the number.
    meant: Any = None


Row = dict[str, Cell]


def rows(schema: FeatureSchema, *, max_size: int = 40) -> st.SearchStrategy[list[Row]]:
    return st.lists(row(schema), max_size=max_size)


def row(schema: FeatureSchema) -> st.SearchStrategy[Row]:
    """A good row, one with a few cells spoilt, or one of any cells, a third each
    (of any cells alone, a row of ten columns would almost never be good)."""
    good = st.fixed_dictionaries({c.name: valid(schema, c) for c in schema.columns})
    spoilt = st.fixed_dictionaries({c.name: cell(schema, c) for c in schema.columns})

    @st.composite
    def some_spoilt(draw: st.DrawFn) -> Row:
        base, other = draw(good), draw(spoilt)
        names = draw(st.sets(st.sampled_from(schema.column_names), min_size=1, max_size=3))
        return {name: other[name] if name in names else c for name, c in base.items()}

    return st.one_of(good, some_spoilt(), spoilt)


def cell(schema: FeatureSchema, column: ColumnSpec) -> st.SearchStrategy[Cell]:
    kinds = [
        valid(schema, column),
        valid(schema, column),  # twice as likely: most rows of a real file are good
        missing(),
        odd(),
    ]
    bad = invalid(column)
    if bad is not None:
        kinds.append(bad)
    return st.one_of(kinds)


def missing() -> st.SearchStrategy[Cell]:
    return st.sampled_from([None, "", "   ", "\t"]).map(lambda t: Cell(Kind.MISSING, t))


def odd() -> st.SearchStrategy[Cell]:
    return st.text(max_size=12).map(lambda t: Cell(Kind.ODD, t))


def padded(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from(["{}", " {}", "{}  "]).map(lambda f: f.format(text))


def valid(schema: FeatureSchema, column: ColumnSpec) -> st.SearchStrategy[Cell]:
    if column.name == schema.entity:
        return st.sampled_from(ENTITIES).flatmap(
            lambda e: padded(e).map(lambda t: Cell(Kind.VALID, t, e))
        )
    if column.dtype is DType.STRING:
        if column.allowed is not None:
            return st.sampled_from(column.allowed).flatmap(
                lambda a: padded(a).map(lambda t: Cell(Kind.VALID, t, a))
            )
        words = st.text(string.ascii_letters + string.digits + "-_ .,'\"é中", min_size=1)
        return words.filter(lambda w: w.strip()).map(lambda w: Cell(Kind.VALID, w, w.strip()))
    if column.dtype is DType.TIMESTAMP:
        return st.sampled_from(INSTANTS).flatmap(
            lambda i: st.sampled_from(spellings(i)).map(lambda t: Cell(Kind.VALID, t, i))
        )
    if column.dtype is DType.INT:
        low = (
            int(column.min) + (1 if column.min_exclusive else 0)
            if column.min is not None
            else -INT64_MAX
        )
        high = (
            int(column.max) - (1 if column.max_exclusive else 0)
            if column.max is not None
            else INT64_MAX
        )
        return st.integers(low, high).flatmap(
            lambda n: st.sampled_from(int_spellings(n)).map(lambda t: Cell(Kind.VALID, t, n))
        )
    low_f = column.min if column.min is not None else -1e12
    high_f = column.max if column.max is not None else 1e12
    numbers = st.floats(
        low_f,
        high_f,
        exclude_min=column.min_exclusive,
        exclude_max=column.max_exclusive,
        allow_nan=False,
        allow_infinity=False,
    )
    return numbers.flatmap(
        lambda x: st.sampled_from(
            [repr(x), repr(x) if repr(x).startswith("-") else f"+{x!r}", f" {x!r} "]
        ).map(lambda t: Cell(Kind.VALID, t, x))
    )


def spellings(instant: datetime) -> list[str]:
    """The ways an instant may be written, each meaning it."""
    dubai = instant.astimezone(timezone(timedelta(hours=4)))
    found = [
        instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        instant.isoformat(),
        instant.isoformat().replace("+00:00", "Z").replace("T", " "),
        instant.replace(tzinfo=None).isoformat(),  # no offset: UTC
        dubai.isoformat(),
    ]
    if instant == instant.replace(hour=0, minute=0, second=0, microsecond=0):
        found.append(instant.date().isoformat())
    return found


def int_spellings(n: int) -> list[str]:
    found = [str(n), f" {n}", f"{n} "]
    if n >= 0:
        found += [f"+{n}", f"000{n}"]
    if abs(n) < 2**53:  # exactly a float too
        found += [f"{n}.0", f"{n}e0"]
    return found


def invalid(column: ColumnSpec) -> st.SearchStrategy[Cell] | None:
    """Values that break one of the column's rules; None where no value of text can."""
    if column.dtype is DType.STRING:
        allowed = column.allowed
        if allowed is None:
            return None
        words = st.text(string.ascii_letters, min_size=1)
        return words.filter(lambda w: w not in allowed).map(lambda w: Cell(Kind.INVALID, w))
    if column.dtype is DType.TIMESTAMP:
        texts = ["yesterday", "2025-13-01", "2025-02-30T10:00:00Z", "9999-12-31", "1000-01-01"]
        return st.sampled_from(texts).map(lambda t: Cell(Kind.INVALID, t))
    texts = ["abc", "inf", "-Infinity", "nan", "1,5", "\u0663", "0x10", "1_000", "1e400"]
    if column.min is not None:
        below = column.min if column.min_exclusive else column.min - 1
        texts.append(_num(below))
    if column.max is not None:
        above = column.max if column.max_exclusive else column.max + 1
        texts.append(_num(above))
    if column.dtype is DType.INT:
        texts += ["2.5", "-0.1", str(2**63), str(-(2**63) - 1), "1e30"]
    return st.sampled_from(texts).map(lambda t: Cell(Kind.INVALID, t))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def broken(schema: FeatureSchema, cells: Row) -> set[str] | None:
    """The columns a row breaks (empty: a good row), or None when an odd cell makes it unknown."""
    if any(c.kind is Kind.ODD for c in cells.values()):
        return None
    return {
        name
        for name, c in cells.items()
        if c.kind is Kind.INVALID or (c.kind is Kind.MISSING and not schema.column(name).nullable)
    }


def texts(cells: Row) -> dict[str, str | None]:
    return {name: c.text for name, c in cells.items()}


def rule_breaks(schema: FeatureSchema, values: dict[str, Any]) -> list[str]:
    """What a typed good row breaks (nothing, for a good row): checked apart from validation."""
    found = []
    for column in schema.columns:
        value = values[column.name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not column.nullable:
                found.append(f"{column.name}: null")
            continue
        if column.dtype is DType.STRING:
            if not isinstance(value, str) or not value.strip():
                found.append(f"{column.name}: not a string: {value!r}")
            elif column.allowed is not None and value not in column.allowed:
                found.append(f"{column.name}: not allowed: {value!r}")
            continue
        if column.dtype is DType.TIMESTAMP:
            stamp = pd.Timestamp(value)
            if stamp.tzinfo is None or not EARLIEST <= stamp <= LATEST:
                found.append(f"{column.name}: not a UTC timestamp: {value!r}")
            continue
        if column.dtype is DType.INT and (not isinstance(value, int) or isinstance(value, bool)):
            found.append(f"{column.name}: not an int: {value!r}")
        if not math.isfinite(value):
            found.append(f"{column.name}: not finite: {value!r}")
        if column.min is not None and (
            value < column.min or (column.min_exclusive and value == column.min)
        ):
            found.append(f"{column.name}: below the minimum: {value!r}")
        if column.max is not None and (
            value > column.max or (column.max_exclusive and value == column.max)
        ):
            found.append(f"{column.name}: above the maximum: {value!r}")
    return found
