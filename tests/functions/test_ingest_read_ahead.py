"""ReadAhead hands over chunks in order, an error in its place, and stops with its caller."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from functions.ingest.read_ahead import ReadAhead


class Source:
    """A generator of chunks that records how far it got and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.produced: list[int] = []
        self.closed = False
        self.threads: set[str] = set()

    def chunks(self) -> Iterator[int]:
        try:
            for index in range(self.count):
                self.threads.add(threading.current_thread().name)
                if index == self.fail_at:
                    raise ValueError(f"chunk {index} cannot be parsed")
                self.produced.append(index)
                yield index
        finally:
            self.closed = True


def test_every_chunk_comes_in_order_read_on_another_thread() -> None:
    source = Source(50)
    with ReadAhead(source.chunks()) as ahead:
        assert list(ahead) == list(range(50))
    assert source.threads == {"ingest-read-ahead"}
    assert source.closed


def test_no_chunk_is_no_item() -> None:
    with ReadAhead(Source(0).chunks()) as ahead:
        assert list(ahead) == []


def test_the_readers_error_comes_after_the_chunks_before_it() -> None:
    source = Source(10, fail_at=4)
    got = []
    with (
        pytest.raises(ValueError, match="chunk 4 cannot be parsed"),
        ReadAhead(source.chunks()) as ahead,
    ):
        for chunk in ahead:
            got.append(chunk)
    assert got == [0, 1, 2, 3]


def test_a_caller_that_stops_early_stops_the_reader_and_closes_it() -> None:
    source = Source(1_000)
    with (
        pytest.raises(RuntimeError, match="validation failed"),
        ReadAhead(source.chunks()) as ahead,
    ):
        for chunk in ahead:
            if chunk == 2:
                raise RuntimeError("validation failed")
    # At most the chunk waiting and the one being read when the caller stopped.
    assert source.produced[:3] == [0, 1, 2] and len(source.produced) <= 5
    assert source.closed
    assert not [t for t in threading.enumerate() if t.name == "ingest-read-ahead"]
