"""RabbitMQ messages as CloudEvents, mapped the way Knative's RabbitMQ source maps them.

Knative's adapter (eventing-rabbitmq ``pkg/rabbit/message.go``) looks at each
message first:

- **already a CloudEvent, binary mode**: a ``specversion`` header (with or
  without the ``ce-`` prefix). Header names are lower-cased and the prefix
  dropped; ``content-type`` becomes ``datacontenttype``; ``x-`` headers are
  RabbitMQ's, not the event's; the body is the data. Without a ``source``
  header the source is the RabbitmqSource's.
- **already a CloudEvent, structured mode**: content type
  ``application/cloudevents+json``; the body is the event.
- **anything else** becomes a ``dev.knative.rabbitmq.event``: source
  ``/apis/v1/namespaces/<ns>/rabbitmqsources/<name>#<queue>``, id the
  ``message_id``, subject the id, time the message's ``timestamp``, data the
  body with the message's content type.

Where Falaj differs, it is to keep the broker's guarantees:

- Knative gives a message without ``message_id`` a random id. Here the id is
  derived from the message itself (source, exchange, routing key, properties,
  headers but RabbitMQ's own ``x-`` ones, body), so a message redelivered
  after a crash is a duplicate the broker recognises. Two messages identical
  in every byte are one event: a producer that sends the same record twice on
  purpose sets a ``message_id`` (or a ``timestamp``) to tell them apart.
  A CloudEvent message without an ``id`` gets the same derived id.
- Every event carries ``dataregion``: one that arrives without it gets this
  source's region (the message was read from a queue in this region); one
  that names a region keeps it, for the residency check to judge.
- Header names that are not CloudEvents attribute names (lower-case letters
  and digits) are transport headers, not attributes, and are left out.

Everything here is pure: ``AmqpMessage`` is the frozen boundary, and
``event_from_message`` the one mapping.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from falaj.errors import EventError
from falaj.events import REGION_EXTENSION, SPECVERSION, EventType

CE_PREFIX = "ce-"
#: Headers RabbitMQ itself adds or reads (x-death, x-delivery-count, x-match, ...).
RABBITMQ_HEADER_PREFIX = "x-"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
SPEC_VERSIONS = frozenset({"1.0", "0.3"})
#: CloudEvents 1.0, "Attribute Naming Convention".
ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
#: Trimmed from error messages: a header value may be long, or a record.
MAX_QUOTED = 120


class Encoding(StrEnum):
    """How a message carries its event (Knative's ``binding.Encoding``)."""

    BINARY = "binary"
    STRUCTURED = "structured"
    NONE = "none"


@dataclass(frozen=True, kw_only=True)
class AmqpMessage:
    """One message as it came off the queue: its properties, headers and body."""

    body: bytes
    delivery_tag: int = 0
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    #: AMQP's ``timestamp`` property: whole seconds since the epoch.
    timestamp: int | None = None
    correlation_id: str | None = None
    type: str | None = None
    app_id: str | None = None
    user_id: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pika(cls, method: Any, properties: Any, body: bytes) -> AmqpMessage:
        """From what pika hands a consumer (``Basic.Deliver``, ``BasicProperties``, body)."""
        return cls(
            body=body,
            delivery_tag=int(method.delivery_tag),
            exchange=str(method.exchange or ""),
            routing_key=str(method.routing_key or ""),
            redelivered=bool(method.redelivered),
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            correlation_id=properties.correlation_id,
            type=properties.type,
            app_id=properties.app_id,
            user_id=properties.user_id,
            headers=dict(properties.headers or {}),
        )


@dataclass(frozen=True)
class QueueOrigin:
    """The RabbitmqSource a message was read by, as Knative names it in ``source``."""

    namespace: str
    name: str
    queue: str

    @property
    def source(self) -> str:
        return f"/apis/v1/namespaces/{self.namespace}/rabbitmqsources/{self.name}#{self.queue}"


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media(content_type: str | None) -> bool:
    kind = media_type(content_type)
    return kind in ("application/json", "text/json") or kind.endswith("+json")


def event_headers(message: AmqpMessage) -> dict[str, str]:
    """The message's headers as CloudEvents reads them: lower-case, no ``ce-``, no ``x-``."""
    headers: dict[str, str] = {}
    for key, value in message.headers.items():
        name = str(key).lower()
        if name.startswith(RABBITMQ_HEADER_PREFIX):
            continue
        headers[name.removeprefix(CE_PREFIX)] = header_text(value)
    return headers


def encoding_of(message: AmqpMessage) -> Encoding:
    """Structured when the content type says so, binary with a known ``specversion``."""
    if media_type(message.content_type) == STRUCTURED_CONTENT_TYPE:
        return Encoding.STRUCTURED
    if event_headers(message).get("specversion") in SPEC_VERSIONS:
        return Encoding.BINARY
    return Encoding.NONE


def message_event_id(message: AmqpMessage, origin: QueueOrigin) -> str:
    """The message's ``message_id``, or an id derived from every byte RabbitMQ keeps of it.

    A redelivery changes only the delivery (tag, ``redelivered``) and RabbitMQ's
    ``x-`` headers (``x-delivery-count`` on a quorum queue), none of which count.
    """
    if message.message_id:
        return message.message_id
    properties = {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "timestamp": message.timestamp,
        "correlation_id": message.correlation_id,
        "type": message.type,
        "app_id": message.app_id,
        "user_id": message.user_id,
        "headers": {
            str(k): v
            for k, v in message.headers.items()
            if not str(k).lower().startswith(RABBITMQ_HEADER_PREFIX)
        },
    }
    digest = hashlib.sha256(
        json.dumps(properties, sort_keys=True, default=header_text).encode() + b"\0"
    )
    digest.update(message.body)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{origin.source}#sha256:{digest.hexdigest()}"))


def event_from_message(
    message: AmqpMessage, origin: QueueOrigin, *, region: str, received: datetime
) -> CloudEvent:
    """The CloudEvent a message stands for; ``EventError`` when it claims to be one and is not.

    ``received`` is when the source read the message: the ``time`` of an
    event made from a message without a ``timestamp``.
    """
    encoding = encoding_of(message)
    if encoding is Encoding.STRUCTURED:
        return _structured(message, origin, region=region)
    if encoding is Encoding.BINARY:
        return _binary(message, origin, region=region)
    return _plain(message, origin, region=region, received=received)


def _plain(
    message: AmqpMessage, origin: QueueOrigin, *, region: str, received: datetime
) -> CloudEvent:
    event_id = message_event_id(message, origin)
    moment = (
        datetime.fromtimestamp(message.timestamp, UTC)
        if message.timestamp is not None
        else received
    )
    data, content_type = _data(message.body, message.content_type)
    attributes: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "type": str(EventType.RABBITMQ_MESSAGE),
        "source": origin.source,
        "subject": event_id,
        "time": moment.astimezone(UTC).isoformat(),
        REGION_EXTENSION: region,
    }
    if content_type:
        attributes["datacontenttype"] = content_type
    return CloudEvent(attributes, data)


def _binary(message: AmqpMessage, origin: QueueOrigin, *, region: str) -> CloudEvent:
    attributes = event_headers(message)
    content_type = attributes.pop("content-type", None) or message.content_type
    kept = {name: value for name, value in attributes.items() if ATTRIBUTE_NAME.fullmatch(name)}
    if not kept.get("type"):
        raise EventError(
            "the message has a CloudEvents specversion header but no type header; expected "
            "ce-type (or type) beside ce-specversion, or no ce- headers at all for a plain "
            "message",
            problems=["type: missing"],
        )
    kept.setdefault("id", message_event_id(message, origin))
    kept.setdefault("source", origin.source)
    kept.setdefault(REGION_EXTENSION, region)
    headers = {CE_PREFIX + name: value for name, value in kept.items()}
    if content_type:
        headers["content-type"] = content_type
    return _read(headers, message.body, "binary")


def _structured(message: AmqpMessage, origin: QueueOrigin, *, region: str) -> CloudEvent:
    try:
        document = json.loads(message.body)
    except ValueError as exc:
        raise EventError(
            f"the message's content type is {STRUCTURED_CONTENT_TYPE} but its body is not "
            f"JSON: {exc}",
            problems=[f"body: {exc}"],
        ) from None
    if not isinstance(document, dict):
        raise EventError(
            f"a {STRUCTURED_CONTENT_TYPE} body must be one JSON object (an event), got "
            f"{type(document).__name__}",
            problems=[f"body: a {type(document).__name__}"],
        )
    document.setdefault("id", message_event_id(message, origin))
    document.setdefault("source", origin.source)
    document.setdefault(REGION_EXTENSION, region)
    body = json.dumps(document).encode()
    return _read({"content-type": STRUCTURED_CONTENT_TYPE}, body, "structured")


def _read(headers: Mapping[str, str], body: bytes, mode: str) -> CloudEvent:
    """The event, read by the same SDK call the broker's ingress reads it with."""
    try:
        return from_http(dict(headers), body)
    except GenericException as exc:
        text = str(exc)
        text = text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."
        raise EventError(
            f"the message is not a valid CloudEvent in {mode} mode: {text}", problems=[text]
        ) from None


def _data(body: bytes, content_type: str | None) -> tuple[Any, str | None]:
    """The event's data and content type: parsed JSON when the body is JSON, else the bytes."""
    if not body:
        return None, content_type
    if content_type is None or is_json_media(content_type):
        try:
            return json.loads(body), content_type or "application/json"
        except ValueError:
            pass  # not JSON after all: sent as the bytes it is, for the catalog to judge
    return body, content_type


def header_text(value: Any) -> str:
    """An AMQP header value as text (Knative: ``fmt.Sprint``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool | int | float | Decimal | str):
        return str(value)
    return json.dumps(value, sort_keys=True, default=header_text)
