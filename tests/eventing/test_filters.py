from __future__ import annotations

from typing import Any

import pytest

from eventing.filters import AttributesFilter, EventFilter, trigger_filter
from falaj.topology import TriggerSpec

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/falaj/registry",
    "type": "dev.falaj.model.registered",
    "dataregion": "me-central-1",
    "subject": "",
}


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, True),  # an empty filter matches everything
        ({"type": "dev.falaj.model.registered"}, True),
        ({"type": "dev.falaj.model.deployed"}, False),
        ({"type": "dev.falaj.model.registered", "source": "/falaj/registry"}, True),
        ({"type": "dev.falaj.model.registered", "source": "/elsewhere"}, False),  # every one
        ({"dataregion": "me-central-1"}, True),  # extension attributes count
        ({"dataregion": "eu-west-1"}, False),
        ({"traceparent": "00-abc"}, False),  # absent from the event
        ({"dataregion": ""}, True),  # "" is Knative's any-value filter ...
        ({"traceparent": ""}, False),  # ... but the attribute must be present
        ({"subject": ""}, False),  # and an empty value counts as never set
        ({"type": "DEV.FALAJ.MODEL.REGISTERED"}, False),  # exact, case included
        ({"type": "dev.falaj.model"}, False),  # exact, not a prefix
    ],
)
def test_attributes_filter_follows_knative_exact_match(
    attributes: dict[str, str], expected: bool
) -> None:
    assert AttributesFilter(attributes).matches(EVENT) is expected


def test_non_text_attribute_values_compare_as_text() -> None:
    assert AttributesFilter({"retries": "3"}).matches({**EVENT, "retries": 3})


def test_trigger_filter_uses_the_triggers_attributes() -> None:
    spec = TriggerSpec(
        name="on-registered",
        broker="default",
        filter_attributes={"type": "dev.falaj.model.registered"},
        subscriber="rollout",
    )
    built = trigger_filter(spec)
    assert isinstance(built, EventFilter)
    assert built.matches(EVENT)
    assert not built.matches({**EVENT, "type": "dev.falaj.drift.detected"})
