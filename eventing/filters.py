"""Which events a Trigger receives: Knative's ``spec.filter`` semantics, as pure functions.

Knative's Trigger filter (``spec.filter.attributes``) is an exact match on
every listed context attribute, extensions such as ``dataregion`` included
(knative/eventing ``pkg/eventfilter/attributes``):

* an empty filter matches every event;
* an attribute the event lacks, or carries as an empty string, fails the match;
* a filter value of ``""`` is Knative's ``TriggerAnyFilter``: any non-empty value passes;
* otherwise the event's value must equal the filter's value, compared as text.

Each dialect is one ``EventFilter`` subclass, so the SubscriptionsAPI dialects
(``exact``, ``prefix``, ``suffix``, ``all``, ``any``, ``not``) slot in beside
``AttributesFilter`` without touching the broker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from falaj.topology import TriggerSpec

#: Knative's ``TriggerAnyFilter``: the attribute must be present, any value passes.
ANY_VALUE = ""


def attribute_value(attributes: Mapping[str, Any], name: str) -> str | None:
    """The event's value of a context attribute as text, or None when it is absent or empty."""
    value = attributes.get(name)
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    # Knative treats an optional attribute set to "" as never set.
    return text or None


class EventFilter(ABC):
    """One filter dialect: decides from an event's context attributes alone."""

    @abstractmethod
    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """True when the event with these context attributes passes the filter."""


@dataclass(frozen=True)
class AttributesFilter(EventFilter):
    """``spec.filter.attributes``: every listed attribute equals its value."""

    attributes: Mapping[str, str] = field(default_factory=dict)

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        for name, wanted in self.attributes.items():
            actual = attribute_value(attributes, name)
            if actual is None:
                return False
            if wanted != ANY_VALUE and actual != wanted:
                return False
        return True


def trigger_filter(trigger: TriggerSpec) -> EventFilter:
    """The filter a Trigger declares (only the ``attributes`` dialect today)."""
    return AttributesFilter(dict(trigger.filter_attributes))
