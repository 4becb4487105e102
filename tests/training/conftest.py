"""Fixtures of the training tests: a broker stand-in that records events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.training.event_sink import EventSink


@pytest.fixture
def event_sink() -> Iterator[EventSink]:
    sink = EventSink().start()
    try:
        yield sink
    finally:
        sink.stop()
