"""The local broker: Knative Eventing's Broker on one machine (``python -m eventing.broker``).

``POST /`` is the ingress (CloudEvents over HTTP: binary, structured, batched);
events are stored durably before the 202, then delivered to the Triggers whose
filters match. ``GET /events`` lists recent events (the CLI and the demo wait on
it), ``GET /dead-letters`` and ``POST /dead-letters/{id}/replay`` are the
operator's view of what could not be delivered. Every route but the probes
authenticates with a bearer token and authorizes by role.

The HTTP layer is thin: ``Broker`` holds the queue, the ingress and the
dispatcher; the routes translate requests and errors only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import sys
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

from eventing.delivery import Dispatcher, Reply
from eventing.ingress import Accepted, Ingress, events_from_http
from eventing.queue import EventQueue, ReplayOutcome, StoredEvent
from eventing.topology_io import Endpoints, EventingTopology, load_topology_file
from falaj.audit import Outcome
from falaj.auth import Action, Principal
from falaj.context import Context
from falaj.errors import AuthError, EventError, FalajError, PermissionDenied, ResidencyViolation
from falaj.events import REGION_EXTENSION
from falaj.logs import configure_logging, get_logger
from falaj.settings import Settings

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BROKER = "default"
MAX_EVENTS_LIMIT = 1000


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    name: str = DEFAULT_BROKER
    db_path: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    lane_concurrency: int = 1
    #: How long in-flight deliveries may finish after SIGTERM.
    shutdown_grace_s: float = 5.0


class Broker:
    """One broker: its queue, its ingress and its dispatcher."""

    def __init__(
        self,
        ctx: Context,
        topology: EventingTopology,
        endpoints: Endpoints,
        config: BrokerConfig,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.queue = EventQueue(config.db_path)
        self.triggers = topology.triggers_of(config.name)
        self.ingress = Ingress(self.queue, ctx.policy, self.triggers)
        self.dispatcher = Dispatcher(
            self.queue,
            topology,
            self.triggers,
            endpoints,
            token=ctx.settings.bearer_token(),
            on_reply=self.accept_reply,
            audit=ctx.audit,
            region=ctx.settings.region,
            lane_concurrency=config.lane_concurrency,
        )
        self.log = get_logger(component="broker", broker=config.name)

    def start(self) -> None:
        known = {t.name for t in self.triggers}
        for orphan in sorted(self.queue.pending_triggers() - known):
            # Kept, not dropped: replaying them needs the Trigger back in the manifests.
            dead = self.queue.retire(
                orphan, reason=f"trigger {orphan!r} is no longer in the topology"
            )
            self.log.warning("retired deliveries of a removed trigger", trigger=orphan, n=len(dead))
        if self.ctx.settings.bearer_token() is None:
            self.log.warning("no FALAJ_TOKEN: subscribers that authenticate will answer 401")
        self.dispatcher.start()
        self.log.info("broker started", triggers=sorted(known))

    def stop(self) -> None:
        self.dispatcher.stop(self.config.shutdown_grace_s)
        self.queue.close()
        self.log.info("broker stopped")

    def accept(self, events: Sequence[CloudEvent]) -> Accepted:
        accepted = self.ingress.accept(events)
        self.dispatcher.notify(accepted.triggers)
        return accepted

    def accept_reply(self, reply: Reply, trigger: str) -> None:
        """A subscriber's reply enters the broker like any published event."""
        where = f"reply from trigger {trigger!r} rejected"
        if reply.event is None:
            error = EventError("the reply is not a CloudEvent", problems=[reply.problem or ""])
            self.ingress.quarantine(error, reply.headers, reply.body, where=where, trigger=trigger)
            return
        try:
            self.accept([reply.event])
        except ResidencyViolation as exc:
            # Audited by the policy; the out-of-region data itself is not kept.
            self.queue.reject(f"{where}: {exc}", trigger=trigger)
        except EventError as exc:
            self.ingress.quarantine(exc, reply.headers, reply.body, where=where, trigger=trigger)


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


def build_app(broker: Broker) -> Starlette:
    ctx = broker.ctx
    limit = broker.config.max_body_bytes

    def audit_refusal(request: Request, actor: str, role: str, reason: str) -> None:
        ctx.audit.record(
            "auth.refused",
            actor=actor,
            role=role,
            resource=f"broker/{broker.config.name} {request.method} {request.url.path}",
            region=ctx.settings.region,
            outcome=Outcome.REFUSED,
            details={"reason": reason},
        )

    async def authorize(request: Request, action: Action) -> Principal:
        principal = await run_in_threadpool(
            ctx.tokens.authenticate, request.headers.get("authorization")
        )
        try:
            principal.require(action)
        except PermissionDenied as exc:
            await run_in_threadpool(
                audit_refusal, request, principal.subject, str(principal.role), str(exc)
            )
            raise
        return principal

    async def read_body(request: Request) -> bytes | None:
        """The body, or None as soon as it is known to be over the limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def ingress(request: Request) -> Response:
        principal = await authorize(request, Action.PUBLISH_EVENT)
        body = await read_body(request)
        if body is None:
            return JSONResponse(
                {
                    "error": f"the body is over the broker's limit of {limit} bytes; send "
                    "smaller batches, or put large data in storage and send its location"
                },
                status_code=413,
            )
        headers = dict(request.headers)
        try:
            events = events_from_http(headers, body)
            accepted = await run_in_threadpool(broker.accept, events)
        except EventError as exc:
            dead_letter = await run_in_threadpool(broker.ingress.quarantine, exc, headers, body)
            await run_in_threadpool(
                ctx.audit.record,
                "event.rejected",
                actor=principal.subject,
                role=str(principal.role),
                resource=f"broker/{broker.config.name}",
                region=ctx.settings.region,
                outcome=Outcome.REFUSED,
                details={"reason": str(exc), "dead_letter": dead_letter},
            )
            return JSONResponse(
                {"error": str(exc), "problems": exc.problems, "dead_letter": dead_letter},
                status_code=400,
            )
        return JSONResponse(
            {"accepted": list(accepted.ids), "duplicates": list(accepted.duplicates)},
            status_code=202,
        )

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
        broker.dispatcher.notify([trigger] if trigger else None)
        return JSONResponse({"replayed": int(raw_id), "delivery": delivery}, status_code=202)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        try:
            await run_in_threadpool(broker.queue.ping)
        except Exception as exc:
            return JSONResponse({"status": f"queue unreadable: {exc}"}, status_code=503)
        if not broker.dispatcher.alive():
            return JSONResponse({"status": "dispatcher not running"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def on_auth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthError)
        if not isinstance(exc, PermissionDenied):  # audited in authorize, with the caller
            await run_in_threadpool(audit_refusal, request, "unknown", "none", str(exc))
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=int(exc.status), headers=headers)

    async def on_falaj_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, FalajError)
        return JSONResponse({"error": str(exc)}, status_code=int(exc.status))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(broker.start)
        try:
            yield
        finally:
            await run_in_threadpool(broker.stop)

    return Starlette(
        routes=[
            Route("/", ingress, methods=["POST"]),
            Route("/events", list_events, methods=["GET"]),
            Route("/dead-letters", list_dead_letters, methods=["GET"]),
            Route("/dead-letters/{id}/replay", replay, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers={AuthError: on_auth_error, FalajError: on_falaj_error},
        lifespan=lifespan,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eventing.broker", description=__doc__)
    parser.add_argument("--topology", type=Path, help="JSON written by dump_topology")
    parser.add_argument("--endpoints", type=Path, help="JSON {service_name: url}")
    parser.add_argument("--broker", help="which Broker of the topology this process is")
    parser.add_argument("--db", type=Path, help="the queue (default <home>/broker/queue.db)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--lane-concurrency", type=int, default=1)
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
            lane_concurrency=args.lane_concurrency,
        ),
    )
    config = uvicorn.Config(
        build_app(broker),
        host=settings.host,
        port=settings.broker_port,
        log_config=None,
        access_log=False,
        # Requests in flight at SIGTERM get this long; then lifespan stops the dispatcher.
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
