"""The lifecycle of a Falaj function, and its adapter to functions-framework.

A function is a class with an explicit lifecycle (``start``, ``handle``,
``stop``), in the manner of Knative's func templates. ``entrypoint`` turns one
into the module-level CloudEvent handler that ``functions-framework --target``
serves. functions-framework owns the process's ``main``, so the entrypoint
reads the settings once, when functions-framework imports the module.

Per request, the adapter authenticates the caller, parses the event against the
catalog and the residency policy, skips a duplicate (source, id), then hands it
to ``handle``. Errors become 4xx with a JSON body that says what was wrong, so
the broker retries only what a retry can fix. While it handles an event with a
``traceparent``, every log line carries the trace id and every event it emits
carries the same ``traceparent`` (``falaj.logs.traced``).

``GET /metrics`` on the same port serves the function's metrics
(``falaj.metrics``) to a caller allowed to ``read``, as every other process
does; the CloudEvent handler stays at ``/``.
"""

from __future__ import annotations

import json
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
from falaj.logs import TRACEPARENT, configure_logging, current_traceparent, get_logger, traced
from falaj.metrics import CONTENT_TYPE, Metrics
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
        self._metrics: Metrics | None = None

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ctx

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._metrics

    def start(self, ctx: Context, metrics: Metrics | None = None) -> None:
        """``metrics``: the process's catalog (``entrypoint``); by default one of its own."""
        self._ctx = ctx
        self._metrics = metrics if metrics is not None else Metrics()
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
            make_event(
                event_type,
                data,
                region=self.ctx.settings.region,
                subject=subject,
                # The trace of the event being handled, if any, goes on with what it caused.
                traceparent=current_traceparent(),
            )
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
        with traced(event.get(TRACEPARENT)):
            return self._answer(event, authorization)

    def _answer(self, event: CloudEvent, authorization: str | None) -> tuple[int, dict[str, Any]]:
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

    def scrape(self, authorization: str | None) -> tuple[int, bytes, str]:
        """``GET /metrics``: (status, body, content type); a caller who may not read is refused."""
        try:
            self.ctx.admit(
                authorization, Action.READ, resource=f"function/{self.function.name} GET /metrics"
            )
        except AuthError as exc:  # audited by admit
            return int(exc.status), json.dumps({"error": str(exc)}).encode(), "application/json"
        return 200, self.function.metrics.exposition(), CONTENT_TYPE


def entrypoint(
    factory: Callable[[], CloudEventFunction], environ: dict[str, str] | None = None
) -> Callable[[CloudEvent], Any]:
    """Build the functions-framework target for a function class."""
    settings = Settings.from_env(environ if environ is not None else dict(os.environ))
    function = factory()
    configure_logging(function.name, settings.log_level)
    ctx = Context.create(settings, actor=function.name)
    function.start(ctx, Metrics.for_process())
    runtime = FunctionRuntime(function, ctx)
    if flask.has_app_context():
        # functions-framework imports the target inside its app's context: the
        # app that serves the handler serves the metrics too, on its port.
        serve_metrics(flask.current_app, runtime)

    @functions_framework.cloud_event
    def handle(event: CloudEvent) -> None:
        status, body = runtime(event, flask.request.headers.get("Authorization"))
        if status >= 300:
            # functions-framework ignores a cloud_event function's return value
            # and answers 200; aborting with a response is how a status escapes.
            flask.abort(flask.make_response(flask.jsonify(body), status))

    return handle


def serve_metrics(app: flask.Flask, runtime: FunctionRuntime) -> None:
    """``GET /metrics`` on functions-framework's app; the handler's rules take POST only."""

    def metrics() -> flask.Response:
        status, body, content_type = runtime.scrape(flask.request.headers.get("Authorization"))
        response = flask.Response(body, status=status, content_type=content_type)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    app.add_url_rule("/metrics", endpoint="falaj-metrics", view_func=metrics, methods=["GET"])
