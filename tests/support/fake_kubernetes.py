"""Just enough of the Kubernetes API for one collection of custom resources, over real HTTP.

No API server runs here. The platform's cluster paths use the real
``kubernetes`` client against this server in the same process: it records
every request, creates (POST), reads (GET) and replaces (PUT, with
``resourceVersion`` checked as the API server does) objects of one
collection, and answers NotFound as a Status naming the object. ``answer``,
when set, is what every request gets instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    body: Any


@dataclass
class Answer:
    code: int
    body: Any
    #: Echo the request's Authorization header back in a response header, as a
    #: careless proxy might: an error message must not repeat response headers.
    echo_authorization: bool = False


@dataclass
class FakeKubernetes:
    #: The collection's path, e.g. ``/apis/ray.io/v1/namespaces/falaj/rayjobs``.
    collection: str
    seen: list[Seen] = field(default_factory=list)
    #: The collection's objects by name, as stored.
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: When set, every request gets this answer instead.
    answer: Answer | None = None

    def handle(self, method: str, target: str, body: Any) -> Answer:
        url = urlsplit(target)
        self.seen.append(Seen(method, url.path, url.query, body))
        if self.answer is not None:
            return self.answer
        if method == "POST" and url.path == self.collection:
            stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
            self.objects[body["metadata"]["name"]] = stored
            return Answer(201, stored)
        name = url.path.removeprefix(self.collection + "/")
        if name not in self.objects:
            return Answer(404, self._not_found(name))
        if method == "GET":
            return Answer(200, self.objects[name])
        if method == "PUT":
            current = self.objects[name]["metadata"].get("resourceVersion")
            if body["metadata"].get("resourceVersion") != current:
                return Answer(409, {"kind": "Status", "reason": "Conflict", "code": 409})
            stored = {
                **body,
                "metadata": {**body["metadata"], "resourceVersion": str(int(current) + 1)},
            }
            self.objects[name] = stored
            return Answer(200, stored)
        return Answer(405, {"kind": "Status", "reason": "MethodNotAllowed", "code": 405})

    def _not_found(self, name: str) -> dict[str, Any]:
        plural = self.collection.rsplit("/", 1)[-1]
        group = self.collection.split("/")[2] if self.collection.startswith("/apis/") else ""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": f'{plural}.{group} "{name}" not found',
            "reason": "NotFound",
            "details": {"name": name, "group": group, "kind": plural},
            "code": 404,
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer("GET", None)

    def do_POST(self) -> None:
        self._answer("POST", self._body())

    def do_PUT(self) -> None:
        self._answer("PUT", self._body())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length))

    def _answer(self, method: str, body: Any) -> None:
        answer = self.server.fake.handle(method, self.path, body)
        data = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        self.send_response(answer.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if answer.echo_authorization:
            self.send_header("X-Echo", self.headers.get("Authorization", ""))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows what matters


class _Server(ThreadingHTTPServer):
    def __init__(self, fake: FakeKubernetes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextlib.contextmanager
def serving(fake: FakeKubernetes) -> Iterator[tuple[FakeKubernetes, str]]:
    """``fake`` on a local port, and its URL; the socket listens before the URL is handed out."""
    server = _Server(fake)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-kubernetes", daemon=True
    )
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
