"""The ingest function never loses a row: random rows, written as a CSV, through it all.

Every row of the file is either in the offline store or in the quarantine,
never both, never neither: quarantined row numbers and the rows stored
partition 1..n, the stored rows are the good rows that came (typed), and each
quarantined row is kept as it came with its reasons.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings

from falaj.events import DataIngested, EventType
from falaj.schema import DType, FeatureSchema, load_schema
from falaj.settings import Settings
from tests.functions.test_ingest import (
    CapturingIngest,
    created,
    land,
    offline_files,
    running_ingest,
)
from tests.support.rows import Kind, Row, broken, rows, rule_breaks

pytestmark = pytest.mark.timeout(300)
#: The function's schema, read as it reads it (the demo's), for the strategy below.
SCHEMA = load_schema(Settings())


@pytest.fixture(scope="module")
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CapturingIngest]:
    """One started function for every example (Feast's start costs seconds): each example
    lands a file of its own, a new object to the function."""
    with running_ingest(tmp_path_factory.mktemp("properties") / ".falaj") as started:
        yield started


def csv_of(schema: FeatureSchema, drawn: list[Row]) -> bytes:
    out = io.StringIO()
    # Lines end in CRLF, so a value holding a CR alone is quoted too: unquoted, a CR is
    # a line break to any CSV reader.
    writer = csv.writer(out)
    writer.writerow(schema.column_names)
    writer.writerows([[r[c].text for c in schema.column_names] for r in drawn])
    return out.getvalue().encode()


def as_came(text: str | None) -> str | None:
    """A cell as a CSV holds it: no value and an empty one are the same, an empty cell."""
    return text or None


def typed(schema: FeatureSchema, cells: Row) -> tuple[Any, ...]:
    """A good row's values but its timestamp, as Python reads its text."""
    values: list[Any] = []
    for column in schema.columns:
        text = cells[column.name].text
        if column.dtype is DType.TIMESTAMP:
            continue
        if text is None or not text.strip():
            values.append(None)
        elif column.dtype is DType.STRING:
            values.append(text.strip())
        elif column.dtype is DType.INT:
            written = text.strip()
            digits = written.lstrip("+-")
            exact = digits.isascii() and digits.isdigit()
            values.append(int(written) if exact else int(float(written)))
        else:
            values.append(float(text))
    return tuple(values)


counter = itertools.count()


@settings(max_examples=60, deadline=None)
@given(drawn=rows(SCHEMA, max_size=30))
def test_every_row_is_stored_or_quarantined_never_both_never_neither(
    function: CapturingIngest, drawn: list[Row]
) -> None:
    schema, ctx = function.schema, function.ctx
    key = f"prop-{next(counter)}.csv"
    before = set(offline_files(ctx))
    land(ctx, key, csv_of(schema, drawn))
    function.emitted.clear()
    function.handle(created(ctx, key))

    ((event_type, data),) = function.emitted
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested), data
    n = len(drawn)
    assert data.rows_total == n and data.rows_ingested + data.rows_quarantined == n

    entries: list[dict[str, Any]] = []
    if data.quarantine_location is not None:
        text = Path(data.quarantine_location).read_text()
        entries = [json.loads(line) for line in text.splitlines()]
    numbers = [e["row_number"] for e in entries]
    assert len(numbers) == len(set(numbers)) == data.rows_quarantined
    assert set(numbers) <= set(range(1, n + 1))
    for entry in entries:
        cells = drawn[entry["row_number"] - 1]
        assert entry["row"] == {c: as_came(cells[c].text) for c in schema.column_names}
        assert entry["reasons"]

    files = sorted(set(offline_files(ctx)) - before)
    stored = pd.concat([pd.read_parquet(p) for p in files]) if files else pd.DataFrame()
    assert len(stored) == data.rows_ingested
    good = [cells for number, cells in enumerate(drawn, 1) if number not in set(numbers)]
    for cells in good:
        assert broken(schema, cells) in (None, set()), "a row breaking a rule was stored"
    if not good:
        return
    kept = stored[list(schema.column_names)].astype(object).where(stored.notna(), None)
    for row in kept.to_dict("records"):
        assert rule_breaks(schema, row) == [], f"stored, breaking rules: {row}"
    names = [c.name for c in schema.columns if c.dtype is not DType.TIMESTAMP]
    assert Counter(tuple(r[n] for n in names) for r in kept.to_dict("records")) == Counter(
        typed(schema, cells) for cells in good
    )
    meant = Counter(
        pd.Timestamp(cells[schema.timestamp].meant)
        for cells in good
        if cells[schema.timestamp].kind is Kind.VALID
    )
    assert not meant - Counter(stored[schema.timestamp]), "a stored row's time is not its own"
