"""How the RabbitMQ source settles messages by the broker's answer.

The broker is the real one (in a thread, over a real socket); the channel only
records acks and rejects, so every rule of the settling table is checked
without a RabbitMQ server (``test_rabbitmq_source`` runs the real thing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from eventing.rabbitmq_events import AmqpMessage, QueueOrigin, message_event_id
from eventing.rabbitmq_source import (
    Backoff,
    ConsumerConfig,
    Forwarder,
    RabbitmqSource,
    Settle,
    SourceStopped,
    safe_url,
    settle_for,
)
from falaj.audit import AuditLog
from falaj.context import Context
from falaj.errors import ConfigError
from falaj.publisher import EventPublisher
from falaj.runtime.processes import free_port
from falaj.topology import BackoffPolicy
from tests.eventing.conftest import BrokerFactory

ORIGIN = QueueOrigin(namespace="falaj", name="records", queue="falaj-records")
RABBITMQ_EVENT = "dev.knative.rabbitmq.event"


@dataclass
class RecordingChannel:
    acks: list[tuple[int, bool]] = field(default_factory=list)
    rejects: list[tuple[int, bool]] = field(default_factory=list)

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self.acks.append((delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True) -> None:
        self.rejects.append((delivery_tag, requeue))


def message(tag: int, body: Any = None, **properties: Any) -> AmqpMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body or {"n": tag}).encode()
    return AmqpMessage(body=raw, delivery_tag=tag, exchange="falaj-records", **properties)


def forwarder(
    ctx: Context, url: str, token: str | None, *, max_request_bytes: int = 1024 * 1024
) -> Forwarder:
    config = ConsumerConfig(
        origin=ORIGIN,
        exchange="falaj-records",
        parallelism=10,
        max_request_bytes=max_request_bytes,
        backoff=Backoff(delay_s=0.2, max_s=1.0),
    )
    return Forwarder(config, EventPublisher(url, token), ctx.policy, region="me-central-1")


def never(seconds: float) -> bool:
    raise AssertionError(f"no backoff expected, asked to wait {seconds} s")


def test_a_window_goes_as_one_batch_and_one_ack_settles_it(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker()
    channel = RecordingChannel()
    messages = [message(tag) for tag in range(1, 6)]

    done = forwarder(ctx, running.url, service_token).forward(messages, channel, never)

    assert channel.acks == [(5, True)]
    assert channel.rejects == []
    assert (done.accepted, done.duplicates) == (5, 0)
    stored = {e["id"] for e in running.events(RABBITMQ_EVENT)}
    assert stored == {message_event_id(m, ORIGIN) for m in messages}


def test_a_batch_the_broker_refuses_is_sent_again_one_by_one(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker()
    channel = RecordingChannel()
    poison = message(2, b"\xff not json", content_type="application/octet-stream")

    done = forwarder(ctx, running.url, service_token).forward(
        [message(1), poison, message(3)], channel, never
    )

    # The good ones are taken; the bad one is acked because the broker keeps it.
    assert channel.acks == [(1, False), (2, False), (3, False)]
    assert (done.accepted, done.broker_dead_letters, done.rejected) == (2, 1, 0)
    assert len(running.events(RABBITMQ_EVENT)) == 2
    # Kept with the reason: the refused batch as it came, and the event on its own.
    letters = running.client.get("/dead-letters").json()
    assert len(letters) == 2, letters
    assert all(
        "expected a JSON object, got bytes that are not JSON" in d["reason"] for d in letters
    )


def test_an_event_too_large_for_the_broker_goes_to_the_dead_letter_exchange(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker(max_body_bytes=4096)
    channel = RecordingChannel()
    large = message(2, {"blob": "x" * 10_000})

    done = forwarder(ctx, running.url, service_token).forward([message(1), large], channel, never)

    assert channel.acks == [(1, False)]
    assert channel.rejects == [(2, False)]  # no requeue: RabbitMQ dead-letters it
    assert (done.accepted, done.rejected) == (1, 1)


def test_a_redelivered_message_is_a_duplicate_the_broker_recognises(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker()
    first, channel = message(1), RecordingChannel()
    sender = forwarder(ctx, running.url, service_token)
    sender.forward([first], channel, never)

    again = AmqpMessage(
        body=first.body,
        delivery_tag=2,
        exchange=first.exchange,
        redelivered=True,
        headers={"x-delivery-count": 1},
    )
    done = sender.forward([again], channel, never)

    assert done.duplicate_ids == [message_event_id(first, ORIGIN)]
    assert (done.accepted, done.duplicates) == (0, 1)
    assert channel.acks == [(1, False), (2, False)]
    assert len(running.events(RABBITMQ_EVENT)) == 1


def test_no_answer_is_retried_with_backoff_and_nothing_is_settled_meanwhile(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/"
    sender = forwarder(ctx, nobody, service_token)
    channel = RecordingChannel()
    waits: list[float] = []
    running = start_broker()

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 3:  # the broker comes back
            sender.publisher.broker_url = running.url
        return True

    done = sender.forward([message(1), message(2)], channel, wait)

    assert waits == [0.2, 0.4, 0.8]
    assert channel.acks == [(2, True)]
    assert done.accepted == 2


def test_a_stop_while_the_broker_is_away_leaves_every_message_unsettled(ctx: Context) -> None:
    sender = forwarder(ctx, f"http://127.0.0.1:{free_port()}/", None)
    channel = RecordingChannel()

    with pytest.raises(SourceStopped):
        sender.forward([message(1), message(2)], channel, lambda seconds: False)

    assert channel.acks == channel.rejects == []


def test_an_event_from_outside_the_allowed_regions_is_rejected_before_it_is_sent(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker()
    channel = RecordingChannel()
    foreign = message(
        1,
        headers={"ce-specversion": "1.0", "ce-type": RABBITMQ_EVENT, "ce-dataregion": "eu-west-1"},
    )

    done = forwarder(ctx, running.url, service_token).forward([foreign, message(2)], channel, never)

    assert channel.rejects == [(1, False)]
    assert channel.acks == [(2, False)]
    assert done.rejected == 1
    assert [e["dataregion"] for e in running.events(RABBITMQ_EVENT)] == ["me-central-1"]
    refusals = [e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "policy.refused"]
    assert [r["region"] for r in refusals] == ["eu-west-1"]


def test_a_message_that_is_not_a_valid_cloudevent_is_rejected_not_sent(
    ctx: Context,
) -> None:
    channel = RecordingChannel()
    broken = message(1, headers={"ce-specversion": "1.0", "ce-id": "x"})  # no ce-type

    done = forwarder(ctx, f"http://127.0.0.1:{free_port()}/", None).forward(
        [broken], channel, never
    )

    assert channel.rejects == [(1, False)]
    assert done.rejected == 1


def test_batches_are_cut_to_stay_under_the_request_limit(
    start_broker: BrokerFactory, ctx: Context, service_token: str
) -> None:
    running = start_broker()
    channel = RecordingChannel()
    # Each counts as body * 4/3 + 1 KiB, about 1.3 KB: two fit under 3000 bytes.
    messages = [message(tag, {"pad": "y" * 200}) for tag in range(1, 5)]

    forwarder(ctx, running.url, service_token, max_request_bytes=3000).forward(
        messages, channel, never
    )

    assert channel.acks == [(2, True), (4, True)]


@pytest.mark.parametrize(
    ("status", "settle"),
    [
        (202, Settle.ACK),
        (400, Settle.ACK),
        (413, Settle.DEAD_LETTER),
        (None, Settle.RETRY),
        (401, Settle.RETRY),
        (403, Settle.RETRY),
        (404, Settle.RETRY),
        (429, Settle.RETRY),
        (500, Settle.RETRY),
        (503, Settle.RETRY),
    ],
)
def test_what_each_answer_does_to_the_message(status: int | None, settle: Settle) -> None:
    assert settle_for(status) is settle


def test_backoff_follows_knatives_policies_and_is_capped() -> None:
    exponential = Backoff(policy=BackoffPolicy.EXPONENTIAL, delay_s=0.5, max_s=3.0)
    linear = Backoff(policy=BackoffPolicy.LINEAR, delay_s=0.5, max_s=3.0)
    assert [exponential.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [linear.delay(n) for n in range(1, 9)] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0]
    assert exponential.delay(10_000) == 3.0


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"exchange": None}, "exchange: required unless the queue is predeclared"),
        ({"parallelism": 0}, "parallelism: expected 1 to 1000"),
        ({"parallelism": 1001}, "parallelism: expected 1 to 1000"),
    ],
)
def test_a_config_knative_would_refuse_is_refused(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ConsumerConfig(**{"origin": ORIGIN, "exchange": "x", **changes})
    assert ConsumerConfig(origin=ORIGIN, predeclared=True).exchange is None


def test_the_amqp_password_is_never_shown(ctx: Context) -> None:
    url = "amqp://falaj:p%40ss%2Fw0rd-9@rabbit.internal:5671/records"
    assert safe_url(url) == "amqp://falaj@rabbit.internal:5671/records"
    config = ConsumerConfig(origin=ORIGIN, exchange="x")
    source = RabbitmqSource(config, SecretStr(url), forwarder(ctx, "http://127.0.0.1:9/", None))
    leaked = f"error for {url} with p@ss/w0rd-9 and p%40ss%2Fw0rd-9"
    assert "w0rd" not in source.redact(leaked)
    with pytest.raises(ConfigError) as refused:
        RabbitmqSource(
            config, SecretStr("amqp://u:s3cr3t@host:notaport/"), source.forwarder
        ).parameters()
    assert "s3cr3t" not in str(refused.value)
