"""Hostile HTTP requests at the broker's CloudEvents parser: a clear refusal, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventing.ingress import BATCH_CONTENT_TYPE, events_from_http
from falaj.errors import EventError, ResidencyViolation
from falaj.events import EventType, parse_event
from falaj.residency import ResidencyPolicy
from tests.support.hostile import bodies, bounded, json_bytes, json_values

POLICY = ResidencyPolicy(allowed_regions=frozenset({"me-central-1"}), local_region="me-central-1")
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/cloudevents+json",
        BATCH_CONTENT_TYPE,
        "text/plain",
        "",
        "application/cloudevents+json; charset=latin-1",
    ]
)
CE_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "ce-id",
            "ce-type",
            "ce-source",
            "ce-specversion",
            "ce-time",
            "ce-dataregion",
            "ce-subject",
        ]
    ),
    st.one_of(
        st.text(max_size=40),
        st.sampled_from([str(t) for t in EventType]),
        st.sampled_from(["1.0", "0.3", "me-central-1", "eu-west-1"]),
    ),
)


def _parsed(headers: dict[str, str], body: bytes) -> None:
    try:
        events = events_from_http(headers, body)
    except EventError as exc:
        assert str(exc)  # a refusal says something
        return
    for event in events:
        try:
            parse_event(event, POLICY)
        except (EventError, ResidencyViolation) as exc:
            assert str(exc)


@bounded
@given(headers=CE_HEADERS, content_type=CONTENT_TYPES, body=bodies)
def test_binary_and_structured_requests_are_parsed_or_refused(
    headers: dict[str, str], content_type: str, body: bytes
) -> None:
    _parsed({**headers, "content-type": content_type}, body)


EVENTLIKE = st.fixed_dictionaries(
    {
        "specversion": st.sampled_from(["1.0", "0.3", 1]),
        "id": st.one_of(st.text(max_size=20), st.integers()),
        "type": st.one_of(st.sampled_from([str(t) for t in EventType]), st.text(max_size=20)),
        "source": st.text(max_size=20),
    },
    optional={
        "data": json_values,
        "dataregion": st.text(max_size=15),
        "time": st.text(max_size=25),
    },
)


@bounded
@given(items=st.lists(st.one_of(EVENTLIKE, json_values), max_size=5))
def test_batches_of_almost_events_are_parsed_or_refused(items: list[Any]) -> None:
    _parsed({"content-type": BATCH_CONTENT_TYPE}, json_bytes(items))
    if items:
        _parsed({"content-type": "application/cloudevents+json"}, json_bytes(items[0]))
