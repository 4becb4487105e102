"""The RabbitMQ source: a queue's messages become events at the broker, acked only once taken.

Run as ``python -m eventing.rabbitmq_source --name records --queue q --exchange x``
with ``FALAJ_RABBITMQ_URL`` set; ``falaj up`` starts it from a RabbitmqSource
in the manifests (on a cluster, Knative's RabbitmqSource adapter does this
job). Messages map to CloudEvents as Knative maps them (``rabbitmq_events``).

The consumer acks by hand. With ``--parallelism N`` RabbitMQ hands it up to N
unacked messages (the prefetch window); it waits ``--linger`` for the window
to fill, posts the window to the broker as one CloudEvents batch (cut in
several where it would pass ``--max-request-bytes``, the broker's limit) and
settles each message by what the broker answered:

| broker's answer          | the message in RabbitMQ                                            |
|--------------------------|--------------------------------------------------------------------|
| 202 (taken, or a known   | acked -- the whole batch at once (``multiple=True``)               |
| duplicate)               |                                                                    |
| 400 or 413 to a batch    | each message is sent again on its own, so one bad message does not |
|                          | hold back the others                                               |
| 400 to one event         | acked: the broker keeps it as a dead letter, with the reason       |
| 413 to one event         | rejected without requeue: RabbitMQ moves it to the queue's         |
|                          | dead-letter exchange (the broker did not keep it)                  |
| no answer, 5xx, any      | not settled: backed off and sent again; if the source stops, the   |
| other status             | message goes back to the queue unacked                             |

A message that claims to be a CloudEvent and is not, or an event whose
``dataregion`` the residency policy refuses, is rejected to the dead-letter
exchange before it is sent: nothing is lost, and out-of-region data goes no
further. When the connection to RabbitMQ drops (or RabbitMQ cancels the
consumer, as when the queue is deleted), the source reconnects with backoff
and declares again; what it held unacked is redelivered, and the broker
recognises what it already took by the event id.

Unless ``--predeclared``, the source declares what Knative's controller
declares (a durable ``headers`` exchange bound to a durable quorum queue with
``x-match: all``) plus the queue's dead-letter exchange ``<queue>.dlx`` and the
queue ``<queue>.dead-letters`` that keeps what lands there.

The AMQP URL carries a password: it is never logged or put in an error; logs
name the server as ``amqp://user@host:port/vhost``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import pika
import pika.exceptions
from cloudevents.http import CloudEvent
from pydantic import SecretStr

from eventing.rabbitmq_events import AmqpMessage, QueueOrigin, event_from_message
from falaj.context import Context
from falaj.errors import ConfigError, EventError, FalajError, PublishError, ResidencyViolation
from falaj.events import REGION_EXTENSION
from falaj.logs import configure_logging, get_logger
from falaj.publisher import EventPublisher, Receipt
from falaj.residency import Boundary, ResidencyPolicy
from falaj.runtime.processes import stop_on_signals
from falaj.settings import Settings
from falaj.topology import BackoffPolicy

#: The broker ingress's default limit; a batch is cut to stay under it.
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
#: What an event adds to its body in a batch: attributes, and base64 for bytes.
EVENT_OVERHEAD_BYTES = 1024
#: How long an idle consumer waits for RabbitMQ before it looks at the stop flag.
IDLE_POLL_S = 0.5
#: The longest a backoff slice sleeps, so SIGTERM is answered promptly.
WAIT_SLICE_S = 0.25
DEAD_LETTER_EXCHANGE_SUFFIX = ".dlx"
DEAD_LETTER_QUEUE_SUFFIX = ".dead-letters"
QUORUM = {"x-queue-type": "quorum"}


class SourceStopped(Exception):
    """Raised inside the consumer loop when SIGTERM came while a batch was unsettled."""


class QueueSetupError(ConfigError):
    """Raised when the queue cannot be declared as asked (another declaration holds it)."""


class Settle(StrEnum):
    """What becomes of a message in RabbitMQ after the broker answered for its event."""

    ACK = "ack"
    DEAD_LETTER = "dead-letter"
    RETRY = "retry"


def settle_for(status_code: int | None) -> Settle:
    """How to settle one event's message given the broker's status (None: no answer)."""
    if status_code is not None and (200 <= status_code < 300 or status_code == 400):
        return Settle.ACK  # taken, or kept by the broker as a dead letter with its reason
    if status_code == 413:
        return Settle.DEAD_LETTER  # the broker kept nothing: RabbitMQ must keep it
    return Settle.RETRY


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Knative's delivery backoff (``backoffPolicy``, ``backoffDelay``), capped, never giving up."""

    policy: BackoffPolicy = BackoffPolicy.EXPONENTIAL
    delay_s: float = 0.2
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.delay_s <= 0 or self.max_s < self.delay_s:
            raise ConfigError(
                f"expected 0 < backoff delay <= max backoff, got delay={self.delay_s} s, "
                f"max={self.max_s} s"
            )

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (the first retry follows attempt 1)."""
        if self.policy == BackoffPolicy.LINEAR:
            return min(self.max_s, self.delay_s * attempt)
        return min(self.max_s, self.delay_s * 2 ** min(attempt - 1, 30))


@dataclass(frozen=True, kw_only=True)
class ConsumerConfig:
    """What the RabbitmqSource's spec says, plus the local knobs; checked once, in ``main``."""

    origin: QueueOrigin
    exchange: str | None = None
    vhost: str | None = None
    predeclared: bool = False
    #: Knative's ``parallelism``: the prefetch window, and here the largest batch.
    parallelism: int = 1
    linger_s: float = 0.05
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.parallelism <= 1000:
            problems.append(
                f"parallelism: expected 1 to 1000 (the RabbitmqSource CRD's range), "
                f"got {self.parallelism}"
            )
        if not self.predeclared and not self.exchange:
            problems.append(
                "exchange: required unless the queue is predeclared (Knative binds the "
                "queue to it); pass --exchange, or --predeclared to use the queue as it is"
            )
        if self.linger_s < 0:
            problems.append(f"linger: expected 0 or more seconds, got {self.linger_s}")
        if self.max_request_bytes < EVENT_OVERHEAD_BYTES:
            problems.append(
                f"max request bytes: expected at least {EVENT_OVERHEAD_BYTES}, "
                f"got {self.max_request_bytes}"
            )
        if problems:
            raise ConfigError("invalid RabbitMQ source settings: " + "; ".join(problems))

    @property
    def queue(self) -> str:
        return self.origin.queue

    @property
    def dead_letter_exchange(self) -> str:
        return self.queue + DEAD_LETTER_EXCHANGE_SUFFIX

    @property
    def dead_letter_queue(self) -> str:
        return self.queue + DEAD_LETTER_QUEUE_SUFFIX


class Channel(Protocol):
    """The part of a pika channel that settles messages."""

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None: ...

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True) -> None: ...


#: Waits so many seconds; False when the source was told to stop meanwhile.
Wait = Callable[[float], bool]


@dataclass
class Forwarded:
    """What became of one window of messages."""

    accepted: int = 0
    duplicates: int = 0
    #: Refused by the broker (400): acked, the broker holds the dead letter.
    broker_dead_letters: int = 0
    #: Rejected to the queue's dead-letter exchange (413, not an event, out of region).
    rejected: int = 0
    duplicate_ids: list[str] = field(default_factory=list)

    def add(self, receipt: Receipt, sent: int) -> None:
        self.duplicates += len(receipt.duplicates)
        self.duplicate_ids.extend(receipt.duplicates)
        self.accepted += sent - len(receipt.duplicates)


@dataclass(frozen=True)
class Pending:
    message: AmqpMessage
    event: CloudEvent

    @property
    def approx_bytes(self) -> int:
        # base64 (bytes data) grows the body by a third; JSON escaping rarely more.
        return len(self.message.body) * 4 // 3 + EVENT_OVERHEAD_BYTES


class Forwarder:
    """Sends windows of messages to the broker and settles each message by its answer.

    Independent of pika (it sees a ``Channel`` and a ``Wait``), so the settling
    rules are tested without a server; ``RabbitmqSource`` drives it.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        publisher: EventPublisher,
        policy: ResidencyPolicy,
        *,
        region: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.policy = policy
        self.region = region
        self.clock = clock
        self.log = get_logger(component="rabbitmq-source", queue=config.queue)

    def forward(self, messages: Sequence[AmqpMessage], channel: Channel, wait: Wait) -> Forwarded:
        """Send and settle ``messages`` (in delivery order); ``SourceStopped`` leaves the rest."""
        done = Forwarded()
        ready: list[Pending] = []
        for message in messages:
            try:
                event = event_from_message(
                    message, self.config.origin, region=self.region, received=self.clock()
                )
                self._check_region(event)
            except (EventError, ResidencyViolation) as exc:
                channel.basic_reject(message.delivery_tag, requeue=False)
                done.rejected += 1
                self.log.warning(
                    "message rejected to the dead-letter exchange",
                    delivery_tag=message.delivery_tag,
                    reason=str(exc),
                    dead_letter_exchange=self.config.dead_letter_exchange,
                )
                continue
            ready.append(Pending(message, event))
        for chunk in self._chunks(ready):
            self._send(chunk, channel, wait, done)
        return done

    def _check_region(self, event: CloudEvent) -> None:
        self.policy.check_region(
            str(event.get(REGION_EXTENSION)),
            resource=f"event {event['id']} ({event['type']}) from queue {self.config.queue}",
            boundary=Boundary.EVENT_ACCEPT,
        )

    def _chunks(self, ready: list[Pending]) -> Iterator[list[Pending]]:
        chunk: list[Pending] = []
        size = 0
        for pending in ready:
            if chunk and size + pending.approx_bytes > self.config.max_request_bytes:
                yield chunk
                chunk, size = [], 0
            chunk.append(pending)
            size += pending.approx_bytes
        if chunk:
            yield chunk

    def _send(self, chunk: list[Pending], channel: Channel, wait: Wait, done: Forwarded) -> None:
        attempt = 0
        while True:
            try:
                receipt = self._publish(chunk)
            except PublishError as exc:
                settle = settle_for(exc.status_code)
                if settle is Settle.RETRY:
                    attempt += 1
                    delay = self.config.backoff.delay(attempt)
                    self.log.warning(
                        "broker did not take the events; they stay unacked and are sent again",
                        events=len(chunk),
                        status_code=exc.status_code,
                        error=str(exc),
                        attempt=attempt,
                        retry_in_s=round(delay, 3),
                    )
                    if not wait(delay):
                        raise SourceStopped from None
                    continue
                if len(chunk) > 1:
                    self.log.info(
                        "batch refused; sending its events one by one",
                        events=len(chunk),
                        status_code=exc.status_code,
                    )
                    for pending in chunk:
                        self._send([pending], channel, wait, done)
                    return
                self._settle_refused(chunk[0], settle, exc, channel, done)
                return
            # All earlier deliveries on this channel are settled already: one ack covers the batch.
            channel.basic_ack(chunk[-1].message.delivery_tag, multiple=len(chunk) > 1)
            done.add(receipt, len(chunk))
            return

    def _publish(self, chunk: list[Pending]) -> Receipt:
        if len(chunk) == 1:
            return self.publisher.publish(chunk[0].event)
        return self.publisher.publish_batch([pending.event for pending in chunk])

    def _settle_refused(
        self,
        pending: Pending,
        settle: Settle,
        exc: PublishError,
        channel: Channel,
        done: Forwarded,
    ) -> None:
        tag = pending.message.delivery_tag
        if settle is Settle.ACK:
            channel.basic_ack(tag)
            done.broker_dead_letters += 1
            self.log.warning(
                "broker refused the event and keeps it as a dead letter; message acked",
                event_id=pending.event["id"],
                event_type=pending.event["type"],
                error=str(exc),
            )
            return
        channel.basic_reject(tag, requeue=False)
        done.rejected += 1
        self.log.warning(
            "broker cannot take the event; message rejected to the dead-letter exchange",
            event_id=pending.event["id"],
            status_code=exc.status_code,
            dead_letter_exchange=self.config.dead_letter_exchange,
        )


class RabbitmqSource:
    """Consumes one queue for as long as it runs: connects, declares, forwards, reconnects."""

    def __init__(self, config: ConsumerConfig, url: SecretStr, forwarder: Forwarder) -> None:
        self.config = config
        self._url = url
        self.forwarder = forwarder
        self.server = safe_url(url.get_secret_value())
        self.log = get_logger(component="rabbitmq-source", queue=config.queue, server=self.server)

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; a lost connection is reopened with backoff."""
        attempt = 0
        while not stop.is_set():
            try:
                self._session(stop)
                attempt = 0
            except SourceStopped:
                break
            except pika.exceptions.AMQPError as exc:
                attempt += 1
                delay = self.config.backoff.delay(attempt)
                self.log.warning(
                    "rabbitmq unavailable; reconnecting",
                    error=self.redact(f"{type(exc).__name__}: {exc}"),
                    attempt=attempt,
                    retry_in_s=round(delay, 3),
                )
                stop.wait(delay)
        self.log.info("stopped")

    def parameters(self) -> pika.URLParameters:
        try:
            parameters = pika.URLParameters(self._url.get_secret_value())
        except Exception as exc:  # pika raises ValueError, KeyError, ... on a bad URL
            raise ConfigError(
                f"FALAJ_RABBITMQ_URL is not an AMQP URL ({type(exc).__name__}); expected "
                f"amqp://user:password@host:port/vhost (the value is not shown)"
            ) from None
        if self.config.vhost:
            parameters.virtual_host = self.config.vhost
        # Fail fast and retry here, with the backoff, rather than inside pika.
        parameters.connection_attempts = 1
        parameters.socket_timeout = 5
        return parameters

    def _session(self, stop: threading.Event) -> None:
        connection = pika.BlockingConnection(self.parameters())
        try:
            channel = connection.channel()
            self._declare(channel)
            channel.basic_qos(prefetch_count=self.config.parallelism)
            inbox: deque[tuple[float, AmqpMessage]] = deque()
            cancelled: list[Any] = []

            def on_message(_: Any, method: Any, properties: Any, body: bytes) -> None:
                inbox.append((time.monotonic(), AmqpMessage.from_pika(method, properties, body)))

            channel.add_on_cancel_callback(cancelled.append)
            channel.basic_consume(self.config.queue, on_message, auto_ack=False)
            self.log.info(
                "consuming", prefetch=self.config.parallelism, source=self.config.origin.source
            )
            while not stop.is_set():
                if cancelled:
                    # The queue was deleted (or the consumer cancelled): declare it again.
                    raise pika.exceptions.ConsumerCancelled("RabbitMQ cancelled the consumer")
                if not inbox:
                    connection.process_data_events(time_limit=IDLE_POLL_S)
                    continue
                waited = time.monotonic() - inbox[0][0]
                if len(inbox) < self.config.parallelism and waited < self.config.linger_s:
                    connection.process_data_events(time_limit=self.config.linger_s - waited)
                    continue
                window = [
                    inbox.popleft()[1] for _ in range(min(len(inbox), self.config.parallelism))
                ]
                done = self.forwarder.forward(
                    window, channel, lambda seconds: self._wait(connection, stop, seconds)
                )
                self.log.info(
                    "forwarded",
                    messages=len(window),
                    accepted=done.accepted,
                    duplicates=done.duplicates,
                    duplicate_ids=done.duplicate_ids,
                    broker_dead_letters=done.broker_dead_letters,
                    rejected=done.rejected,
                )
        finally:
            # Whatever is still unacked goes back to the queue when the connection closes.
            if connection.is_open:
                # Closing a connection that is going away anyway may fail; nothing to do then.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    def _declare(self, channel: Any) -> None:
        config = self.config
        if config.predeclared:
            channel.queue_declare(config.queue, passive=True)
            return
        try:
            channel.exchange_declare(config.exchange, exchange_type="headers", durable=True)
            channel.exchange_declare(
                config.dead_letter_exchange, exchange_type="fanout", durable=True
            )
            channel.queue_declare(config.dead_letter_queue, durable=True, arguments=QUORUM)
            channel.queue_bind(config.dead_letter_queue, config.dead_letter_exchange)
            channel.queue_declare(
                config.queue,
                durable=True,
                arguments={**QUORUM, "x-dead-letter-exchange": config.dead_letter_exchange},
            )
            # A headers exchange with x-match=all and no other headers routes every message.
            channel.queue_bind(config.queue, config.exchange, arguments={"x-match": "all"})
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:  # PRECONDITION_FAILED: declared before with other arguments
                raise QueueSetupError(
                    f"queue {config.queue!r} or exchange {config.exchange!r} already exists "
                    f"with other arguments ({exc.reply_text}); expected a durable quorum queue "
                    f"with x-dead-letter-exchange={config.dead_letter_exchange} bound to a "
                    f"durable headers exchange. Delete them, or set predeclared: true to "
                    f"consume the queue as it is"
                ) from None
            raise

    @staticmethod
    def _wait(connection: Any, stop: threading.Event, seconds: float) -> bool:
        """Sleep while serving the connection (heartbeats); False once told to stop."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            connection.sleep(min(left, WAIT_SLICE_S))
        return False

    def redact(self, text: str) -> str:
        """``text`` without the URL's password, in either of its spellings."""
        password = urlsplit(self._url.get_secret_value()).password
        if password:
            for spelling in {password, unquote(password), quote(password, safe="")}:
                text = text.replace(spelling, "***")
        return text


def safe_url(url: str) -> str:
    """``amqp://user:password@host:port/vhost`` as ``amqp://user@host:port/vhost``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an AMQP URL that does not parse)"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eventing.rabbitmq_source",
        description="Consume a RabbitMQ queue into the broker (FALAJ_RABBITMQ_URL).",
    )
    parser.add_argument("--name", required=True, help="the RabbitmqSource's name")
    parser.add_argument("--namespace", default="default", help="its namespace")
    parser.add_argument("--queue", required=True, help="rabbitmqResourcesConfig.queueName")
    parser.add_argument("--exchange", help="rabbitmqResourcesConfig.exchangeName")
    parser.add_argument("--vhost", help="rabbitmqResourcesConfig.vhost (else the URL's)")
    parser.add_argument(
        "--predeclared", action="store_true", help="consume the queue as it is; declare nothing"
    )
    parser.add_argument(
        "--parallelism", type=int, default=1, help="prefetch window and largest batch (1-1000)"
    )
    parser.add_argument(
        "--backoff-policy", choices=[p.value for p in BackoffPolicy], default="exponential"
    )
    parser.add_argument("--backoff-delay", type=float, default=0.2, help="seconds")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="seconds")
    parser.add_argument("--linger", type=float, default=0.05, help="seconds a window may fill")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ConsumerConfig:
    return ConsumerConfig(
        origin=QueueOrigin(namespace=args.namespace, name=args.name, queue=args.queue),
        exchange=args.exchange,
        vhost=args.vhost,
        predeclared=args.predeclared,
        parallelism=args.parallelism,
        linger_s=args.linger,
        max_request_bytes=args.max_request_bytes,
        backoff=Backoff(
            policy=BackoffPolicy(args.backoff_policy),
            delay_s=args.backoff_delay,
            max_s=args.max_backoff,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("rabbitmq-source", settings.log_level)
        # pika logs through ``logging``; the source reports connection trouble itself.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        if settings.rabbitmq_url is None:
            raise ConfigError(
                "FALAJ_RABBITMQ_URL is not set; expected amqp://user:password@host:port/vhost "
                "of the RabbitMQ to consume from"
            )
        config = config_from_args(args)
        ctx = Context.create(settings, actor="rabbitmq-source")
        publisher = EventPublisher.from_context(ctx)
        forwarder = Forwarder(config, publisher, ctx.policy, region=settings.region)
        source = RabbitmqSource(config, settings.rabbitmq_url, forwarder)
        source.parameters()  # a URL that does not parse is a config error, not a retry
    except FalajError as exc:
        print(f"rabbitmq-source: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    try:
        source.run(stop)
    except QueueSetupError as exc:
        print(f"rabbitmq-source: {exc}", file=sys.stderr)
        return 2
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
