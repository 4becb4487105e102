"""A stand-in for the broker ingress: records every CloudEvent posted to it.

Served by uvicorn on a free port in a thread of the test process; ``stop``
ends it and joins the thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from cloudevents.http import CloudEvent, from_http
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from falaj.runtime.processes import free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    event: CloudEvent
    authorization: str | None

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def data(self) -> dict[str, Any]:
        data = self.event.get_data()
        return data if isinstance(data, dict) else {}

    @property
    def job_id(self) -> str | None:
        data = self.data
        # model.registered names the job that trained it as training_job_id.
        job_id = data.get("job_id") or data.get("training_job_id")
        return None if job_id is None else str(job_id)


class EventSink:
    def __init__(self) -> None:
        self.port = free_port(HOST)
        self._received: list[Received] = []
        self._changed = threading.Condition()
        app = Starlette(routes=[Route("/", self._receive, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=HOST, port=self.port, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, name="event-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> EventSink:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the event sink did not start on port {self.port}")
            time.sleep(0.01)  # polling the server's started flag
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)

    async def _receive(self, request: Request) -> Response:
        event = from_http(dict(request.headers), await request.body())
        with self._changed:
            self._received.append(Received(event, request.headers.get("authorization")))
            self._changed.notify_all()
        return Response(status_code=202)

    def received(self) -> list[Received]:
        with self._changed:
            return list(self._received)

    def wait_for(self, *types: str, job_id: str, timeout_s: float = 30.0) -> list[Received]:
        """The events of ``job_id`` once every one of ``types`` has arrived."""

        def of_job() -> list[Received]:
            return [r for r in self._received if r.job_id == job_id]

        def complete() -> bool:
            return set(types) <= {r.type for r in of_job()}

        with self._changed:
            if not self._changed.wait_for(complete, timeout=timeout_s):
                seen = [(r.type, r.job_id) for r in self._received]
                raise AssertionError(f"expected {types} for {job_id} in {timeout_s} s; got {seen}")
            return of_job()
