"""Shared fixtures: isolated settings per test, and one Ray head per session.

Ray's fixed cost on 2 cores is ~20 s a job, so every test that needs Ray shares
the head started here; it is stopped by PID at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from falaj.context import Context
from falaj.manifest_schemas import SchemaStore
from falaj.runtime.processes import ManagedProcess, free_port
from falaj.runtime.ray_head import RayHeadConfig, issue_ray_token, start_ray_head
from falaj.settings import Settings
from tests.support.event_sink import EventSink
from tests.support.ray_jobs import RayHead


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a platform whose state lives in this test's temp dir."""
    return Settings(home=tmp_path / ".falaj")


@pytest.fixture
def ctx(settings: Settings) -> Context:
    return Context.create(settings, actor="test")


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """The shared Ray head, with token authentication as ``falaj up`` starts it."""
    host = "127.0.0.1"
    port = free_port(host)
    log_dir = tmp_path_factory.mktemp("ray")
    token_file = issue_ray_token(log_dir / "ray.token")
    head: ManagedProcess = start_ray_head(
        RayHeadConfig(host=host, dashboard_port=port, log_dir=log_dir, token_file=token_file),
        env=dict(os.environ),
    )
    try:
        yield RayHead(f"http://{host}:{port}", token_file)
    finally:
        head.stop()


@pytest.fixture(scope="session")
def schema_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> SchemaStore:
    # Converted schemas are kept in pytest's cache folder between runs (the
    # KServe and KubeRay CRDs cost seconds to parse); without the cache plugin,
    # in a session temp folder.
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("falaj-schemas") if cache is not None else tmp_path_factory.mktemp("s")
    return SchemaStore(cache_dir=Path(folder))


@pytest.fixture
def event_sink() -> Iterator[EventSink]:
    """A broker stand-in that records every event posted to it (training jobs publish there)."""
    sink = EventSink().start()
    try:
        yield sink
    finally:
        sink.stop()
