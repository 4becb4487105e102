"""Validation's properties over random rows, and typed input that does not fit its column.

For any rows, in any chunks: every row is either good or rejected, never both
and never neither; a good row satisfies every rule and is the row that came,
typed; a rejected row is kept as it came, with reasons that each name a column
and the rule it broke; no two good rows share an (entity, timestamp) key.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from falaj.errors import SchemaError
from falaj.schema import ColumnSpec, DType, FeatureSchema, load_schema
from falaj.settings import Settings
from falaj.validation import (
    UNPARSED_REASON,
    UNPARSED_TEXT,
    SeenKeys,
    Validated,
    ValidatedFrame,
    validate_frame,
    validate_table,
)
from tests.support.rows import INSTANTS, Kind, Row, broken, rows, rule_breaks, texts

DEMO = load_schema(Settings())
#: Every rule at least once: nullable columns, exclusive bounds on both sides, a
#: negative minimum, free and allowed strings, PII.
RULES = FeatureSchema(
    dataset="rules",
    entity="account",
    timestamp="at",
    label="label",
    columns=(
        ColumnSpec(name="account", dtype=DType.STRING),
        ColumnSpec(name="at", dtype=DType.TIMESTAMP),
        ColumnSpec(name="label", dtype=DType.INT, min=0, max=1),
        ColumnSpec(
            name="ratio", dtype=DType.FLOAT, nullable=True, min=-1, max=1, max_exclusive=True
        ),
        ColumnSpec(name="delta", dtype=DType.INT, nullable=True, min=-500),
        ColumnSpec(name="note", dtype=DType.STRING, nullable=True),
        ColumnSpec(name="tier", dtype=DType.STRING, allowed=("gold", "silver"), pii=True),
        ColumnSpec(name="seen", dtype=DType.TIMESTAMP, nullable=True),
    ),
)
SCHEMAS = {"demo": DEMO, "rules": RULES}
INT64_MAX = 2**63 - 1


def chunked(data: st.DataObject, n: int) -> list[tuple[int, int]]:
    """Random chunk edges over n rows: (start, stop) pairs covering them in order."""
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=4))) | {0, n})
    return list(itertools.pairwise(cuts)) or [(0, 0)]


def validate_in_chunks(
    schema: FeatureSchema, table: pa.Table, edges: list[tuple[int, int]]
) -> tuple[pa.Table, list[Any]]:
    seen = SeenKeys()
    good, rejected = [], []
    for start, stop in edges:
        part = validate_table(
            schema, table.slice(start, stop - start), first_row_number=start + 1, seen=seen
        )
        assert part.rows_total == stop - start
        good.append(part.good)
        rejected += part.rejected
    return pa.concat_tables(good), rejected


def key_of(schema: FeatureSchema, good: dict[str, Any]) -> tuple[str, int]:
    return good[schema.entity], pd.Timestamp(good[schema.timestamp]).value


def meant_key(schema: FeatureSchema, cells: Row) -> tuple[str, int]:
    instant = cells[schema.timestamp].meant
    return cells[schema.entity].meant, pd.Timestamp(instant).value


def assert_is_the_row_that_came(schema: FeatureSchema, good: dict[str, Any], cells: Row) -> None:
    for name, c in cells.items():
        value, column = good[name], schema.column(name)
        if c.kind is Kind.MISSING or value is None:
            assert value is None and c.kind in (Kind.MISSING, Kind.ODD), (name, c, value)
            continue
        assert c.text is not None
        if column.dtype is DType.STRING:
            assert value.strip() == c.text.strip() and value in c.text, (name, c, value)
        elif column.dtype is DType.TIMESTAMP:
            if c.kind is Kind.VALID:
                assert pd.Timestamp(value) == pd.Timestamp(c.meant), (name, c, value)
        elif column.dtype is DType.INT:
            written = c.text.strip()
            digits = written.lstrip("+-")
            exact = int(written) if digits.isascii() and digits.isdigit() else int(float(written))
            assert value == exact, (name, c, value)
        else:
            assert value == float(c.text), (name, c, value)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(SCHEMAS)))
def test_every_row_is_good_or_rejected_and_good_rows_keep_every_rule(
    data: st.DataObject, name: str
) -> None:
    schema = SCHEMAS[name]
    drawn = data.draw(rows(schema))
    columns = {c.name: [r[c.name].text for r in drawn] for c in schema.columns}
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    edges = chunked(data, len(drawn))
    good, rejected = validate_in_chunks(schema, table, edges)

    numbers = [r.row_number for r in rejected]
    assert len(set(numbers)) == len(numbers), f"a row rejected twice: {numbers}"
    assert set(numbers) <= set(range(1, len(drawn) + 1))
    assert good.num_rows + len(rejected) == len(drawn)
    good_rows = iter(good.to_pylist())
    rejected_by_number = {r.row_number: r for r in rejected}
    keys: dict[tuple[str, int], int] = {}
    for number, cells in enumerate(drawn, start=1):
        expected = broken(schema, cells)
        rejection = rejected_by_number.get(number)
        if rejection is None:
            kept = next(good_rows)
            assert rule_breaks(schema, kept) == [], f"row {number} kept, breaking rules"
            assert not expected, f"row {number} breaks {expected} and was kept: {texts(cells)}"
            assert_is_the_row_that_came(schema, kept, cells)
            key = key_of(schema, kept)
            assert key not in keys, f"rows {keys.get(key)} and {number} share a key"
            keys[key] = number
            continue
        assert rejection.row == texts(cells), "a rejected row is kept as it came"
        assert rejection.reasons, f"row {number} rejected without a reason"
        named = set()
        for reason in rejection.reasons:
            if reason.startswith("duplicate ("):
                first = int(reason.rsplit(" ", 1)[1])
                assert first < number and keys.get(meant_key(schema, cells)) in (first, None)
                continue
            column, rule = reason.split(": ", 1)
            assert column in schema.column_names and rule.startswith(("expected", "missing;"))
            if schema.column(column).pii:
                assert "withheld" in rule or rule.startswith("missing;"), reason
            named.add(column)
        if expected is not None and expected:
            assert named == expected, f"row {number}: reasons {rejection.reasons}, broke {expected}"
        elif expected is not None:  # a good row refused: only as a duplicate of a kept one
            assert [r.split(":")[0] for r in rejection.reasons] == [
                f"duplicate ({schema.entity}, {schema.timestamp})"
            ]
            assert meant_key(schema, cells) in keys
    assert next(good_rows, None) is None


# -- validate_frame: Python values of any type ------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(INSTANTS),
    st.decimals(allow_nan=False, places=3),
)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(SCHEMAS)))
def test_a_frame_of_any_python_values_is_split_without_an_error(
    data: st.DataObject, name: str
) -> None:
    schema = SCHEMAS[name]
    n = data.draw(st.integers(0, 12))
    frame = pd.DataFrame(
        {c.name: data.draw(st.lists(ANY_VALUE, min_size=n, max_size=n)) for c in schema.columns},
        dtype=object,
    )
    result: ValidatedFrame = validate_frame(schema, frame)
    numbers = [r.row_number for r in result.rejected]
    assert sorted(numbers) == sorted(set(numbers)) and set(numbers) <= set(range(1, n + 1))
    assert len(result.good) + len(numbers) == n
    for kept in result.good.astype(object).where(result.good.notna(), None).to_dict("records"):
        values = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in kept.items()}
        assert rule_breaks(schema, values) == []


# -- typed columns that do not fit -------------------------------------------------

GOOD_TEXT: dict[str, str] = {
    "card_id": "card-1",
    "event_timestamp": "2025-01-03T10:15:00Z",
    "amount": "42.5",
    "hour": "10",
    "distance_km": "3.2",
    "card_age_days": "400",
    "tx_count_24h": "2",
    "is_foreign": "0",
    "merchant_category": "grocery",
    "is_fraud": "0",
}


def two_rows_with(name: str, column: pa.Array) -> Validated:
    table = pa.table(
        {k: pa.array([v, v.replace("1", "2")]) for k, v in GOOD_TEXT.items()} | {name: column}
    )
    return validate_table(DEMO, table)


TOO_LARGE = "card_age_days: expected a whole number from -2^63 to 2^63-1 (64 bits), got "
BEYOND_NS = "event_timestamp: expected a timestamp from 1677-09-22 to 2262-04-11, got "
NOT_ISO = "event_timestamp: expected an ISO 8601 timestamp (UTC), got "
TYPED: dict[str, tuple[str, pa.Array, list[list[str]]]] = {
    # case: (column, its two values, the reasons of the rows rejected)
    "a struct for a string": (
        "card_id",
        pa.array([{"a": 1}, None]),
        [
            ["card_id: expected a string, got {'a': 1}"],
            ["card_id: missing; expected a value of type string"],
        ],
    ),
    "a list for a string": (
        "card_id",
        pa.array([[1], [2]]),
        [["card_id: expected a string, got [1]"], ["card_id: expected a string, got [2]"]],
    ),
    "bytes that are not UTF-8": (
        "card_id",
        pa.array([b"card-1", b"\xff"]),
        [["card_id: expected UTF-8 text, got bytes that are not"]],
    ),
    "string views": ("card_id", pa.array(["card-1", "card-2"], pa.string_view()), []),
    "a categorical string": ("card_id", pa.array(["card-1", "card-2"]).dictionary_encode(), []),
    "a categorical number": (
        "amount",
        pa.array(["1.5", "x"]).dictionary_encode(),
        [["amount: expected a finite number, got 'x'"]],
    ),
    "decimals": ("amount", pa.array([decimal.Decimal("1.5"), decimal.Decimal("2")]), []),
    "an unsigned integer past 2^63": (
        "card_age_days",
        pa.array([2**64 - 1, 3], pa.uint64()),
        [[TOO_LARGE + "18446744073709551615"]],
    ),
    "a float past 2^63": ("card_age_days", pa.array([1e19, 3.0]), [[TOO_LARGE + "1e+19"]]),
    "a microsecond timestamp past 2262": (
        "event_timestamp",
        pa.array([dt.datetime(9999, 12, 31), dt.datetime(2025, 1, 1)], pa.timestamp("us")),
        [[BEYOND_NS + "'9999-12-31 00:00:00'"]],
    ),
    "dates": ("event_timestamp", pa.array([dt.date(2025, 1, 1), dt.date(2025, 1, 2)]), []),
    "integers for a timestamp": (
        "event_timestamp",
        pa.array([1, 2]),
        [[NOT_ISO + "'1'"], [NOT_ISO + "'2'"]],
    ),
}


@pytest.mark.parametrize("case", list(TYPED))
def test_typed_values_that_do_not_fit_their_column_are_reasons_not_errors(case: str) -> None:
    name, column, reasons = TYPED[case]
    result = two_rows_with(name, column)
    assert [r.reasons for r in result.rejected] == reasons
    assert result.good.num_rows == 2 - len(reasons)


def test_a_date_is_its_midnight_in_utc() -> None:
    result = two_rows_with("event_timestamp", pa.array([dt.date(2025, 1, 1), dt.date(2025, 1, 2)]))
    assert result.good.column("event_timestamp").to_pylist() == [
        dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
    ]


def test_whole_numbers_past_2_to_the_53_are_kept_exactly() -> None:
    # float64 would round 2^53 + 1 to 2^53; "3.0" makes the column take the slow path too.
    for others in ("400", "3.0"):
        result = two_rows_with("card_age_days", pa.array([str(2**53 + 1), others]))
        assert result.good.column("card_age_days").to_pylist() == [
            2**53 + 1,
            3 if others == "3.0" else 400,
        ]
    result = two_rows_with("card_age_days", pa.array([str(INT64_MAX), "3.0"]))
    assert result.good.column("card_age_days").to_pylist()[0] == INT64_MAX


def test_a_column_of_the_schema_twice_is_refused() -> None:
    table = pa.table({k: [v] for k, v in GOOD_TEXT.items()})
    twice = table.append_column("amount", pa.array(["1"]))
    with pytest.raises(SchemaError, match=r"columns \['amount'\] come more than once"):
        validate_table(DEMO, twice)


def test_rows_a_reader_could_not_split_keep_one_reason_and_their_line() -> None:
    table = pa.table({k: [v, None] for k, v in GOOD_TEXT.items()})
    table = table.append_column(UNPARSED_REASON, pa.array([None, "row: expected 10 values"]))
    table = table.append_column(UNPARSED_TEXT, pa.array([None, "a,b"]))
    result = validate_table(DEMO, table, first_row_number=5)
    assert result.good.num_rows == 1 and result.good.column_names == list(DEMO.column_names)
    (rejection,) = result.rejected
    assert (rejection.row_number, rejection.reasons, rejection.row) == (
        6,
        ["row: expected 10 values"],
        {"_line": "a,b"},
    )
    alone = pa.table({UNPARSED_REASON: ["row: x"], UNPARSED_TEXT: ["x"]})
    assert [r.reasons for r in validate_table(DEMO, alone).rejected] == [["row: x"]]


def test_a_pii_value_is_never_quoted_in_a_reason() -> None:
    row = {"account": "a", "at": "2025-01-01", "label": "0", "tier": "PLATINUM-secret"}
    table = pa.table({c.name: [row.get(c.name)] for c in RULES.columns})
    (rejection,) = validate_table(RULES, table).rejected
    assert rejection.reasons == ["tier: expected one of gold, silver; got a value withheld (pii)"]
