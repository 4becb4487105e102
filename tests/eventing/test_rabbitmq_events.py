"""RabbitMQ messages mapped to CloudEvents as Knative's RabbitMQ source maps them."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.conversion import to_binary

from eventing.rabbitmq_events import (
    AmqpMessage,
    Encoding,
    QueueOrigin,
    encoding_of,
    event_from_message,
    message_event_id,
)
from falaj.context import Context
from falaj.errors import EventError
from falaj.events import EventType, StreamRecord, parse_event

ORIGIN = QueueOrigin(namespace="falaj", name="records", queue="falaj-records")
REGION = "me-central-1"
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RECORD = {"card_id": "c-1", "amount": 912.5}


def plain(body: bytes = json.dumps(RECORD).encode(), **properties: Any) -> AmqpMessage:
    return AmqpMessage(
        body=body, delivery_tag=7, exchange="falaj-records", routing_key="", **properties
    )


def convert(message: AmqpMessage) -> dict[str, Any]:
    event = event_from_message(message, ORIGIN, region=REGION, received=RECEIVED)
    return {**event.get_attributes(), "data": event.get_data()}


def test_a_plain_message_becomes_knatives_rabbitmq_event() -> None:
    event = convert(plain(message_id="m-1", content_type="application/json", timestamp=1767225600))

    assert event == {
        "specversion": "1.0",
        "id": "m-1",
        "type": "dev.knative.rabbitmq.event",
        "source": "/apis/v1/namespaces/falaj/rabbitmqsources/records#falaj-records",
        "subject": "m-1",
        "time": "2026-01-01T00:00:00+00:00",
        "datacontenttype": "application/json",
        "dataregion": REGION,
        "data": RECORD,
    }


def test_without_a_timestamp_the_time_is_when_it_was_read() -> None:
    assert convert(plain())["time"] == RECEIVED.isoformat()


def test_the_id_of_a_message_without_message_id_survives_redelivery() -> None:
    first = plain(headers={"tenant": "bank-a"})
    # What RabbitMQ changes when it hands the same message out again.
    again = replace(
        first,
        delivery_tag=99,
        redelivered=True,
        headers={"tenant": "bank-a", "x-delivery-count": 1},
    )

    assert message_event_id(first, ORIGIN) == message_event_id(again, ORIGIN)
    assert convert(first)["id"] == convert(again)["id"] == convert(first)["subject"]


@pytest.mark.parametrize(
    "other",
    [
        plain(body=b'{"card_id": "c-2"}'),
        plain(headers={"tenant": "bank-b"}),
        plain(timestamp=1767225601),
        replace(plain(), routing_key="eu"),
        replace(plain(), exchange="other"),
    ],
)
def test_messages_that_differ_in_any_byte_kept_have_different_ids(other: AmqpMessage) -> None:
    assert message_event_id(other, ORIGIN) != message_event_id(plain(), ORIGIN)
    other_queue = QueueOrigin(namespace="falaj", name="records", queue="other")
    assert message_event_id(plain(), other_queue) != message_event_id(plain(), ORIGIN)


def test_a_binary_mode_cloudevent_passes_through_as_itself() -> None:
    message = plain(
        body=b'{"model": "fraud", "reason": "manual"}',
        headers={
            "ce-specversion": "1.0",
            "ce-id": "evt-1",
            "ce-type": "dev.falaj.training.requested",
            "ce-source": "/bank/scheduler",
            "ce-dataregion": "uaenorth",
            "Content-Type": "application/json",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "x-delivery-count": 2,
            "not_an_attribute": "kept out",
        },
    )
    assert encoding_of(message) is Encoding.BINARY

    event = convert(message)

    assert {k: event[k] for k in ("id", "type", "source", "dataregion", "datacontenttype")} == {
        "id": "evt-1",
        "type": "dev.falaj.training.requested",
        "source": "/bank/scheduler",
        "dataregion": "uaenorth",
        "datacontenttype": "application/json",
    }
    assert event["traceparent"].startswith("00-0af7")
    assert "x-delivery-count" not in event and "not_an_attribute" not in event
    assert event["data"] == {"model": "fraud", "reason": "manual"}


def test_a_binary_event_without_source_id_or_region_gets_the_sources() -> None:
    message = plain(headers={"specversion": "1.0", "type": "dev.knative.rabbitmq.event"})

    event = convert(message)

    assert event["source"] == ORIGIN.source
    assert event["id"] == message_event_id(message, ORIGIN)
    assert event["dataregion"] == REGION


def test_a_structured_cloudevent_passes_through_with_base64_data() -> None:
    document = {
        "specversion": "1.0",
        "id": "evt-2",
        "type": "dev.knative.rabbitmq.event",
        "source": "/bank/core",
        "dataregion": "uaecentral",
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(b"\x00\x01").decode(),
    }
    message = plain(
        body=json.dumps(document).encode(),
        content_type="application/cloudevents+json; charset=utf-8",
    )
    assert encoding_of(message) is Encoding.STRUCTURED

    event = convert(message)

    assert (event["id"], event["source"], event["dataregion"]) == (
        "evt-2",
        "/bank/core",
        "uaecentral",
    )
    assert event["data"] == b"\x00\x01"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (plain(headers={"ce-specversion": "1.0", "ce-id": "1"}), "no type header"),
        (plain(body=b"not json", content_type="application/cloudevents+json"), "is not JSON"),
        (plain(body=b"[1, 2]", content_type="application/cloudevents+json"), "one JSON object"),
    ],
)
def test_a_message_that_claims_to_be_a_cloudevent_and_is_not_is_refused(
    message: AmqpMessage, problem: str
) -> None:
    with pytest.raises(EventError, match=problem):
        convert(message)


def test_a_body_that_is_not_json_stays_bytes_and_the_catalog_refuses_it(ctx: Context) -> None:
    event = event_from_message(
        plain(body=b"\xff\x00 binary", content_type="application/octet-stream"),
        ORIGIN,
        region=REGION,
        received=RECEIVED,
    )
    assert event.get_data() == b"\xff\x00 binary"
    _, body = to_binary(event)
    assert body == b"\xff\x00 binary"  # sent as the bytes it is, never re-encoded
    with pytest.raises(EventError, match="not JSON"):
        parse_event(event, ctx.policy)


@pytest.mark.parametrize(
    ("body", "accepted"),
    [(b'{"amount": 1}', True), (b"{}", False), (b"[1, 2]", False), (b'"text"', False)],
)
def test_the_catalog_takes_a_json_object_with_fields_only(
    ctx: Context, body: bytes, accepted: bool
) -> None:
    event = event_from_message(plain(body=body), ORIGIN, region=REGION, received=RECEIVED)
    if accepted:
        parsed = parse_event(event, ctx.policy)
        assert parsed.type is EventType.RABBITMQ_MESSAGE
        assert parsed.data == StreamRecord.model_validate({"amount": 1})
    else:
        with pytest.raises(EventError, match=r"invalid dev\.knative\.rabbitmq\.event event"):
            parse_event(event, ctx.policy)
