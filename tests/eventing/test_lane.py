from __future__ import annotations

from pathlib import Path

import pytest

from eventing.lane import Lane
from eventing.queue import EventQueue, PendingDelivery, Target
from falaj.topology import DeliverySpec, TriggerSpec
from tests.eventing.conftest import training_requested

TRIGGER = TriggerSpec(name="all", broker="default", subscriber="recorder")


def lane(window: int = 4, concurrency: int = 2) -> Lane:
    return Lane(trigger=TRIGGER, delivery=DeliverySpec(), concurrency=concurrency, window=window)


def pending(delivery_id: int, due_at: float = 0.0) -> PendingDelivery:
    return PendingDelivery(
        id=delivery_id,
        trigger="all",
        subscriber="recorder",
        event=training_requested(),
        attempts=0,
        due_at=due_at,
    )


def drain(held: Lane, now: float = 1.0) -> list[int]:
    taken = []
    while (delivery := held.take(now)) is not None:
        taken.append(delivery.id)
        held.finished()
    return taken


def test_a_new_lane_reads_the_queue_first() -> None:
    fresh = lane()
    assert fresh.overflow  # after a (re)start everything pending is in the queue only
    after, limit = fresh.begin_refill()
    assert (after, limit) == (0, 4)
    fresh.refilled([pending(3), pending(7)], limit)
    assert not fresh.overflow and fresh.cursor == 7
    assert drain(fresh) == [3, 7]


def test_a_notice_of_new_deliveries_makes_the_lane_read_above_its_cursor() -> None:
    held = lane()
    held.refilled([pending(1)], limit=4)
    assert drain(held) == [1]
    held.mark_new()
    assert held.overflow and held.wake.is_set()
    after, limit = held.begin_refill()
    assert after == 1
    held.refilled([pending(2)], limit)
    assert not held.overflow
    assert drain(held) == [2]


def test_a_full_window_keeps_the_rest_in_the_queue() -> None:
    held = lane(window=3)
    after, limit = held.begin_refill()
    held.refilled([pending(1), pending(2), pending(3)], limit)
    assert held.overflow, "a refill that filled the window may have left more behind"
    assert held.room() == 0
    assert drain(held) == [1, 2, 3]
    after, limit = held.begin_refill()
    assert (after, limit) == (3, 3)
    held.refilled([pending(4)], limit)
    assert not held.overflow
    assert drain(held) == [4]


def test_a_notice_during_a_refill_keeps_the_lane_reading_the_queue() -> None:
    held = lane(window=4)
    after, limit = held.begin_refill()
    # Committed after the refill's read began: the read may not have seen it.
    held.mark_new()
    held.refilled([pending(2)], limit)
    assert held.overflow, "a refill that may have missed a commit must not end overflow"
    after, limit = held.begin_refill()
    assert after == 2
    held.refilled([pending(5)], limit)
    assert not held.overflow
    assert drain(held) == [2, 5]


def test_ids_already_taken_in_are_never_taken_twice() -> None:
    held = lane()
    held.refilled([pending(1), pending(2)], limit=4)
    held.refilled([pending(1), pending(3)], limit=4)  # 1 came back from a second read
    assert drain(held) == [1, 2, 3]


def test_retries_wait_for_their_time_and_go_before_new_deliveries() -> None:
    held = lane()
    held.refilled([pending(2, due_at=1.0)], limit=4)
    held.schedule(pending(1, due_at=5.0))
    assert drain(held, now=1.0) == [2]
    assert held.wait_s(1.0, idle_s=10.0) == pytest.approx(4.0)
    assert drain(held, now=5.0) == [1]


def test_a_replayed_dead_letter_comes_back_unless_a_refill_will_read_it() -> None:
    held = lane()
    held.refilled([pending(1), pending(2)], limit=4)
    assert drain(held) == [1, 2]
    held.requeue(pending(1))
    assert drain(held) == [1]
    held.requeue(pending(9))  # above the cursor: not read yet, so the lane reads the queue
    assert drain(held) == [] and held.overflow


def test_a_paused_lane_hands_out_nothing_until_its_time() -> None:
    held = lane()
    held.refilled([pending(1)], limit=4)
    first = held.take(1.0)
    assert first is not None
    held.pause(first, until=2.0)
    held.finished()
    assert held.take(1.5) is None
    assert held.wait_s(1.5, idle_s=10.0) == pytest.approx(0.5)
    assert drain(held, now=2.0) == [1]


def test_room_counts_what_is_ready_waiting_and_in_flight() -> None:
    held = lane(window=4)
    held.refilled([pending(1), pending(2), pending(3, due_at=9.0)], limit=4)
    assert held.take(1.0) is not None
    assert (held.held(), held.room()) == (3, 1)


def test_window_smaller_than_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="concurrency <= window"):
        lane(window=2, concurrency=3)


def test_deliveries_read_back_from_the_queue_match_what_was_appended(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db")
    appended = queue.append([(training_requested(), [Target("all", "recorder")])], now=3.0)
    [read] = queue.pending("all", after_id=0, limit=10)
    [handed] = appended.deliveries
    assert (read.id, read.subscriber, read.due_at) == (handed.id, handed.subscriber, 3.0)
    assert read.event.get_attributes() == handed.event.get_attributes()
    assert read.event.get_data() == handed.event.get_data()
