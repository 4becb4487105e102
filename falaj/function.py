"""The lifecycle of a Falaj function, and its adapter to functions-framework.

A function is a class with an explicit lifecycle (``start``, ``handle``,
``stop``), in the manner of Knative's func templates. ``entrypoint`` turns one
into the module-level CloudEvent handler that ``functions-framework --target``
serves. functions-framework owns the process's ``main``, so the entrypoint
reads the settings once, when functions-framework imports the module.

Per request, the adapter authenticates the caller, parses the event against the
catalog and the residency policy, skips a duplicate (source, id), then hands it
to ``handle``. Errors become 4xx with a JSON body that says what was wrong, so
the broker retries only what a retry can fix.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from falaj.auth import Action
from falaj.context import Context
from falaj.errors import AuthError, EventError, FalajError, ResidencyViolation
from falaj.events import EventData, EventType, ParsedEvent, make_event, parse_event
from falaj.idempotency import IdempotencyKeys
from falaj.logs import configure_logging, get_logger
from falaj.publisher import EventPublisher
from falaj.settings import Settings


class CloudEventFunction(ABC):
    """A function that consumes catalog events and may emit new ones."""

    #: The Knative Service name; also the actor in audit entries.
    name: str
    #: The event types this function accepts; anything else is a 400.
    accepts: frozenset[EventType]

    def __init__(self) -> None:
        self._ctx: Context | None = None
        self._publisher: EventPublisher | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ctx

    def start(self, ctx: Context) -> None:
        self._ctx = ctx
        self._publisher = EventPublisher.from_context(ctx)
        self.on_start()

    def on_start(self) -> None:
        """Open stores; called once by ``start``."""

    @abstractmethod
    def handle(self, event: ParsedEvent) -> None:
        """Do the work for one event; raise a ``FalajError`` to refuse it."""

    def emit(self, event_type: EventType, data: EventData, *, subject: str | None = None) -> None:
        if self._publisher is None:
            raise FalajError(f"function {self.name} emitted before start()")
        self._publisher.publish(
            make_event(event_type, data, region=self.ctx.settings.region, subject=subject)
        )

    def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


class FunctionRuntime:
    """Wraps one started function for functions-framework: auth, parse, dedup."""

    def __init__(self, function: CloudEventFunction, ctx: Context) -> None:
        self.function = function
        self.ctx = ctx
        self.keys = IdempotencyKeys(ctx.paths.state / function.name / "idempotency.db")
        # functions-framework may serve requests on several threads; one
        # function instance handles one event at a time.
        self._lock = threading.Lock()
        self.log = get_logger(function=function.name)

    def __call__(self, event: CloudEvent, authorization: str | None) -> tuple[int, dict[str, Any]]:
        try:
            self.ctx.admit(
                authorization, Action.PUBLISH_EVENT, resource=f"function/{self.function.name}"
            )
            parsed = parse_event(event, self.ctx.policy)
            if parsed.type not in self.function.accepts:
                raise EventError(
                    f"{self.function.name} accepts "
                    + ", ".join(sorted(self.function.accepts))
                    + f"; got {parsed.type} (check the Trigger's filter)"
                )
            with self._lock, self.keys.once(parsed.source, parsed.id) as fresh:
                if fresh is None:
                    self.log.info("duplicate", event_id=parsed.id, event_source=parsed.source)
                    return 200, {"status": "duplicate", "id": parsed.id}
                self.function.handle(parsed)
            return 200, {"status": "handled", "id": parsed.id}
        except AuthError as exc:  # audited by admit
            return int(exc.status), {"error": str(exc)}
        except ResidencyViolation as exc:
            return int(exc.status), {"error": str(exc)}
        except EventError as exc:
            return int(exc.status), {"error": str(exc), "problems": exc.problems}
        except FalajError as exc:
            self.log.error("refused", error=str(exc), error_type=type(exc).__name__)
            return int(exc.status), {"error": str(exc)}


def entrypoint(
    factory: Callable[[], CloudEventFunction], environ: dict[str, str] | None = None
) -> Callable[[CloudEvent], Any]:
    """Build the functions-framework target for a function class."""
    settings = Settings.from_env(environ if environ is not None else dict(os.environ))
    function = factory()
    configure_logging(function.name, settings.log_level)
    ctx = Context.create(settings, actor=function.name)
    function.start(ctx)
    runtime = FunctionRuntime(function, ctx)

    @functions_framework.cloud_event
    def handle(event: CloudEvent) -> None:
        status, body = runtime(event, flask.request.headers.get("Authorization"))
        if status >= 300:
            # functions-framework ignores a cloud_event function's return value
            # and answers 200; aborting with a response is how a status escapes.
            flask.abort(flask.make_response(flask.jsonify(body), status))

    return handle
