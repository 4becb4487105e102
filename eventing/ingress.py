"""What the broker does with events that arrive: read, check, route and store them.

Independent of the HTTP server (kserve's dataplane habit): ``events_from_http``
reads CloudEvents in binary, structured or batched mode with the cloudevents
SDK; ``Ingress.accept`` checks each against the catalog and the residency
policy, picks the Triggers whose filters match, and stores the batch in one
commit. A refused event is kept as a dead letter (``quarantine``), never lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from eventing.filters import EventFilter, trigger_filter
from eventing.queue import EventQueue, Target
from falaj.errors import EventError
from falaj.events import REGION_EXTENSION, parse_event
from falaj.residency import Boundary, ResidencyPolicy
from falaj.topology import TriggerSpec

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
#: Request headers never written to the dead letters: they carry credentials.
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
#: How much of an SDK message is quoted back; some quote the whole payload.
MAX_PROBLEM_CHARS = 200


@dataclass(frozen=True)
class Accepted:
    """The outcome of a stored batch: new event ids, duplicates, and Triggers to wake."""

    ids: tuple[str, ...]
    duplicates: tuple[str, ...]
    triggers: frozenset[str]


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[:MAX_PROBLEM_CHARS] + "..."


def events_from_http(headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
    """The CloudEvents in one HTTP request; ``EventError`` lists every one that is not."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if lowered.get("content-type", "").startswith(BATCH_CONTENT_TYPE):
        return _batch(body)
    try:
        return [from_http(lowered, body)]
    except GenericException as exc:
        raise EventError(
            "the request is not a CloudEvent: send binary mode (ce-* headers), structured "
            f"mode ({STRUCTURED_CONTENT_TYPE}) or a batch ({BATCH_CONTENT_TYPE})",
            problems=[_short(str(exc))],
        ) from None


def _batch(body: bytes) -> list[CloudEvent]:
    try:
        items = json.loads(body)
    except ValueError as exc:
        raise EventError(
            f"a {BATCH_CONTENT_TYPE} body must be a JSON array of events; it is not JSON",
            problems=[f"body: {exc}"],
        ) from None
    if not isinstance(items, list) or not items:
        raise EventError(
            f"a {BATCH_CONTENT_TYPE} body must be a non-empty JSON array of events",
            problems=[f"body: got {type(items).__name__ if items else 'an empty array'}"],
        )
    events, problems = [], []
    for index, item in enumerate(items):
        try:
            structured = json.dumps(item).encode()
            events.append(from_http({"content-type": STRUCTURED_CONTENT_TYPE}, structured))
        except GenericException as exc:
            problems.append(f"[{index}]: {_short(str(exc))}")
    if problems:
        raise EventError(
            f"{len(problems)} of {len(items)} events in the batch are not CloudEvents; "
            "nothing in the batch was accepted",
            problems=problems,
        )
    return events


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}


class Ingress:
    """Checks and stores events for one broker's Triggers."""

    def __init__(
        self, queue: EventQueue, policy: ResidencyPolicy, triggers: Sequence[TriggerSpec]
    ) -> None:
        self.queue = queue
        self.policy = policy
        self._routes: tuple[tuple[TriggerSpec, EventFilter], ...] = tuple(
            (t, trigger_filter(t)) for t in triggers
        )

    def targets(self, event: CloudEvent) -> list[Target]:
        attributes = event.get_attributes()
        return [
            Target(trigger=t.name, subscriber=t.subscriber_uri or t.subscriber)
            for t, event_filter in self._routes
            if event_filter.matches(attributes)
        ]

    def check(self, events: Sequence[CloudEvent]) -> None:
        """Refuse the batch unless every event is in-region and fits the catalog.

        The region is checked first and on its own: an out-of-region event
        raises ``ResidencyViolation`` (audited by the policy) and its data is
        never written here, not even as a dead letter.
        """
        for event in events:
            region = event.get(REGION_EXTENSION)
            if region:
                self.policy.check_region(
                    str(region),
                    resource=f"event {event['id']} ({event['type']})",
                    boundary=Boundary.EVENT_ACCEPT,
                )
        problems: list[str] = []
        for index, event in enumerate(events):
            try:
                parse_event(event, self.policy)
            except EventError as exc:
                prefix = f"[{index}] " if len(events) > 1 else ""
                problems.extend(prefix + p for p in (exc.problems or [str(exc)]))
        if problems:
            what = "event" if len(events) == 1 else f"batch of {len(events)} events"
            raise EventError(
                f"the {what} does not fit the Falaj event catalog; fix the fields listed "
                "in 'problems' and publish again",
                problems=problems,
            )

    def accept(self, events: Sequence[CloudEvent]) -> Accepted:
        """Check, route and durably store a batch (all or nothing)."""
        self.check(events)
        routed = [(event, self.targets(event)) for event in events]
        stored = self.queue.append(routed)
        ids = tuple(str(e["id"]) for (e, _), new in zip(routed, stored, strict=True) if new)
        duplicates = tuple(
            str(e["id"]) for (e, _), new in zip(routed, stored, strict=True) if not new
        )
        triggers = frozenset(
            t.trigger
            for (_, targets), new in zip(routed, stored, strict=True)
            if new
            for t in targets
        )
        return Accepted(ids=ids, duplicates=duplicates, triggers=triggers)

    def quarantine(
        self,
        error: EventError,
        headers: Mapping[str, str],
        body: bytes,
        *,
        where: str = "rejected at ingress",
        trigger: str | None = None,
    ) -> int:
        """Keep a refused request as it came (minus credentials); returns the dead letter id."""
        reason = f"{where}: {error}"
        if error.problems:
            reason += " [" + "; ".join(error.problems) + "]"
        return self.queue.reject(
            reason, raw_headers=safe_headers(headers), raw_body=body, trigger=trigger
        )
