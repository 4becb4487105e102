from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary
from pydantic import SecretStr

from eventing.filters import (
    AllFilter,
    AnyFilter,
    AttributesFilter,
    EventFilter,
    ExactFilter,
    NotFilter,
    PrefixFilter,
    SuffixFilter,
    Verdict,
    compile_expression,
    compile_filters,
    trigger_filter,
)
from eventing.topology_io import dump_endpoints, dump_topology
from falaj.auth import Role
from falaj.context import Context
from falaj.errors import ManifestError
from falaj.events import (
    EventType,
    ModelRegistered,
    TrainingReason,
    TrainingRequested,
    make_event,
)
from falaj.runtime.processes import ReadyCheck, free_port
from falaj.settings import Settings
from falaj.topology import BrokerSpec, TriggerSpec
from tests.eventing.conftest import (
    Subscriber,
    broker_process,
    training_requested,
    wait_until,
)

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


# --- spec.filters: the Subscriptions API dialects -------------------------------------------
#
# The tables below are Knative Eventing's own cases (knative/eventing
# pkg/eventfilter/subscriptionsapi/*_test.go), each table named after the Go
# test it comes from, over an event shaped like their makeEvent().

KNATIVE_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "type": "dev.knative.example",
    "source": "knativesource",
    "id": "1234",
    "knativebrokerttl": 20,
}
WITH_EXTENSION = {**KNATIVE_EVENT, "myextension": "my-extension-value"}


class Fixed(EventFilter):
    """Knative's passFilter / failFilter test doubles: always the same verdict."""

    def __init__(self, verdict: Verdict) -> None:
        self.fixed = verdict

    def verdict(self, attributes: Mapping[str, Any]) -> Verdict:
        return self.fixed


P, F = Fixed(Verdict.PASS), Fixed(Verdict.FAIL)


@pytest.mark.parametrize(
    ("dialect", "attribute", "value", "event", "expected"),
    [
        # TestExactMatchFilter
        (ExactFilter, "type", "some-other-type", KNATIVE_EVENT, Verdict.FAIL),
        (ExactFilter, "source", "some-other-source", KNATIVE_EVENT, Verdict.FAIL),
        (ExactFilter, "myextension", "some-other-extension", KNATIVE_EVENT, Verdict.FAIL),
        (ExactFilter, "type", "dev.knative.example", KNATIVE_EVENT, Verdict.PASS),
        (ExactFilter, "myextension", "my-extension-value", WITH_EXTENSION, Verdict.PASS),
        # TestPrefixFilter
        (PrefixFilter, "some-other-attribute", "wrong.prefix", KNATIVE_EVENT, Verdict.FAIL),
        (PrefixFilter, "type", "wrong.prefix", KNATIVE_EVENT, Verdict.FAIL),
        (PrefixFilter, "source", "wrong.prefix", KNATIVE_EVENT, Verdict.FAIL),
        (PrefixFilter, "myextension", "wrong.prefix", WITH_EXTENSION, Verdict.FAIL),
        (PrefixFilter, "type", "dev.knative", KNATIVE_EVENT, Verdict.PASS),
        (PrefixFilter, "myextension", "my-extension", WITH_EXTENSION, Verdict.PASS),
        # TestSuffixFilter
        (SuffixFilter, "some-other-attribute", "wrong.suffix", KNATIVE_EVENT, Verdict.FAIL),
        (SuffixFilter, "type", "wrong.suffix", KNATIVE_EVENT, Verdict.FAIL),
        (SuffixFilter, "source", "wrong.suffix", KNATIVE_EVENT, Verdict.FAIL),
        (SuffixFilter, "myextension", "wrong.suffix", WITH_EXTENSION, Verdict.FAIL),
        (SuffixFilter, "type", ".knative.example", KNATIVE_EVENT, Verdict.PASS),
        (SuffixFilter, "myextension", "extension-value", WITH_EXTENSION, Verdict.PASS),
        # Documented for every attribute dialect: case-sensitive; non-text values as text;
        # an attribute set to "" counts as never set.
        (ExactFilter, "type", "DEV.KNATIVE.EXAMPLE", KNATIVE_EVENT, Verdict.FAIL),
        (PrefixFilter, "type", "Dev.", KNATIVE_EVENT, Verdict.FAIL),
        (SuffixFilter, "type", ".EXAMPLE", KNATIVE_EVENT, Verdict.FAIL),
        (ExactFilter, "knativebrokerttl", "20", KNATIVE_EVENT, Verdict.PASS),
        (PrefixFilter, "subject", "a", {**KNATIVE_EVENT, "subject": ""}, Verdict.FAIL),
    ],
)
def test_attribute_dialects_follow_knative(
    dialect: type[ExactFilter | PrefixFilter | SuffixFilter],
    attribute: str,
    value: str,
    event: dict[str, Any],
    expected: Verdict,
) -> None:
    assert dialect({attribute: value}).verdict(event) is expected


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        # TestMultipleExactMatchFilters: several attributes in one map, all must match ...
        ([{"exact": {"type": "some-other-type", "source": "some-other-source"}}], False),
        ([{"exact": {"type": "dev.knative.example", "source": "some-other-source"}}], False),
        ([{"exact": {"type": "dev.knative.example", "source": "knativesource"}}], True),
        ([{"exact": {"type": "dev.knative.example", "myextension": "nope"}}], False),
        ([{"exact": {"type": "dev.knative.example", "myextension": "my-extension-value"}}], True),
        # ... and the same split into one expression per attribute.
        ([{"exact": {"type": "some-other-type"}}, {"exact": {"source": "x"}}], False),
        ([{"exact": {"type": "dev.knative.example"}}, {"exact": {"source": "x"}}], False),
        (
            [{"exact": {"type": "dev.knative.example"}}, {"exact": {"source": "knativesource"}}],
            True,
        ),
        # TestMultiplePrefixFilters
        ([{"prefix": {"type": "dev.knative", "myextension": "attri"}}], False),
        ([{"prefix": {"type": "dev.knative", "myextension": "my-extension"}}], True),
        ([{"suffix": {"type": ".example", "source": "source"}}], True),
        ([{"suffix": {"type": ".example", "source": "nope"}}], False),
        ([{"prefix": {"type": "dev.knative"}}, {"prefix": {"myextension": "attri"}}], False),
        (
            [{"prefix": {"type": "dev.knative"}}, {"prefix": {"myextension": "my-extension"}}],
            True,
        ),
    ],
)
def test_every_expression_of_filters_must_pass(
    expressions: list[dict[str, Any]], expected: bool
) -> None:
    # Built from the manifest form, as Knative's CreateSubscriptionsAPIFilters does
    # (compile_expression: these Knative types are not in Falaj's catalog).
    built = AllFilter(tuple(compile_expression(e) for e in expressions))
    assert built.matches(WITH_EXTENSION) is expected


@pytest.mark.parametrize("dialect", [ExactFilter, PrefixFilter, SuffixFilter])
@pytest.mark.parametrize(("attribute", "value"), [("", "x"), ("type", "")])
def test_an_empty_attribute_or_value_is_refused_like_knative(
    dialect: type[ExactFilter | PrefixFilter | SuffixFilter], attribute: str, value: str
) -> None:
    # NewExactFilter / NewPrefixFilter / NewSuffixFilter return an error for these.
    with pytest.raises(ValueError, match="non-empty attribute and value"):
        dialect({attribute: value})
    with pytest.raises(ValueError, match="non-empty attribute and value"):
        dialect({})


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        # TestAllFilter_Flat
        (AllFilter(()), Verdict.NO_FILTER),
        (AllFilter((P,)), Verdict.PASS),
        (AllFilter((F,)), Verdict.FAIL),
        (AllFilter((P, F)), Verdict.FAIL),
        (AllFilter((P, P)), Verdict.PASS),
        (AllFilter((F, F)), Verdict.FAIL),
        # TestAllFilter_WithNestedAll
        (AllFilter((AllFilter((P,)),)), Verdict.PASS),
        (AllFilter((AllFilter((F,)),)), Verdict.FAIL),
        (AllFilter((P, AllFilter((F,)))), Verdict.FAIL),
        (AllFilter((P, AllFilter((P,)))), Verdict.PASS),
        (AllFilter((F, AllFilter((F,)))), Verdict.FAIL),
        (AllFilter((F, AllFilter((P,)))), Verdict.FAIL),
        (AllFilter((P, AllFilter((P, F)))), Verdict.FAIL),
        (AllFilter((P, AllFilter((P, P)))), Verdict.PASS),
        (AllFilter((P, AllFilter((F, F)))), Verdict.FAIL),
        (AllFilter((F, AllFilter((P, F)))), Verdict.FAIL),
        (AllFilter((F, AllFilter((P, P)))), Verdict.FAIL),
        (AllFilter((F, AllFilter((F, F)))), Verdict.FAIL),
        # TestAnyFilter_Flat
        (AnyFilter(()), Verdict.NO_FILTER),
        (AnyFilter((P,)), Verdict.PASS),
        (AnyFilter((F,)), Verdict.FAIL),
        (AnyFilter((P, F)), Verdict.PASS),
        (AnyFilter((P, P)), Verdict.PASS),
        (AnyFilter((F, F)), Verdict.FAIL),
        # TestAnyFilter_WithNestedAny
        (AnyFilter((AnyFilter((P,)),)), Verdict.PASS),
        (AnyFilter((AnyFilter((F,)),)), Verdict.FAIL),
        (AnyFilter((P, AnyFilter((F,)))), Verdict.PASS),
        (AnyFilter((P, AnyFilter((P,)))), Verdict.PASS),
        (AnyFilter((F, AnyFilter((F,)))), Verdict.FAIL),
        (AnyFilter((F, AnyFilter((P,)))), Verdict.PASS),
        (AnyFilter((P, AnyFilter((P, F)))), Verdict.PASS),
        (AnyFilter((P, AnyFilter((P, P)))), Verdict.PASS),
        (AnyFilter((P, AnyFilter((F, F)))), Verdict.PASS),
        (AnyFilter((F, AnyFilter((P, F)))), Verdict.PASS),
        (AnyFilter((F, AnyFilter((P, P)))), Verdict.PASS),
        (AnyFilter((F, AnyFilter((F, F)))), Verdict.FAIL),
        # TestNotFilter
        (NotFilter(None), Verdict.NO_FILTER),
        (NotFilter(P), Verdict.FAIL),
        (NotFilter(F), Verdict.PASS),
        # FilterResult.And / Or: "no filter" is neutral, and `not` leaves it alone.
        (NotFilter(AllFilter(())), Verdict.NO_FILTER),
        (AnyFilter((AllFilter(()), F)), Verdict.FAIL),
        (AllFilter((AnyFilter(()), P)), Verdict.PASS),
    ],
)
def test_all_any_not_follow_knative(built: EventFilter, expected: Verdict) -> None:
    assert built.verdict(KNATIVE_EVENT) is expected


def test_no_filter_is_delivered_and_only_a_fail_is_not() -> None:
    # Knative's broker drops an event only on FailFilter.
    assert AllFilter(()).matches(KNATIVE_EVENT)
    assert NotFilter(None).matches(KNATIVE_EVENT)
    assert not NotFilter(P).matches(KNATIVE_EVENT)


def test_compiled_expressions_nest_like_the_manifest() -> None:
    built = compile_filters(
        [
            {
                "any": [
                    {"suffix": {"type": ".registered"}},
                    {"not": {"prefix": {"source": "/falaj"}}},
                ]
            },
            {
                "not": {
                    "all": [{"exact": {"dataregion": "me-central-1"}}, {"exact": {"subject": "x"}}]
                }
            },
        ]
    )
    assert built == AllFilter(
        (
            AnyFilter(
                (
                    SuffixFilter({"type": ".registered"}),
                    NotFilter(PrefixFilter({"source": "/falaj"})),
                )
            ),
            NotFilter(
                AllFilter(
                    (ExactFilter({"dataregion": "me-central-1"}), ExactFilter({"subject": "x"}))
                )
            ),
        )
    )
    assert built.matches(EVENT)
    assert not built.matches({**EVENT, "subject": "x"})
    assert not built.matches({**EVENT, "type": "dev.falaj.model.deployed"})


def _on(filters: tuple[dict[str, Any], ...], attributes: dict[str, str]) -> TriggerSpec:
    return TriggerSpec(
        name="t", broker="default", filter_attributes=attributes, filters=filters, subscriber="s"
    )


def test_filters_when_set_replace_filter_attributes() -> None:
    # Knative's broker: `len(trigger.Spec.Filters) > 0` is checked before `Spec.Filter`.
    built = trigger_filter(
        _on(({"exact": {"type": "dev.falaj.model.registered"}},), {"type": "dev.falaj.nope"})
    )
    assert built.matches(EVENT)
    # No filters: the attributes filter applies again.
    assert not trigger_filter(_on((), {"type": "dev.falaj.nope"})).matches(EVENT)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ({}, r"filters\[0\] to be an object with exactly one dialect key"),
        (
            {"exact": {"type": "dev.falaj.model.registered"}, "prefix": {"source": "/x"}},
            r"got 2 dialects \(exact, prefix\)",
        ),
        ({"regex": {"type": "dev"}}, r"unknown dialect 'regex'; expected one of exact, prefix"),
        ({"cesql": "type = 'x'"}, r"filters\[0\].cesql: CESQL has no local equivalent"),
        ({"prefix": {}}, r"filters\[0\].prefix to map attributes to strings"),
        (
            {"prefix": {"type": "dev.", "source": ""}},
            r"filters\[0\].prefix.source to be a non-empty",
        ),
        ({"suffix": {"Type": ".logged"}}, r"attribute name 'Type' is not a CloudEvents"),
        ({"exact": {"source": ""}}, r"filters\[0\].exact.source to be a non-empty string"),
        ({"all": []}, r"filters\[0\].all to be a non-empty list"),
        ({"not": {"any": [{"exact": {"id": 7}}]}}, r"filters\[0\].not.any\[0\].exact.id"),
        ({"exact": {"type": "dev.falaj.nope"}}, r"'dev.falaj.nope' matches no event type"),
    ],
)
def test_a_malformed_expression_is_refused_with_its_path(
    expression: dict[str, Any], message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        trigger_filter(_on((expression,), {}))


def test_a_broker_process_routes_by_prefix_and_not(
    settings: Settings,
    ctx: Context,
    service_token: str,
    make_subscriber: Callable[[], Subscriber],
    tmp_path: Path,
) -> None:
    # Training events, except those about a canary, go to `filtered`; all go to `everything`.
    filtered, everything = make_subscriber(), make_subscriber()
    dump_topology(
        [BrokerSpec(name="default")],
        [
            TriggerSpec(
                name="training-but-canary",
                broker="default",
                filters=(
                    {"prefix": {"type": "dev.falaj.training."}},
                    {"not": {"prefix": {"subject": "canary/"}}},
                ),
                subscriber="filtered",
            ),
            TriggerSpec(name="everything", broker="default", subscriber="everything"),
        ],
        tmp_path / "topology.json",
    )
    dump_endpoints(
        {"filtered": filtered.url, "everything": everything.url}, tmp_path / "endpoints.json"
    )
    port = free_port()
    broker_settings = settings.model_copy(
        update={"broker_port": port, "token": SecretStr(ctx.tokens.issue("b", Role.SERVICE))}
    )
    broker = broker_process(broker_settings, tmp_path, "broker")
    canary = make_event(
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model="fraud", reason=TrainingReason.MANUAL),
        region=settings.region,
        subject="canary/fraud",
    )
    plain = training_requested(region=settings.region)
    try:
        broker.start()
        broker.wait_ready(ReadyCheck("127.0.0.1", port, "/readyz"), timeout_s=30)
        # The canary first: had it been routed to `filtered`, that lane would
        # deliver it before `plain`, so waiting for `plain` is waiting long enough.
        for event in (canary, plain):
            headers, body = to_binary(event)
            response = httpx.post(
                f"http://127.0.0.1:{port}/",
                headers={**headers, "Authorization": f"Bearer {service_token}"},
                content=body,
            )
            assert response.status_code == 202, response.text
        wanted = {canary["id"], plain["id"]}
        wait_until(lambda: wanted <= set(everything.ids()), what="both events to everything")
        wait_until(lambda: plain["id"] in filtered.ids(), what="the plain event to filtered")
        assert filtered.ids() == [plain["id"]]
    finally:
        broker.stop()


def test_a_broker_process_routes_each_dialect_as_knative_does(
    settings: Settings,
    ctx: Context,
    service_token: str,
    make_subscriber: Callable[[], Subscriber],
    tmp_path: Path,
) -> None:
    dialects: dict[str, tuple[dict[str, Any], ...]] = {
        "exact": ({"exact": {"type": "dev.falaj.training.requested"}},),
        "prefix": ({"prefix": {"source": "/falaj/functions/"}},),
        "suffix": ({"suffix": {"type": ".registered"}},),
        "all": (
            {
                "all": [
                    {"exact": {"type": "dev.falaj.training.requested"}},
                    {"exact": {"subject": "nightly"}},
                ]
            },
        ),
        "any": ({"any": [{"exact": {"subject": "nightly"}}, {"suffix": {"type": ".registered"}}]},),
        "not": ({"not": {"exact": {"subject": "nightly"}}},),
    }
    subscribers = {name: make_subscriber() for name in dialects}
    dump_topology(
        [BrokerSpec(name="default")],
        [
            TriggerSpec(name=name, broker="default", filters=filters, subscriber=name)
            for name, filters in dialects.items()
        ],
        tmp_path / "topology.json",
    )
    dump_endpoints({n: s.url for n, s in subscribers.items()}, tmp_path / "endpoints.json")
    nightly = make_event(
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model="fraud", reason=TrainingReason.SCHEDULE),
        region=settings.region,
        subject="nightly",
    )
    adhoc = make_event(
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model="fraud", reason=TrainingReason.MANUAL),
        region=settings.region,
        subject="adhoc",
    )
    registered = make_event(  # source /falaj/registry, no subject at all
        EventType.MODEL_REGISTERED,
        ModelRegistered(
            model="fraud", version=2, digest="sha256:0", metrics={}, location="file:///m"
        ),
        region=settings.region,
    )
    expected = {
        "exact": {nightly["id"], adhoc["id"]},
        "prefix": {nightly["id"], adhoc["id"]},  # /falaj/functions/training-launcher
        "suffix": {registered["id"]},
        "all": {nightly["id"]},
        "any": {nightly["id"], registered["id"]},
        "not": {adhoc["id"], registered["id"]},  # no subject: exact fails, so not passes
    }
    port = free_port()
    broker_settings = settings.model_copy(
        update={"broker_port": port, "token": SecretStr(ctx.tokens.issue("b", Role.SERVICE))}
    )
    broker = broker_process(broker_settings, tmp_path, "broker")
    try:
        broker.start()
        broker.wait_ready(ReadyCheck("127.0.0.1", port, "/readyz"), timeout_s=60)
        for event in (nightly, adhoc, registered):
            headers, body = to_binary(event)
            response = httpx.post(
                f"http://127.0.0.1:{port}/",
                headers={**headers, "Authorization": f"Bearer {service_token}"},
                content=body,
            )
            assert response.status_code == 202, response.text
        # Routing is decided at ingress, one delivery per matching Trigger: final after the 202s.
        queue = broker_settings.resolved_home / "broker" / "queue.db"
        with sqlite3.connect(f"file:{queue}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT d.trigger, e.id FROM deliveries d JOIN events e ON e.pk = d.event_pk"
            ).fetchall()
        routed = {
            name: {event_id for trigger, event_id in rows if trigger == name} for name in dialects
        }
        assert routed == expected
        for name, subscriber in subscribers.items():
            wait_until(
                lambda s=subscriber, n=name: set(s.ids()) == expected[n],
                what=f"the {name} Trigger's events at its subscriber",
            )
    finally:
        broker.stop()
