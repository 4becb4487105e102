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
    export_schemas,
    json_schemas,
    make_event,
    parse_event,
)


def _ingested() -> DataIngested:
    return DataIngested(
        dataset="transactions",
        location="file:///l/a.csv",
        generation="g1",
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
