"""Fixtures of the CLI tests: a stand-in for the platform's HTTP endpoints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.falaj.cli.stand_in import StandIn


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn().start()
    try:
        yield server
    finally:
        server.stop()
