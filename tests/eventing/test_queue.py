from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from eventing.queue import (
    DeliveryStatus,
    DeliveryUpdate,
    EventQueue,
    ReplayOutcome,
    Target,
    event_row,
)
from tests.eventing.conftest import training_requested

TARGETS = [Target("on-training", "launcher"), Target("audit-all", "recorder")]


def test_event_and_its_deliveries_are_stored_together(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    event = training_requested()
    appended = queue.append([(event, TARGETS)], now=100.0)
    assert appended.stored == [True]
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
    # The append hands back the same deliveries, with the event as stored.
    assert [(p.id, p.trigger, p.due_at) for p in appended.deliveries] == [
        (d.id, d.trigger, 100.0) for d in deliveries
    ]
    assert all(p.event["id"] == event["id"] for p in appended.deliveries)


def test_same_source_and_id_is_a_duplicate_not_a_second_delivery(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    event = training_requested()
    assert queue.append([(event, TARGETS)]).stored == [True]
    duplicate = queue.append([(event, TARGETS)])
    assert (duplicate.stored, duplicate.deliveries) == ([False], [])
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


def test_pending_reads_a_triggers_deliveries_in_id_order_after_a_cursor(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    events = [training_requested(f"m{i}") for i in range(5)]
    queue.append([(e, TARGETS) for e in events], now=10.0)
    first = queue.pending("on-training", after_id=0, limit=2)
    assert [p.event["id"] for p in first] == [e["id"] for e in events[:2]]
    rest = queue.pending("on-training", after_id=first[-1].id, limit=10)
    assert [p.event["id"] for p in rest] == [e["id"] for e in events[2:]]
    assert {p.trigger for p in first + rest} == {"on-training"}

    queue.update([DeliveryUpdate.done(rest[0].id, 200)])
    again = queue.pending("on-training", after_id=first[-1].id, limit=10)
    assert [p.id for p in again] == [p.id for p in rest[1:]]  # done leaves the pending set


def test_updates_in_one_commit_apply_in_order(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    queue.append([(training_requested(), TARGETS[:1])])
    [pending] = queue.pending("on-training", after_id=0, limit=1)
    dead = queue.update(
        [
            DeliveryUpdate.defer(pending.id, next_attempt_at=5.0, error="no endpoint yet"),
            DeliveryUpdate.retry(
                pending.id, next_attempt_at=9.0, error="HTTP 503", status_code=503
            ),
            DeliveryUpdate.done(pending.id, 202),
        ]
    )
    assert dead == {}
    [delivery] = queue.deliveries()
    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        DeliveryStatus.DONE,
        2,  # the deferral sent nothing, so it counts no attempt
        None,
    )
    assert delivery.last_status_code == 202


def test_dead_letter_then_replay(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    queue.append([(training_requested(), TARGETS[:1])])
    [delivery] = queue.pending("on-training", after_id=0, limit=1)
    dead = queue.update(
        [DeliveryUpdate.dead(delivery.id, reason="not retryable: HTTP 400", status_code=400)]
    )
    dead_id = dead[delivery.id]

    [letter] = queue.dead_letters()
    assert (letter.id, letter.trigger, letter.attempts, letter.status_code) == (
        dead_id,
        "on-training",
        1,
        400,
    )
    assert queue.pending("on-training", after_id=0, limit=1) == []
    assert queue.pending_delivery(delivery.id) is None

    assert queue.replay(dead_id) == (ReplayOutcome.REQUEUED, delivery.id)
    assert queue.replay(dead_id) == (ReplayOutcome.ALREADY_PENDING, delivery.id)
    requeued = queue.pending_delivery(delivery.id)
    assert requeued is not None and (requeued.id, requeued.attempts) == (delivery.id, 0)
    assert queue.replay(9999) == (ReplayOutcome.NOT_FOUND, None)


def test_retiring_a_removed_trigger_dead_letters_without_counting_attempts(
    tmp_path: Path,
) -> None:
    queue = EventQueue(tmp_path / "q.db")
    queue.append([(training_requested(f"m{i}"), TARGETS) for i in range(2)])
    assert queue.pending_triggers() == {"on-training", "audit-all"}
    retired = queue.retire("audit-all", reason="trigger 'audit-all' is no longer in the topology")
    assert len(retired) == 2
    assert queue.pending_triggers() == {"on-training"}
    assert {(d.trigger, d.attempts) for d in queue.dead_letters()} == {("audit-all", 0)}


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


def test_commits_never_checkpoint_and_a_checkpoint_between_them_starts_the_wal_over(
    tmp_path: Path,
) -> None:
    queue = EventQueue(tmp_path / "q.db")
    assert queue._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(40):
        queue.append([(training_requested(f"m{i}"), TARGETS)])
    frames, copied = queue.checkpoint()
    assert frames >= 40 and copied == frames
    queue.append([(training_requested("after"), TARGETS)])
    # The WAL started over: it holds the last commit's frames, not all of them.
    frames_after, _ = queue.checkpoint()
    assert 0 < frames_after < frames / 10
