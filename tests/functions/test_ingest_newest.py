"""NewestRows keeps, of each entity's rows across chunks, the newest one."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.ingest.newest import NewestRows

T0 = datetime(2025, 1, 10, tzinfo=UTC)
UTC_NS = pa.timestamp("ns", tz="UTC")


def chunk(rows: list[tuple[str, int, int]]) -> pa.Table:
    """(entity, minutes after T0, value) rows, typed as ingest's good rows are."""
    return pa.table(
        {
            "card_id": pa.array([r[0] for r in rows], pa.string()),
            "event_timestamp": pa.array([T0 + timedelta(minutes=r[1]) for r in rows], UTC_NS),
            "value": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


def kept(newest: NewestRows) -> dict[str, int]:
    table = newest.table()
    assert table is not None
    entities = table.column("card_id").to_pylist()
    assert len(entities) == len(set(entities)), "an entity kept twice"
    return dict(zip(entities, table.column("value").to_pylist(), strict=True))


def test_the_newest_row_wins_whichever_chunk_it_came_in() -> None:
    newest = NewestRows("card_id", "event_timestamp")
    newest.add(chunk([("a", 5, 1), ("b", 1, 2), ("a", 2, 3)]))
    newest.add(chunk([("a", 3, 4), ("b", 9, 5), ("c", 0, 6)]))
    newest.add(chunk([]))
    assert kept(newest) == {"a": 1, "b": 5, "c": 6}


def test_of_equal_times_the_row_that_came_last_wins() -> None:
    newest = NewestRows("card_id", "event_timestamp")
    newest.add(chunk([("a", 5, 1), ("a", 5, 2)]))
    newest.add(chunk([("a", 5, 3)]))
    assert kept(newest) == {"a": 3}


def test_no_row_means_no_table() -> None:
    newest = NewestRows("card_id", "event_timestamp")
    newest.add(chunk([]))
    assert newest.table() is None


ROWS = st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(-3, 3)), min_size=0, max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows=ROWS, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_matches_the_last_row_of_each_entitys_latest_time(
    rows: list[tuple[str, int]], cuts: list[int]
) -> None:
    numbered = [(entity, minute, value) for value, (entity, minute) in enumerate(rows)]
    newest = NewestRows("card_id", "event_timestamp")
    edges = sorted({0, len(numbered), *(c for c in cuts if c <= len(numbered))})
    for start, stop in itertools.pairwise(edges):
        newest.add(chunk(numbered[start:stop]))
    expected: dict[str, tuple[int, int]] = {}
    for entity, minute, value in numbered:  # in arrival order: >= lets a later tie win
        if entity not in expected or minute >= expected[entity][0]:
            expected[entity] = (minute, value)
    if not numbered:
        assert newest.table() is None
        return
    assert kept(newest) == {entity: value for entity, (_, value) in expected.items()}
