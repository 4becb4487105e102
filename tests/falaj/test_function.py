"""The function adapter: an event's trace in the logs and in what it emits; ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Iterator

import flask
import pytest
import structlog
from cloudevents.http import CloudEvent
from structlog.testing import capture_logs

from falaj.auth import Role
from falaj.context import Context
from falaj.events import (
    EventType,
    ParsedEvent,
    TrainingReason,
    TrainingRequested,
    make_event,
)
from falaj.function import CloudEventFunction, FunctionRuntime, serve_metrics
from falaj.logs import get_logger
from tests.support.event_sink import EventSink
from tests.support.metrics import TEXT_FORMAT

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Relay(CloudEventFunction):
    """Logs each request it handles and asks for the same training again, for another model."""

    name = "relay"
    accepts = frozenset({EventType.TRAINING_REQUESTED})

    def handle(self, event: ParsedEvent) -> None:
        get_logger(function=self.name).info("relaying", event_id=event.id)
        self.emit(
            EventType.TRAINING_REQUESTED,
            TrainingRequested(model="aml", reason=TrainingReason.MANUAL),
        )


@pytest.fixture
def runtime(ctx: Context, event_sink: EventSink) -> Iterator[FunctionRuntime]:
    settings = ctx.settings.model_copy(update={"broker_url": event_sink.url})
    function = Relay()
    function.start(Context.create(settings, actor="relay"))
    try:
        yield FunctionRuntime(function, function.ctx)
    finally:
        function.stop()


def requested(ctx: Context, traceparent: str | None) -> CloudEvent:
    return make_event(
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model="fraud", reason=TrainingReason.MANUAL),
        region=ctx.settings.region,
        traceparent=traceparent,
    )


def test_what_is_logged_and_emitted_while_handling_an_event_carries_its_trace(
    ctx: Context, runtime: FunctionRuntime, event_sink: EventSink
) -> None:
    bearer = f"Bearer {ctx.tokens.issue('broker', Role.SERVICE)}"
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        assert runtime(requested(ctx, TRACEPARENT), bearer)[0] == 200
        assert runtime(requested(ctx, None), bearer)[0] == 200
        # A refusal is logged under the trace too.
        refused = requested(ctx, TRACEPARENT)
        refused["dataregion"] = "eu-west-1"
        assert runtime(refused, bearer)[0] == 403
    traced, untraced = [line for line in lines if line["event"] == "relaying"]
    assert traced["trace_id"] == TRACE_ID
    assert "trace_id" not in untraced
    emitted = event_sink.received()
    assert [r.event.get("traceparent") for r in emitted] == [TRACEPARENT, None]


def test_metrics_are_served_beside_the_handler_to_a_caller_who_may_read(
    ctx: Context, runtime: FunctionRuntime
) -> None:
    app = flask.Flask("relay")
    serve_metrics(app, runtime)
    client = app.test_client()
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in anonymous.get_json()["error"]
    viewer = ctx.tokens.issue("watcher", Role.VIEWER)
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
    assert scraped.status_code == 200
    assert scraped.content_type.startswith(TEXT_FORMAT)
    assert b"# TYPE falaj_ingest_rows_total counter" in scraped.data
    refusals = [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]
    assert [e["resource"] for e in refusals] == ["function/relay GET /metrics"]
