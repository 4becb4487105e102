"""Records from a queue: online when the function answers, offline in rolled batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from falaj.context import Context
from falaj.events import (
    DataQuality,
    EventData,
    EventType,
    ParsedEvent,
    StreamRecord,
    make_event,
    parse_event,
)
from falaj.features import FeatureStoreClient
from falaj.validation import validate_frame
from functions.ingest.function import STREAM_QUARANTINE, IngestFunction

SOURCE = "/apis/v1/namespaces/falaj/rabbitmqsources/records#falaj-records"


class CapturingIngest(IngestFunction):
    def __init__(self) -> None:
        # Rolls by count only in these tests: 3 records, or a call to roll().
        super().__init__(roll_rows=3, roll_s=3600)
        self.quality: list[DataQuality] = []

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        assert isinstance(data, DataQuality)
        self.quality.append(data)


@pytest.fixture
def function(ctx: Context) -> Iterator[CapturingIngest]:
    started = CapturingIngest()
    started.start(ctx)
    try:
        yield started
    finally:
        started.stop()


def transaction(card: str, when: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "card_id": card,
        "event_timestamp": when,
        "amount": 42.5,
        "hour": 14,
        "distance_km": 3.2,
        "card_age_days": 400,
        "tx_count_24h": 2,
        "is_foreign": 0,
        "merchant_category": "grocery",
        "is_fraud": 0,
    }
    row.update(changes)
    return row


def record(ctx: Context, row: dict[str, Any], event_id: str | None = None) -> ParsedEvent:
    event = make_event(
        EventType.RABBITMQ_MESSAGE,
        StreamRecord.model_validate(row),
        region="me-central-1",
        source=SOURCE,
    )
    if event_id is not None:
        event["id"] = event_id
    return parse_event(event, ctx.policy)


def offline_rows(ctx: Context) -> pd.DataFrame:
    files = sorted((ctx.paths.offline / "transactions").rglob("*.parquet"))
    return pd.concat(pd.read_parquet(f) for f in files) if files else pd.DataFrame()


def test_a_good_record_is_online_when_the_function_answers(
    ctx: Context, function: CapturingIngest
) -> None:
    function.handle(record(ctx, transaction("card-00001", "2026-11-23T10:00:00Z", amount=77.0)))
    online = FeatureStoreClient(ctx, function.schema).online_features(["card-00001"])
    assert online["amount"] == [77.0]
    assert offline_rows(ctx).empty  # journalled, not rolled yet
    report = function.roll()
    assert report is not None and (report.rows_ingested, report.rows_quarantined) == (1, 0)
    assert offline_rows(ctx)["amount"].tolist() == [77.0]
    assert function.quality == [report]


def test_records_roll_offline_every_n_and_a_redelivery_is_kept_once(
    ctx: Context, function: CapturingIngest
) -> None:
    first = record(ctx, transaction("card-00001", "2026-11-23T10:00:00Z"), event_id="m-1")
    function.handle(first)
    function.handle(record(ctx, transaction("card-00001", "2026-11-23T10:00:00Z"), "m-1"))
    function.handle(record(ctx, transaction("card-00002", "2026-11-23T10:01:00Z")))
    assert offline_rows(ctx).empty
    function.handle(record(ctx, transaction("card-00003", "2026-11-23T10:02:00Z")))
    # The third distinct record reached roll_rows: one batch of three, no duplicate.
    stored = offline_rows(ctx)
    assert sorted(stored["card_id"]) == ["card-00001", "card-00002", "card-00003"]
    [report] = function.quality
    assert report.rows_ingested == 3


def test_a_bad_record_is_quarantined_with_its_reasons_and_never_online(
    ctx: Context, function: CapturingIngest
) -> None:
    function.handle(record(ctx, transaction("card-00009", "2026-11-23T10:00:00Z", amount=-5)))
    function.handle(record(ctx, {"card_id": "card-00008", "note": "not a transaction"}))
    online = FeatureStoreClient(ctx, function.schema).online_features(["card-00009", "card-00008"])
    assert online["amount"] == [None, None]
    lines = (ctx.paths.quarantine / STREAM_QUARANTINE).read_text().splitlines()
    negative, partial = (json.loads(line) for line in lines)
    assert negative["reasons"] == ["amount: expected > 0, got -5"]
    assert negative["source"] == SOURCE and negative["row"]["card_id"] == "card-00009"
    assert "missing columns" in partial["reasons"][0]
    report = function.roll()
    assert report is not None and (report.rows_total, report.rows_quarantined) == (2, 2)


def test_records_that_share_a_key_are_not_lost_at_the_roll(
    ctx: Context, function: CapturingIngest
) -> None:
    same = transaction("card-00004", "2026-11-23T10:00:00Z")
    function.handle(record(ctx, same))
    function.handle(record(ctx, {**same, "amount": 12.0}))  # another message, the same key
    function.roll()
    assert len(offline_rows(ctx)) == 1
    [line] = (ctx.paths.quarantine / STREAM_QUARANTINE).read_text().splitlines()
    assert json.loads(line)["reasons"][0].startswith("duplicate (card_id, event_timestamp)")


def test_stopping_rolls_what_is_journalled(ctx: Context) -> None:
    function = CapturingIngest()
    function.start(ctx)
    function.handle(record(ctx, transaction("card-00005", "2026-11-23T10:00:00Z")))
    function.stop()
    assert offline_rows(ctx)["card_id"].tolist() == ["card-00005"]
    good = validate_frame(function.schema, offline_rows(ctx)[list(function.schema.column_names)])
    assert good.rejected == []  # what went offline still fits the contract
