from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from eventing.delivery import binary_mode
from eventing.queue import DeliveryStatus
from eventing.topology_io import dump_endpoints
from falaj.auth import Role
from falaj.context import Context
from falaj.events import EventType, ModelRegistered, make_event
from falaj.runtime.processes import free_port
from falaj.topology import BackoffPolicy, DeliverySpec
from tests.eventing.conftest import (
    HANG,
    BrokerFactory,
    Received,
    RunningBroker,
    Subscriber,
    training_requested,
    trigger,
    wait_until,
)

SubscriberFactory = Callable[[], Subscriber]


def statuses(running: RunningBroker) -> list[DeliveryStatus]:
    return [d.status for d in running.broker.queue.deliveries()]


def test_event_is_delivered_in_binary_mode_with_the_brokers_token(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory, broker_ctx: Context
) -> None:
    launcher = make_subscriber()
    running = start_broker(
        (trigger("on-training", "launcher", event_type="dev.falaj.training.requested"),),
        endpoints={"launcher": launcher.url},
    )
    event = training_requested()
    running.publish(event)
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="delivery done")

    [request] = launcher.received
    assert request.headers["ce-id"] == event["id"]
    assert request.headers["ce-type"] == "dev.falaj.training.requested"
    assert request.headers["ce-dataregion"] == "me-central-1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {broker_ctx.settings.bearer_token()}"
    assert json.loads(request.body)["model"] == "fraud"


@pytest.mark.parametrize(
    ("policy", "expected_gaps"),
    # Knative's waits before retries 1, 2, 3 (eventing.retry): d*(n-1) or d*2**(n-1).
    [(BackoffPolicy.LINEAR, [0.0, 0.15, 0.3]), (BackoffPolicy.EXPONENTIAL, [0.15, 0.3, 0.6])],
)
def test_retryable_failures_are_retried_with_backoff(
    start_broker: BrokerFactory,
    make_subscriber: SubscriberFactory,
    policy: BackoffPolicy,
    expected_gaps: list[float],
) -> None:
    flaky = make_subscriber()
    flaky.statuses = deque([503, 429, 500])
    running = start_broker(
        (trigger("all", "flaky"),),
        delivery=DeliverySpec(retry=3, backoff_policy=policy, backoff_delay_s=0.15),
        endpoints={"flaky": flaky.url},
    )
    running.publish(training_requested())
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="delivery done")

    times = [r.at for r in flaky.received]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, expected in zip(gaps, expected_gaps, strict=True):
        assert gap >= expected * 0.95
    # Each wait is the longer of the two policies' where they differ: the gaps tell them apart.
    assert gaps[2] >= gaps[1] * 1.5
    [delivery] = running.broker.queue.deliveries()
    assert delivery.attempts == 4


def test_5xx_429_and_timeouts_are_retried_with_backoff_then_dead_lettered(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    failing = make_subscriber()
    failing.statuses = deque([503, 429, HANG, 500])
    failing.hang_s = 3.0
    running = start_broker(
        (
            trigger(
                "all",
                "failing",
                delivery=DeliverySpec(
                    retry=3,
                    backoff_policy=BackoffPolicy.EXPONENTIAL,
                    backoff_delay_s=0.1,
                    timeout_s=0.5,
                ),
            ),
        ),
        endpoints={"failing": failing.url},
    )
    event = training_requested()
    running.publish(event)
    wait_until(lambda: statuses(running) == [DeliveryStatus.DEAD], what="dead letter")

    times = [r.at for r in failing.received]
    assert len(times) == 4  # the first attempt and three retries
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.1 * 0.95
    assert gaps[1] >= 0.2 * 0.95
    # The third attempt hung: the broker gave up after its 0.5 s timeout, then waited 0.4 s.
    assert 0.9 * 0.95 <= gaps[2] < failing.hang_s
    [letter] = running.client.get("/dead-letters").json()
    assert (letter["event_id"], letter["attempts"], letter["status_code"]) == (event["id"], 4, 500)
    assert letter["reason"].startswith("gave up after 4 attempts: HTTP 500")
    [delivery] = running.broker.queue.deliveries()
    assert delivery.attempts == 4


def test_a_429s_retry_after_is_honoured_up_to_retry_after_max(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    busy = make_subscriber()
    busy.statuses = deque([429])
    busy.headers = {429: {"Retry-After": "30"}}
    running = start_broker(
        (trigger("all", "busy"),),
        delivery=DeliverySpec(
            retry=1,
            backoff_policy=BackoffPolicy.LINEAR,
            backoff_delay_s=0.01,
            retry_after_max_s=0.6,
        ),
        endpoints={"busy": busy.url},
    )
    running.publish(training_requested())
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="delivery done")
    first, second = (r.at for r in busy.received)
    assert 0.6 * 0.95 <= second - first < 30  # capped at retryAfterMax, not the asked 30 s


def test_a_non_retryable_status_is_dead_lettered_at_once(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory, ctx: Context
) -> None:
    strict = make_subscriber()
    strict.statuses = deque([400])
    running = start_broker(
        (trigger("all", "strict"),),
        delivery=DeliverySpec(retry=5),
        endpoints={"strict": strict.url},
    )
    event = training_requested()
    running.publish(event)
    wait_until(lambda: statuses(running) == [DeliveryStatus.DEAD], what="dead letter")

    assert len(strict.received) == 1
    [letter] = running.client.get("/dead-letters").json()
    assert (letter["event_id"], letter["trigger"], letter["attempts"]) == (event["id"], "all", 1)
    assert letter["reason"].startswith("not retryable: HTTP 400")
    assert letter["status_code"] == 400
    assert any(e["action"] == "event.dead-lettered" for e in ctx.audit.entries())


def test_spent_retries_go_to_the_dead_letters_and_the_sink(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    broken, sink = make_subscriber(), make_subscriber()
    broken.statuses = deque([500, 500, 500])
    running = start_broker(
        (
            trigger(
                "all",
                "broken",
                delivery=DeliverySpec(retry=2, dead_letter_sink="sink"),
            ),
        ),
        endpoints={"broken": broken.url, "sink": sink.url},
    )
    event = training_requested()
    running.publish(event)
    wait_until(lambda: len(sink.received) == 1, what="the dead-letter sink to get the event")

    assert len(broken.received) == 3
    [letter] = running.client.get("/dead-letters").json()
    assert letter["attempts"] == 3
    assert letter["reason"].startswith("gave up after 3 attempts: HTTP 500")
    [dead] = sink.received
    assert dead.headers["ce-id"] == event["id"]
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert dead.headers["ce-knativeerrordest"] == broken.url


def test_network_errors_are_retried(start_broker: BrokerFactory) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    running = start_broker((trigger("all", nobody),), delivery=DeliverySpec(retry=1))
    running.publish(training_requested())
    wait_until(lambda: statuses(running) == [DeliveryStatus.DEAD], what="dead letter")
    [letter] = running.broker.queue.dead_letters()
    assert letter.attempts == 2
    assert "ClientConnectorError" in letter.reason and "Cannot connect" in letter.reason


def registered_reply(request: Received) -> CloudEvent:
    cause = request.headers["ce-id"]
    return make_event(
        EventType.MODEL_REGISTERED,
        ModelRegistered(
            model="fraud",
            version=1,
            digest="sha256:" + "0" * 64,
            metrics={"auc": 0.9},
            location="file:///registry/fraud/1",
            training_job_id=cause,
        ),
        region="me-central-1",
    )


def test_a_reply_event_goes_back_into_the_broker(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    trainer, rollout = make_subscriber(), make_subscriber()
    trainer.reply = registered_reply
    running = start_broker(
        (
            trigger("on-training", "trainer", event_type="dev.falaj.training.requested"),
            trigger("on-registered", "rollout", event_type="dev.falaj.model.registered"),
        ),
        endpoints={"trainer": trainer.url, "rollout": rollout.url},
    )
    event = training_requested()
    running.publish(event)
    wait_until(lambda: len(rollout.received) == 1, what="the reply to reach its trigger")

    assert rollout.received[0].headers["ce-type"] == "dev.falaj.model.registered"
    [registered] = running.events("dev.falaj.model.registered")
    assert registered["data"]["training_job_id"] == event["id"]


def test_an_invalid_reply_is_kept_as_a_dead_letter(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    sloppy = make_subscriber()

    def bad_reply(request: Received) -> CloudEvent:
        reply = registered_reply(request)
        reply.data = {"model": "fraud"}
        return reply

    sloppy.reply = bad_reply
    running = start_broker((trigger("all", "sloppy"),), endpoints={"sloppy": sloppy.url})
    running.publish(training_requested())
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="delivery done")
    [letter] = running.broker.queue.dead_letters()
    assert letter.reason.startswith("reply from trigger 'all' rejected")
    assert "data.version" in letter.reason
    assert running.events("dev.falaj.model.registered") == []


def test_a_slow_subscriber_does_not_hold_up_other_triggers(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory
) -> None:
    slow, fast = make_subscriber(), make_subscriber()
    slow.gate = threading.Event()
    running = start_broker(
        (trigger("slow", "slow"), trigger("fast", "fast")),
        endpoints={"slow": slow.url, "fast": fast.url},
        # Like a Knative Service with containerConcurrency: 1.
        container_concurrency={"slow": 1},
    )
    events = [training_requested(f"m{i}") for i in range(3)]
    for event in events:
        running.publish(event)
    wait_until(lambda: len(fast.received) == 3, what="the fast trigger to get every event")
    assert len(slow.received) == 1  # still holding the first one
    slow.gate.set()
    wait_until(lambda: len(slow.received) == 3, what="the slow trigger to catch up")


def test_a_dead_letter_can_be_replayed_by_an_admin(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory, ctx: Context
) -> None:
    picky = make_subscriber()
    picky.statuses = deque([422])
    running = start_broker((trigger("all", "picky"),), endpoints={"picky": picky.url})
    event = training_requested()
    running.publish(event)
    wait_until(lambda: statuses(running) == [DeliveryStatus.DEAD], what="dead letter")
    [letter] = running.client.get("/dead-letters").json()

    admin = {"Authorization": f"Bearer {ctx.tokens.issue('ops', Role.PLATFORM_ADMIN)}"}
    replay = httpx.post(f"{running.url}dead-letters/{letter['id']}/replay", headers=admin)
    assert replay.status_code == 202
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="replayed delivery")
    assert picky.ids() == [event["id"], event["id"]]
    again = httpx.post(f"{running.url}dead-letters/{letter['id']}/replay", headers=admin)
    assert again.status_code == 409
    missing = httpx.post(f"{running.url}dead-letters/999/replay", headers=admin)
    assert missing.status_code == 404
    assert [e["actor"] for e in ctx.audit.entries() if e["action"] == "event.replayed"] == ["ops"]


def test_a_subscriber_not_started_yet_does_not_spend_retries(
    start_broker: BrokerFactory, make_subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    endpoints = tmp_path / "endpoints.json"
    running = start_broker(
        (trigger("all", "late"),),
        delivery=DeliverySpec(retry=0),
        endpoints_path=endpoints,
    )
    running.publish(training_requested())
    wait_until(
        lambda: running.broker.queue.deliveries()[0].last_error is not None,
        what="a first look for the endpoint",
    )
    [waiting] = running.broker.queue.deliveries()
    assert (waiting.status, waiting.attempts) == (DeliveryStatus.PENDING, 0)
    assert "no endpoint for service 'late'" in (waiting.last_error or "")

    late = make_subscriber()
    dump_endpoints({"late": late.url}, endpoints)
    wait_until(lambda: statuses(running) == [DeliveryStatus.DONE], what="delivery once it is up")
    assert len(late.received) == 1


@pytest.mark.parametrize(
    "data", [b'{"model": "fraud"}', {"model": "fraud"}, "plain text", [1, 2], None]
)
def test_binary_mode_is_what_the_sdk_sends(data: object) -> None:
    event = CloudEvent(
        {
            "type": "dev.falaj.training.requested",
            "source": "/falaj/test",
            "dataregion": "me-central-1",
            "knativebrokerttl": 255,
            "datacontenttype": "application/json",
        },
        data,
    )
    sdk_headers, sdk_body = to_binary(event)
    headers, body = binary_mode(event)
    assert headers == {k: str(v) for k, v in sdk_headers.items()}
    assert body == (sdk_body or b"")
