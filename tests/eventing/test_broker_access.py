"""Every role against the broker's endpoints: what the access table gives it, and no more."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cloudevents.conversion import to_binary, to_dict
from cloudevents.http import CloudEvent

from falaj.auth import PERMISSIONS, Action, Role
from falaj.context import Context
from falaj.events import DataIngested, EventType, RolloutRequested, make_event
from falaj.publisher import BATCH_CONTENT_TYPE
from tests.eventing.conftest import BrokerFactory, training_requested


def _ingested() -> CloudEvent:
    data = DataIngested(
        dataset="transactions",
        location="landing/transactions/a.csv",
        object_version="1",
        rows_total=1,
        rows_ingested=1,
        rows_quarantined=0,
        offline_location="offline/transactions",
    )
    return make_event(EventType.DATA_INGESTED, data, region="me-central-1")


def _rollout_requested() -> CloudEvent:
    data = RolloutRequested(model="fraud", action="canary", version=2, percent=10)
    return make_event(EventType.ROLLOUT_REQUESTED, data, region="me-central-1")


def test_each_role_may_publish_list_and_replay_as_the_table_says(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    seen: dict[tuple[str, str], int] = {}
    expected: dict[tuple[str, str], int] = {}

    def publish(event: CloudEvent, auth: dict[str, str]) -> int:
        headers, body = to_binary(event)
        return httpx.post(running.url, headers={**headers, **auth}, content=body).status_code

    for role in Role:
        token = ctx.tokens.issue(f"someone-{role}", role)
        auth = {"Authorization": f"Bearer {token}"}
        statuses = {
            # An announcement needs publish-event; a request for training or a
            # rollout step needs train or deploy (falaj.auth.REQUEST_EVENTS).
            Action.PUBLISH_EVENT: publish(_ingested(), auth),
            Action.TRAIN: publish(training_requested(), auth),
            Action.DEPLOY: publish(_rollout_requested(), auth),
            Action.READ: httpx.get(running.url + "events", headers=auth).status_code,
            # No dead letter 999: an allowed caller learns that (404); others do not.
            Action.REPLAY: httpx.post(
                running.url + "dead-letters/999/replay", headers=auth
            ).status_code,
        }
        allowed_status = {
            Action.PUBLISH_EVENT: 202,
            Action.TRAIN: 202,
            Action.DEPLOY: 202,
            Action.READ: 200,
            Action.REPLAY: 404,
        }
        for action, status in statuses.items():
            seen[(str(role), str(action))] = status
            expected[(str(role), str(action))] = (
                allowed_status[action] if action in PERMISSIONS[role] else 403
            )
    assert seen == expected
    refused = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert len(refused) == sum(1 for status in seen.values() if status == 403)
    # The data scientist's refusal names the event type it may not announce.
    scientist = [e for e in refused if e["actor"] == "someone-data-scientist"]
    [announcing] = [e for e in scientist if EventType.DATA_INGESTED in e["details"]["reason"]]
    assert announcing["role"] == "data-scientist"


def test_one_event_a_caller_may_not_publish_refuses_the_whole_batch(
    start_broker: BrokerFactory, ctx: Context
) -> None:
    running = start_broker()
    token = ctx.tokens.issue("scientist", Role.DATA_SCIENTIST)
    batch = [to_dict(training_requested()), to_dict(_ingested())]
    response = httpx.post(
        running.url,
        headers={"Authorization": f"Bearer {token}", "content-type": BATCH_CONTENT_TYPE},
        content=json.dumps(batch),
    )
    assert response.status_code == 403
    assert f"may not publish-event ({EventType.DATA_INGESTED})" in response.json()["error"]
    assert running.events() == []  # nothing of the batch was kept


def test_a_topology_that_sends_out_of_region_is_refused_before_the_broker_starts(
    ctx: Context, tmp_path: Path
) -> None:
    from dataclasses import replace

    from eventing.broker import check_destinations
    from eventing.topology_io import EventingTopology
    from falaj.errors import ResidencyViolation
    from falaj.topology import BrokerSpec, DeliverySpec, TriggerSpec

    policy = replace(ctx.policy, storage_regions={"https://collector.example.eu": "eu-west-1"})
    local = TriggerSpec(
        name="local", broker="default", subscriber="x", subscriber_uri="http://127.0.0.1:9/"
    )
    in_cluster = TriggerSpec(
        name="svc",
        broker="default",
        subscriber="x",
        subscriber_uri="http://drift.falaj.svc.cluster.local/",
        delivery=DeliverySpec(dead_letter_sink="dead-letters"),
    )
    brokers = {"default": BrokerSpec(name="default")}
    check_destinations(policy, EventingTopology(brokers=brokers, triggers=(local, in_cluster)))

    foreign = TriggerSpec(
        name="to-eu",
        broker="default",
        subscriber="x",
        delivery=DeliverySpec(dead_letter_sink="https://user:pw@collector.example.eu/dlq"),
    )
    with pytest.raises(ResidencyViolation) as refused:
        check_destinations(policy, EventingTopology(brokers=brokers, triggers=(foreign,)))
    message = str(refused.value)
    assert "sink: Trigger/to-eu deadLetterSink -> https://***@collector.example.eu/dlq" in message
    assert "region 'eu-west-1', outside the allowed regions" in message and "pw" not in message
    [entry] = [e for e in ctx.audit.entries() if e["action"] == "policy.refused"]
    assert entry["details"]["boundary"] == "sink" and entry["region"] == "eu-west-1"
    unknown = BrokerSpec(
        name="default", delivery=DeliverySpec(dead_letter_sink="https://sink.example.com/")
    )
    with pytest.raises(ResidencyViolation, match="has no known region"):
        check_destinations(policy, EventingTopology(brokers={"default": unknown}, triggers=()))
