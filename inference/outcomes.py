"""Outcome feedback: what really happened for earlier predictions, as the router takes it.

``POST /v2/models/<model>/outcomes`` takes either plain JSON, one outcome or a
list, ``{"inference_id": "...", "label": 1, "row": 0}`` (the id the router
returned in ``x-falaj-inference-id``), or an ``inference.outcome`` CloudEvent,
binary or structured, as a Trigger delivers it. An event goes through the same
catalog and residency check as at the broker's ingress.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http
from pydantic import ValidationError

from falaj.errors import EventError
from falaj.events import EventType, InferenceOutcome, parse_event
from falaj.problems import validation_problems
from falaj.residency import ResidencyPolicy
from inference.errors import InvalidPayload

#: Outcomes in one request at most: a bigger batch is split by the caller.
MAX_OUTCOMES = 10_000


def _is_cloudevent(headers: Mapping[str, str]) -> bool:
    return "ce-type" in headers or headers.get("content-type", "").startswith(
        "application/cloudevents+json"
    )


def parse_outcomes(
    headers: Mapping[str, str], body: bytes, *, model: str, policy: ResidencyPolicy
) -> list[InferenceOutcome]:
    """The outcomes in a request for ``model``; ``InvalidPayload`` saying what was expected."""
    if _is_cloudevent(headers):
        try:
            parsed = parse_event(from_http(dict(headers), body), policy)
        except (GenericException, EventError) as exc:
            expected = f"expected an {EventType.INFERENCE_OUTCOME} event"
            raise InvalidPayload(f"{expected}: {exc}") from None
        if not isinstance(parsed.data, InferenceOutcome):
            raise InvalidPayload(
                f"expected an {EventType.INFERENCE_OUTCOME} event, got {parsed.type}"
            )
        items = [parsed.data]
    else:
        try:
            raw: Any = json.loads(body)
        except ValueError:
            raise InvalidPayload(
                'expected JSON {"inference_id": ..., "label": ...} or a list of them, '
                "or an inference.outcome CloudEvent; the body is not JSON"
            ) from None
        raws = raw if isinstance(raw, list) else [raw]
        if not raws or len(raws) > MAX_OUTCOMES:
            raise InvalidPayload(f"expected 1..{MAX_OUTCOMES} outcomes, got {len(raws)}")
        items = []
        for number, item in enumerate(raws):
            if not isinstance(item, dict):
                raise InvalidPayload(
                    f"outcome {number}: expected an object, got {type(item).__name__}"
                )
            try:
                items.append(InferenceOutcome.model_validate({"model": model, **item}))
            except ValidationError as exc:
                raise InvalidPayload(
                    f"outcome {number}: " + "; ".join(validation_problems(exc))
                ) from None
    wrong = sorted({o.model for o in items if o.model != model})
    if wrong:
        raise InvalidPayload(f"expected outcomes of {model!r} at this URL, got some of {wrong}")
    return items
