"""The broker's dispatcher process, Knative's broker-filter: it delivers what the ingress stored.

The broker (``eventing.broker``, Knative's broker-ingress) takes events in and
stores them; this process, started and watched by it, delivers them. They are
two processes, as in Knative, because under load each needs most of a core
and one Python process gets one (the GIL).

The broker owns the queue: it alone writes it, so nobody waits on SQLite's
write lock (whose busy handler sleeps 1 to 100 ms at a time). This process
only reads (WAL readers never block the writer) and acknowledges, like a
queue consumer: what came of each delivery, and each reply a subscriber
sent, go back to the broker, which commits them with the next new events.

Two pipes between them. Broker to dispatcher, one line a notice:

* ``n TRIGGER ...``: a commit created deliveries for these Triggers (``n *``: for any);
* ``r ID``: a dead letter's delivery ID was replayed and is pending again.

Dispatcher to broker, frames of a 4-byte length and a JSON object:

* ``{"u": [[id, kind, status, error, next_attempt_at, attempted], ...],
  "m": {trigger: [delivered, retried, dead, [seconds, ...]]}}``: outcomes, and
  what the broker's ``/metrics`` counts of the attempts behind them;
* ``{"r": {"trigger", "headers", "body" (base64)}}``: a reply to take in;
* ``{"ready": true}``: deliveries run.

The counts ride with the outcomes, rather than this process serving metrics
of its own: Prometheus scrapes one port (the broker's), the counters live in
the broker, so a dispatcher the broker starts again resets none of them, and
a count is handed over in the same frame as the outcome it counts.

End of file on the notice pipe means the broker is gone (even after
``kill -9``): this process then stops at once; what was in flight is still
pending in the queue, and the next dispatcher sends it. A notice lost on the
way only delays: an idle lane looks at the queue every second on its own.

One dispatcher per queue: it holds an exclusive lock on
``<queue>.dispatcher.lock`` for its whole life, so a broker restarted after a
crash starts a dispatcher that waits for the old one to be gone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import gc
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from eventing.delivery import DEFAULT_CONCURRENCY, DEFAULT_WINDOW, Dispatcher, Reply
from eventing.queue import DeliveryUpdate, EventQueue, PendingDelivery, UpdateKind
from eventing.topology_io import Endpoints, EventingTopology
from falaj.context import Context
from falaj.errors import FalajError
from falaj.logs import configure_logging, get_logger
from falaj.metrics import Metrics
from falaj.settings import PROJECT_ROOT, Settings
from falaj.tls import client_verify
from falaj.topology_files import topology_from_json, topology_json

ALL_TRIGGERS = "*"
#: A frame on the acks pipe: a big-endian length, then that many bytes of JSON.
FRAME_HEADER = ">I"
FRAME_HEADER_SIZE = struct.calcsize(FRAME_HEADER)


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    """What the broker hands its dispatcher (as JSON in a file next to the queue)."""

    db_path: Path
    broker: str
    topology: EventingTopology
    #: Fixed service URLs, and the endpoints file that ``falaj up`` keeps current.
    endpoints: Mapping[str, str]
    endpoints_path: Path | None
    default_concurrency: int = DEFAULT_CONCURRENCY
    window: int = DEFAULT_WINDOW
    shutdown_grace_s: float = 5.0

    def to_json(self) -> dict[str, Any]:
        return {
            "db_path": str(self.db_path),
            "broker": self.broker,
            "topology": topology_json(
                self.topology.brokers.values(),
                self.topology.triggers,
                self.topology.container_concurrency,
            ),
            "endpoints": dict(self.endpoints),
            "endpoints_path": str(self.endpoints_path) if self.endpoints_path else None,
            "default_concurrency": self.default_concurrency,
            "window": self.window,
            "shutdown_grace_s": self.shutdown_grace_s,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> DispatcherConfig:
        try:
            return cls(
                db_path=Path(raw["db_path"]),
                broker=str(raw["broker"]),
                topology=topology_from_json(raw["topology"], f"{where}: topology"),
                endpoints={str(k): str(v) for k, v in raw["endpoints"].items()},
                endpoints_path=Path(raw["endpoints_path"]) if raw["endpoints_path"] else None,
                default_concurrency=int(raw["default_concurrency"]),
                window=int(raw["window"]),
                shutdown_grace_s=float(raw["shutdown_grace_s"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FalajError(
                f"{where}: not a dispatcher config ({type(exc).__name__}: {exc}); the broker "
                "writes it, so start the broker rather than this module"
            ) from None


@dataclass
class TriggerTally:
    """One Trigger's attempts since the last frame: what came of them, how long each took."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, kind: UpdateKind, seconds: float) -> None:
        if kind == UpdateKind.DONE:
            self.delivered += 1
        elif kind == UpdateKind.RETRY:
            self.retried += 1
        elif kind == UpdateKind.DEAD:
            self.dead += 1
        self.seconds.append(round(seconds, 6))

    def to_json(self) -> list[Any]:
        return [self.delivered, self.retried, self.dead, self.seconds]

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> TriggerTally:
        delivered, retried, dead, seconds = raw
        return cls(int(delivered), int(retried), int(dead), [float(s) for s in seconds])


def count_attempts(metrics: Metrics, broker: str, tallies: Mapping[str, TriggerTally]) -> None:
    """Add the dispatcher's tallies to the broker's metrics."""
    for trigger, tally in tallies.items():
        if tally.delivered:
            metrics.broker_events_delivered.labels(broker, trigger).inc(tally.delivered)
        if tally.retried:
            metrics.broker_delivery_retries.labels(broker, trigger).inc(tally.retried)
        if tally.dead:
            metrics.broker_dead_letters.labels(broker, trigger).inc(tally.dead)
        if tally.seconds:
            histogram = metrics.broker_delivery_seconds.labels(broker, trigger)
            for seconds in tally.seconds:
                histogram.observe(seconds)


# -- the broker's side ---------------------------------------------------------------


UpdatesHandler = Callable[[list[DeliveryUpdate]], None]
RawReplyHandler = Callable[[str, dict[str, str], bytes], Coroutine[Any, Any, None]]


def _frame(message: Mapping[str, Any]) -> bytes:
    payload = orjson.dumps(message)
    return struct.pack(FRAME_HEADER, len(payload)) + payload


def _update_row(update: DeliveryUpdate) -> list[Any]:
    return [
        update.delivery_id,
        str(update.kind),
        update.status_code,
        update.error,
        update.next_attempt_at,
        update.attempted,
    ]


def _update_of(row: Sequence[Any]) -> DeliveryUpdate:
    delivery_id, kind, status_code, error, next_attempt_at, attempted = row
    return DeliveryUpdate(
        int(delivery_id),
        UpdateKind(kind),
        status_code=status_code,
        error=error,
        next_attempt_at=next_attempt_at,
        attempted=bool(attempted),
    )


class _Acks(asyncio.Protocol):
    """The broker's end of the dispatcher's pipe: frames in, handlers called in order."""

    def __init__(self, handle: Callable[[dict[str, Any]], None]) -> None:
        self.handle = handle
        self.buffer = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= FRAME_HEADER_SIZE:
            (size,) = struct.unpack_from(FRAME_HEADER, self.buffer)
            if len(self.buffer) < FRAME_HEADER_SIZE + size:
                return
            payload = bytes(self.buffer[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + size])
            del self.buffer[: FRAME_HEADER_SIZE + size]
            self.handle(orjson.loads(payload))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class DispatcherProcess:
    """The broker's handle on its dispatcher: start it, tell it what changed, take its acks."""

    def __init__(
        self,
        config: DispatcherConfig,
        env: Mapping[str, str],
        *,
        on_updates: UpdatesHandler,
        on_reply: RawReplyHandler,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.env = dict(env)
        self.on_updates = on_updates
        self.on_reply = on_reply
        self.metrics = metrics if metrics is not None else Metrics()
        self.config_path = config.db_path.with_name(config.db_path.name + ".dispatcher.json")
        self._popen: subprocess.Popen[bytes] | None = None
        self._control: int | None = None
        self._acks: _Acks | None = None
        self._ready = False
        self._replies: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        #: A notice could not be written (the pipe was full): the next one says "all".
        self._missed = False
        self.log = get_logger(component="broker", broker=config.broker)

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    async def start(self) -> None:
        self.config_path.write_text(json.dumps(self.config.to_json()))
        control_read, control_write = os.pipe()
        acks_read, acks_write = os.pipe()
        os.set_blocking(control_write, False)
        self._ready = False
        self._popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventing.dispatcher",
                f"--config={self.config_path}",
                f"--control-fd={control_read}",
                f"--acks-fd={acks_write}",
            ],
            env=self.env,
            cwd=PROJECT_ROOT,
            pass_fds=(control_read, acks_write),
        )
        os.close(control_read)
        os.close(acks_write)
        with self._lock:
            self._control, self._missed = control_write, False
        loop = asyncio.get_running_loop()
        _, self._acks = await loop.connect_read_pipe(
            lambda: _Acks(self._handle), os.fdopen(acks_read, "rb", buffering=0)
        )
        self.log.info("dispatcher started", pid=self._popen.pid)

    def _handle(self, message: dict[str, Any]) -> None:
        if "u" in message:
            self.on_updates([_update_of(row) for row in message["u"]])
            tallies = message.get("m") or {}
            count_attempts(
                self.metrics,
                self.config.broker,
                {str(t): TriggerTally.from_json(raw) for t, raw in tallies.items()},
            )
        elif "r" in message:
            reply = message["r"]
            task = asyncio.create_task(
                self.on_reply(
                    str(reply["trigger"]), dict(reply["headers"]), base64.b64decode(reply["body"])
                )
            )
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)
        elif message.get("ready"):
            self._ready = True

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def ready(self) -> bool:
        return self.alive() and self._ready

    def new_deliveries(self, deliveries: Sequence[PendingDelivery]) -> None:
        """After a commit: which Triggers have something new."""
        self._send("n " + " ".join(sorted({d.trigger for d in deliveries})))

    def replayed(self, delivery_id: int) -> None:
        self._send(f"r {delivery_id}")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._control is None:
                return  # not started or stopped: a new dispatcher reads the queue anyway
            if self._missed and line.startswith("n "):
                line = f"n {ALL_TRIGGERS}"
            try:
                # One short write is atomic on a pipe; a full pipe means the
                # dispatcher is far behind and reading the queue already.
                os.write(self._control, (line + "\n").encode())
                self._missed = False
            except BlockingIOError:
                self._missed = True
            except BrokenPipeError:
                pass  # it has ended; the broker's watch starts another

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, the grace period for in-flight deliveries, then SIGKILL; by PID.

        Returns once every ack it sent has been handed to ``on_updates``.
        """
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(popen.wait, grace_s + 5)
            except subprocess.TimeoutExpired:
                popen.kill()
                await asyncio.to_thread(popen.wait)
        if self._acks is not None:
            # The pipe ends when the process does; what it sent is handled by then.
            await self._acks.closed
        if self._replies:
            await asyncio.gather(*self._replies, return_exceptions=True)
        with self._lock:
            if self._control is not None:
                os.close(self._control)
                self._control = None


# -- this process --------------------------------------------------------------------


class Outbox:
    """This process's end of the acks pipe: outcomes and replies to the broker, in order."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._writer: asyncio.StreamWriter | None = None
        #: Attempts since the last outcomes frame, by Trigger (sent with the next one).
        self._tallies: dict[str, TriggerTally] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop),
            os.fdopen(self.fd, "wb", buffering=0),
        )
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def _send(self, message: Mapping[str, Any]) -> None:
        assert self._writer is not None, "the outbox is not open"
        self._writer.write(_frame(message))
        await self._writer.drain()  # the broker reads slower than this writes: wait

    def attempted(self, trigger: str, kind: UpdateKind, seconds: float) -> None:
        """An attempt was sent (the dispatcher's ``on_attempt``): counted with its outcome."""
        tally = self._tallies.get(trigger)
        if tally is None:
            tally = self._tallies[trigger] = TriggerTally()
        tally.add(kind, seconds)

    async def record(self, updates: Sequence[DeliveryUpdate]) -> None:
        tallies, self._tallies = self._tallies, {}
        await self._send(
            {
                "u": [_update_row(u) for u in updates],
                "m": {trigger: tally.to_json() for trigger, tally in tallies.items()},
            }
        )

    async def reply(self, reply: Reply, trigger: str) -> None:
        await self._send(
            {
                "r": {
                    "trigger": trigger,
                    "headers": dict(reply.headers),
                    "body": base64.b64encode(reply.body).decode(),
                }
            }
        )

    async def ready(self) -> None:
        await self._send({"ready": True})

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.drain()
            self._writer.close()


def _hold_the_lock(db_path: Path) -> Any:
    """The one-dispatcher-per-queue lock; blocks while a previous dispatcher ends."""
    handle = open(db_path.with_name(db_path.name + ".dispatcher.lock"), "a")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _triggers(words: Iterable[str]) -> list[str] | None:
    names = list(words)
    return None if ALL_TRIGGERS in names else names


async def serve(config: DispatcherConfig, ctx: Context, control_fd: int, acks_fd: int) -> None:
    log = get_logger(component="broker.dispatcher", broker=config.broker)
    queue = EventQueue(config.db_path)
    outbox = Outbox(acks_fd)
    await outbox.open()
    triggers = config.topology.triggers_of(config.broker)
    dispatcher = Dispatcher(
        queue,
        outbox,
        config.topology,
        triggers,
        Endpoints(config.endpoints, path=config.endpoints_path),
        token=ctx.settings.bearer_token(),
        verify=client_verify(ctx.settings),
        on_reply=outbox.reply,
        on_attempt=outbox.attempted,
        default_concurrency=config.default_concurrency,
        window=config.window,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    orphaned = False
    pending = b""

    def on_control() -> None:
        nonlocal pending, orphaned
        try:
            chunk = os.read(control_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            orphaned = True  # the broker is gone
            loop.remove_reader(control_fd)
            stop.set()
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            kind, _, rest = line.decode().partition(" ")
            if kind == "n":
                dispatcher.notify_new(_triggers(rest.split()))
            elif kind == "r" and rest.isdigit():
                dispatcher.requeue(int(rest))
            else:
                log.warning("unknown notice from the broker", notice=line[:80])

    await dispatcher.start()
    os.set_blocking(control_fd, False)
    loop.add_reader(control_fd, on_control)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await outbox.ready()
    log.info("dispatcher started", triggers=sorted(t.name for t in triggers))
    try:
        await stop.wait()
    finally:
        # Orphaned: a new broker starts a new dispatcher, which waits for this
        # one's lock, so stop at once rather than finish what is in flight.
        await dispatcher.stop(0.0 if orphaned else config.shutdown_grace_s)
        if not orphaned:
            await outbox.close()
        queue.close()
        log.info("dispatcher stopped", orphaned=orphaned)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eventing.dispatcher", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--acks-fd", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("dispatcher", settings.log_level)
        config = DispatcherConfig.from_json(json.loads(args.config.read_text()), str(args.config))
        ctx = Context.create(settings, actor="broker")
    except (FalajError, OSError, ValueError) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    lock = _hold_the_lock(config.db_path)
    try:
        import uvloop

        # What start-up made lives as long as the process: keep the collector off it.
        gc.freeze()
        uvloop.run(serve(config, ctx, args.control_fd, args.acks_fd))
    finally:
        with contextlib.suppress(OSError):
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
