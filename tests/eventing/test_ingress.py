from __future__ import annotations

import base64
import json

import pytest
from cloudevents.conversion import to_binary, to_structured

from eventing.ingress import (
    BATCH_CONTENT_TYPE,
    Ingress,
    accepted,
    events_from_http,
    safe_headers,
)
from eventing.queue import EventQueue
from falaj.context import Context
from falaj.errors import EventError, ResidencyViolation
from tests.eventing.conftest import training_requested, trigger


def test_binary_structured_and_batched_modes_read_the_same_event() -> None:
    event = training_requested()
    binary = events_from_http(*to_binary(event))
    structured = events_from_http(*to_structured(event))
    batch_body = json.dumps([json.loads(to_structured(event)[1])]).encode()
    batched = events_from_http({"Content-Type": BATCH_CONTENT_TYPE}, batch_body)
    for [read] in (binary, structured, batched):
        assert (read["id"], read["type"], read["dataregion"]) == (
            event["id"],
            event["type"],
            "me-central-1",
        )


def test_a_batch_names_each_event_that_is_not_a_cloudevent() -> None:
    good = json.loads(to_structured(training_requested())[1])
    body = json.dumps([good, {"type": "x"}, good]).encode()
    with pytest.raises(EventError) as caught:
        events_from_http({"content-type": BATCH_CONTENT_TYPE}, body)
    assert caught.value.problems[0].startswith("[1]: ")
    assert len(caught.value.problems) == 1


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}"])
def test_a_batch_must_be_a_non_empty_array(body: bytes) -> None:
    with pytest.raises(EventError, match="array"):
        events_from_http({"content-type": BATCH_CONTENT_TYPE}, body)


def test_catalog_problems_are_collected_per_event(ctx: Context) -> None:
    ingress = Ingress(EventQueue(ctx.paths.broker / "q.db"), ctx.policy, [])
    bad = training_requested()
    bad.data = {"model": "fraud"}  # reason is required
    with pytest.raises(EventError) as caught:
        ingress.route([training_requested(), bad])
    assert any(p.startswith("[1] data.reason") for p in caught.value.problems)


def test_region_is_checked_before_anything_is_stored(ctx: Context) -> None:
    ingress = Ingress(EventQueue(ctx.paths.broker / "q.db"), ctx.policy, [])
    with pytest.raises(ResidencyViolation):
        ingress.route([training_requested(region="eu-west-1")])


def test_only_matching_triggers_get_deliveries(ctx: Context) -> None:
    ingress = Ingress(
        EventQueue(ctx.paths.broker / "q.db"),
        ctx.policy,
        [
            trigger("on-training", "launcher", event_type="dev.falaj.training.requested"),
            trigger("on-drift", "launcher", event_type="dev.falaj.drift.detected"),
            trigger("all", "recorder"),
        ],
    )
    routed = ingress.route([training_requested()])
    stored = ingress.queue.append(routed).stored
    assert accepted(routed, stored).triggers == {"on-training", "all"}
    assert {d.trigger for d in ingress.queue.deliveries()} == {"on-training", "all"}


def test_credentials_never_reach_the_dead_letters() -> None:
    kept = safe_headers({"Authorization": "Bearer flj_secret", "Content-Type": "text/plain"})
    assert kept == {"content-type": "text/plain"}


def _item(**overrides: object) -> dict[str, object]:
    item: dict[str, object] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/falaj/test",
        "type": "dev.falaj.training.requested",
        "time": "2026-11-23T12:00:00+00:00",
        "dataregion": "me-central-1",
        "datacontenttype": "application/json",
        "data": {"model": "fraud", "reason": "manual"},
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not None}


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        (_item(id=None), "[0]: Missing required attributes: {'id'}"),
        (_item(type=None, source=None), "[0]: Missing required attributes"),
        (_item(id=7), "[0]: Missing required attributes: {'id'}"),
        (_item(source=""), "[0]: required attributes id, source and type must not be empty"),
        (_item(specversion="9.9"), "[0]: Found invalid specversion 9.9"),
        ("not an object", "[0]: Failed to read specversion"),
    ],
)
def test_a_batch_item_without_what_cloudevents_requires_is_named(
    item: object, problem: str
) -> None:
    body = json.dumps([item]).encode()
    with pytest.raises(EventError) as caught:
        events_from_http({"content-type": BATCH_CONTENT_TYPE}, body)
    assert caught.value.problems[0].startswith(problem)


def test_batch_items_read_like_structured_mode_events() -> None:
    # The fast path (from_dict) and the SDK's structured path give the same event.
    plain = _item()
    binary_data = _item(id="e-2", data=None, data_base64=base64.b64encode(b"\x00\x01").decode())
    body = json.dumps([plain, binary_data]).encode()
    fast, sdk = events_from_http({"content-type": BATCH_CONTENT_TYPE}, body)
    structured = events_from_http(
        {"content-type": "application/cloudevents+json"}, json.dumps(plain).encode()
    )[0]
    assert fast.get_attributes() == structured.get_attributes()
    assert fast.get_data() == structured.get_data() == plain["data"]
    assert sdk.get_data() == b"\x00\x01"


def test_binary_mode_reads_like_the_sdks_from_http_and_keeps_the_bytes() -> None:
    from cloudevents.http import from_http

    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/falaj/test",
        "ce-type": "dev.falaj.training.requested",
        "ce-time": "2026-11-23T12:00:00+00:00",
        "ce-dataregion": "me-central-1",
        "ce-subject": "caf%C3%A9",  # the SDK does not percent-decode; neither do we
        "content-type": "application/json",
    }
    body = b'{"model": "fraud",  "reason": "manual"}'
    [ours] = events_from_http(headers, body)
    sdk = from_http(headers, body)
    assert ours.get_attributes() == sdk.get_attributes()
    assert ours.get_data() == body  # stored as it came, spaces and all
    assert json.loads(ours.get_data()) == sdk.get_data()


@pytest.mark.parametrize("missing", ["ce-id", "ce-source", "ce-type"])
def test_binary_mode_without_a_required_header_is_refused_like_the_sdk(missing: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/falaj/test",
        "ce-type": "dev.falaj.training.requested",
    }
    del headers[missing]
    with pytest.raises(EventError, match="not a CloudEvent"):
        events_from_http(headers, b"{}")
