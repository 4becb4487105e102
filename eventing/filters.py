"""Which events a Trigger receives: Knative's Trigger filters, as pure functions.

A Trigger declares either ``spec.filter.attributes`` or ``spec.filters``; when
``spec.filters`` is non-empty it replaces ``spec.filter`` (Knative's broker
checks it first, and the CRD says "the latter will override the former").

``spec.filter.attributes`` is an exact match on every listed context
attribute, extensions such as ``dataregion`` included (knative/eventing
``pkg/eventfilter/attributes``):

* an empty filter matches every event;
* an attribute the event lacks, or carries as an empty string, fails the match;
* a filter value of ``""`` is Knative's ``TriggerAnyFilter``: any non-empty value passes;
* otherwise the event's value must equal the filter's value, compared as text.

``spec.filters`` holds CloudEvents Subscriptions API expressions, each of one
dialect (knative/eventing ``pkg/eventfilter/subscriptionsapi``), and every
expression of the list must pass:

* ``exact``, ``prefix``, ``suffix``: attributes, each tested case-sensitively
  against a non-empty value, all of which must pass; an attribute the event
  lacks (or has empty) fails;
* ``all``: passes when no nested expression fails; ``any``: passes when one passes;
  ``not``: passes when its nested expression fails.

Knative gives every filter three outcomes, not two: beside pass and fail,
"no filter" (``all`` or ``any`` of nothing, ``not`` of nothing), which the
broker delivers like a pass but which ``not`` leaves as it is. ``Verdict``
keeps the three, so ``not`` of an empty ``all`` still delivers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from falaj.errors import ManifestError
from falaj.manifests import filter_problems
from falaj.topology import TriggerSpec

#: Knative's ``TriggerAnyFilter``: the attribute must be present, any value passes.
ANY_VALUE = ""


class Verdict(StrEnum):
    """Knative's ``FilterResult``."""

    PASS = "pass"
    FAIL = "fail"
    #: Nothing to decide on; delivered like a pass, left alone by ``not``.
    NO_FILTER = "no_filter"

    def and_(self, other: Verdict) -> Verdict:
        if self is Verdict.NO_FILTER:
            return other
        if other is Verdict.NO_FILTER:
            return self
        return Verdict.PASS if self is other is Verdict.PASS else Verdict.FAIL

    def or_(self, other: Verdict) -> Verdict:
        if self is Verdict.NO_FILTER:
            return other
        if other is Verdict.NO_FILTER:
            return self
        return Verdict.PASS if Verdict.PASS in (self, other) else Verdict.FAIL


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
    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        """Pass, fail or no filter, for the event with these context attributes."""

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """True when the broker delivers the event: anything but a fail."""
        return self.verdict(attributes) is not Verdict.FAIL


@dataclass(frozen=True)
class AttributesFilter(EventFilter):
    """``spec.filter.attributes``: every listed attribute equals its value."""

    attributes: Mapping[str, str] = field(default_factory=dict)

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        for name, wanted in self.attributes.items():
            actual = attribute_value(attributes, name)
            if actual is None:
                return Verdict.FAIL
            if wanted != ANY_VALUE and actual != wanted:
                return Verdict.FAIL
        return Verdict.PASS


@dataclass(frozen=True, init=False)
class _AttributeTest(EventFilter):
    """Attributes against non-empty values, every one must pass; the dialect decides how."""

    #: (attribute, value) pairs, sorted so that equal filters compare equal.
    attributes: tuple[tuple[str, str], ...]

    def __init__(self, attributes: Mapping[str, str]) -> None:
        pairs = tuple(sorted(attributes.items()))
        if not pairs or any(not name or not value for name, value in pairs):
            # Knative refuses to build these; an empty prefix would pass everything.
            raise ValueError(
                f"expected non-empty attribute and value pairs for {type(self).__name__}, "
                f"got {dict(attributes)!r}"
            )
        object.__setattr__(self, "attributes", pairs)

    @abstractmethod
    def test(self, actual: str, wanted: str) -> bool:
        """True when the event's (non-empty) value passes against the filter's."""

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        for name, wanted in self.attributes:
            actual = attribute_value(attributes, name)
            if actual is None or not self.test(actual, wanted):
                return Verdict.FAIL
        return Verdict.PASS


class ExactFilter(_AttributeTest):
    def test(self, actual: str, wanted: str) -> bool:
        return actual == wanted


class PrefixFilter(_AttributeTest):
    def test(self, actual: str, wanted: str) -> bool:
        return actual.startswith(wanted)


class SuffixFilter(_AttributeTest):
    def test(self, actual: str, wanted: str) -> bool:
        return actual.endswith(wanted)


@dataclass(frozen=True)
class AllFilter(EventFilter):
    """Passes unless a nested filter fails; of nothing, no filter."""

    filters: tuple[EventFilter, ...] = ()

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        # Knative's all-filter answers with its last child's result, in an order
        # it keeps changing (most-failing first); the conjunction is the same
        # answer wherever that order does not matter, and never depends on it.
        result = Verdict.NO_FILTER
        for nested in self.filters:
            result = result.and_(nested.verdict(attributes))
            if result is Verdict.FAIL:
                return result
        return result


@dataclass(frozen=True)
class AnyFilter(EventFilter):
    """Passes when a nested filter passes; of nothing, no filter."""

    filters: tuple[EventFilter, ...] = ()

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        result = Verdict.NO_FILTER
        for nested in self.filters:
            result = result.or_(nested.verdict(attributes))
            if result is Verdict.PASS:
                return result
        return result


@dataclass(frozen=True)
class NotFilter(EventFilter):
    """Passes when the nested filter fails, fails when it passes; no filter stays so."""

    filter: EventFilter | None = None

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        if self.filter is None:
            return Verdict.NO_FILTER
        inner = self.filter.verdict(attributes)
        if inner is Verdict.NO_FILTER:
            return inner
        return Verdict.FAIL if inner is Verdict.PASS else Verdict.PASS


_ATTRIBUTE_TESTS: Mapping[str, type[_AttributeTest]] = MappingProxyType(
    {"exact": ExactFilter, "prefix": PrefixFilter, "suffix": SuffixFilter}
)


def compile_expression(expression: Mapping[str, Any]) -> EventFilter:
    """One checked Subscriptions API expression (see ``falaj.manifests.filter_problems``)."""
    ((dialect, value),) = expression.items()
    if dialect in _ATTRIBUTE_TESTS:
        return _ATTRIBUTE_TESTS[dialect](value)
    if dialect == "all":
        return AllFilter(tuple(compile_expression(nested) for nested in value))
    if dialect == "any":
        return AnyFilter(tuple(compile_expression(nested) for nested in value))
    return NotFilter(compile_expression(value))


def compile_filters(expressions: Sequence[Mapping[str, Any]], *, where: str = "") -> EventFilter:
    """``spec.filters``: every expression must pass; ``ManifestError`` names each bad one."""
    problems = [
        problem
        for index, expression in enumerate(expressions)
        for problem in filter_problems(expression, f"filters[{index}]")
    ]
    if problems:
        raise ManifestError(f"{where}{': ' if where else ''}{'; '.join(problems)}")
    return AllFilter(tuple(compile_expression(expression) for expression in expressions))


def trigger_filter(trigger: TriggerSpec) -> EventFilter:
    """The filter a Trigger declares: its ``filters`` when it has any, else ``filter``."""
    if trigger.filters:
        return compile_filters(trigger.filters, where=f"trigger {trigger.name!r}")
    return AttributesFilter(dict(trigger.filter_attributes))
