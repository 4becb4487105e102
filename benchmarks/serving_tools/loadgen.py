"""A lean HTTP/1.1 load generator for the serving benchmark, run in its own process.

    python benchmarks/serving_tools/loadgen.py < spec.json > result.json

It sends one pre-built request (bytes, headers included) over keep-alive
connections: no client library builds, encodes or decodes anything per request.
Responses are parsed by ``httptools`` (the C parser uvicorn uses) on ``uvloop``,
and only the status is kept. On this 2-core machine the client shares the CPU
with the servers it measures, so it must cost as little as possible: this
client spends roughly 30-50 us of CPU per request, and its CPU seconds are
reported (``client_cpu_s``) so that share can be seen.

Two modes (``spec["mode"]``):

- ``closed``: ``concurrency`` connections, each sending its next request as
  soon as the last one is answered (max throughput); ``rps`` counts the answers
  that came in the measured window.
- ``open``: requests are scheduled at a fixed ``rate`` whatever the answers do,
  on as many connections as are needed (``connections`` are opened up front,
  more when all are busy). Latency runs from the *scheduled* send time, so a
  stall delays every request scheduled behind it instead of hiding them
  (no coordinated omission). A thread sleeps until each scheduled time and
  hands the send to the event loop (whose own timers round to whole
  milliseconds); ``lateness_ms`` is how late each send still went out: the
  client's own share of that latency.

The first ``warmup_s`` seconds are sent but not counted. The result is one JSON
object on stdout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
from collections import deque
from typing import Any, cast

import httptools
import uvloop


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(exc or ConnectionError("the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(str(exc)))

    def send(self, payload: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    def __init__(self, host: str, port: int, payload: bytes) -> None:
        self.host, self.port, self.payload = host, port, payload
        self.errors = 0
        self.connections: list[Connection] = []

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(Connection, self.host, self.port)
        self.connections.append(connection)
        return connection

    async def request(self, connection: Connection) -> tuple[Connection, bool]:
        """Send once; (the connection to use next, whether the answer was a 200)."""
        try:
            status = await connection.send(self.payload)
        except ConnectionError:
            self.errors += 1
            return await self.connect(), False
        if status != 200:
            self.errors += 1
        if connection.lost:
            return await self.connect(), status == 200
        return connection, status == 200

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


async def closed_loop(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    connections = [await client.connect() for _ in range(int(spec["concurrency"]))]
    now = time.perf_counter()
    window_start = now + float(spec["warmup_s"])
    window_end = window_start + float(spec["duration_s"])
    latencies: list[float] = []
    cpu: list[float] = []
    answered = [0]

    async def worker(connection: Connection) -> None:
        while True:
            started = time.perf_counter()
            if started >= window_end:
                return
            if started >= window_start and not cpu:
                cpu.append(time.process_time())
            connection, ok = await client.request(connection)
            done = time.perf_counter()
            answered[0] += ok
            if ok and window_start <= done < window_end:
                latencies.append((done - started) * 1e3)

    await asyncio.gather(*(worker(c) for c in connections))
    return {
        "latencies_ms": latencies,
        "completed": len(latencies),
        "answered": answered[0],
        "window_s": window_end - window_start,
        "rps": len(latencies) / (window_end - window_start),
        "client_cpu_s": time.process_time() - (cpu[0] if cpu else 0.0),
    }


async def open_loop(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    rate = float(spec["rate"])
    warmup = int(rate * float(spec["warmup_s"]))
    total = warmup + int(rate * float(spec["duration_s"]))
    idle: deque[Connection] = deque()
    for _ in range(int(spec.get("connections", 16))):
        idle.append(await client.connect())
    latencies: list[float] = []
    lateness: list[float] = []
    cpu: list[float] = []

    async def one(index: int, scheduled: float) -> None:
        sent = time.perf_counter()
        connection = idle.pop() if idle else await client.connect()
        connection, ok = await client.request(connection)
        done = time.perf_counter()
        idle.append(connection)
        if index >= warmup and ok:
            latencies.append((done - scheduled) * 1e3)
            lateness.append((sent - scheduled) * 1e3)

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    scheduled_all = loop.create_future()

    def launch(index: int, scheduled: float) -> None:
        if index == warmup:
            cpu.append(time.process_time())
        task = loop.create_task(one(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def ticker() -> None:
        # The loop's timers round to whole milliseconds; time.sleep does not.
        # This thread only sleeps and wakes the loop up, one call per request.
        start = time.perf_counter() + 0.01
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, index, scheduled)
        loop.call_soon_threadsafe(scheduled_all.set_result, None)

    thread = threading.Thread(target=ticker, name="ticker", daemon=True)
    thread.start()
    await scheduled_all
    thread.join()
    while tasks:
        await asyncio.gather(*list(tasks))
    measured = total - warmup
    return {
        "latencies_ms": latencies,
        "lateness_ms": lateness,
        "completed": len(latencies),
        "scheduled": measured,
        "window_s": measured / rate,
        "connections": len(client.connections),
        "client_cpu_s": time.process_time() - (cpu[0] if cpu else 0.0),
    }


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    client = Client(spec["host"], int(spec["port"]), base64.b64decode(spec["request_b64"]))
    try:
        if spec["mode"] == "closed":
            result = await closed_loop(client, spec)
        elif spec["mode"] == "open":
            result = await open_loop(client, spec)
        else:
            raise SystemExit(f"mode: expected closed or open, got {spec['mode']!r}")
    finally:
        client.close()
    result["errors"] = client.errors
    return result


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(json.load(sys.stdin)))))
