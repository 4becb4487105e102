"""A stand-in for the platform's HTTP endpoints, and the token files the CLI reads.

The stand-in is a plain ``http.server`` in a thread of the test process: each
test says what each (method, path) answers; ``stop`` shuts it down and joins
the thread. No platform process is started.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from falaj.auth import Role

#: An answer: HTTP status and a JSON body, from the query string.
Answer = Callable[[dict[str, list[str]]], tuple[int, object]]


class StandIn:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Answer] = {}
        #: (method, path, Authorization header) of every request, in order.
        self.requests: list[tuple[str, str, str | None]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlsplit(self.path)
                stand_in.requests.append(
                    (self.command, url.path, self.headers.get("Authorization"))
                )
                answer = stand_in.routes.get((self.command, url.path))
                status, body = (
                    (404, {"error": "no route"}) if answer is None else answer(parse_qs(url.query))
                )
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: 'stop' waits for the loop to notice, and tests stop it often.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, method: str, path: str, answer: Answer) -> None:
        self.routes[(method, path)] = answer

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def write_token(home: Path, role: Role) -> str:
    """A token file as 'falaj up' writes it; its value is only ever sent, never printed."""
    token = f"token-of-{role}"
    (home / "keys").mkdir(parents=True, exist_ok=True)
    (home / "keys" / f"{role}.token").write_text(token + "\n")
    return token
