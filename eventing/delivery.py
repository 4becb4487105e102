"""The dispatcher: delivers stored events to Trigger subscribers, at least once.

Each Trigger has its own lane (a thread or a few) that takes that Trigger's due
deliveries from the queue, so a slow or failing subscriber delays only its own
Trigger; the number of threads is bounded by the topology, not by the load.

One attempt sends the event in binary content mode with the broker's bearer
token. A 2xx marks the delivery done; a CloudEvent in a 2xx response is a reply
and goes back into the broker (Knative's reply semantics). A failure is retried
per the DeliverySpec when Knative would retry it (``eventing.retry``), else, or
once the retries are spent, the delivery becomes a dead letter, which is also
sent to the ``dead_letter_sink`` when one is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from eventing.ingress import STRUCTURED_CONTENT_TYPE
from eventing.queue import Delivery, EventQueue
from eventing.retry import backoff_s, is_success, should_retry
from eventing.topology_io import Endpoints, EventingTopology
from falaj.audit import AuditLog, Outcome
from falaj.logs import get_logger
from falaj.topology import DeliverySpec, TriggerSpec

#: The longest a lane sleeps without looking at the queue; wakes come sooner on new events.
IDLE_WAIT_S = 1.0
#: How much of a failing subscriber's answer is kept with the delivery.
MAX_ERROR_BODY = 300


@dataclass(frozen=True)
class Reply:
    """A CloudEvent a subscriber answered with, and the raw response it came in."""

    event: CloudEvent | None
    headers: dict[str, str]
    body: bytes
    #: Set when the response claimed to carry an event that could not be read.
    problem: str | None = None


#: Takes a subscriber's reply, with the name of the Trigger that produced it.
ReplyHandler = Callable[[Reply, str], None]


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None = None
    reply: Reply | None = None
    #: Nothing was sent: the subscriber has no endpoint yet.
    deferred: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and is_success(self.status_code)


@dataclass
class _Lane:
    trigger: TriggerSpec
    delivery: DeliverySpec
    lock: threading.Lock = field(default_factory=threading.Lock)
    claimed: set[int] = field(default_factory=set)
    wakes: list[threading.Event] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


def reply_from(response: httpx.Response) -> Reply | None:
    """The CloudEvent in a subscriber's response, if it carries one."""
    headers = {k.lower(): v for k, v in response.headers.items()}
    binary = "ce-specversion" in headers
    structured = headers.get("content-type", "").startswith(STRUCTURED_CONTENT_TYPE)
    if not (binary or structured):
        return None
    body = response.content
    try:
        return Reply(event=from_http(headers, body), headers=headers, body=body)
    except GenericException as exc:
        return Reply(event=None, headers=headers, body=body, problem=str(exc)[:200])


class Dispatcher:
    def __init__(
        self,
        queue: EventQueue,
        topology: EventingTopology,
        triggers: Iterable[TriggerSpec],
        endpoints: Endpoints,
        *,
        token: str | None,
        on_reply: ReplyHandler,
        audit: AuditLog | None = None,
        region: str = "",
        lane_concurrency: int = 1,
        timeout_s: float = 30.0,
    ) -> None:
        if lane_concurrency < 1:
            raise ValueError(f"expected lane_concurrency of 1 or more, got {lane_concurrency}")
        self.queue = queue
        self.endpoints = endpoints
        self.on_reply = on_reply
        self.audit = audit
        self.region = region
        self.lane_concurrency = lane_concurrency
        self._lanes = {
            t.name: _Lane(trigger=t, delivery=topology.delivery_for(t)) for t in triggers
        }
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._stopping = threading.Event()
        self._started = False
        self.log = get_logger(component="broker.dispatcher")

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        for lane in self._lanes.values():
            for index in range(self.lane_concurrency):
                wake = threading.Event()
                # Daemon threads: a subscriber that hangs cannot hold the broker's exit.
                thread = threading.Thread(
                    target=self._run_lane,
                    args=(lane, wake),
                    name=f"lane-{lane.trigger.name}-{index}",
                    daemon=True,
                )
                lane.wakes.append(wake)
                lane.threads.append(thread)
                thread.start()
        self._started = True

    def notify(self, triggers: Iterable[str] | None = None) -> None:
        """Wake the lanes of these Triggers (all when None): they have new deliveries."""
        names = self._lanes.keys() if triggers is None else triggers
        for name in names:
            lane = self._lanes.get(name)
            if lane is not None:
                for wake in lane.wakes:
                    wake.set()

    def alive(self) -> bool:
        return (
            self._started
            and not self._stopping.is_set()
            and all(t.is_alive() for lane in self._lanes.values() for t in lane.threads)
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Take no new deliveries; let the ones in flight finish for up to ``grace_s``."""
        self._stopping.set()
        self.notify()
        deadline = time.monotonic() + grace_s
        for lane in self._lanes.values():
            for thread in lane.threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        # What is still in flight stays pending in the queue and is sent again on restart.
        self._client.close()

    # -- the lanes -------------------------------------------------------------

    def _run_lane(self, lane: _Lane, wake: threading.Event) -> None:
        name = lane.trigger.name
        while not self._stopping.is_set():
            wake.clear()
            with lane.lock:
                delivery = self.queue.next_due(name, now=time.time(), exclude=list(lane.claimed))
                if delivery is not None:
                    lane.claimed.add(delivery.id)
            if delivery is None:
                due_at = self.queue.next_due_at(name, exclude=list(lane.claimed))
                timeout = IDLE_WAIT_S if due_at is None else due_at - time.time()
                wake.wait(min(max(timeout, 0.0), IDLE_WAIT_S))
                continue
            try:
                if self.deliver(delivery).deferred:
                    # The lane's subscriber is not up: its other deliveries would
                    # wait too, so pause the lane rather than churn through them.
                    wake.wait(IDLE_WAIT_S)
            except Exception:
                # A bug or a full disk must not kill the lane; the delivery stays
                # pending and is tried again after a pause.
                self.log.exception("delivery failed unexpectedly", delivery=delivery.id)
                wake.wait(IDLE_WAIT_S)
            finally:
                with lane.lock:
                    lane.claimed.discard(delivery.id)

    def deliver(self, delivery: Delivery) -> AttemptResult:
        """Make one attempt at a delivery and record what came of it."""
        lane = self._lanes[delivery.trigger]
        event = self.queue.event(delivery.event_pk).to_cloudevent()
        url = self.endpoints.resolve(delivery.subscriber)
        if url is None:
            # The service has not started yet (locally they start after the broker,
            # or on demand): like a Trigger that is not Ready, wait without
            # spending the retry budget, since nothing was sent.
            error = (
                f"no endpoint for service {delivery.subscriber!r} yet; it is not in "
                f"{self.endpoints.path or 'the endpoints given to the broker'}"
            )
            self.queue.defer(delivery.id, next_attempt_at=time.time() + IDLE_WAIT_S, error=error)
            if delivery.last_error != error:  # once per delivery, not once a second
                self.log.warning("no endpoint yet", trigger=lane.trigger.name, error=error)
            return AttemptResult(None, error, deferred=True)
        result = self.attempt(url, event)
        attempt = delivery.attempts + 1
        spec = lane.delivery
        if result.ok:
            if result.reply is not None:
                # Before marking done: a crash in between re-sends the event, and
                # the subscriber's idempotency keys absorb the duplicate.
                self.on_reply(result.reply, lane.trigger.name)
            self.queue.mark_done(delivery.id, status_code=result.status_code or 200)
            return result
        retryable = should_retry(result.status_code)
        if retryable and attempt <= spec.retry:
            self.queue.mark_retry(
                delivery.id,
                next_attempt_at=time.time() + backoff_s(spec, attempt),
                error=result.error or "",
                status_code=result.status_code,
            )
            self.log.info(
                "delivery will be retried",
                trigger=lane.trigger.name,
                event_id=event["id"],
                attempt=attempt,
                status_code=result.status_code,
            )
            return result
        why = f"gave up after {attempt} attempts" if retryable else "not retryable"
        reason = f"{why}: {result.error}"
        dead_letter = self.queue.mark_dead(
            delivery.id, reason=reason, status_code=result.status_code
        )
        self._record_dead_letter(event, lane.trigger.name, reason, dead_letter)
        if spec.dead_letter_sink:
            self._send_to_sink(spec.dead_letter_sink, event, url, result)
        return result

    def attempt(self, url: str, event: CloudEvent) -> AttemptResult:
        headers, body = to_binary(event)
        try:
            response = self._client.post(url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            return AttemptResult(None, f"{type(exc).__name__} sending to {url}: {exc}")
        if is_success(response.status_code):
            return AttemptResult(response.status_code, reply=reply_from(response))
        return AttemptResult(
            response.status_code,
            f"HTTP {response.status_code} from {url}: {response.text[:MAX_ERROR_BODY]}",
        )

    def _record_dead_letter(
        self, event: CloudEvent, trigger: str, reason: str, dead_letter: int
    ) -> None:
        self.log.warning(
            "dead letter", trigger=trigger, event_id=event["id"], dead_letter=dead_letter
        )
        if self.audit is not None:
            self.audit.record(
                "event.dead-lettered",
                actor="broker",
                resource=f"event {event['id']} ({event['type']}) -> trigger/{trigger}",
                region=str(event.get("dataregion") or self.region),
                outcome=Outcome.FAILED,
                details={"reason": reason, "dead_letter": dead_letter},
            )

    def _send_to_sink(
        self, sink: str, event: CloudEvent, subscriber_url: str | None, result: AttemptResult
    ) -> None:
        url = self.endpoints.resolve(sink)
        if url is None:
            self.log.warning("dead-letter sink has no endpoint; kept in the broker", sink=sink)
            return
        attributes: dict[str, Any] = dict(event.get_attributes())
        # Knative's dead-letter extensions: where it was going and what came back.
        if subscriber_url:
            attributes["knativeerrordest"] = subscriber_url
        if result.status_code is not None:
            attributes["knativeerrorcode"] = str(result.status_code)
        sent = self.attempt(url, CloudEvent(attributes, event.get_data()))
        if not sent.ok:
            self.log.warning(
                "dead-letter sink refused the event; kept in the broker",
                sink=sink,
                error=sent.error,
            )
