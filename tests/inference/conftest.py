"""Shared by the inference tests: a small fraud model in the real registry, and servers."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cloudevents.http import CloudEvent, from_http

from falaj.auth import Role
from falaj.context import Context
from falaj.publisher import BATCH_CONTENT_TYPE
from falaj.runtime.processes import ManagedProcess, ReadyCheck, free_port
from falaj.settings import PROJECT_ROOT, Settings
from inference.server import server_args, server_argv
from tests.support.models import (  # noqa: F401  (re-exported to the inference tests)
    FEATURES,
    WEIGHTS_V1,
    WEIGHTS_V2,
    fraud_onnx,
    register,
    sample_rows,
)


@pytest.fixture
def caller_token(ctx: Context) -> str:
    """A data scientist's token: what a predictor admits for inference and metadata."""
    return ctx.tokens.issue("caller", Role.DATA_SCIENTIST)


@pytest.fixture
def caller_headers(caller_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {caller_token}"}


@pytest.fixture
def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a platform process: this one's, minus FALAJ_*, plus the settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    return {**base, **settings.to_env()}


Starter = Callable[..., tuple[ManagedProcess, int]]
#: Like Starter, with the gRPC port as well: (process, http_port, grpc_port).
GrpcStarter = Callable[..., tuple[ManagedProcess, int, int]]


@pytest.fixture
def start_predictor_grpc(ctx: Context, child_env: dict[str, str]) -> Iterator[GrpcStarter]:
    """Start ``inference.server`` for a version; every process started is stopped by PID."""
    started: list[ManagedProcess] = []

    def start(version: int) -> tuple[ManagedProcess, int, int]:
        port, grpc_port = free_port(), free_port()
        process = ManagedProcess(
            name=f"predictor-fraud-{version}",
            argv=server_argv(*server_args("fraud", version, port, grpc_port)),
            env=child_env,
            log_path=ctx.paths.logs / f"predictor-fraud-{version}.log",
            cwd=PROJECT_ROOT,
            grace_s=10.0,
        ).start()
        started.append(process)

        # Live is enough to know load() is over: kserve serves only after it.
        process.wait_ready(ReadyCheck("127.0.0.1", port, "/v2/health/live"), timeout_s=60.0)
        # kserve starts its gRPC server beside the REST one, not before it.
        process.wait_ready(ReadyCheck("127.0.0.1", grpc_port), timeout_s=30.0)
        return process, port, grpc_port

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_predictor(start_predictor_grpc: GrpcStarter) -> Starter:
    """Start ``inference.server`` for a version: (process, http_port)."""

    def start(version: int) -> tuple[ManagedProcess, int]:
        process, port, _ = start_predictor_grpc(version)
        return process, port

    return start


STRUCTURED = {"content-type": "application/cloudevents+json"}


class BrokerStandIn:
    """A tiny HTTP receiver in place of the broker ingress: keeps every CloudEvent posted."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-type") == BATCH_CONTENT_TYPE:
                    events = [
                        from_http(STRUCTURED, json.dumps(item).encode())
                        for item in json.loads(body)
                    ]
                else:
                    events = [from_http(dict(self.headers), body)]
                with receiver._lock:
                    for event in events:
                        receiver.events.append(event)
                        receiver.authorizations.append(self.headers.get("authorization"))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output for failures

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def received(self) -> list[CloudEvent]:
        with self._lock:
            return list(self.events)

    def start(self) -> BrokerStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def broker() -> Iterator[BrokerStandIn]:
    receiver = BrokerStandIn().start()
    yield receiver
    receiver.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.02)  # polling a condition with a deadline
