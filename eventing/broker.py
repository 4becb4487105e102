"""The local broker: Knative Eventing's Broker on one machine (``python -m eventing.broker``).

``POST /`` is the ingress (CloudEvents over HTTP: binary, structured, batched);
events are stored durably before the 202, then delivered to the Triggers whose
filters match. ``GET /events`` lists recent events (the CLI and the demo wait on
it), ``GET /dead-letters`` and ``POST /dead-letters/{id}/replay`` are the
operator's view of what could not be delivered, ``GET /metrics`` Prometheus's
(events accepted here; delivered, retried, dead-lettered and delivery times as
the dispatcher reports them with its acks). Every route but the probes
authenticates with a bearer token and authorizes by role.

This process is Knative's broker-ingress: it alone writes the queue (group
commit on its event loop, ``eventing.writer``) and starts and watches the
dispatcher process that delivers (``eventing.dispatcher``, Knative's
broker-filter), which sends its acks back to be written here. The HTTP layer
is thin: ``Broker`` holds the queue, the ingress and the dispatcher's handle;
the routes translate requests and errors only, and ``POST /`` is plain ASGI
(``eventing.ingress_endpoint``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from cloudevents.http import CloudEvent
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from eventing.delivery import DEFAULT_CONCURRENCY, DEFAULT_WINDOW, reply_from
from eventing.dispatcher import DispatcherConfig, DispatcherProcess
from eventing.ingress import Accepted, Ingress, accepted
from eventing.ingress_endpoint import IngressEndpoint
from eventing.queue import (
    Checkpointer,
    DeliveryUpdate,
    EventQueue,
    ReplayOutcome,
    StoredEvent,
    UpdateKind,
)
from eventing.topology_io import Endpoints, EventingTopology, load_topology_file
from eventing.writer import QueueWriter
from falaj.audit import Outcome
from falaj.auth import Action, Principal
from falaj.context import Context
from falaj.errors import AuthError, EventError, FalajError, ResidencyViolation
from falaj.events import REGION_EXTENSION
from falaj.logs import configure_logging, get_logger
from falaj.metrics import CONTENT_TYPE, Metrics
from falaj.residency import ResidencyPolicy
from falaj.settings import ENV_PREFIX, Settings
from falaj.tls import uvicorn_options

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BROKER = "default"
MAX_EVENTS_LIMIT = 1000
#: How often the broker checks that its dispatcher process is still there.
DISPATCHER_CHECK_S = 1.0


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    name: str = DEFAULT_BROKER
    db_path: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Deliveries in flight per Trigger whose subscriber declares no containerConcurrency.
    default_concurrency: int = DEFAULT_CONCURRENCY
    #: Deliveries each Trigger holds in memory; the rest wait in the queue.
    window: int = DEFAULT_WINDOW
    #: How long in-flight deliveries may finish after SIGTERM.
    shutdown_grace_s: float = 5.0


class Broker:
    """One broker: its queue and the thread that writes it, its ingress, its dispatcher process."""

    def __init__(
        self,
        ctx: Context,
        topology: EventingTopology,
        endpoints: Endpoints,
        config: BrokerConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        check_destinations(ctx.policy, topology)
        self.queue = EventQueue(config.db_path)
        self.triggers = topology.triggers_of(config.name)
        self.ingress = Ingress(self.queue, ctx.policy, self.triggers)
        self.dispatcher = DispatcherProcess(
            DispatcherConfig(
                db_path=config.db_path,
                broker=config.name,
                topology=topology,
                endpoints=endpoints.fixed,
                endpoints_path=endpoints.path,
                default_concurrency=config.default_concurrency,
                window=config.window,
                shutdown_grace_s=config.shutdown_grace_s,
            ),
            env=_child_env(ctx.settings),
            on_updates=self.record_outcomes,
            on_reply=self.accept_reply,
            metrics=self.metrics,
        )
        self.writer = QueueWriter(self.queue, on_appended=self.dispatcher.new_deliveries)
        self.checkpoints = Checkpointer(config.db_path, caught_up=self.writer.catch_up_threadsafe)
        self._watch: asyncio.Task[None] | None = None
        self.log = get_logger(component="broker", broker=config.name)

    async def start(self) -> None:
        known = {t.name for t in self.triggers}
        for orphan in sorted(self.queue.pending_triggers() - known):
            # Kept, not dropped: replaying them needs the Trigger back in the manifests.
            dead = await run_in_threadpool(
                self.queue.retire, orphan, reason=f"trigger {orphan!r} is no longer in the topology"
            )
            self.log.warning("retired deliveries of a removed trigger", trigger=orphan, n=len(dead))
            self.count_dead_letters(orphan, len(dead))
        if self.ctx.settings.bearer_token() is None:
            self.log.warning("no FALAJ_TOKEN: subscribers that authenticate will answer 401")
        self.writer.start()
        self.checkpoints.start()
        await self.dispatcher.start()
        self._watch = asyncio.create_task(self._keep_dispatching(), name="dispatcher-watch")
        self.log.info("broker started", triggers=sorted(known))

    async def _keep_dispatching(self) -> None:
        """Start the dispatcher again if it ends; stored events wait for it meanwhile."""
        while True:
            await asyncio.sleep(DISPATCHER_CHECK_S)
            if not self.dispatcher.alive():
                self.log.error("the dispatcher ended; starting it again", pid=self.dispatcher.pid)
                await self.dispatcher.stop(0.0)
                await self.dispatcher.start()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        # First the dispatcher, whose last outcomes the writer then commits.
        await self.dispatcher.stop(self.config.shutdown_grace_s)
        self.writer.stop()
        self.checkpoints.stop()
        self.queue.close()
        self.log.info("broker stopped")

    async def accept(self, events: Sequence[CloudEvent]) -> Accepted:
        """Check, route and durably store a batch (all or nothing); raises EventError."""
        routed = self.ingress.route(events)
        appended = await self.writer.append(routed)
        # Once per type, not per event: a batch is mostly of one. The types are
        # the catalog's (the ingress checked them), so a bounded label.
        stored = Counter(
            str(event["type"])
            for (event, _), new in zip(routed, appended.stored, strict=True)
            if new
        )
        for event_type, n in stored.items():
            self.metrics.broker_events_accepted.labels(self.config.name, event_type).inc(n)
        return accepted(routed, appended.stored)

    def count_dead_letters(self, trigger: str | None, n: int = 1) -> None:
        """Dead letters made here: at ingress (no Trigger), of a reply, of a retired Trigger."""
        self.metrics.broker_dead_letters.labels(self.config.name, trigger or "").inc(n)

    # -- what the dispatcher sends back --------------------------------------------

    def record_outcomes(self, updates: list[DeliveryUpdate]) -> None:
        """The dispatcher's acks: written with the next commit; dead letters audited after."""
        written = self.writer.submit_update(updates)
        if any(u.kind == UpdateKind.DEAD for u in updates):
            written.add_done_callback(self._audit_dead_letters)

    def _audit_dead_letters(self, written: asyncio.Future[dict[int, int]]) -> None:
        if not written.cancelled() and written.exception() is None:
            loop = asyncio.get_running_loop()
            for dead_letter in written.result().values():
                loop.run_in_executor(None, self._audit_dead, dead_letter)

    def _audit_dead(self, dead_letter_id: int) -> None:
        letter = self.queue.dead_letter(dead_letter_id)
        if letter is None:
            return
        self.ctx.audit.record(
            "event.dead-lettered",
            actor="broker",
            resource=f"event {letter.event_id} ({letter.event_type}) -> trigger/{letter.trigger}",
            region=letter.region or self.ctx.settings.region,
            outcome=Outcome.FAILED,
            details={"reason": letter.reason, "dead_letter": dead_letter_id},
        )

    async def accept_reply(self, trigger: str, headers: dict[str, str], body: bytes) -> None:
        """A subscriber's reply enters the broker like any published event."""
        where = f"reply from trigger {trigger!r} rejected"
        reply = reply_from(headers, body)
        if reply is None or reply.event is None:
            problem = "no CloudEvent in the response" if reply is None else reply.problem
            error = EventError("the reply is not a CloudEvent", problems=[problem or ""])
            await run_in_threadpool(
                self.ingress.quarantine, error, headers, body, where=where, trigger=trigger
            )
            self.count_dead_letters(trigger)
            return
        try:
            await self.accept([reply.event])
        except ResidencyViolation as exc:
            # Audited by the policy; the out-of-region data itself is not kept.
            await run_in_threadpool(self.queue.reject, f"{where}: {exc}", trigger=trigger)
            self.count_dead_letters(trigger)
        except EventError as exc:
            await run_in_threadpool(
                self.ingress.quarantine, exc, headers, body, where=where, trigger=trigger
            )
            self.count_dead_letters(trigger)


def _child_env(settings: Settings) -> dict[str, str]:
    """The dispatcher's environment: this process's, with these settings as FALAJ_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings.to_env())
    return env


def event_json(event: StoredEvent) -> dict[str, Any]:
    """One stored event as ``GET /events`` shows it."""
    payload: dict[str, Any] = {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.attributes.get("time"),
        "dataregion": event.attributes.get(REGION_EXTENSION),
        "received": datetime.fromtimestamp(event.received, UTC).isoformat(),
        "data": None,
    }
    if event.data is not None:
        try:
            payload["data"] = json.loads(event.data)
        except ValueError:
            payload["data_base64"] = base64.b64encode(event.data).decode()
    return payload


def parse_since(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"since: expected an ISO-8601 time such as 2026-01-31T12:00:00Z, got {raw!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_EVENTS_LIMIT:
        raise ValueError(
            f"limit: expected a whole number from 1 to {MAX_EVENTS_LIMIT}, got {raw!r}"
        )
    return int(raw)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def check_destinations(policy: ResidencyPolicy, topology: EventingTopology) -> None:
    """Refuse a topology that sends events out of region: before one is accepted, not after.

    Every absolute subscriber URI and dead-letter sink (a Broker's or a
    Trigger's) is a boundary (``Boundary.SINK``); a Service ref is in-cluster.
    """
    named: list[tuple[str, str]] = []
    for broker in topology.brokers.values():
        named.append(
            (f"Broker/{broker.name} deadLetterSink", broker.delivery.dead_letter_sink or "")
        )
    for trigger in topology.triggers:
        named.append((f"Trigger/{trigger.name} subscriber", trigger.subscriber_uri or ""))
        if trigger.delivery is not None:
            named.append(
                (f"Trigger/{trigger.name} deadLetterSink", trigger.delivery.dead_letter_sink or "")
            )
    for resource, url in named:
        if "://" in url:
            policy.check_destination(url, resource=resource)


def build_app(broker: Broker) -> ASGIApp:
    ctx = broker.ctx

    async def authorize(request: Request, action: Action) -> Principal:
        # Inline, not in a thread: a digest and a cached lookup cost less than the
        # hop. A refusal is audited in a thread.
        try:
            principal = ctx.tokens.authenticate(request.headers.get("authorization"))
            principal.require(action)
        except AuthError as exc:
            resource = f"broker/{broker.config.name} {request.method} {request.url.path}"
            await run_in_threadpool(ctx.record_refusal, exc, resource=resource)
            raise
        return principal

    async def list_events(request: Request) -> Response:
        await authorize(request, Action.READ)
        params = request.query_params
        try:
            since = parse_since(params.get("since"))
            count = parse_limit(params.get("limit"))
        except ValueError as exc:
            return _bad_request(str(exc))
        events = await run_in_threadpool(
            broker.queue.events, event_type=params.get("type") or None, since=since, limit=count
        )
        return JSONResponse([event_json(e) for e in events])

    async def list_dead_letters(request: Request) -> Response:
        await authorize(request, Action.READ)
        try:
            count = parse_limit(request.query_params.get("limit"))
        except ValueError as exc:
            return _bad_request(str(exc))
        letters = await run_in_threadpool(broker.queue.dead_letters, limit=count)
        return JSONResponse(
            [
                {
                    "id": d.id,
                    "event_id": d.event_id,
                    "event_type": d.event_type,
                    "trigger": d.trigger,
                    "subscriber": d.subscriber,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "status_code": d.status_code,
                    "created": datetime.fromtimestamp(d.created, UTC).isoformat(),
                    "replayed": (
                        datetime.fromtimestamp(d.replayed, UTC).isoformat() if d.replayed else None
                    ),
                    "replayable": d.delivery_id is not None,
                }
                for d in letters
            ]
        )

    async def replay(request: Request) -> Response:
        principal = await authorize(request, Action.REPLAY)
        raw_id = request.path_params["id"]
        if not raw_id.isdigit():
            return _bad_request(f"expected a dead letter id (a number), got {raw_id!r}")
        outcome, delivery = await run_in_threadpool(broker.queue.replay, int(raw_id))
        if outcome == ReplayOutcome.NOT_FOUND:
            return JSONResponse(
                {"error": f"no dead letter {raw_id}; GET /dead-letters lists them"},
                status_code=404,
            )
        if outcome == ReplayOutcome.NOT_DELIVERABLE:
            return JSONResponse(
                {
                    "error": f"dead letter {raw_id} was rejected at ingress and has no delivery "
                    "to replay; fix the event its reason describes and publish it again"
                },
                status_code=409,
            )
        if outcome in (ReplayOutcome.ALREADY_PENDING, ReplayOutcome.ALREADY_DONE):
            state = (
                "is pending delivery"
                if outcome == ReplayOutcome.ALREADY_PENDING
                else "was delivered"
            )
            return JSONResponse(
                {"error": f"dead letter {raw_id} was replayed already and {state}"},
                status_code=409,
            )
        trigger = await run_in_threadpool(broker.queue.trigger_of, delivery or 0)
        await run_in_threadpool(
            ctx.audit.record,
            "event.replayed",
            actor=principal.subject,
            role=str(principal.role),
            resource=f"dead-letter/{raw_id} -> trigger/{trigger}",
            region=ctx.settings.region,
            details={"delivery": delivery},
        )
        if delivery is not None:
            broker.dispatcher.replayed(delivery)
        return JSONResponse({"replayed": int(raw_id), "delivery": delivery}, status_code=202)

    async def metrics(request: Request) -> Response:
        await authorize(request, Action.READ)
        return Response(broker.metrics.exposition(), media_type=CONTENT_TYPE)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        try:
            await run_in_threadpool(broker.queue.ping)
        except Exception as exc:
            return JSONResponse({"status": f"queue unreadable: {exc}"}, status_code=503)
        if not broker.dispatcher.ready():
            return JSONResponse({"status": "dispatcher not running"}, status_code=503)
        if not broker.writer.alive():
            return JSONResponse({"status": "queue writer not running"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def on_auth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)  # audited in authorize
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=int(exc.status), headers=headers)

    async def on_falaj_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, FalajError)
        return JSONResponse({"error": str(exc)}, status_code=int(exc.status))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()

    app = Starlette(
        routes=[
            Route("/events", list_events, methods=["GET"]),
            Route("/dead-letters", list_dead_letters, methods=["GET"]),
            Route("/dead-letters/{id}/replay", replay, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={AuthError: on_auth_error, FalajError: on_falaj_error},
        lifespan=lifespan,
    )
    ingress = IngressEndpoint(
        ctx,
        broker.ingress,
        broker.accept,
        broker=broker.config.name,
        max_body_bytes=broker.config.max_body_bytes,
        on_dead_letter=broker.count_dead_letters,
    )

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/":
            if scope["method"] == "POST":
                await ingress(scope, receive, send)
                return
            await JSONResponse(
                {"error": "the ingress takes POST (CloudEvents over HTTP)"},
                status_code=405,
                headers={"Allow": "POST"},
            )(scope, receive, send)
            return
        await app(scope, receive, send)

    return route


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eventing.broker", description=__doc__)
    parser.add_argument("--topology", type=Path, help="JSON written by dump_topology")
    parser.add_argument("--endpoints", type=Path, help="JSON {service_name: url}")
    parser.add_argument("--broker", help="which Broker of the topology this process is")
    parser.add_argument("--db", type=Path, help="the queue (default <home>/broker/queue.db)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="deliveries in flight per Trigger whose subscriber declares no containerConcurrency",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("broker", settings.log_level)
        # One line per delivery at INFO would drown the broker's own log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        ctx = Context.create(settings, actor="broker")
        topology = (
            load_topology_file(args.topology)
            if args.topology
            else EventingTopology(brokers={}, triggers=())
        )
    except FalajError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 2
    name = args.broker or (
        next(iter(topology.brokers)) if len(topology.brokers) == 1 else DEFAULT_BROKER
    )
    broker = Broker(
        ctx,
        topology,
        Endpoints(path=args.endpoints),
        BrokerConfig(
            name=name,
            db_path=args.db or ctx.paths.broker / "queue.db",
            max_body_bytes=args.max_body_bytes,
            default_concurrency=args.concurrency,
        ),
        Metrics.for_process(),
    )
    config = uvicorn.Config(
        build_app(broker),
        host=settings.host,
        port=settings.broker_port,
        log_config=None,
        access_log=False,
        # Requests in flight at SIGTERM get this long; then lifespan stops the dispatcher.
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    # What start-up made lives as long as the process: keep the collector off it.
    gc.freeze()
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
