"""The broker's ``/metrics``: what its ingress accepted and what its dispatcher process delivered.

The dispatcher is a process of its own; its counts reach the broker's
``/metrics`` with its acks. Its log lines reach this test's stderr (``capfd``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

import httpx
import pytest

from falaj.metrics import METRIC_NAMES
from falaj.topology import BackoffPolicy, DeliverySpec
from tests.eventing.conftest import (
    BrokerFactory,
    RunningBroker,
    Subscriber,
    training_requested,
    trigger,
    wait_until,
)
from tests.support.metrics import Scraped

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TYPE = "dev.falaj.training.requested"


def scrape(running: RunningBroker) -> Scraped:
    return Scraped.of(running.client.get("/metrics"))


def test_accepted_delivered_retried_and_dead_lettered_events_are_counted_per_trigger(
    start_broker: BrokerFactory,
    make_subscriber: Callable[[], Subscriber],
    capfd: pytest.CaptureFixture[str],
) -> None:
    ok, flaky, refusing = make_subscriber(), make_subscriber(), make_subscriber()
    flaky.statuses = deque([503])
    refusing.statuses = deque([400])  # not retryable: a dead letter at once
    running = start_broker(
        (
            trigger("ok", "ok"),
            trigger(
                "flaky",
                "flaky",
                delivery=DeliverySpec(
                    retry=2, backoff_policy=BackoffPolicy.LINEAR, backoff_delay_s=0.05
                ),
            ),
            trigger("refusing", "refusing"),
        ),
        endpoints={"ok": ok.url, "flaky": flaky.url, "refusing": refusing.url},
    )
    anonymous = httpx.get(running.url + "metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"

    event = training_requested()
    event["traceparent"] = TRACEPARENT
    assert running.publish(event).status_code == 202
    assert running.publish(event).json()["duplicates"] == [event["id"]]
    malformed = running.client.post("/", content=b"hello", headers={"content-type": "text/plain"})
    assert malformed.status_code == 400

    def counted(name: str, trigger: str) -> float:
        return scrape(running).value(name, broker="default", trigger=trigger)

    wait_until(
        lambda: (
            counted("falaj_broker_events_delivered_total", "flaky") == 1
            and counted("falaj_broker_dead_letters_total", "refusing") == 1
            and counted("falaj_broker_events_delivered_total", "ok") == 1
        ),
        timeout_s=20,
        what="every trigger's delivery settled and counted",
    )
    scraped = scrape(running)
    assert scraped.value("falaj_broker_events_accepted_total", broker="default", type=TYPE) == 1
    by_trigger = {
        name: {
            t: scraped.value(name, broker="default", trigger=t) for t in ("ok", "flaky", "refusing")
        }
        for name in (
            "falaj_broker_events_delivered_total",
            "falaj_broker_delivery_retries_total",
            "falaj_broker_dead_letters_total",
            "falaj_broker_delivery_seconds_count",
        )
    }
    assert by_trigger == {
        "falaj_broker_events_delivered_total": {"ok": 1, "flaky": 1, "refusing": 0},
        "falaj_broker_delivery_retries_total": {"ok": 0, "flaky": 1, "refusing": 0},
        "falaj_broker_dead_letters_total": {"ok": 0, "flaky": 0, "refusing": 1},
        "falaj_broker_delivery_seconds_count": {"ok": 1, "flaky": 2, "refusing": 1},
    }
    # The request refused at ingress is a dead letter of no Trigger.
    assert scraped.value("falaj_broker_dead_letters_total", broker="default", trigger="") == 1
    assert scraped.value("falaj_broker_delivery_seconds_sum", broker="default", trigger="ok") > 0
    assert scraped.names() <= METRIC_NAMES

    # The dispatcher logged the dead letter under the event's trace.
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    [dead] = [line for line in lines if line.get("event") == "dead letter"]
    assert (dead["trace_id"], dead["trigger"]) == (TRACE_ID, "refusing")
    retried = [line for line in lines if line.get("event") == "delivery will be retried"]
    assert [line["trace_id"] for line in retried] == [TRACE_ID]
