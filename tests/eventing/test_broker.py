from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cloudevents.conversion import to_binary, to_structured
from pydantic import SecretStr

from eventing.ingress import BATCH_CONTENT_TYPE
from eventing.topology_io import dump_endpoints, dump_topology
from falaj.auth import Role
from falaj.context import Context
from falaj.events import EventType
from falaj.runtime.processes import ReadyCheck, free_port
from falaj.settings import Settings
from falaj.topology import BrokerSpec, DeliverySpec
from tests.eventing.conftest import (
    BrokerFactory,
    Subscriber,
    broker_process,
    training_requested,
    trigger,
    wait_until,
)


def test_binary_structured_and_batched_events_are_accepted(start_broker: BrokerFactory) -> None:
    running = start_broker()
    binary, structured, *batch = (training_requested(f"m{i}") for i in range(4))

    assert running.publish(binary).status_code == 202
    headers, body = to_structured(structured)
    assert running.client.post("/", headers=headers, content=body).status_code == 202
    batch_body = json.dumps([json.loads(to_structured(e)[1]) for e in batch])
    response = running.client.post(
        "/", headers={"content-type": BATCH_CONTENT_TYPE}, content=batch_body
    )
    assert response.status_code == 202
    assert response.json()["accepted"] == [e["id"] for e in batch]

    listed = running.events()
    assert [e["id"] for e in listed] == [e["id"] for e in (binary, structured, *batch)]
    assert listed[0]["data"] == {
        "model": "m0",
        "reason": "manual",
        "urgent": False,
        "cause_event_id": None,
    }
    assert listed[0]["dataregion"] == "me-central-1"


def test_a_republished_event_is_acknowledged_as_a_duplicate(start_broker: BrokerFactory) -> None:
    running = start_broker()
    event = training_requested()
    assert running.publish(event).json()["accepted"] == [event["id"]]
    again = running.publish(event)
    assert (again.status_code, again.json()["duplicates"]) == (202, [event["id"]])
    assert len(running.events()) == 1


def test_malformed_event_gets_400_with_its_problems_and_is_dead_lettered(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    event = training_requested()
    event.data = {"model": "fraud", "reason": "because"}
    response = running.publish(event)
    assert response.status_code == 400
    body = response.json()
    assert "catalog" in body["error"]
    assert any(p.startswith("data.reason") for p in body["problems"])

    [letter] = running.client.get("/dead-letters").json()
    assert letter["id"] == body["dead_letter"]
    assert letter["reason"].startswith("rejected at ingress")
    assert letter["replayable"] is False
    headers, raw = running.broker.queue.dead_letter_body(letter["id"])
    assert headers is not None and "authorization" not in headers
    assert raw is not None and b"because" in raw
    assert running.events() == []
    assert any(e["action"] == "event.rejected" for e in ctx.audit.entries())


def test_a_body_that_is_not_a_cloudevent_gets_400(start_broker: BrokerFactory) -> None:
    running = start_broker()
    response = running.client.post("/", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 400
    assert response.json()["problems"]
    replay = running.client.post(f"/dead-letters/{response.json()['dead_letter']}/replay")
    assert replay.status_code == 403  # a service may not replay; an admin may


def test_a_body_over_the_limit_gets_413_before_parsing(start_broker: BrokerFactory) -> None:
    running = start_broker(max_body_bytes=4096)
    response = running.client.post(
        "/", content=b"x" * 5000, headers={"content-type": "application/cloudevents+json"}
    )
    assert response.status_code == 413
    assert "4096" in response.json()["error"]
    assert running.client.get("/dead-letters").json() == []


def test_no_token_gets_401_and_a_role_without_publish_gets_403(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    headers, body = to_binary(training_requested())
    anonymous = httpx.post(running.url, headers=headers, content=body)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    viewer = ctx.tokens.issue("someone", Role.VIEWER)
    denied = httpx.post(
        running.url, headers={**headers, "Authorization": f"Bearer {viewer}"}, content=body
    )
    assert denied.status_code == 403
    assert "publish-event" in denied.json()["error"]
    refusals = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert [e["actor"] for e in refusals] == ["unknown", "someone"]
    assert running.events() == []
    assert httpx.get(running.url + "events").status_code == 401


def test_an_event_outside_the_allowed_regions_gets_403_and_is_audited(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    event = training_requested(region="eu-west-1")
    response = running.publish(event)
    assert response.status_code == 403
    assert "eu-west-1" in response.json()["error"]
    [refusal] = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert refusal["region"] == "eu-west-1"
    assert event["id"] in refusal["resource"]
    # Out-of-region data is kept nowhere here, not even as a dead letter.
    assert running.events() == []
    assert running.client.get("/dead-letters").json() == []


def test_events_can_be_listed_by_type_since_and_limit(start_broker: BrokerFactory) -> None:
    running = start_broker()
    first = training_requested("a")
    running.publish(first)
    mark = datetime.now(UTC).isoformat()
    later = [training_requested(f"b{i}") for i in range(3)]
    for event in later:
        running.publish(event)

    by_type = running.events(str(EventType.TRAINING_REQUESTED))
    assert len(by_type) == 4
    assert running.events(str(EventType.MODEL_REGISTERED)) == []
    since = running.client.get("/events", params={"since": mark}).json()
    assert [e["id"] for e in since] == [e["id"] for e in later]
    newest = running.client.get("/events", params={"limit": "2"}).json()
    assert [e["id"] for e in newest] == [e["id"] for e in later[1:]]  # newest last
    bad = running.client.get("/events", params={"since": "yesterday"})
    assert bad.status_code == 400 and "ISO-8601" in bad.json()["error"]


def test_probes_need_no_token(start_broker: BrokerFactory) -> None:
    running = start_broker()
    assert httpx.get(running.url + "healthz").status_code == 200
    assert httpx.get(running.url + "readyz").json() == {"status": "ready"}


def test_sigkill_and_restart_lose_no_accepted_event(
    settings: Settings,
    ctx: Context,
    service_token: str,
    make_subscriber: Callable[[], Subscriber],
    tmp_path: Path,
) -> None:
    port = free_port()
    broker_settings = settings.model_copy(
        update={
            "broker_port": port,
            "token": SecretStr(ctx.tokens.issue("broker", Role.SERVICE)),
        }
    )
    dump_topology(
        [BrokerSpec(name="default", delivery=DeliverySpec(retry=3))],
        [trigger("all", "recorder")],
        tmp_path / "topology.json",
    )
    # The subscriber is not up yet: every delivery waits in the queue.
    dump_endpoints({}, tmp_path / "endpoints.json")
    auth = {"Authorization": f"Bearer {service_token}"}
    ready = ReadyCheck("127.0.0.1", port, "/readyz")

    first = broker_process(broker_settings, tmp_path, "broker-1").start()
    second = broker_process(broker_settings, tmp_path, "broker-2")
    try:
        first.wait_ready(ready, timeout_s=30)
        events = [training_requested(f"m{i}") for i in range(20)]
        for event in events:
            headers, body = to_binary(event)
            response = httpx.post(
                f"http://127.0.0.1:{port}/", headers={**headers, **auth}, content=body
            )
            assert response.status_code == 202
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        assert first.popen is not None and first.popen.wait(timeout=10) == -signal.SIGKILL

        recorder = make_subscriber()
        dump_endpoints({"recorder": recorder.url}, tmp_path / "endpoints.json")
        second.start()
        second.wait_ready(ready, timeout_s=30)
        wanted = {e["id"] for e in events}
        wait_until(lambda: wanted <= set(recorder.ids()), what="all 20 events delivered")
        listed = httpx.get(f"http://127.0.0.1:{port}/events", headers=auth).json()
        assert {e["id"] for e in listed} == wanted
        # Every request carried the broker's token, not the publisher's.
        assert all(r.headers["authorization"] != auth["Authorization"] for r in recorder.received)
        second.stop()
        # SIGTERM is graceful: uvicorn drains, the lifespan stops the dispatcher.
        assert '"broker stopped"' in second.log_path.read_text()
    finally:
        first.stop()
        second.stop()
