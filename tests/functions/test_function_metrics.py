"""What each function counts, and ingest's ``/metrics`` and trace ids under functions-framework."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from cloudevents.conversion import to_binary
from pydantic import SecretStr

from falaj.auth import Role
from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.events import (
    EventData,
    EventType,
    InferenceLogged,
    ObjectCreated,
    ParsedEvent,
    TrainingCompleted,
    TrainingFailed,
    TrainingReason,
    TrainingRequested,
    make_event,
    parse_event,
)
from falaj.function import FunctionRuntime
from falaj.metrics import METRIC_NAMES
from falaj.objects import LANDING_BUCKET
from falaj.settings import Settings
from functions.drift.function import DriftFunction
from functions.training_launcher import TrainingLauncherFunction
from functions.training_launcher import function as launcher_module
from functions.training_launcher.ray_jobs import JobState
from tests.functions.test_training_launcher import RayThatRuns
from tests.support.event_sink import EventSink
from tests.support.functions import start_function
from tests.support.metrics import Scraped, scrape
from tests.support.models import FEATURES, WEIGHTS_V1, register, sample_rows
from tests.support.notifications import AWS_PUT, record

TRACE_ID = "5e1f0c3ab2d94c6f8e7d6c5b4a392817"
TRACEPARENT = f"00-{TRACE_ID}-a1b2c3d4e5f60718-01"


def served_settings(ctx: Context, event_sink: EventSink, token: str, **changes: object) -> Settings:
    return ctx.settings.model_copy(
        update={"broker_url": event_sink.url, "token": SecretStr(token), **changes}
    )


# -- ingest, served as its Knative Service runs it ------------------------------------


def object_created(ctx: Context, key: str) -> tuple[dict[str, str], bytes]:
    """A bucket notification for a landed ``key``, in binary mode, under the test's trace."""
    event = make_event(
        EventType.OBJECT_CREATED,
        ObjectCreated.model_validate(record(AWS_PUT, bucket=LANDING_BUCKET, raw_key=key)),
        region=ctx.settings.region,
        traceparent=TRACEPARENT,
    )
    headers, body = to_binary(event)
    return headers, body


def test_ingest_under_functions_framework_counts_rows_and_files_and_traces_what_it_did(
    ctx: Context, event_sink: EventSink, tmp_path: Path
) -> None:
    landing = ctx.paths.landing
    landing.mkdir(parents=True)
    generate_transactions(60, seed=5, cards=8, bad_rows=2).to_csv(landing / "day.csv", index=False)
    (landing / "garbage.csv").write_text("not,the,schema\n1,2,3\n")
    token = ctx.tokens.issue("broker", Role.SERVICE)
    process, url = start_function(
        "ingest", served_settings(ctx, event_sink, token), tmp_path, timeout_s=60.0
    )
    try:
        anonymous = httpx.get(url + "metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            for key in ("day.csv", "garbage.csv"):
                headers, body = object_created(ctx, key)
                answer = client.post("/", headers=headers, content=body)
                assert answer.status_code == 200, answer.text
        scraped = scrape(url + "metrics", token)
    finally:
        process.stop()
    rows = {
        outcome: scraped.value("falaj_ingest_rows_total", dataset="transactions", outcome=outcome)
        for outcome in ("ingested", "quarantined")
    }
    assert rows == {"ingested": 58, "quarantined": 2}
    files = {
        outcome: scraped.value("falaj_ingest_files_total", dataset="transactions", outcome=outcome)
        for outcome in ("ingested", "rejected")
    }
    assert files == {"ingested": 1, "rejected": 1}
    assert "process_cpu_seconds_total" in scraped.names(prefix="process_")
    assert scraped.names() <= METRIC_NAMES

    # What it emitted carries the trace on; what it logged carries the trace id.
    emitted = {r.type: r.event.get("traceparent") for r in event_sink.received()}
    assert emitted == {
        EventType.DATA_QUALITY: TRACEPARENT,
        EventType.DATA_INGESTED: TRACEPARENT,
        EventType.DATA_REJECTED: TRACEPARENT,
    }
    lines = [
        json.loads(line)
        for line in (tmp_path / "ingest.log").read_text().splitlines()
        if line.startswith("{")
    ]
    traced = {line["event"] for line in lines if line.get("trace_id") == TRACE_ID}
    assert {"ingested", "rejected"} <= traced
    assert all(line["trace_id"] == TRACE_ID for line in lines if "trace_id" in line)


# -- drift, in this process -------------------------------------------------------------


@pytest.fixture
def drift(ctx: Context, event_sink: EventSink) -> Iterator[FunctionRuntime]:
    assert register(ctx, WEIGHTS_V1) == 1
    settings = served_settings(ctx, event_sink, "unused", drift_window=100)
    function = DriftFunction()
    function.start(Context.create(settings, actor="drift"))
    try:
        yield FunctionRuntime(function, function.ctx)
    finally:
        function.stop()


def test_drift_exports_the_closed_windows_scores_and_counts_its_alerts(
    ctx: Context, drift: FunctionRuntime, event_sink: EventSink
) -> None:
    rows = sample_rows(100, seed=1)
    rows[:, 0] += 500.0  # amounts far beyond anything the model was trained on
    logged = InferenceLogged(
        inference_id=str(uuid.uuid4()),
        model="fraud",
        version=1,
        variant="stable",
        inputs={name: rows[:, j].tolist() for j, name in enumerate(FEATURES)},
        outputs=np.linspace(0, 1, 100).tolist(),
    )
    event = make_event(
        EventType.INFERENCE_LOGGED, logged, region=ctx.settings.region, traceparent=TRACEPARENT
    )
    bearer = f"Bearer {ctx.tokens.issue('broker', Role.SERVICE)}"
    assert drift(event, bearer)[0] == 200

    scraped = Scraped.parse(drift.function.metrics.exposition().decode())
    score = {
        statistic: scraped.value(
            "falaj_drift_score", model="fraud", version="1", feature="amount", statistic=statistic
        )
        for statistic in ("psi", "ks", "wasserstein")
    }
    assert score["psi"] > 1.0 and score["ks"] > 0.9 and score["wasserstein"] > 0
    assert scraped.value("falaj_drift_detected_total", model="fraud") == 1
    assert scraped.names() <= METRIC_NAMES
    [alert] = event_sink.received()
    assert (alert.type, alert.event.get("traceparent")) == (EventType.DRIFT_DETECTED, TRACEPARENT)


# -- the training launcher, in this process -----------------------------------------------


@pytest.fixture
def launcher(
    ctx: Context, event_sink: EventSink, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TrainingLauncherFunction, RayThatRuns]]:
    ray = RayThatRuns()
    monkeypatch.setattr(launcher_module, "RayJobs", lambda address, token_file=None: ray)
    function = TrainingLauncherFunction(watch=False)
    function.start(Context.create(served_settings(ctx, event_sink, "unused"), actor="launcher"))
    try:
        yield function, ray
    finally:
        function.stop()


def parsed(ctx: Context, data: EventData, event_type: EventType) -> ParsedEvent:
    return parse_event(make_event(event_type, data, region=ctx.settings.region), ctx.policy)


def test_the_launcher_counts_each_run_once_when_it_ends_and_how_long_it_took(
    ctx: Context,
    launcher: tuple[TrainingLauncherFunction, RayThatRuns],
    event_sink: EventSink,
) -> None:
    function, ray = launcher
    request = TrainingRequested(model="fraud", reason=TrainingReason.MANUAL)
    function.handle(parsed(ctx, request, EventType.TRAINING_REQUESTED))
    [first] = ray.submitted
    ray.states[first.job_id] = JobState(status="SUCCEEDED", exit_code=0)
    completed = TrainingCompleted(model="fraud", job_id=first.job_id, version=1, metrics={})
    for _ in range(2):  # a second event about the same end counts nothing
        function.handle(parsed(ctx, completed, EventType.TRAINING_COMPLETED))

    function.handle(parsed(ctx, request, EventType.TRAINING_REQUESTED))
    second = ray.submitted[1]
    ray.states[second.job_id] = JobState(status="FAILED", exit_code=137, message="killed")
    function.reconcile()  # the launcher announces the failure the job could not
    [announced] = [r for r in event_sink.received() if r.type == EventType.TRAINING_FAILED]
    # ... and that announcement comes back to it through the broker: the same end.
    failed = TrainingFailed.model_validate(announced.data)
    function.handle(parsed(ctx, failed, EventType.TRAINING_FAILED))

    scraped = Scraped.parse(function.metrics.exposition().decode())
    runs = {
        outcome: scraped.value("falaj_training_runs_total", model="fraud", outcome=outcome)
        for outcome in ("succeeded", "failed")
    }
    assert runs == {"succeeded": 1, "failed": 1}
    assert scraped.value("falaj_training_duration_seconds_count", model="fraud") == 2
    assert scraped.value("falaj_training_duration_seconds_sum", model="fraud") >= 0
    assert scraped.names() <= METRIC_NAMES
