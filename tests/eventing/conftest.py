"""Fixtures for the broker: real HTTP servers on free ports, in threads of the test process.

A ``Subscriber`` is a tiny Starlette app under uvicorn that records what it
receives and answers with the statuses a test scripts; the broker under test
runs under uvicorn the same way, so every delivery crosses a real socket.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventing.broker import Broker, BrokerConfig, build_app
from eventing.topology_io import Endpoints, EventingTopology
from falaj.auth import Role
from falaj.context import Context
from falaj.events import EventType, TrainingReason, TrainingRequested, make_event
from falaj.runtime.processes import ManagedProcess, free_port
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BrokerSpec, DeliverySpec, TriggerSpec

HOST = "127.0.0.1"


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll a condition until it holds; fail the test with ``what`` when time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")


class ServerThread:
    """An ASGI app served by uvicorn on a free port, in a daemon thread."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port(HOST)
        config = uvicorn.Config(app, host=HOST, port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, what=f"uvicorn on port {self.port}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


#: A scripted answer that is no answer: the subscriber holds the request for ``hang_s``.
HANG = -1


@dataclass
class Subscriber:
    """A subscriber that records every request and answers as scripted."""

    received: list[Received] = field(default_factory=list)
    #: Statuses answered in order (or HANG); 200 once they run out.
    statuses: deque[int] = field(default_factory=deque)
    #: How long a HANG holds the request before answering 200.
    hang_s: float = 5.0
    #: Extra response headers per status (e.g. Retry-After on a 429).
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    #: Builds a reply event from a request, for 2xx answers.
    reply: Callable[[Received], CloudEvent | None] | None = None
    #: When set, requests wait for it before answering (a slow subscriber).
    gate: threading.Event | None = None
    server: ServerThread | None = None

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        record = Received(dict(request.headers), await request.body(), time.monotonic())
        self.received.append(record)
        if self.gate is not None:
            await run_in_threadpool(self.gate.wait, 20)
        status = self.statuses.popleft() if self.statuses else 200
        if status == HANG:
            # The behaviour under test: a subscriber slower than the delivery timeout.
            await asyncio.sleep(self.hang_s)
            status = 200
        if 200 <= status < 300 and self.reply is not None:
            event = self.reply(record)
            if event is not None:
                headers, body = to_binary(event)
                return Response(body, status_code=status, headers=headers)
        return Response(b"scripted answer", status_code=status, headers=self.headers.get(status))

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def ids(self) -> list[str]:
        return [r.headers.get("ce-id", "") for r in self.received]


@pytest.fixture
def make_subscriber() -> Iterator[Callable[[], Subscriber]]:
    started: list[Subscriber] = []

    def make() -> Subscriber:
        subscriber = Subscriber()
        subscriber.server = ServerThread(subscriber.app()).start()
        started.append(subscriber)
        return subscriber

    yield make
    for subscriber in started:
        if subscriber.gate is not None:
            subscriber.gate.set()
        assert subscriber.server is not None
        subscriber.server.stop()


@pytest.fixture
def service_token(ctx: Context) -> str:
    return ctx.tokens.issue("test", Role.SERVICE)


@pytest.fixture
def broker_ctx(settings: Settings, ctx: Context) -> Context:
    """The broker's own context: same home as the test's, with its own service token."""
    token = ctx.tokens.issue("broker", Role.SERVICE)
    return Context.create(settings.model_copy(update={"token": SecretStr(token)}), actor="broker")


@dataclass
class RunningBroker:
    broker: Broker
    server: ServerThread
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    def publish(self, event: CloudEvent) -> httpx.Response:
        headers, body = to_binary(event)
        return self.client.post("/", headers=headers, content=body)

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        params = {"type": event_type} if event_type else {}
        response = self.client.get("/events", params=params)
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()
        return events


BrokerFactory = Callable[..., RunningBroker]


@pytest.fixture
def start_broker(
    broker_ctx: Context, service_token: str, tmp_path: Path
) -> Iterator[BrokerFactory]:
    running: list[RunningBroker] = []

    def start(
        triggers: tuple[TriggerSpec, ...] = (),
        *,
        delivery: DeliverySpec | None = None,
        endpoints: dict[str, str] | None = None,
        endpoints_path: Path | None = None,
        max_body_bytes: int = 1024 * 1024,
        container_concurrency: dict[str, int] | None = None,
    ) -> RunningBroker:
        topology = EventingTopology(
            brokers={"default": BrokerSpec(name="default", delivery=delivery or DeliverySpec())},
            triggers=triggers,
            container_concurrency=container_concurrency or {},
        )
        broker = Broker(
            broker_ctx,
            topology,
            Endpoints(endpoints, path=endpoints_path),
            BrokerConfig(
                db_path=tmp_path / "queue.db", max_body_bytes=max_body_bytes, shutdown_grace_s=2
            ),
        )
        server = ServerThread(build_app(broker)).start()
        # Ready means the dispatcher process delivers too, not only the ingress.
        wait_until(
            lambda: httpx.get(server.url + "readyz").status_code == 200,
            timeout_s=30,
            what="the broker and its dispatcher to be ready",
        )
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {service_token}"}, timeout=10
        )
        started = RunningBroker(broker, server, client)
        running.append(started)
        return started

    yield start
    for started in running:
        started.client.close()
        started.server.stop()


def training_requested(model: str = "fraud", region: str = "me-central-1") -> CloudEvent:
    return make_event(
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model=model, reason=TrainingReason.MANUAL),
        region=region,
    )


def trigger(
    name: str,
    subscriber: str,
    *,
    event_type: str | None = None,
    delivery: DeliverySpec | None = None,
) -> TriggerSpec:
    return TriggerSpec(
        name=name,
        broker="default",
        filter_attributes={"type": event_type} if event_type else {},
        subscriber=subscriber,
        delivery=delivery,
    )


def broker_process(settings: Settings, tmp_path: Path, name: str) -> ManagedProcess:
    """``python -m eventing.broker`` on ``tmp_path``'s topology and endpoints files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(settings.to_env())
    return ManagedProcess(
        name=name,
        argv=[
            sys.executable,
            "-m",
            "eventing.broker",
            "--topology",
            str(tmp_path / "topology.json"),
            "--endpoints",
            str(tmp_path / "endpoints.json"),
        ],
        env=env,
        log_path=tmp_path / f"{name}.log",
        cwd=PROJECT_ROOT,
    )
