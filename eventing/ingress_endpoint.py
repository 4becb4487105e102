"""``POST /``, the broker's ingress, as a plain ASGI app.

Every event comes through here, so this route skips Starlette's request
objects, routing and middleware, which were ~40% of the ingress process's
time under load (py-spy, benchmarks/broker.py); the broker's other routes
stay Starlette routes. What it does is the same: authenticate and authorize,
refuse a body over the limit (413), read the events (400 with every problem,
kept as a dead letter, and counted as one), store them durably and answer 202.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from cloudevents.http import CloudEvent
from starlette.concurrency import run_in_threadpool

from eventing.ingress import Accepted, Ingress, events_from_http
from falaj.audit import Outcome
from falaj.auth import PUBLISHING, Principal, action_to_publish
from falaj.context import Context
from falaj.errors import AuthError, EventError, FalajError, PermissionDenied
from falaj.logs import get_logger

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Accept = Callable[[Sequence[CloudEvent]], Awaitable[Accepted]]
#: Told of each dead letter the ingress makes (with no Trigger: None).
DeadLetterCounter = Callable[[str | None], None]

#: An answer: status, JSON body, extra headers.
Answer = tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]


class BodyTooLarge(Exception):
    """Raised while reading a body that goes over the limit."""


class IngressEndpoint:
    def __init__(
        self,
        ctx: Context,
        ingress: Ingress,
        accept: Accept,
        *,
        broker: str,
        max_body_bytes: int,
        on_dead_letter: DeadLetterCounter | None = None,
    ) -> None:
        self.ctx = ctx
        self.ingress = ingress
        self.accept = accept
        self.broker = broker
        self.limit = max_body_bytes
        self.on_dead_letter = on_dead_letter
        self.log = get_logger(component="broker", broker=broker)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, payload, extra = await self._answer(scope, headers, receive)
        except Exception:
            # Starlette's ServerErrorMiddleware, for this route: a bug is a 500, logged.
            self.log.exception("ingress failed")
            status, payload, extra = 500, {"error": "internal error; see the broker's log"}, []
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Answer:
        try:
            # Inline, not in a thread: a digest and a cached lookup cost less than the hop.
            principal = self.ctx.tokens.authenticate(headers.get("authorization"))
            # Before the body is read: a role that may publish nothing is refused
            # at once; each event's own action is checked once they are parsed.
            principal.require_any(PUBLISHING)
        except AuthError as exc:
            return await self._refuse_caller(scope, exc)
        try:
            body = await self._read_body(headers, receive)
        except BodyTooLarge:
            return (
                413,
                {
                    "error": f"the body is over the broker's limit of {self.limit} bytes; send "
                    "smaller batches, or put large data in storage and send its location"
                },
                [],
            )
        try:
            events = events_from_http(headers, body)
        except EventError as exc:
            return await self._refuse(exc, principal, headers, body)
        try:
            # All or nothing: one event the caller may not publish refuses the request.
            for event in events:
                event_type = str(event["type"])
                principal.require(action_to_publish(event_type), what=f" ({event_type})")
        except PermissionDenied as exc:
            return await self._refuse_caller(scope, exc)
        try:
            stored = await self.accept(events)
        except EventError as exc:
            return await self._refuse(exc, principal, headers, body)
        except FalajError as exc:  # a residency refusal, audited by the policy
            return int(exc.status), {"error": str(exc)}, []
        return 202, {"accepted": list(stored.ids), "duplicates": list(stored.duplicates)}, []

    async def _refuse_caller(self, scope: Scope, exc: AuthError) -> Answer:
        resource = f"broker/{self.broker} {scope['method']} {scope['path']}"
        await run_in_threadpool(self.ctx.record_refusal, exc, resource=resource)
        extra = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else []
        return int(exc.status), {"error": str(exc)}, extra

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        """The body, refused as soon as it is known to be over the limit."""
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise BodyTooLarge
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise BodyTooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _refuse(
        self, exc: EventError, principal: Principal, headers: dict[str, str], body: bytes
    ) -> Answer:
        """400, and the request kept as a dead letter with every problem found."""
        dead_letter = await run_in_threadpool(self.ingress.quarantine, exc, headers, body)
        if self.on_dead_letter is not None:
            self.on_dead_letter(None)
        await run_in_threadpool(
            self.ctx.audit.record,
            "event.rejected",
            actor=principal.subject,
            role=str(principal.role),
            resource=f"broker/{self.broker}",
            region=self.ctx.settings.region,
            outcome=Outcome.REFUSED,
            details={"reason": str(exc), "dead_letter": dead_letter},
        )
        return (
            400,
            {"error": str(exc), "problems": exc.problems, "dead_letter": dead_letter},
            [],
        )
