from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from falaj.context import Context
from falaj.errors import EventError, ResidencyViolation
from falaj.events import (
    CATALOG,
    DataIngested,
    EventType,
    ModelRegistered,
    ObjectCreated,
    export_schemas,
    json_schemas,
    make_event,
    parse_event,
)
from tests.support.notifications import AWS_PUT, MINIO_PUT, notification, record


def _ingested() -> DataIngested:
    return DataIngested(
        dataset="transactions",
        location="file:///l/a.csv",
        object_version="g1",
        rows_total=3,
        rows_ingested=2,
        rows_quarantined=1,
        offline_location="file:///o",
    )


def test_every_event_type_has_a_spec() -> None:
    assert set(CATALOG) == set(EventType)


def test_make_event_stamps_region_and_roundtrips_over_http(ctx: Context) -> None:
    event = make_event(EventType.DATA_INGESTED, _ingested(), region="me-central-1")
    assert event["dataregion"] == "me-central-1"
    headers, body = to_binary(event)
    received = from_http(headers, body)
    parsed = parse_event(received, ctx.policy)
    assert parsed.type is EventType.DATA_INGESTED
    assert parsed.data == _ingested()


def test_make_event_refuses_the_wrong_data_model() -> None:
    with pytest.raises(EventError, match="DataIngested"):
        make_event(
            EventType.DATA_INGESTED,
            ModelRegistered(model="m", version=1, digest="d", metrics={}, location="x"),
            region="me-central-1",
        )


def test_parse_collects_every_problem(ctx: Context) -> None:
    event = CloudEvent(
        {"type": str(EventType.DATA_INGESTED), "source": "/x"},
        {"dataset": "t", "rows_total": -1},
    )
    with pytest.raises(EventError) as error:
        parse_event(event, ctx.policy)
    problems = error.value.problems
    assert any("dataregion" in p for p in problems)
    assert any("rows_total" in p for p in problems)
    assert any("location" in p for p in problems)


def test_unknown_type_is_refused(ctx: Context) -> None:
    event = CloudEvent({"type": "com.example.other", "source": "/x", "dataregion": "uaenorth"}, {})
    with pytest.raises(EventError, match="unknown event type"):
        parse_event(event, ctx.policy)


def test_foreign_region_is_refused_and_audited(ctx: Context) -> None:
    event = make_event(EventType.DATA_INGESTED, _ingested(), region="eu-west-1")
    with pytest.raises(ResidencyViolation, match="eu-west-1"):
        parse_event(event, ctx.policy)
    [entry] = list(ctx.audit.entries())
    assert entry["action"] == "policy.refused"
    assert entry["details"]["boundary"] == "event-accept"


def test_exported_schemas_validate_real_event_data(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert len(written) == len(EventType)
    schema = json.loads((tmp_path / f"{EventType.DATA_INGESTED}.json").read_text())
    jsonschema.validate(_ingested().model_dump(mode="json"), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"dataset": "t"}, schema)
    assert json_schemas()[str(EventType.DATA_INGESTED)]["x-cloudevents"]["type"] == str(
        EventType.DATA_INGESTED
    )


def _created_event(data: object) -> CloudEvent:
    """An object-created CloudEvent carrying ``data`` as it came, over HTTP and back."""
    event = CloudEvent(
        {
            "type": str(EventType.OBJECT_CREATED),
            "source": "arn:aws:s3:::bank-raw",
            "dataregion": "me-central-1",
            "datacontenttype": "application/json",
        },
        data,
    )
    headers, body = to_binary(event)
    return from_http(headers, body)


def test_an_aws_s3_notification_record_is_the_event_data_as_sent(ctx: Context) -> None:
    sent = record(AWS_PUT)
    parsed = parse_event(_created_event(sent), ctx.policy)
    data = parsed.data
    assert isinstance(data, ObjectCreated)
    assert (data.bucket, data.key) == ("bank-raw", "2026/transactions day1.csv")
    assert data.object_version == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert (data.s3.object.size, data.s3.object.e_tag) == (1024, sent["s3"]["object"]["eTag"])
    dumped = data.model_dump(mode="json")
    # Fields Falaj does not read travel on unchanged, in S3's names.
    for name in ("userIdentity", "requestParameters", "responseElements", "glacierEventData"):
        assert dumped[name] == sent[name]
    assert dumped["s3"]["bucket"] == sent["s3"]["bucket"]
    assert dumped["s3"]["object"] == sent["s3"]["object"]
    assert ObjectCreated.model_validate(dumped) == data


def test_a_minio_webhook_body_is_accepted_as_its_one_record(ctx: Context) -> None:
    parsed = parse_event(_created_event(notification(MINIO_PUT)), ctx.policy)
    data = parsed.data
    assert isinstance(data, ObjectCreated)
    assert data.event_name == "s3:ObjectCreated:Put" and data.aws_region == ""
    # MinIO encodes the '/' too, and a space as '+'.
    assert (data.bucket, data.key) == ("bank-raw", "2026/transactions day2.csv")
    assert data.s3.object.content_type == "text/csv"
    # An unversioned bucket: the content's ETag names the version.
    assert data.object_version == "etag:5fc7298143efe1276d39a3466d4e255f"
    assert data.model_dump(mode="json")["source"]["host"] == "10.0.0.7"


def test_object_created_data_that_is_not_one_created_object_is_refused(ctx: Context) -> None:
    removed = record(AWS_PUT)
    removed["eventName"] = "ObjectRemoved:Delete"
    del removed["s3"]["object"]["eTag"]
    with pytest.raises(EventError) as error:
        parse_event(_created_event(removed), ctx.policy)
    problems = error.value.problems
    assert any("eventName" in p and "ObjectRemoved:Delete" in p for p in problems)
    assert any("s3.object.eTag" in p for p in problems)
    two = {"Records": [record(AWS_PUT), record(MINIO_PUT)]}
    with pytest.raises(EventError, match="expected one record per event"):
        parse_event(_created_event(two), ctx.policy)


def test_the_object_created_schema_validates_real_notifications() -> None:
    schema = json_schemas()[str(EventType.OBJECT_CREATED)]
    jsonschema.validate(record(AWS_PUT), schema)
    jsonschema.validate(record(MINIO_PUT), schema)
    missing_key = record(AWS_PUT)
    del missing_key["s3"]["object"]["key"]
    with pytest.raises(jsonschema.ValidationError, match="'key' is a required property"):
        jsonschema.validate(missing_key, schema)
