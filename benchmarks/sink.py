"""No-op subscribers for ``benchmarks.broker``, each in its own process.

``python -m benchmarks.sink http --port P --token-file F``: the Falaj side, a
raw ASGI app under uvicorn (httptools) that checks the broker's bearer token,
reads the event and answers 202; ``python -m benchmarks.sink amqp --port P
--queue Q``: the RabbitMQ side, an aio-pika consumer with manual acks.

Both count what they receive and, when the producer stamped a send time
(``ce-benchsent`` / the ``sent`` header, nanoseconds since the epoch), the
delivery latency. ``GET /stats`` reports, ``POST /reset`` starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SENT_EXTENSION = "benchsent"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Stats:
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    refused: int = 0

    def record(self, sent_ns: int | None) -> None:
        now = time.time_ns()
        if self.count == 0:
            self.first_ns = now
        self.count += 1
        self.last_ns = now
        if sent_ns:
            self.latencies_ms.append((now - sent_ns) / 1e6)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "count": self.count,
                "first_ns": self.first_ns,
                "last_ns": self.last_ns,
                "latencies_ms": self.latencies_ms,
                "refused": self.refused,
            }
        ).encode()


class HttpSink:
    """A subscriber that does nothing but authenticate, read and answer."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()
        self.stats = Stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        path = scope["path"]
        if path == "/stats":
            await _answer(send, 200, self.stats.to_json())
            return
        if path == "/reset":
            self.stats = Stats()
            await _answer(send, 200, b"{}")
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != self.expected:
            self.stats.refused += 1
            await _answer(send, 401, b"")
            return
        sent = headers.get(b"ce-" + SENT_EXTENSION.encode())
        self.stats.record(int(sent) if sent else None)
        await _answer(send, 202, b"")


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_http(port: int, token_file: Path) -> None:
    import uvicorn

    sink = HttpSink(token_file.read_text().strip())
    uvicorn.run(
        sink,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


async def consume_amqp(port: int, url: str, queue_name: str, prefetch: int) -> None:
    import aio_pika
    from aiohttp import web

    stats = Stats()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        sent = message.headers.get("sent")
        stats.record(int(sent) if isinstance(sent, int | str) else None)
        await message.ack()

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(queue_name, durable=True)
    await queue.consume(on_message)  # manual acks: no_ack defaults to False

    async def report(_: web.Request) -> web.Response:
        return web.Response(body=stats.to_json(), content_type="application/json")

    async def reset(_: web.Request) -> web.Response:
        nonlocal stats
        stats = Stats()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/stats", report)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink")
    parser.add_argument("mode", choices=["http", "amqp"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--queue")
    parser.add_argument("--prefetch", type=int, default=256)
    args = parser.parse_args(argv)
    gc.freeze()  # as the broker does: what start-up made stays out of the collector's way
    if args.mode == "http":
        if args.token_file is None:
            parser.error("http mode needs --token-file (the broker's token)")
        serve_http(args.port, args.token_file)
        return 0
    if not args.queue:
        parser.error("amqp mode needs --queue")
    import uvloop

    uvloop.run(consume_amqp(args.port, args.url, args.queue, args.prefetch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
