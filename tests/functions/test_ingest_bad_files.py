"""Bad rows and bad files through the ingest function: each ends in a clear outcome.

A bad row is quarantined with a reason naming its column and the rule it broke,
while the good rows of the same file reach the offline and online stores; a
file that cannot be read is refused whole, with a reason that says why, and
leaves no row behind. Nothing crashes, nothing hangs (each test has a timeout).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.events import DataIngested, DataRejected, EventType
from tests.functions.test_ingest import CapturingIngest, created, land, offline_files

pytestmark = pytest.mark.timeout(120)

ROWS = 20
#: The row (0-based) each bad-row case breaks; its row number in the file is one more.
BAD = 7


@pytest.fixture
def function(ctx: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(ctx)
    try:
        yield started
    finally:
        started.stop()


def transactions(n: int = ROWS, *, seed: int = 31) -> pd.DataFrame:
    """``n`` good rows as the text a CSV holds, one card each (each its card's newest online)."""
    rows = generate_transactions(n, seed=seed, cards=n)
    rows["card_id"] = [f"card-{i:04d}" for i in range(n)]
    return rows.astype(str)


def csv_of(rows: pd.DataFrame) -> bytes:
    return rows.to_csv(index=False).encode()


def compressed(content: bytes, codec: str) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as stream:
        stream.write(content)
    return bytes(sink.getvalue().to_pybytes())


def parquet_of(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def outcome(function: CapturingIngest) -> tuple[EventType, DataIngested | DataRejected]:
    ((event_type, data),) = function.emitted
    assert isinstance(data, DataIngested | DataRejected), data
    return event_type, data


def quarantined(data: DataIngested) -> list[dict[str, Any]]:
    assert data.quarantine_location is not None, "expected a quarantine file, got none"
    text = Path(data.quarantine_location).read_text()
    return [json.loads(line) for line in text.splitlines()]


def offline_rows(ctx: Context) -> pd.DataFrame:
    files = offline_files(ctx)
    assert files, "expected rows in the offline store, found no file"
    return pd.concat(pd.read_parquet(p) for p in files)


def assert_arrived(function: CapturingIngest, ctx: Context, good: pd.DataFrame) -> None:
    """``good`` (text rows) in the offline store, and each card's row online."""
    stored = offline_rows(ctx)
    assert sorted(stored["card_id"]) == sorted(good["card_id"])
    by_card = stored.set_index("card_id")
    for column in ("amount", "hour", "merchant_category"):
        expected = good.set_index("card_id")[column]
        kept = by_card.loc[expected.index, column].astype(str)
        assert kept.str.replace(r"\.0$", "", regex=True).tolist() == [
            v.removesuffix(".0") for v in expected
        ], column
    cards = sorted(good["card_id"])
    online = function.features.online_features(cards)
    assert online["amount"] == [float(v) for v in good.set_index("card_id").loc[cards, "amount"]]


# -- bad rows: quarantined with their reason, the others in ------------------------


def change(column: str, value: str) -> Callable[[pd.DataFrame], bytes]:
    def build(rows: pd.DataFrame) -> bytes:
        rows.loc[BAD, column] = value
        return csv_of(rows)

    return build


def duplicate_of(row: int) -> Callable[[pd.DataFrame], bytes]:
    def build(rows: pd.DataFrame) -> bytes:
        rows.loc[BAD, ["card_id", "event_timestamp"]] = rows.loc[
            row, ["card_id", "event_timestamp"]
        ]
        return csv_of(rows)

    return build


def ragged(values: int) -> Callable[[pd.DataFrame], bytes]:
    def build(rows: pd.DataFrame) -> bytes:
        lines = csv_of(rows).decode().splitlines()
        lines[BAD + 1] = ",".join(f"v{i}" for i in range(values))  # line 1 is the header
        return ("\n".join(lines) + "\n").encode()

    return build


BAD_ROWS: dict[str, tuple[Callable[[pd.DataFrame], bytes], str, str]] = {
    # case: (how the row is broken, the column its reason names, the reason)
    "missing": (change("hour", ""), "hour", "hour: missing; expected a value of type int"),
    "blank": (
        change("card_id", "   "),
        "card_id",
        "card_id: missing; expected a value of type string",
    ),
    "not a number": (
        change("amount", "twelve"),
        "amount",
        "amount: expected a finite number, got 'twelve'",
    ),
    "not finite": (
        change("distance_km", "inf"),
        "distance_km",
        "distance_km: expected a finite number, got 'inf'",
    ),
    "not whole": (
        change("tx_count_24h", "2.5"),
        "tx_count_24h",
        "tx_count_24h: expected a whole number, got 2.5",
    ),
    "past 64 bits": (
        change("card_age_days", "99999999999999999999"),
        "card_age_days",
        "card_age_days: expected a whole number from -2^63 to 2^63-1 (64 bits), "
        "got 99999999999999999999",
    ),
    "at an exclusive minimum": (change("amount", "0"), "amount", "amount: expected > 0, got 0"),
    "above the maximum": (
        change("is_foreign", "2"),
        "is_foreign",
        "is_foreign: expected <= 1, got 2",
    ),
    "not allowed": (
        change("merchant_category", "casino"),
        "merchant_category",
        "merchant_category: expected one of grocery, fuel, travel, electronics, dining, "
        "online, other; got 'casino'",
    ),
    "not a timestamp": (
        change("event_timestamp", "yesterday"),
        "event_timestamp",
        "event_timestamp: expected an ISO 8601 timestamp (UTC), got 'yesterday'",
    ),
    "a timestamp beyond 64 bits of nanoseconds": (
        change("event_timestamp", "9999-12-31"),
        "event_timestamp",
        "event_timestamp: expected a timestamp from 1677-09-22 to 2262-04-11, got '9999-12-31'",
    ),
    "a duplicate key": (
        duplicate_of(3),
        "duplicate key",
        "duplicate (card_id, event_timestamp): the same key came at row 4",
    ),
    "too few values": (
        ragged(3),
        "row",
        "row: expected 10 values, one per column of the header, got 3",
    ),
    "too many values": (
        ragged(12),
        "row",
        "row: expected 10 values, one per column of the header, got 12",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_quarantined_naming_its_column_and_rule_and_the_rest_arrive(
    ctx: Context, function: CapturingIngest, case: str
) -> None:
    build, column, reason = BAD_ROWS[case]
    rows = transactions()
    content = build(rows)
    land(ctx, "day.csv", content)
    function.handle(created(ctx, "day.csv"))

    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested, data.rows_quarantined) == (ROWS, ROWS - 1, 1)
    (entry,) = quarantined(data)
    assert entry["row_number"] == BAD + 1
    assert entry["reasons"] == [reason]
    if column == "row":  # a line that did not split is kept as the line that came
        assert entry["row"] == {"_line": content.decode().splitlines()[BAD + 1]}
    else:
        assert entry["row"] == {k: (v or None) for k, v in rows.loc[BAD].items()}
    (quality,) = function.quality
    assert quality.rejected_by_column == {column: 1}
    assert_arrived(function, ctx, rows.drop(index=BAD))
    if case != "a duplicate key":  # its card is row 4's, which is online
        missing = function.features.online_features([rows.loc[BAD, "card_id"]])
        assert missing["amount"] == [None]


def test_json_lines_with_bad_lines_and_a_mixed_type_column(
    ctx: Context, function: CapturingIngest
) -> None:
    rows = transactions()
    records = generate_transactions(ROWS, seed=31, cards=ROWS)
    records["card_id"] = rows["card_id"]
    records["event_timestamp"] = rows["event_timestamp"]
    objects = json.loads(records.to_json(orient="records"))  # numbers as JSON numbers
    lines = [json.dumps(r) for r in objects]
    lines[3] = lines[3].replace('"amount": ', '"amount": "abc", "was": ')  # one string amount
    lines[9] = lines[9][:40]  # cut short: not JSON
    lines[14] = json.dumps(list(objects[14].values()))  # an array, not an object
    lines.insert(5, "")  # a blank line is not a row: numbering goes on as if it were not there
    land(ctx, "day.jsonl", ("\n".join(lines) + "\n").encode())
    function.handle(created(ctx, "day.jsonl"))

    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested, data.rows_quarantined) == (ROWS, ROWS - 3, 3)
    entries = quarantined(data)
    assert [e["row_number"] for e in entries] == [4, 10, 15]
    assert entries[0]["reasons"] == ["amount: expected a finite number, got 'abc'"]
    assert entries[1]["reasons"][0].startswith(
        "row: expected a JSON object, got a line that is not JSON ("
    )
    assert entries[2]["reasons"] == ["row: expected a JSON object, got a JSON array"]
    assert entries[1]["row"] == {"_line": lines[10]}  # the line as it came (after the blank)
    assert_arrived(function, ctx, rows.drop(index=[3, 9, 14]))


def test_parquet_with_wrong_column_types_quarantines_the_values_that_do_not_fit(
    ctx: Context, function: CapturingIngest
) -> None:
    rows = transactions()
    typed = generate_transactions(ROWS, seed=31, cards=ROWS)
    typed["card_id"] = rows["card_id"]
    table = pa.Table.from_pandas(typed, preserve_index=False)
    amounts = rows["amount"].tolist()
    amounts[2] = "twelve"
    hours = [float(h) for h in rows["hour"]]
    hours[5] = 3.5
    stamps = [
        t.to_pydatetime() for t in pd.to_datetime(rows["event_timestamp"]).dt.tz_localize(None)
    ]
    stamps[8] = datetime(9999, 12, 31)  # a "never" date, as some systems write them
    ages = pa.array([int(a) for a in rows["card_age_days"]], pa.uint64())
    ages = pa.concat_arrays([ages.slice(0, 12), pa.array([2**64 - 1], pa.uint64()), ages.slice(13)])
    replaced = {
        "amount": pa.array(amounts, pa.string()),  # numbers as text
        "hour": pa.array(hours, pa.float64()),  # whole numbers as floats, one not whole
        "event_timestamp": pa.array(stamps, pa.timestamp("us")),  # no zone; one beyond 2262
        "card_age_days": ages,  # unsigned, one past 2^63
        "is_fraud": pa.array([r == "1" for r in rows["is_fraud"]]),  # booleans
        "merchant_category": pa.array(rows["merchant_category"]).dictionary_encode(),
    }
    for name, column in replaced.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    land(ctx, "day.parquet", parquet_of(table))
    function.handle(created(ctx, "day.parquet"))

    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    entries = quarantined(data)
    assert [(e["row_number"], e["reasons"]) for e in entries] == [
        (3, ["amount: expected a finite number, got 'twelve'"]),
        (6, ["hour: expected a whole number, got 3.5"]),
        (
            9,
            [
                "event_timestamp: expected a timestamp from 1677-09-22 to 2262-04-11, got "
                "'9999-12-31 00:00:00'"
            ],
        ),
        (
            13,
            [
                "card_age_days: expected a whole number from -2^63 to 2^63-1 (64 bits), got "
                "18446744073709551615"
            ],
        ),
    ]
    good = rows.drop(index=[2, 5, 8, 12])
    assert_arrived(function, ctx, good)
    stored = offline_rows(ctx).set_index("card_id").loc[good["card_id"]]
    assert stored["is_fraud"].tolist() == [int(v) for v in good["is_fraud"]]
    assert stored["card_age_days"].tolist() == [int(v) for v in good["card_age_days"]]


# -- files that are fine, however odd ------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n"], ids=["no line break", "a line break"])
def test_a_header_only_csv_is_an_ingested_batch_of_no_rows(
    ctx: Context, function: CapturingIngest, content: bytes
) -> None:
    # An export of a day with no transactions: the header is checked, and no row came.
    header = csv_of(transactions(1)).splitlines()[0]
    land(ctx, "day.csv", header + content)
    function.handle(created(ctx, "day.csv"))
    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested, data.rows_quarantined) == (0, 0, 0)
    assert data.quarantine_location is None
    (quality,) = function.quality
    assert quality.rows_total == 0
    assert offline_files(ctx) == []


def test_empty_json_lines_are_an_ingested_batch_of_no_rows(
    ctx: Context, function: CapturingIngest
) -> None:
    # JSON Lines has no header: an empty file is no rows, nothing to refuse.
    land(ctx, "day.jsonl", b"")
    function.handle(created(ctx, "day.jsonl"))
    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert data.rows_total == 0


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_files_ingest_as_the_plain_file_does(
    ctx: Context, function: CapturingIngest, codec: str
) -> None:
    rows = transactions(250)
    suffix = {"gzip": "gz", "zstd": "zst"}[codec]
    land(ctx, f"day.csv.{suffix}", compressed(csv_of(rows), codec))
    function.handle(created(ctx, f"day.csv.{suffix}"))
    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested) == (250, 250)
    assert_arrived(function, ctx, rows)


@pytest.mark.timeout(120)  # a hang guard, not a measure: ~1 s on 2 cores
def test_a_csv_of_ten_thousand_columns_is_ingested_keeping_every_column(
    ctx: Context, function: CapturingIngest
) -> None:
    rows = transactions(30)
    rows.loc[4, "hour"] = "25"
    rows.loc[17, "amount"] = "-1"
    extra = [f"extra_{i}" for i in range(10_000 - len(rows.columns))]
    header = ",".join([*rows.columns, *extra])
    filler = ",".join("x" for _ in extra)
    lines = [header] + [",".join(row) + "," + filler for row in rows.itertuples(index=False)]
    land(ctx, "wide.csv", ("\n".join(lines) + "\n").encode())

    function.handle(created(ctx, "wide.csv"))

    event_type, data = outcome(function)
    assert event_type is EventType.DATA_INGESTED and isinstance(data, DataIngested)
    assert (data.rows_total, data.rows_ingested, data.rows_quarantined) == (30, 28, 2)
    entries = quarantined(data)
    assert [e["reasons"] for e in entries] == [
        ["hour: expected <= 23, got 25"],
        ["amount: expected > 0, got -1"],
    ]
    assert len(entries[0]["row"]) == 10_000  # kept as it came, every column
    assert_arrived(function, ctx, rows.drop(index=[4, 17]))


# -- files refused whole -------------------------------------------------------------


def latin1() -> bytes:
    rows = transactions(300)
    rows.loc[250, "card_id"] = "carte-élan"
    return rows.to_csv(index=False).encode("latin-1")


def utf16(encoding: str) -> Callable[[], bytes]:
    return lambda: csv_of(transactions()).decode().encode(encoding)


def truncated_parquet(keep: float) -> Callable[[], bytes]:
    def build() -> bytes:
        content = parquet_of(pa.Table.from_pandas(transactions(200), preserve_index=False))
        return content[: int(len(content) * keep)]

    return build


def parquet_with_a_bad_late_page() -> bytes:
    """Row groups of 50 rows with page checksums; a flipped bit in the last group's data:
    the first groups read, then the file turns out unreadable."""
    table = pa.Table.from_pandas(transactions(200), preserve_index=False)
    content = bytearray(
        parquet_of(table, row_group_size=50, compression="none", write_page_checksum=True)
    )
    chunk = pq.ParquetFile(io.BytesIO(bytes(content))).metadata.row_group(3).column(2)
    content[chunk.data_page_offset + chunk.total_compressed_size - 8] ^= 0x01
    return bytes(content)


def all_ragged() -> bytes:
    header = csv_of(transactions(1)).decode().splitlines()[0]
    return f"{header}\na,b,c\nd,e\n".encode()


def wide_without_a_column() -> bytes:
    names = [c for c in transactions(1).columns if c != "amount"]
    names += [f"extra_{i}" for i in range(10_000 - len(names))]
    return (",".join(names) + "\n").encode()


REFUSED: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # case: (file name, its bytes, what the reason says)
    "latin-1": ("day.csv", latin1, "day.csv cannot be parsed as csv: it is not UTF-8 text; "),
    "utf-16": ("day.csv", utf16("utf-16"), "it is UTF-16 text (it starts with a UTF-16 byte"),
    "utf-16 without a byte order mark": (
        "day.csv",
        utf16("utf-16-le"),
        "its first line holds NUL bytes, as UTF-16 text or a binary file does",
    ),
    "an empty csv": ("day.csv", lambda: b"", "cannot be parsed as csv: it is empty (no header)"),
    "an empty parquet": ("day.parquet", lambda: b"", "Parquet file size is 0 bytes"),
    "parquet cut in half": (
        "day.parquet",
        truncated_parquet(0.5),
        "cannot be parsed as parquet: Parquet magic bytes not found in footer",
    ),
    "parquet missing its last bytes": (
        "day.parquet",
        truncated_parquet(0.999),
        "cannot be parsed as parquet: Parquet magic bytes not found in footer",
    ),
    "parquet with a bad page after good ones": (
        "day.parquet",
        parquet_with_a_bad_late_page,
        "cannot be parsed as parquet: could not verify page integrity, CRC checksum",
    ),
    "gzip cut short": (
        "day.csv.gz",
        lambda: gzip.compress(csv_of(transactions()))[:-20],
        "cannot be parsed as csv (gzip): Truncated compressed stream",
    ),
    "not gzip at all": (
        "day.csv.gz",
        lambda: csv_of(transactions()),
        "cannot be parsed as csv (gzip): zlib inflate failed",
    ),
    "zstd cut short": (
        "day.csv.zst",
        lambda: compressed(csv_of(transactions()), "zstd")[:-20],
        "cannot be parsed as csv (zstd): Truncated compressed stream",
    ),
    "no row splits into columns": (
        "day.csv",
        all_ragged,
        "none of its 2 rows could be split into columns; row 1: row: expected 10 values",
    ),
    "10,000 columns but not the schema's": (
        "wide.csv",
        wide_without_a_column,
        "missing columns ['amount']; found ['card_id', 'event_timestamp', 'hour'",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_file_that_cannot_be_read_is_refused_whole_saying_why(
    ctx: Context, function: CapturingIngest, case: str
) -> None:
    name, build, reason = REFUSED[case]
    content = build()
    location = land(ctx, name, content)
    function.handle(created(ctx, name))

    event_type, data = outcome(function)
    assert event_type is EventType.DATA_REJECTED and isinstance(data, DataRejected)
    assert reason in data.reason, f"expected {reason!r} in the reason, got {data.reason!r}"
    # Short enough for an event, a log line and an audit entry, whatever the file.
    assert len(data.reason) < 1_000, (
        f"expected a reason under 1,000 characters, got {len(data.reason)}"
    )
    assert Path(data.quarantine_location).read_bytes() == content
    assert offline_files(ctx) == []  # nothing staged before the file broke went in
    assert list(ctx.paths.quarantine.glob("*.jsonl")) == []
    assert function.quality == []
    (entry,) = [e for e in ctx.audit.entries() if e["action"] == "data.rejected"]
    assert entry["resource"] == location and entry["details"]["reason"] == data.reason
