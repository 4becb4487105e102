from __future__ import annotations

import json

import pytest
from cloudevents.conversion import to_binary, to_structured

from eventing.ingress import BATCH_CONTENT_TYPE, Ingress, events_from_http, safe_headers
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
        ingress.accept([training_requested(), bad])
    assert any(p.startswith("[1] data.reason") for p in caught.value.problems)
    assert ingress.queue.events() == []  # all or nothing


def test_region_is_checked_before_anything_is_stored(ctx: Context) -> None:
    ingress = Ingress(EventQueue(ctx.paths.broker / "q.db"), ctx.policy, [])
    with pytest.raises(ResidencyViolation):
        ingress.accept([training_requested(region="eu-west-1")])
    assert ingress.queue.events() == []


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
    accepted = ingress.accept([training_requested()])
    assert accepted.triggers == {"on-training", "all"}
    assert {d.trigger for d in ingress.queue.deliveries()} == {"on-training", "all"}


def test_credentials_never_reach_the_dead_letters() -> None:
    kept = safe_headers({"Authorization": "Bearer flj_secret", "Content-Type": "text/plain"})
    assert kept == {"content-type": "text/plain"}
