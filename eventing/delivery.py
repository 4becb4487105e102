"""The dispatcher: delivers stored events to Trigger subscribers, at least once.

Each Trigger has a ``Lane`` (``eventing.lane``): a window of its deliveries
in memory, fed by the queue writer as events are committed and read back
from the queue after a restart or an overflow. A pump per lane starts up to
the lane's concurrency of deliveries at once (the subscriber's Knative
``containerConcurrency``, or the broker's default), so a slow or failing
subscriber holds up only its own Trigger.

One attempt POSTs the event in binary content mode with the broker's bearer
token (aiohttp: on two cores it sends ~15x more requests per second than
httpx's async client). A 2xx marks the delivery done; a CloudEvent in a 2xx
response is a reply and goes back into the broker first (Knative's reply
semantics). A failure is retried per the DeliverySpec when Knative would
retry it (``eventing.retry``), else, or once the retries are spent, the
delivery becomes a dead letter, which is also sent to the
``dead_letter_sink`` when one is set.

What came of each attempt goes, in order and in batches, to ``Outcomes``:
the broker process, which owns the queue and writes it (the dispatcher only
reads). A crash before such a write only means the delivery is sent again,
which at-least-once allows and the subscribers' idempotency keys absorb.
Each attempt that was sent is also told to ``on_attempt`` (the Trigger, what
came of it and how long the subscriber took): the metrics.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from eventing.ingress import STRUCTURED_CONTENT_TYPE
from eventing.lane import Lane
from eventing.queue import DeliveryUpdate, EventQueue, PendingDelivery, UpdateKind
from eventing.retry import is_success, should_retry, wait_before_retry_s
from eventing.topology_io import Endpoints, EventingTopology
from falaj.logs import TRACEPARENT, get_logger, traced
from falaj.topology import TriggerSpec

#: The longest a lane sleeps without looking again; new deliveries wake it sooner.
IDLE_WAIT_S = 1.0
#: How much of a failing subscriber's answer is kept with the delivery.
MAX_ERROR_BODY = 300
#: In flight at once per Trigger when its subscriber declares no containerConcurrency.
DEFAULT_CONCURRENCY = 32
#: Deliveries a lane holds in memory; beyond it they wait in the queue only.
DEFAULT_WINDOW = 4096
#: Rows one refill reads at most: a few milliseconds of the loop when a lane catches up.
REFILL_ROWS = 512
#: How long one attempt may take when the DeliverySpec sets no ``timeout``.
DEFAULT_TIMEOUT_S = 30.0
#: How long outcomes gather before they are handed on together (delivery does not wait).
OUTCOME_LINGER_S = 0.002


class Outcomes(Protocol):
    """Where the dispatcher records what came of its attempts: the queue's owner."""

    async def record(self, updates: Sequence[DeliveryUpdate]) -> None: ...


@dataclass(frozen=True)
class Reply:
    """A CloudEvent a subscriber answered with, and the raw response it came in."""

    event: CloudEvent | None
    headers: dict[str, str]
    body: bytes
    #: Set when the response claimed to carry an event that could not be read.
    problem: str | None = None


#: Takes a subscriber's reply, with the name of the Trigger that produced it.
ReplyHandler = Callable[[Reply, str], Awaitable[None]]
#: Told of each attempt sent: its Trigger, what came of it (done, retry, dead), its seconds.
AttemptObserver = Callable[[str, UpdateKind, float], None]


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None = None
    reply: Reply | None = None
    #: The response's Retry-After header, for 429 and 503.
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and is_success(self.status_code)


def reply_from(headers: Mapping[str, str], body: bytes) -> Reply | None:
    """The CloudEvent in a subscriber's response, if it carries one."""
    lowered = {k.lower(): v for k, v in headers.items()}
    binary = "ce-specversion" in lowered
    structured = lowered.get("content-type", "").startswith(STRUCTURED_CONTENT_TYPE)
    if not (binary or structured):
        return None
    try:
        return Reply(event=from_http(lowered, body), headers=lowered, body=body)
    except GenericException as exc:
        return Reply(event=None, headers=lowered, body=body, problem=str(exc)[:200])


def binary_mode(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """An event in HTTP binary content mode: the headers and body ``to_binary`` gives.

    Written out because the SDK's marshaller took 17% of the broker's time
    under load (it rebuilds the event's properties and runs its data through
    a JSON encoder even when the data is bytes already); tests check that
    the result is exactly the SDK's.
    """
    attributes = event.get_attributes()
    headers: dict[str, str] = {}
    content_type = attributes.get("datacontenttype")
    if content_type:
        headers["content-type"] = str(content_type)
    for name, value in attributes.items():
        if name != "datacontenttype" and value is not None:
            headers["ce-" + name] = value if isinstance(value, str) else str(value)
    data = event.get_data()
    if data is None:
        return headers, b""
    if isinstance(data, bytes):
        return headers, data
    # Like the SDK, anything else (a str too) is sent as JSON.
    return headers, json.dumps(data).encode()


def binary_of(delivery: PendingDelivery) -> tuple[dict[str, str], bytes]:
    """The delivery's event in binary content mode, encoded once for all its attempts."""
    if delivery.binary is None:
        delivery.binary = binary_mode(delivery.event)
    return delivery.binary


class Dispatcher:
    def __init__(
        self,
        queue: EventQueue,
        outcomes: Outcomes,
        topology: EventingTopology,
        triggers: Iterable[TriggerSpec],
        endpoints: Endpoints,
        *,
        token: str | None,
        verify: ssl.SSLContext | bool = True,
        on_reply: ReplyHandler,
        on_attempt: AttemptObserver | None = None,
        default_concurrency: int = DEFAULT_CONCURRENCY,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if default_concurrency < 1:
            raise ValueError(f"expected a concurrency of 1 or more, got {default_concurrency}")
        self.queue = queue
        self.outcomes = outcomes
        self.endpoints = endpoints
        self.on_reply = on_reply
        self.on_attempt = on_attempt
        self.lanes = {
            t.name: Lane(
                trigger=t,
                delivery=topology.delivery_for(t),
                concurrency=_concurrency(t, topology, default_concurrency, window),
                window=window,
            )
            for t in triggers
        }
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._updates: list[DeliveryUpdate] = []
        self._have_updates: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = False
        self.log = get_logger(component="broker.dispatcher")

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            # Loopback and in-cluster subscribers: no cookies, no proxies from the
            # environment; a connection pool sized by the lanes' concurrency.
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self._verify),
            auto_decompress=False,
        )
        self._have_updates = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_updates(), name="dispatcher-updates")
        for lane in self.lanes.values():
            lane.wake = asyncio.Event()
            self._slots[lane.name] = asyncio.Semaphore(lane.concurrency)
            self._pumps.append(asyncio.create_task(self._pump(lane), name=f"lane-{lane.name}"))

    def alive(self) -> bool:
        return (
            self._loop is not None
            and not self._stopping
            and all(not pump.done() for pump in self._pumps)
            and self._flusher is not None
            and not self._flusher.done()
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Take no new deliveries; let the ones in flight finish for up to ``grace_s``."""
        self._stopping = True
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._deliveries:
            _, late = await asyncio.wait(set(self._deliveries), timeout=grace_s)
            # What is still in flight stays pending in the queue and is sent again on restart.
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._have_updates is not None:
            self._have_updates.set()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- what changed in the queue ------------------------------------------------

    def notify_new(self, triggers: Iterable[str] | None = None) -> None:
        """Commits created deliveries for these Triggers (None: any): read them."""
        names = self.lanes.keys() if triggers is None else triggers
        for name in names:
            lane = self.lanes.get(name)
            if lane is not None:
                lane.mark_new()

    def requeue(self, delivery_id: int) -> None:
        """A replayed dead letter is pending again: hand it to its lane."""
        delivery = self.queue.pending_delivery(delivery_id)
        if delivery is not None and delivery.trigger in self.lanes:
            delivery.due_at = time.time()
            self.lanes[delivery.trigger].requeue(delivery)

    # -- the lanes ---------------------------------------------------------------

    async def _pump(self, lane: Lane) -> None:
        slots = self._slots[lane.name]
        while not self._stopping:
            await slots.acquire()
            try:
                delivery = await self._next(lane)
            except BaseException:
                slots.release()
                raise
            task = asyncio.create_task(self._run(lane, delivery, slots))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _next(self, lane: Lane) -> PendingDelivery:
        while True:
            now = time.time()
            delivery = lane.take(now)
            if delivery is not None:
                return delivery
            if not lane.overflow and now - lane.checked_at >= IDLE_WAIT_S:
                lane.overflow = True  # look at the queue now and then: a lost notice only delays
            if lane.overflow and lane.room() > 0 and now >= lane.paused_until:
                await self._refill(lane)
                continue
            lane.wake.clear()
            try:
                async with asyncio.timeout(lane.wait_s(now, IDLE_WAIT_S)):
                    await lane.wake.wait()
            except TimeoutError:
                pass

    async def _refill(self, lane: Lane) -> None:
        lane.checked_at = time.time()
        after, room = lane.begin_refill()
        limit = min(room, REFILL_ROWS)
        try:
            # On the loop's thread: a read of the few rows a notice brings costs
            # less than a hop to a thread and back (a GIL hand-off each way).
            deliveries = self.queue.pending(lane.name, after_id=after, limit=limit)
        except Exception:
            self.log.exception("reading pending deliveries failed", trigger=lane.name)
            await asyncio.sleep(IDLE_WAIT_S)  # a pause, not a busy loop, on a broken file
            return
        lane.refilled(deliveries, limit)

    async def _run(self, lane: Lane, delivery: PendingDelivery, slots: asyncio.Semaphore) -> None:
        try:
            # Each delivery is a task of its own: what it logs carries its event's trace id.
            with traced(delivery.event.get(TRACEPARENT)):
                await self.deliver(lane, delivery)
        except asyncio.CancelledError:
            raise  # stopping: the delivery stays pending in the queue
        except Exception:
            # A bug must not lose the delivery: it waits and is tried again.
            self.log.exception("delivery failed unexpectedly", delivery=delivery.id)
            delivery.due_at = time.time() + IDLE_WAIT_S
            lane.schedule(delivery)
        finally:
            lane.finished()
            slots.release()
            lane.wake.set()

    # -- one delivery ------------------------------------------------------------

    async def deliver(self, lane: Lane, delivery: PendingDelivery) -> AttemptResult | None:
        """Make one attempt at a delivery and record what came of it; None: nothing sent."""
        url = self.endpoints.resolve(delivery.subscriber)
        now = time.time()
        if url is None:
            # The service has not started yet (locally they start after the broker,
            # or on demand): like a Trigger that is not Ready, wait without
            # spending the retry budget, since nothing was sent.
            error = (
                f"no endpoint for service {delivery.subscriber!r} yet; it is not in "
                f"{self.endpoints.path or 'the endpoints given to the broker'}"
            )
            if delivery.last_error != error:  # once per delivery, not once a second
                delivery.last_error = error
                self._record(DeliveryUpdate.defer(delivery.id, next_attempt_at=now, error=error))
                self.log.warning("no endpoint yet", trigger=lane.name, error=error)
            lane.pause(delivery, until=now + IDLE_WAIT_S)
            return None
        spec = lane.delivery
        sent_at = time.perf_counter()
        result = await self.attempt(url, delivery, spec.timeout_s or DEFAULT_TIMEOUT_S)
        took_s = time.perf_counter() - sent_at
        attempt = delivery.attempts + 1
        if result.ok:
            if result.reply is not None:
                # Before marking done: a crash in between re-sends the event, and
                # the subscriber's idempotency keys absorb the duplicate.
                await self.on_reply(result.reply, lane.name)
            self._observe(lane.name, UpdateKind.DONE, took_s)
            self._record(DeliveryUpdate.done(delivery.id, result.status_code or 200))
            return result
        retryable = should_retry(result.status_code)
        if retryable and attempt <= spec.retry:
            wait = wait_before_retry_s(
                spec,
                attempt,
                status_code=result.status_code,
                retry_after=result.retry_after,
                now=datetime.now(UTC),
            )
            delivery.attempts = attempt
            delivery.due_at = time.time() + wait
            delivery.last_error = result.error
            self._observe(lane.name, UpdateKind.RETRY, took_s)
            self._record(
                DeliveryUpdate.retry(
                    delivery.id,
                    next_attempt_at=delivery.due_at,
                    error=result.error or "",
                    status_code=result.status_code,
                )
            )
            lane.schedule(delivery)
            self.log.info(
                "delivery will be retried",
                trigger=lane.name,
                event_id=delivery.event["id"],
                attempt=attempt,
                status_code=result.status_code,
                wait_s=round(wait, 3),
            )
            return result
        why = f"gave up after {attempt} attempts" if retryable else "not retryable"
        reason = f"{why}: {result.error}"
        # Written (and audited) by the queue's owner, in order after this
        # delivery's earlier outcomes.
        self._observe(lane.name, UpdateKind.DEAD, took_s)
        self._record(
            DeliveryUpdate.dead(delivery.id, reason=reason, status_code=result.status_code)
        )
        self.log.warning(
            "dead letter", trigger=lane.name, event_id=delivery.event["id"], reason=reason[:200]
        )
        if spec.dead_letter_sink:
            await self._send_to_sink(spec.dead_letter_sink, delivery, url, result)
        return result

    async def attempt(self, url: str, delivery: PendingDelivery, timeout_s: float) -> AttemptResult:
        headers, body = binary_of(delivery)
        return await self._post(url, headers, body, timeout_s)

    async def _post(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout_s: float
    ) -> AttemptResult:
        assert self._session is not None, "the dispatcher is not started"
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                # Read the whole answer, so the connection goes back to the pool.
                answer = await response.read()
                if is_success(response.status):
                    return AttemptResult(
                        response.status, reply=reply_from(response.headers, answer)
                    )
                text = answer[:MAX_ERROR_BODY].decode(errors="replace")
                return AttemptResult(
                    response.status,
                    f"HTTP {response.status} from {url}: {text}",
                    retry_after=response.headers.get("Retry-After"),
                )
        except TimeoutError:
            return AttemptResult(None, f"no answer from {url} within {timeout_s:g} s (timeout)")
        except aiohttp.ClientError as exc:
            return AttemptResult(None, f"{type(exc).__name__} sending to {url}: {exc}")

    # -- recording outcomes --------------------------------------------------------

    def _observe(self, trigger: str, kind: UpdateKind, seconds: float) -> None:
        if self.on_attempt is not None:
            self.on_attempt(trigger, kind, seconds)

    def _record(self, update: DeliveryUpdate) -> None:
        self._updates.append(update)
        assert self._have_updates is not None
        self._have_updates.set()

    async def _flush_updates(self) -> None:
        """Hand outcomes on in order, many at a time: what piled up during the last hand-over."""
        assert self._have_updates is not None
        while True:
            await self._have_updates.wait()
            self._have_updates.clear()
            batch, self._updates = self._updates, []
            if batch:
                try:
                    await self.outcomes.record(batch)
                except Exception as exc:
                    # Not recorded: those deliveries are still pending in the queue
                    # and are sent again after a restart (at least once).
                    self.log.error("recording delivery outcomes failed", error=str(exc))
            if self._stopping and not self._updates:
                return
            # Linger a moment so a busy lane's outcomes go in one commit, not one each.
            await asyncio.sleep(OUTCOME_LINGER_S)

    async def _send_to_sink(
        self, sink: str, delivery: PendingDelivery, subscriber_url: str, result: AttemptResult
    ) -> None:
        url = self.endpoints.resolve(sink)
        if url is None:
            self.log.warning("dead-letter sink has no endpoint; kept in the broker", sink=sink)
            return
        event = delivery.event
        attributes: dict[str, Any] = dict(event.get_attributes())
        # Knative's dead-letter extensions: where it was going and what came back.
        attributes["knativeerrordest"] = subscriber_url
        if result.status_code is not None:
            attributes["knativeerrorcode"] = str(result.status_code)
        headers, body = binary_mode(CloudEvent(attributes, event.get_data()))
        spec = self.lanes[delivery.trigger].delivery
        sent = await self._post(url, headers, body, spec.timeout_s or DEFAULT_TIMEOUT_S)
        if not sent.ok:
            self.log.warning(
                "dead-letter sink refused the event; kept in the broker",
                sink=sink,
                error=sent.error,
            )


def _concurrency(
    trigger: TriggerSpec, topology: EventingTopology, default: int, window: int
) -> int:
    """A Knative Service subscriber takes its containerConcurrency at once (0: no limit)."""
    declared = (
        0 if trigger.subscriber_uri else topology.container_concurrency.get(trigger.subscriber, 0)
    )
    return min(declared or default, window)


__all__ = [
    "AttemptObserver",
    "AttemptResult",
    "Dispatcher",
    "Reply",
    "ReplyHandler",
    "binary_mode",
    "binary_of",
    "reply_from",
]
