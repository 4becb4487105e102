from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from eventing.queue import DeliveryStatus, EventQueue, ReplayOutcome, Target, event_row
from tests.eventing.conftest import training_requested

TARGETS = [Target("on-training", "launcher"), Target("audit-all", "recorder")]


def test_event_and_its_deliveries_are_stored_together(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    event = training_requested()
    assert queue.append([(event, TARGETS)], now=100.0) == [True]
    [stored] = queue.events()
    assert (stored.id, stored.type, stored.source) == (event["id"], event["type"], event["source"])
    assert json.loads(stored.data or b"") == {
        "model": "fraud",
        "reason": "manual",
        "urgent": False,
        "cause_event_id": None,
    }
    deliveries = queue.deliveries(event_pk=stored.pk)
    assert [(d.trigger, d.subscriber, d.status) for d in deliveries] == [
        ("on-training", "launcher", DeliveryStatus.PENDING),
        ("audit-all", "recorder", DeliveryStatus.PENDING),
    ]


def test_same_source_and_id_is_a_duplicate_not_a_second_delivery(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    event = training_requested()
    assert queue.append([(event, TARGETS)]) == [True]
    assert queue.append([(event, TARGETS)]) == [False]
    assert len(queue.events()) == 1
    assert len(queue.deliveries()) == 2


def test_pending_deliveries_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = EventQueue(path)
    events = [training_requested(f"m{i}") for i in range(3)]
    queue.append([(e, TARGETS[:1]) for e in events])
    queue.close()

    reopened = EventQueue(path)
    assert [e.id for e in reopened.events()] == [e["id"] for e in events]
    assert [d.status for d in reopened.deliveries()] == [DeliveryStatus.PENDING] * 3


def test_commits_are_durable_wal_with_full_sync(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    mode = queue._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = queue._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 is FULL


def test_due_order_retry_and_exclusion(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    first, second = training_requested("a"), training_requested("b")
    queue.append([(first, TARGETS[:1]), (second, TARGETS[:1])], now=10.0)
    due = queue.next_due("on-training", now=10.0)
    assert due is not None and queue.event(due.event_pk).id == first["id"]

    queue.mark_retry(due.id, next_attempt_at=50.0, error="HTTP 503", status_code=503)
    later = queue.next_due("on-training", now=10.0)
    assert later is not None and queue.event(later.event_pk).id == second["id"]
    assert queue.next_due("on-training", now=10.0, exclude=[later.id]) is None
    assert queue.next_due_at("on-training", exclude=[later.id]) == 50.0
    assert queue.next_due("other-trigger", now=100.0) is None

    [retried] = [d for d in queue.deliveries() if d.id == due.id]
    assert (retried.attempts, retried.last_status_code) == (1, 503)


def test_dead_letter_then_replay(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    queue.append([(training_requested(), TARGETS[:1])])
    delivery = queue.next_due("on-training", now=1e12)
    assert delivery is not None
    dead_id = queue.mark_dead(delivery.id, reason="not retryable: HTTP 400", status_code=400)

    [letter] = queue.dead_letters()
    assert (letter.id, letter.trigger, letter.attempts, letter.status_code) == (
        dead_id,
        "on-training",
        1,
        400,
    )
    assert queue.next_due("on-training", now=1e12) is None

    assert queue.replay(dead_id) == (ReplayOutcome.REQUEUED, delivery.id)
    assert queue.replay(dead_id) == (ReplayOutcome.ALREADY_PENDING, delivery.id)
    requeued = queue.next_due("on-training", now=1e12)
    assert requeued is not None and (requeued.id, requeued.attempts) == (delivery.id, 0)
    assert queue.replay(9999) == (ReplayOutcome.NOT_FOUND, None)


def test_ingress_rejection_keeps_the_raw_request_and_is_not_replayable(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    dead_id = queue.reject(
        "rejected at ingress: not a CloudEvent",
        raw_headers={"content-type": "text/plain"},
        raw_body=b"junk",
    )
    assert queue.dead_letter_body(dead_id) == ({"content-type": "text/plain"}, b"junk")
    assert queue.replay(dead_id) == (ReplayOutcome.NOT_DELIVERABLE, None)


def test_structured_json_data_is_stored_as_json_bytes() -> None:
    from cloudevents.http import CloudEvent

    attributes, data = event_row(CloudEvent({"type": "t", "source": "s"}, {"a": 1}))
    assert json.loads(data or b"") == {"a": 1}
    assert attributes["datacontenttype"] == "application/json"


def test_queue_file_is_plain_sqlite(tmp_path: Path) -> None:
    EventQueue(tmp_path / "q.db").append([(training_requested(), TARGETS)])
    with sqlite3.connect(tmp_path / "q.db") as db:
        assert db.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 2
