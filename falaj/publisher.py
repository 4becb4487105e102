"""Sending events to the broker ingress (the K_SINK of every component)."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from cloudevents.conversion import to_binary, to_dict
from cloudevents.http import CloudEvent

from falaj.closeable import Closeable
from falaj.context import Context
from falaj.errors import PublishError
from falaj.residency import stays_here
from falaj.settings import Settings
from falaj.tls import client_verify

#: CloudEvents' batched content mode (HTTP binding, section 3.3).
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


@dataclass(frozen=True)
class Receipt:
    """What the broker said it did with a publish: new event ids, and ids it already had.

    Empty when the ingress answers 2xx without the Falaj broker's body (Knative's does).
    """

    accepted: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()


class EventPublisher(Closeable):
    """Posts CloudEvents in binary mode to the broker, with this process's token."""

    def __init__(
        self,
        broker_url: str,
        token: str | None,
        *,
        timeout_s: float = 10.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.broker_url = broker_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers, verify=verify)

    @classmethod
    def from_context(cls, ctx: Context, *, timeout_s: float = 10.0) -> EventPublisher:
        """This process's publisher, once the residency policy allows where it sends.

        The broker's ingress is an outbound destination like a dead-letter sink
        or KServe's logger URL (the router's payload log posts there): one
        elsewhere than this machine or cluster, outside the allowed regions, is
        refused here, audited, at the start of the process, before any event
        could leave.
        """
        url = ctx.settings.broker_ingress
        # A broker on this machine or in this cluster is where the process itself
        # runs (its own region is the job-launch and event boundaries' business).
        if not stays_here(url):
            ctx.policy.check_destination(url, resource=f"{ctx.actor} events (FALAJ_BROKER_URL)")
        return cls.from_settings(ctx.settings, timeout_s=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout_s: float = 10.0) -> EventPublisher:
        """This process's publisher: its broker, its token, its trust in the broker's TLS."""
        return cls(
            settings.broker_ingress,
            settings.bearer_token(),
            timeout_s=timeout_s,
            verify=client_verify(settings),
        )

    def publish(self, event: CloudEvent) -> Receipt:
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
                f"HTTP {response.status_code} {response.text[:300]}",
                status_code=response.status_code,
            )
        return _receipt(response)

    def publish_batch(self, events: Sequence[CloudEvent]) -> Receipt:
        """Post several events in one request (batched content mode); all or none are taken."""
        if not events:
            return Receipt()
        body = json.dumps([batch_item(event) for event in events])
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
                f"HTTP {response.status_code} {response.text[:300]}",
                status_code=response.status_code,
            )
        return _receipt(response)

    def close(self) -> None:
        self._client.close()


def batch_item(event: CloudEvent) -> dict[str, Any]:
    """One event of a batch, in the CloudEvents JSON format.

    Data that is not JSON (bytes) travels as ``data_base64`` (JSON format,
    section 3.1); ``to_dict`` alone would leave bytes that ``json.dumps`` refuses.
    """
    item = to_dict(event)
    if isinstance(item.get("data"), bytes):
        item["data_base64"] = base64.b64encode(item.pop("data")).decode("ascii")
    return item


def _receipt(response: httpx.Response) -> Receipt:
    try:
        body = response.json()
    except ValueError:
        return Receipt()
    if not isinstance(body, dict):
        return Receipt()
    return Receipt(
        accepted=tuple(str(i) for i in body.get("accepted") or ()),
        duplicates=tuple(str(i) for i in body.get("duplicates") or ()),
    )
