"""The RabbitMQ source on real processes: the RabbitMQ server at 127.0.0.1:5672, the real broker.

Each test consumes its own queue (a fresh name, deleted after) with
``python -m eventing.rabbitmq_source`` and stops every process it started, by
PID. What the source did is read from RabbitMQ's counts, the broker's API and
the source's own JSON log lines.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from falaj.auth import Role
from falaj.context import Context
from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port
from falaj.settings import PROJECT_ROOT
from tests.eventing.conftest import BrokerFactory, wait_until
from tests.support.rabbitmq import URL, Amqp, QueueState, reachable

pytestmark = pytest.mark.integration

RABBITMQ_EVENT = "dev.knative.rabbitmq.event"
HOST = "127.0.0.1"


@pytest.fixture
def amqp() -> Iterator[Amqp]:
    """A connection to the real RabbitMQ; missing, the test is skipped -- or fails under CI."""
    problem = reachable()
    if problem is not None:
        message = (
            f"expected a RabbitMQ server at {HOST}:5672 (guest/guest), got {problem}; "
            f"start it with `rabbitmq-server -detached` (.ci/run does when it is down)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    connection = Amqp()
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def queue(amqp: Amqp) -> str:
    """A queue name of this test's own; the queue, its exchanges and dead letters go after."""
    name = f"falaj-test-{uuid.uuid4().hex[:12]}"
    amqp.forget_later(queues=(name, f"{name}.dead-letters"), exchanges=(name, f"{name}.dlx"))
    return name


class Consumer:
    """``python -m eventing.rabbitmq_source`` for one queue, and what it logged."""

    def __init__(self, log_path: Path, argv: list[str], env: dict[str, str]) -> None:
        self.process = ManagedProcess(
            name="rabbitmq-source", argv=argv, env=env, log_path=log_path, cwd=PROJECT_ROOT
        )

    def lines(self) -> list[dict[str, Any]]:
        if not self.process.log_path.exists():
            return []
        found = []
        for line in self.process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def logged(self, event: str, **fields: Any) -> bool:
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            for line in self.lines()
        )


ConsumerFactory = Callable[..., Consumer]


@pytest.fixture
def start_consumer(
    queue: str, ctx: Context, tmp_path: Path, amqp: Amqp
) -> Iterator[ConsumerFactory]:
    token = ctx.tokens.issue("rabbitmq-source", Role.SERVICE)
    started: list[Consumer] = []

    def start(broker_url: str, *extra: str, rabbitmq_url: str = URL) -> Consumer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
        env.update(
            {
                "FALAJ_HOME": str(ctx.paths.home),
                "FALAJ_BROKER_URL": broker_url,
                "FALAJ_TOKEN": token,
                "FALAJ_RABBITMQ_URL": rabbitmq_url,
            }
        )
        argv = [
            sys.executable,
            "-m",
            "eventing.rabbitmq_source",
            "--name=records",
            "--namespace=falaj",
            f"--queue={queue}",
            f"--exchange={queue}",
            "--parallelism=10",
            "--backoff-delay=0.1",
            "--max-backoff=0.5",
            *extra,
        ]
        consumer = Consumer(tmp_path / f"rabbitmq-source-{len(started)}.log", argv, env)
        started.append(consumer)
        consumer.process.start()
        if rabbitmq_url == URL:
            # Attached: the queue and its exchange are declared, publishing routes.
            wait_until(
                lambda: consumer_attached(amqp, queue),
                timeout_s=60,
                what=f"the source consuming {queue}; its log:\n{consumer.process.tail()}",
            )
        return consumer

    yield start
    for consumer in started:
        consumer.process.stop()


def consumer_attached(amqp: Amqp, queue: str) -> bool:
    state = amqp.state(queue)
    return state is not None and state.consumers == 1


def ready(amqp: Amqp, queue: str) -> int:
    state = amqp.state(queue)
    assert state is not None, f"queue {queue} is gone"
    return state.messages


def test_a_message_is_acked_only_after_the_broker_took_its_event(
    amqp: Amqp, queue: str, start_consumer: ConsumerFactory, ctx: Context, tmp_path: Path
) -> None:
    port = free_port(HOST)
    broker_url = f"http://{HOST}:{port}/"
    record = {"card_id": "c-1", "amount": 912.5}

    # The broker is down: the source takes the message, cannot hand it on, holds it.
    first = start_consumer(broker_url)
    amqp.publish(queue, json.dumps(record).encode(), message_id="m-1")
    wait_until(
        lambda: first.logged(
            "broker did not take the events; they stay unacked and are sent again"
        ),
        what="the source trying a broker that is down",
    )
    assert amqp.state(queue) == QueueState(messages=0, consumers=1)  # handed out, unsettled
    first.process.stop()
    # Not acked: with its consumer gone, the message is ready again.
    wait_until(lambda: ready(amqp, queue) == 1, what="the unacked message back in the queue")

    second = start_consumer(broker_url)
    wait_until(
        lambda: second.logged(
            "broker did not take the events; they stay unacked and are sent again"
        ),
        what="the restarted source retrying while the broker is still down",
    )
    broker = ManagedProcess(
        name="broker",
        argv=[sys.executable, "-m", "eventing.broker", "--db", str(tmp_path / "queue.db")],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")},
            "FALAJ_HOME": str(ctx.paths.home),
            "FALAJ_BROKER_PORT": str(port),
        },
        log_path=tmp_path / "broker.log",
        cwd=PROJECT_ROOT,
    ).start()
    try:
        broker.wait_ready(ReadyCheck(HOST, port, "/healthz"))
        # The broker is back: the next try gets its 202, and only then the ack.
        wait_until(
            lambda: second.logged("forwarded", accepted=1),
            what=f"the event accepted; source log:\n{second.process.tail()}",
        )
        reader = ctx.tokens.issue("test-reader", Role.VIEWER)
        events = httpx.get(
            f"{broker_url}events",
            params={"type": RABBITMQ_EVENT},
            headers={"Authorization": f"Bearer {reader}"},
        ).json()
    finally:
        broker.stop()
    assert [(e["id"], e["data"], e["dataregion"]) for e in events] == [
        ("m-1", record, "me-central-1")
    ]
    second.process.stop()
    # Acked: nothing comes back once the consumer is gone.
    assert amqp.state(queue) == QueueState(messages=0, consumers=0)


def test_cloudevents_pass_through_and_a_redelivery_is_a_duplicate(
    amqp: Amqp, queue: str, start_consumer: ConsumerFactory, start_broker: BrokerFactory
) -> None:
    running = start_broker()
    consumer = start_consumer(running.url)
    binary_id, structured_id = f"bin-{uuid.uuid4()}", f"str-{uuid.uuid4()}"
    amqp.publish(
        queue,
        b'{"model": "fraud", "reason": "manual"}',
        content_type="application/json",
        headers={
            "ce-specversion": "1.0",
            "ce-id": binary_id,
            "ce-type": "dev.falaj.training.requested",
            "ce-source": "/bank/scheduler",
            "ce-dataregion": "uaenorth",
        },
    )
    amqp.publish(
        queue,
        json.dumps(
            {
                "specversion": "1.0",
                "id": structured_id,
                "type": RABBITMQ_EVENT,
                "source": "/bank/core",
                "dataregion": "uaecentral",
                "datacontenttype": "application/json",
                "data": {"card_id": "c-9"},
            }
        ).encode(),
        content_type="application/cloudevents+json",
    )
    record = json.dumps({"card_id": "c-3", "amount": 5}).encode()
    amqp.publish(queue, record)  # no message_id: its id comes from its bytes
    wait_until(lambda: len(running.events()) == 3, what="three events at the broker")

    events = {e["id"]: e for e in running.events()}
    assert (events[binary_id]["type"], events[binary_id]["source"]) == (
        "dev.falaj.training.requested",
        "/bank/scheduler",
    )
    assert events[binary_id]["dataregion"] == "uaenorth"
    assert (events[structured_id]["source"], events[structured_id]["data"]) == (
        "/bank/core",
        {"card_id": "c-9"},
    )
    [plain] = [e for e in events.values() if e["id"] not in (binary_id, structured_id)]
    assert plain["source"] == f"/apis/v1/namespaces/falaj/rabbitmqsources/records#{queue}"

    # The same message again, as after a crash between the broker's 202 and the ack.
    amqp.publish(queue, record)
    wait_until(
        lambda: any(plain["id"] in line.get("duplicate_ids", []) for line in consumer.lines()),
        what=f"the broker answering that {plain['id']} is a duplicate",
    )
    assert len(running.events()) == 3
    consumer.process.stop()
    assert amqp.state(queue) == QueueState(messages=0, consumers=0)


def test_poison_messages_are_kept_and_the_others_go_through(
    amqp: Amqp, queue: str, start_consumer: ConsumerFactory, start_broker: BrokerFactory
) -> None:
    running = start_broker(max_body_bytes=8192)
    consumer = start_consumer(running.url, "--linger=0.5")
    amqp.publish(queue, b'{"n": 1}', message_id="good-1")
    amqp.publish(queue, b"\xff\x00 not json", message_id="not-json")
    amqp.publish(queue, b'{"n": 2}', message_id="good-2")
    amqp.publish(queue, json.dumps({"blob": "x" * 20_000}).encode(), message_id="too-large")
    amqp.publish(queue, b"{}", headers={"ce-specversion": "1.0", "ce-id": "no-type"})

    dead_letter_queue = f"{queue}.dead-letters"
    wait_until(
        lambda: ready(amqp, dead_letter_queue) == 2,
        what=f"two messages in {dead_letter_queue}; source log:\n{consumer.process.tail()}",
    )
    wait_until(lambda: len(running.events()) == 2, what="the good events at the broker")
    assert sorted(e["id"] for e in running.events()) == ["good-1", "good-2"]
    letters = running.client.get("/dead-letters").json()
    assert any("got bytes that are not JSON" in d["reason"] for d in letters), letters
    consumer.process.stop()
    assert amqp.state(queue) == QueueState(messages=0, consumers=0)


def test_the_amqp_password_never_reaches_a_log_line(
    amqp: Amqp, queue: str, start_consumer: ConsumerFactory
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    consumer = start_consumer(
        f"http://{HOST}:{free_port(HOST)}/",
        rabbitmq_url=f"amqp://guest:{secret}@{HOST}:5672/%2F",
    )
    wait_until(
        lambda: (
            sum(
                line.get("event") == "rabbitmq unavailable; reconnecting"
                for line in consumer.lines()
            )
            >= 2
        ),
        timeout_s=30,
        what="the source refused by RabbitMQ, retrying",
    )
    consumer.process.stop()
    log = consumer.process.log_path.read_text()
    assert "ACCESS_REFUSED" in log or "Authentication" in log, log
    assert "amqp://guest@127.0.0.1:5672/" in log
    assert secret not in log


def test_the_source_comes_back_when_rabbitmq_takes_its_queue_away(
    amqp: Amqp, queue: str, start_consumer: ConsumerFactory, start_broker: BrokerFactory
) -> None:
    running = start_broker()
    consumer = start_consumer(running.url)
    amqp.channel.queue_delete(queue)  # RabbitMQ cancels the consumer

    wait_until(
        lambda: consumer.logged("rabbitmq unavailable; reconnecting"),
        what=f"the source noticing; its log:\n{consumer.process.tail()}",
    )
    wait_until(
        lambda: consumer_attached(amqp, queue),
        timeout_s=30,
        what="the queue declared again and consumed",
    )
    amqp.publish(queue, b'{"after": "reconnect"}', message_id="after-reconnect")
    wait_until(lambda: len(running.events()) == 1, what="the event after the reconnect")
    assert running.events()[0]["id"] == "after-reconnect"
