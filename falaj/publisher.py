"""Sending events to the broker ingress (the K_SINK of every component)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
from cloudevents.conversion import to_binary, to_dict
from cloudevents.http import CloudEvent

from falaj.closeable import Closeable
from falaj.errors import PublishError

#: CloudEvents' batched content mode (HTTP binding, section 3.3).
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class EventPublisher(Closeable):
    """Posts CloudEvents in binary mode to the broker, with this process's token."""

    def __init__(self, broker_url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.broker_url = broker_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def publish(self, event: CloudEvent) -> None:
        headers, body = to_binary(event)
        try:
            response = self._client.post(self.broker_url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise PublishError(
                f"cannot reach the broker at {self.broker_url} to publish {event['type']}: "
                f"{type(exc).__name__}; is 'falaj up' running?"
            ) from exc
        if response.status_code >= 300:
            raise PublishError(
                f"the broker refused {event['type']} ({event['id']}): "
                f"HTTP {response.status_code} {response.text[:300]}"
            )

    def publish_batch(self, events: Sequence[CloudEvent]) -> None:
        """Post several events in one request (batched content mode); all or none are taken."""
        if not events:
            return
        body = json.dumps([to_dict(event) for event in events])
        try:
            response = self._client.post(
                self.broker_url, headers={"content-type": BATCH_CONTENT_TYPE}, content=body
            )
        except httpx.HTTPError as exc:
            raise PublishError(
                f"cannot reach the broker at {self.broker_url} to publish a batch of "
                f"{len(events)} events: {type(exc).__name__}; is 'falaj up' running?"
            ) from exc
        if response.status_code >= 300:
            raise PublishError(
                f"the broker refused a batch of {len(events)} events: "
                f"HTTP {response.status_code} {response.text[:300]}"
            )

    def close(self) -> None:
        self._client.close()
