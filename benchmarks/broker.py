"""The local broker against RabbitMQ: events/s end to end, delivery latency, memory.

The same workload both ways, in one run, each part in its own process:

- Falaj: producers POST inference-log events to the broker's ingress, which
  stores them durably (SQLite WAL, ``synchronous=FULL``: the 202 comes after
  the fsync) and delivers each one in binary mode, one HTTP request per
  event as Knative does, to a no-op subscriber that checks the broker's
  bearer token and answers 202.
- RabbitMQ (the peer): producers publish the same bodies as persistent
  messages to a durable queue with publisher confirms; a consumer in its own
  process takes them with manual acks.

Measured:

- ``events_per_s``: N events from the first send to the last one received.
  Producers send batches of B and wait for them to be durable before the
  next: CloudEvents batched mode and its 202 for us, B publishes and their
  confirms for RabbitMQ (its "publish in batches" confirm strategy).
- ``events_per_s_single``: one event per request (binary mode) against one
  publish awaiting its own confirm, with many producers at once.
- ``p50/p99_delivery_ms_at_1000eps``: one event every millisecond, open
  loop, after a warm-up of ``WARM_UP_S`` at that rate; latency from send to
  the subscriber (a send time rides along).
- ``peak_rss_mb``: the broker's peak resident memory (VmHWM), its two processes together.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from cloudevents.conversion import to_dict

from benchmarks.common import Row, percentile
from benchmarks.sink import SENT_EXTENSION
from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.events import EventType, InferenceLogged, make_event
from falaj.publisher import BATCH_CONTENT_TYPE
from falaj.runtime.processes import ManagedProcess, ReadyCheck, broker_argv, free_port, port_open
from falaj.settings import PROJECT_ROOT, Settings
from falaj.topology import BrokerSpec, TriggerSpec
from falaj.topology_files import dump_endpoints, dump_topology

HOST = "127.0.0.1"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Producers sending at once, and events per batch, in the batched run.
PRODUCERS = 4
BATCH = 100
#: Producers in the one-event-per-request run: enough to keep both servers busy.
SINGLE_PRODUCERS = 32
RATE_EPS = 1000
#: Seconds at RATE_EPS before latency is measured.
WARM_UP_S = 2.0


@dataclass(frozen=True)
class Sizes:
    events: int
    single_events: int
    latency_s: float


QUICK = Sizes(events=10_000, single_events=3_000, latency_s=3.0)
FULL = Sizes(events=60_000, single_events=15_000, latency_s=10.0)


@dataclass
class Measured:
    events_per_s: float
    events_per_s_single: float
    p50_ms: float
    p99_ms: float
    achieved_eps: float
    peak_rss_mb: float | None = None

    @classmethod
    def of(
        cls, batched: float, single: float, achieved: float, latencies: Sequence[float]
    ) -> Measured:
        return cls(
            events_per_s=batched,
            events_per_s_single=single,
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            achieved_eps=achieved,
        )


@dataclass(frozen=True)
class Workload:
    """Every request body of a run, made before it starts, so the phases allocate little."""

    #: Falaj's batched bodies, and the same events as (headers, body) for RabbitMQ.
    batch_bodies: list[bytes]
    batch_messages: list[list[tuple[dict[str, str], bytes]]]
    #: One event per request (binary mode) or per publish.
    singles: list[tuple[dict[str, str], bytes]]
    #: The paced events of the latency phase; the send time is added when sent.
    paced: list[tuple[dict[str, str], bytes]]


def workload(sizes: Sizes) -> Workload:
    paced = int((WARM_UP_S + sizes.latency_s) * RATE_EPS)
    events = _event_dicts(sizes.events + sizes.single_events + paced)
    batched = events[: sizes.events]
    return Workload(
        batch_bodies=[orjson.dumps(list(chunk)) for chunk in _chunks(batched, BATCH)],
        batch_messages=[[_binary(e) for e in chunk] for chunk in _chunks(batched, BATCH)],
        singles=[_binary(e) for e in events[sizes.events : sizes.events + sizes.single_events]],
        paced=[_binary(e) for e in events[sizes.events + sizes.single_events :]],
    )


def _event_dicts(n: int) -> list[dict[str, Any]]:
    """``n`` inference-log events, the broker's busiest type, about 600 bytes each."""
    template = InferenceLogged(
        inference_id="0",
        model="fraud",
        version=3,
        variant="stable",
        inputs={
            "amount": [912.5],
            "hour": [3.0],
            "distance_km": [840.0],
            "card_age_days": [12.0],
            "tx_count_24h": [9.0],
            "is_foreign": [1.0],
        },
        outputs=[0.93],
    )
    events = []
    for i in range(n):
        event = to_dict(
            make_event(
                EventType.INFERENCE_LOGGED,
                template.model_copy(update={"inference_id": str(i)}),
                region="me-central-1",
            )
        )
        events.append(event)
    return events


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _binary(event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    headers = {f"ce-{k}": str(v) for k, v in event.items() if k not in ("data", "datacontenttype")}
    headers["content-type"] = str(event.get("datacontenttype", "application/json"))
    return headers, orjson.dumps(event["data"])


async def _stats(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "stats") as response:
        result: dict[str, Any] = await response.json(content_type=None)
        return result


async def _wait_for(
    session: aiohttp.ClientSession, url: str, count: int, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await _stats(session, url)
        if stats["count"] >= count:
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the subscriber got {stats['count']} of {count} events in {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.05)  # polling the sink's counter, not synchronising the parts


def _rate(count: int, started_ns: int, stats: dict[str, Any]) -> float:
    return count / ((stats["last_ns"] - started_ns) / 1e9)


async def _open_loop(
    send: Callable[[int], Any], seconds: float, rate: float
) -> tuple[float, list[asyncio.Task[Any]]]:
    """Start ``send(i)`` every 1/rate s for ``seconds``, off the clock, not after answers."""
    total = int(seconds * rate)
    tasks = []
    started = time.perf_counter()
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    elapsed = time.perf_counter() - started
    return total / max(elapsed, 1e-9), tasks


async def _paced(
    session: aiohttp.ClientSession,
    sink: str,
    send: Callable[[int], Awaitable[None]],
    sizes: Sizes,
) -> tuple[float, list[float]]:
    """Send at ``RATE_EPS``: ``WARM_UP_S`` not measured, then ``sizes.latency_s`` measured.

    The warm-up lets what the throughput phases left behind settle (for the
    broker, checkpointing a burst's WAL; for RabbitMQ, its own), so the
    figure is the latency at that rate, not the tail of the burst before it.
    """
    warm = int(WARM_UP_S * RATE_EPS)
    await session.post(sink + "reset")
    _, tasks = await _open_loop(send, WARM_UP_S, RATE_EPS)
    await asyncio.gather(*tasks)
    await _wait_for(session, sink, len(tasks), timeout_s=60)
    await session.post(sink + "reset")

    async def measured(i: int) -> None:
        await send(warm + i)

    achieved, tasks = await _open_loop(measured, sizes.latency_s, RATE_EPS)
    await asyncio.gather(*tasks)
    stats = await _wait_for(session, sink, len(tasks), timeout_s=60)
    return achieved, list(stats["latencies_ms"])


# -- Falaj ----------------------------------------------------------------------------


async def _falaj_phases(
    ingress: str, sink: str, token: str, work: Workload, sizes: Sizes
) -> Measured:
    auth = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=SINGLE_PRODUCERS)
    async with aiohttp.ClientSession(connector=connector, headers=auth) as session:

        async def post(body: bytes, headers: dict[str, str]) -> None:
            async with session.post(ingress, data=body, headers=headers) as response:
                if response.status != 202:
                    raise RuntimeError(
                        f"ingress answered {response.status}: {await response.text()}"
                    )
                await response.read()

        # Batched: B events a request, PRODUCERS requests in flight.
        queue = iter(work.batch_bodies)
        started = time.time_ns()

        async def producer() -> None:
            for body in queue:
                await post(body, {"content-type": BATCH_CONTENT_TYPE})

        await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
        stats = await _wait_for(session, sink, sizes.events, timeout_s=120)
        batched = _rate(sizes.events, started, stats)

        # One event per request.
        await session.post(sink + "reset")
        pending = iter(work.singles)
        started = time.time_ns()

        async def single_producer() -> None:
            for headers, body in pending:
                await post(body, headers)

        await asyncio.gather(*(single_producer() for _ in range(SINGLE_PRODUCERS)))
        stats = await _wait_for(session, sink, sizes.single_events, timeout_s=120)
        single = _rate(sizes.single_events, started, stats)

        # Latency at 1,000 events/s.
        async def send_one(i: int) -> None:
            prepared, body = work.paced[i]
            headers = {**prepared, f"ce-{SENT_EXTENSION}": str(time.time_ns())}
            await post(body, headers)

        achieved, latencies = await _paced(session, sink, send_one, sizes)
    return Measured.of(batched, single, achieved, latencies)


def _peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process and its children (the broker's dispatcher)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0.0
    for each in (pid, *map(int, children)):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    if not total:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return total


def run_falaj(work: Path, prepared: Workload, sizes: Sizes) -> Measured:
    ports = {"broker": free_port(), "sink": free_port()}
    settings = Settings(home=work / "home", broker_port=ports["broker"])
    ctx = Context.create(settings, actor="benchmark")
    broker_token_file = ctx.paths.keys / "broker.token"
    write_token_file(broker_token_file, ctx.tokens.issue("broker", Role.SERVICE))
    producer_token = ctx.tokens.issue("producer", Role.SERVICE)
    dump_topology(
        [BrokerSpec(name="default")],
        [
            TriggerSpec(
                name="drift-window",
                broker="default",
                filters=({"exact": {"type": str(EventType.INFERENCE_LOGGED)}},),
                subscriber="sink",
            )
        ],
        work / "topology.json",
    )
    dump_endpoints({"sink": f"http://{HOST}:{ports['sink']}/"}, work / "endpoints.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(
        settings.model_copy(
            update={"token_file": broker_token_file, "log_level": "warning"}
        ).to_env()
    )
    sink = ManagedProcess(
        name="sink",
        argv=[
            sys.executable,
            "-m",
            "benchmarks.sink",
            "http",
            f"--port={ports['sink']}",
            f"--token-file={broker_token_file}",
        ],
        env=env,
        log_path=work / "sink.log",
        cwd=PROJECT_ROOT,
    )
    broker = ManagedProcess(
        name="broker",
        argv=broker_argv(work / "topology.json", work / "endpoints.json"),
        env=env,
        log_path=work / "broker.log",
        cwd=PROJECT_ROOT,
    )
    with ExitStack() as stack:
        for process in (sink, broker):
            process.start()
            stack.callback(process.stop)
        sink.wait_ready(ReadyCheck(HOST, ports["sink"], "/stats"))
        broker.wait_ready(ReadyCheck(HOST, ports["broker"], "/readyz"))
        measured = asyncio.run(
            _falaj_phases(
                f"http://{HOST}:{ports['broker']}/",
                f"http://{HOST}:{ports['sink']}/",
                producer_token,
                prepared,
                sizes,
            )
        )
        assert broker.pid is not None
        measured.peak_rss_mb = _peak_rss_mb(broker.pid)
    return measured


# -- RabbitMQ ----------------------------------------------------------------------------


async def _rabbitmq_phases(queue_name: str, sink: str, work: Workload, sizes: Sizes) -> Measured:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection, aiohttp.ClientSession() as session:

        def message(prepared: tuple[dict[str, str], bytes], sent: bool = False) -> aio_pika.Message:
            headers, body = prepared
            if sent:
                headers = {**headers, "sent": str(time.time_ns())}
            return aio_pika.Message(
                body,
                headers=dict(headers),
                content_type=headers["content-type"],
                message_id=headers["ce-id"],
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )

        async def channel() -> aio_pika.abc.AbstractChannel:
            return await connection.channel(publisher_confirms=True)

        # Batched confirms: B publishes in flight, then their confirms, then the next B.
        chunks = iter(work.batch_messages)
        channels = [await channel() for _ in range(PRODUCERS)]
        started = time.time_ns()

        async def producer(ch: aio_pika.abc.AbstractChannel) -> None:
            for chunk in chunks:
                await asyncio.gather(
                    *(
                        ch.default_exchange.publish(message(e), routing_key=queue_name)
                        for e in chunk
                    )
                )

        await asyncio.gather(*(producer(ch) for ch in channels))
        stats = await _wait_for(session, sink, sizes.events, timeout_s=120)
        batched = _rate(sizes.events, started, stats)

        # One publish awaiting its own confirm, many producers.
        await session.post(sink + "reset")
        singles = iter(work.singles)
        channels += [await channel() for _ in range(SINGLE_PRODUCERS - PRODUCERS)]
        started = time.time_ns()

        async def single_producer(ch: aio_pika.abc.AbstractChannel) -> None:
            for event in singles:
                await ch.default_exchange.publish(message(event), routing_key=queue_name)

        await asyncio.gather(*(single_producer(ch) for ch in channels))
        stats = await _wait_for(session, sink, sizes.single_events, timeout_s=120)
        single = _rate(sizes.single_events, started, stats)

        # Latency at 1,000 messages/s.
        async def send_one(i: int) -> None:
            ch = channels[i % len(channels)]
            await ch.default_exchange.publish(
                message(work.paced[i], sent=True), routing_key=queue_name
            )

        achieved, latencies = await _paced(session, sink, send_one, sizes)
    return Measured.of(batched, single, achieved, latencies)


async def _queue(queue_name: str, *, delete: bool) -> None:
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        if delete:
            await channel.queue_delete(queue_name)
        else:
            await channel.declare_queue(queue_name, durable=True)


def run_rabbitmq(work: Path, prepared: Workload, sizes: Sizes) -> Measured:
    queue_name = f"falaj-bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    asyncio.run(_queue(queue_name, delete=False))
    consumer = ManagedProcess(
        name="rabbitmq-consumer",
        argv=[
            sys.executable,
            "-m",
            "benchmarks.sink",
            "amqp",
            f"--port={port}",
            f"--queue={queue_name}",
            f"--url={RABBITMQ_URL}",
        ],
        env=dict(os.environ),
        log_path=work / "rabbitmq-consumer.log",
        cwd=PROJECT_ROOT,
    )
    try:
        consumer.start()
        consumer.wait_ready(ReadyCheck(HOST, port, "/stats"))
        return asyncio.run(_rabbitmq_phases(queue_name, f"http://{HOST}:{port}/", prepared, sizes))
    finally:
        consumer.stop()
        asyncio.run(_queue(queue_name, delete=True))


def run(quick: bool = False) -> list[Row]:
    sizes = QUICK if quick else FULL
    prepared = workload(sizes)
    # The prepared requests live for the whole run: without this, a full collection
    # over them pauses the producer between stamping a send time and sending,
    # and the latencies measured the producer's GC (up to 80 ms) for both peers.
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="falaj-bench-broker-") as tmp:
        ours = run_falaj(Path(tmp), prepared, sizes)
        peer: Measured | None = None
        if port_open(HOST, 5672):
            peer = run_rabbitmq(Path(tmp), prepared, sizes)
        else:
            print("RabbitMQ is not on 127.0.0.1:5672: no peer in this run", file=sys.stderr)

    def row(metric: str, value: float, unit: str, peer_value: float | None) -> Row:
        return Row(
            metric=metric,
            value=round(value, 3),
            unit=unit,
            peer="rabbitmq" if peer_value is not None else None,
            peer_value=None if peer_value is None else round(peer_value, 3),
        )

    def of_peer(name: str) -> float | None:
        return None if peer is None else float(getattr(peer, name))

    return [
        row("events_per_s", ours.events_per_s, "events/s", of_peer("events_per_s")),
        row(
            "events_per_s_single",
            ours.events_per_s_single,
            "events/s",
            of_peer("events_per_s_single"),
        ),
        row("p50_delivery_ms_at_1000eps", ours.p50_ms, "ms", of_peer("p50_ms")),
        row("p99_delivery_ms_at_1000eps", ours.p99_ms, "ms", of_peer("p99_ms")),
        row("offered_eps", ours.achieved_eps, "events/s", of_peer("achieved_eps")),
        row("peak_rss_mb", ours.peak_rss_mb or 0.0, "MB", None),
    ]
