"""The training launcher: policies, one job per model, coalescing, and a real Ray run.

The unit tests need no Ray: every path they take either decides not to train,
or is refused before a job is submitted, or meets a Ray address nobody
listens on. The one test marked ``ray`` trains twice on the shared Ray head.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import SecretStr
from ray.job_submission import JobStatus

from eventing.ping_source import PingSpec, ping_event
from falaj.audit import AuditLog
from falaj.auth import Role
from falaj.context import Context
from falaj.cron import CronSchedule
from falaj.demo.data import generate_transactions
from falaj.errors import EventError, ModelBusy, ResidencyViolation
from falaj.events import (
    DataIngested,
    DriftDetected,
    EventData,
    EventType,
    ParsedEvent,
    TrainingCompleted,
    TrainingProgress,
    TrainingReason,
    TrainingRequested,
    TrainingStage,
    TrainingStarted,
    make_event,
    parse_event,
)
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry
from falaj.runtime.processes import free_port
from falaj.schema import load_schema
from falaj.settings import Settings
from falaj.training_job import MAX_ATTEMPTS, JobExit
from falaj.training_runs import SUBMITTING, TrainingJobs, TrainingRequest
from falaj.validation import validate_frame
from functions.training_launcher import TrainingLauncherFunction
from functions.training_launcher import function as launcher_module
from functions.training_launcher.errors import JobSubmissionFailed
from functions.training_launcher.ray_jobs import LOST, JobSpec, JobState, job_env, job_spec
from tests.support.event_sink import EventSink
from tests.support.ray_jobs import RayHead, wait_for_job
from training.export import to_onnx
from training.model import NetworkSpec, ProbabilityModel, TabularMLP

MODEL = "fraud"


def event(ctx: Context, event_type: EventType, data: EventData) -> ParsedEvent:
    return parse_event(make_event(event_type, data, region=ctx.settings.region), ctx.policy)


def ingested(ctx: Context, dataset: str = "transactions") -> ParsedEvent:
    return event(
        ctx,
        EventType.DATA_INGESTED,
        DataIngested(
            dataset=dataset,
            location="file:///landing/tx.csv",
            object_version="1",
            rows_total=10,
            rows_ingested=10,
            rows_quarantined=0,
            offline_location=ctx.paths.offline.as_uri(),
        ),
    )


def drifted(ctx: Context, model: str = MODEL) -> ParsedEvent:
    return event(
        ctx,
        EventType.DRIFT_DETECTED,
        DriftDetected(
            model=model,
            version=1,
            window_size=200,
            statistic="psi",
            threshold=0.2,
            scores={"amount": 0.9},  # severe: retrains at once
            drifted_features=["amount"],
        ),
    )


def requested(ctx: Context, model: str = MODEL) -> ParsedEvent:
    return event(
        ctx,
        EventType.TRAINING_REQUESTED,
        TrainingRequested(model=model, reason=TrainingReason.MANUAL),
    )


def audit_actions(ctx: Context) -> list[str]:
    return [entry["action"] for entry in AuditLog(ctx.paths.audit).entries()]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A Ray address nobody listens on: a unit test that submits by mistake fails loudly.
    return Settings(home=tmp_path / ".falaj", ray_address=f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def launcher(ctx: Context) -> Iterator[TrainingLauncherFunction]:
    # No watcher thread: these tests drive every step themselves.
    function = TrainingLauncherFunction(watch=False)
    function.start(ctx)
    try:
        yield function
    finally:
        function.stop()


def register_version(ctx: Context) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 6)).astype(np.float32)
    model = ProbabilityModel(TabularMLP(NetworkSpec(features=6, hidden=(4,))))
    names = ("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "is_foreign")
    ModelRegistry(ctx).register(
        MODEL,
        onnx_bytes=to_onnx(model),
        profile=ReferenceProfile.from_columns(
            {name: features[:, i] for i, name in enumerate(names)}
        ),
        metrics={"auc": 0.9},
        lineage={"training_job_id": "earlier"},
        feature_names=names,
    )


# -- policies, without Ray -------------------------------------------------------


def test_data_ingested_does_not_train_a_model_that_has_a_version(
    ctx: Context, launcher: TrainingLauncherFunction
) -> None:
    register_version(ctx)
    launcher.handle(ingested(ctx))
    assert launcher.jobs.runs(MODEL) == []
    assert launcher.jobs.pending(MODEL) is None
    assert "training.launched" not in audit_actions(ctx)


def test_drift_trains_and_a_ray_that_does_not_answer_is_a_503(
    ctx: Context, launcher: TrainingLauncherFunction
) -> None:
    with pytest.raises(JobSubmissionFailed, match="is the Ray head running") as refused:
        launcher.handle(drifted(ctx))
    assert refused.value.status == 503
    # Nothing claims the model: the broker's redelivery launches it.
    assert launcher.jobs.active(MODEL) == []
    assert launcher.jobs.pending(MODEL) is not None  # kept for the redelivery
    assert "training.launched" not in audit_actions(ctx)


def test_an_unknown_model_is_a_bad_event(ctx: Context, launcher: TrainingLauncherFunction) -> None:
    with pytest.raises(EventError, match="trains fraud") as refused:
        launcher.handle(requested(ctx, model="credit"))
    assert refused.value.status == 400


def test_data_of_an_unknown_dataset_is_a_bad_event(
    ctx: Context, launcher: TrainingLauncherFunction
) -> None:
    with pytest.raises(EventError, match="names dataset 'loans'; the feature repository holds"):
        launcher.handle(ingested(ctx, dataset="loans"))


def test_a_job_outside_the_allowed_regions_is_refused_before_ray_is_asked(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path / ".falaj",
        region="eu-west-1",
        ray_address=f"http://127.0.0.1:{free_port()}",
    )
    ctx = Context.create(settings, actor="training-launcher")
    launcher = TrainingLauncherFunction()
    launcher.start(ctx)
    try:
        # The event itself comes from an allowed region; the job would not run in one.
        allowed = Context.create(settings.model_copy(update={"region": "uaenorth"}), actor="t")
        with pytest.raises(ResidencyViolation, match="job-launch: ray job for fraud"):
            launcher.handle(drifted(allowed))
    finally:
        launcher.stop()
    [refusal] = [e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "policy.refused"]
    assert refusal["details"]["boundary"] == "job-launch"
    assert refusal["region"] == "eu-west-1"


# -- the PingSource's off-peak schedule ----------------------------------------------


class RayThatRuns:
    """Stands in for the Ray Jobs API: takes every job and reports it running until told.

    The real Jobs API is exercised by the tests marked ``ray``; this one lets a
    test end a job the way a cluster does (killed, stopped, forgotten).
    """

    def __init__(self) -> None:
        self.submitted: list[JobSpec] = []
        self.states: dict[str, JobState] = {}

    def submit(self, spec: JobSpec) -> str:
        self.submitted.append(spec)
        self.states[spec.job_id] = JobState(status="RUNNING")
        return spec.job_id

    def state(self, job_id: str) -> JobState:
        # As Ray answers for a submission id it has no job of.
        return self.states.get(job_id, JobState(status=LOST, message="no such job"))

    def close(self) -> None:
        pass

    def end(
        self, job_id: str, status: str, exit_code: int | None = None, message: str = ""
    ) -> None:
        self.states[job_id] = JobState(status=status, exit_code=exit_code, message=message or None)


@pytest.fixture
def jobs_api(monkeypatch: pytest.MonkeyPatch) -> RayThatRuns:
    fake = RayThatRuns()
    monkeypatch.setattr(launcher_module, "RayJobs", lambda address, token_file=None: fake)
    return fake


@pytest.fixture
def scheduled_launcher(jobs_api: RayThatRuns, ctx: Context) -> Iterator[TrainingLauncherFunction]:
    function = TrainingLauncherFunction(watch=False)
    function.start(ctx)
    try:
        yield function
    finally:
        function.stop()


def pinged(ctx: Context, model: str = MODEL, night: int = 1) -> ParsedEvent:
    """A tick exactly as the PingSource of manifests/base sends it."""
    spec = PingSpec(
        name="fraud-retraining",
        namespace="falaj",
        schedule=CronSchedule("0 2 * * *", "Asia/Dubai"),
        content_type="application/json",
        data=json.dumps({"model": model}).encode(),
        extensions={"dataregion": "me-central-1"},
    )
    tick = datetime(2026, 3, night, 22, tzinfo=UTC)
    return parse_event(ping_event(spec, tick, region="me-central-1"), ctx.policy)


def test_a_scheduled_ping_asks_for_a_run_for_the_schedule_not_urgently(
    ctx: Context, jobs_api: RayThatRuns, scheduled_launcher: TrainingLauncherFunction
) -> None:
    tick = pinged(ctx)
    scheduled_launcher.handle(tick)

    [run] = scheduled_launcher.jobs.runs(MODEL)
    assert (run.reason, run.urgent, run.cause_event_id) == (
        TrainingReason.SCHEDULE,
        False,
        tick.id,
    )
    [spec] = jobs_api.submitted
    assert "--reason schedule" in spec.entrypoint
    assert dict(spec.metadata)["urgent"] == "false"


def test_a_ping_while_a_run_is_going_waits_and_urgent_drift_overtakes_it(
    ctx: Context, jobs_api: RayThatRuns, scheduled_launcher: TrainingLauncherFunction
) -> None:
    scheduled_launcher.handle(pinged(ctx, night=1))
    scheduled_launcher.handle(pinged(ctx, night=2))  # the first run still goes on
    pending = scheduled_launcher.jobs.pending(MODEL)
    assert pending is not None
    assert (pending.reason, pending.urgent, pending.requests) == (TrainingReason.SCHEDULE, False, 1)

    scheduled_launcher.handle(drifted(ctx))
    merged = scheduled_launcher.jobs.pending(MODEL)
    assert merged is not None
    assert (merged.reason, merged.urgent, merged.requests) == (TrainingReason.DRIFT, True, 2)
    assert len(jobs_api.submitted) == 1  # one run at a time
    assert audit_actions(ctx).count("training.coalesced") == 2


def test_a_ping_for_a_model_the_launcher_cannot_train_is_a_bad_event(
    ctx: Context, scheduled_launcher: TrainingLauncherFunction
) -> None:
    with pytest.raises(EventError, match="trains fraud") as refused:
        scheduled_launcher.handle(pinged(ctx, model="credit"))
    assert refused.value.status == 400


# -- when a request may start: the off-peak window, urgency, concurrency -------------


def launcher_with(
    ctx: Context, jobs_api: RayThatRuns, **settings: object
) -> TrainingLauncherFunction:
    """A started launcher (no watcher) whose settings differ from ``ctx``'s by ``settings``."""
    # Validated, as the environment's values would be (model_copy does not validate).
    changed_settings = Settings.model_validate({**ctx.settings.model_dump(), **settings})
    changed = Context.create(changed_settings, actor="training-launcher")
    function = TrainingLauncherFunction(watch=False)
    function.start(changed)
    return function


# 22:00 UTC is 02:00 in Dubai; 08:00 UTC is noon there.
NIGHT = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)
NOON = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def drift_of(ctx: Context, psi: float) -> ParsedEvent:
    return event(
        ctx,
        EventType.DRIFT_DETECTED,
        DriftDetected(
            model=MODEL,
            version=1,
            window_size=200,
            statistic="psi",
            threshold=0.2,
            scores={"amount": psi, "hour": 0.01},
            drifted_features=["amount"],
        ),
    )


def test_retraining_that_can_wait_waits_for_the_off_peak_window(
    ctx: Context, jobs_api: RayThatRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = launcher_with(ctx, jobs_api, training_off_peak="01:00-05:00")
    try:
        monkeypatch.setattr(launcher_module, "datetime", FrozenClock(NOON))
        launcher.handle(pinged(ctx))  # a schedule: not urgent
        launcher.handle(drift_of(ctx, psi=0.3))  # mild drift: not urgent either
        assert jobs_api.submitted == []
        waiting = launcher.jobs.pending(MODEL)
        assert waiting is not None
        assert (waiting.urgent, waiting.requests) == (False, 2)
        deferred = [
            e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "training.deferred"
        ]
        assert len(deferred) == 2
        # The next opening of 01:00 in Dubai after noon there: 21:00 UTC that day.
        assert deferred[-1]["details"]["starts_after"] == "2026-03-02T01:00:00+04:00".replace(
            "03-02", "03-03"
        )

        launcher.reconcile(now=NOON)  # still closed
        assert jobs_api.submitted == []
        launcher.reconcile(now=NIGHT)  # 02:00 in Dubai: open
        [spec] = jobs_api.submitted
        assert "--reason schedule" in spec.entrypoint
        assert launcher.jobs.pending(MODEL) is None
    finally:
        launcher.stop()


def test_urgent_drift_starts_at_once_even_off_peak(ctx: Context, jobs_api: RayThatRuns) -> None:
    launcher = launcher_with(
        ctx, jobs_api, training_off_peak="01:00-01:01", training_urgent_psi=0.5
    )
    try:
        launcher.handle(drift_of(ctx, psi=0.9))
        [spec] = jobs_api.submitted
        assert "--reason drift" in spec.entrypoint
        assert dict(spec.metadata)["urgent"] == "true"
    finally:
        launcher.stop()


def test_at_most_n_runs_per_model_and_the_rest_wait_merged(
    ctx: Context, jobs_api: RayThatRuns
) -> None:
    launcher = launcher_with(ctx, jobs_api, training_max_concurrent=2)
    try:
        for _ in range(4):
            launcher.handle(requested(ctx))
        assert len(jobs_api.submitted) == 2
        assert len(launcher.jobs.active(MODEL)) == 2
        waiting = launcher.jobs.pending(MODEL)
        assert waiting is not None and waiting.requests == 2  # two requests, one run to come

        first = jobs_api.submitted[0].job_id
        jobs_api.end(first, "SUCCEEDED", exit_code=0)
        launcher.reconcile()
        assert len(jobs_api.submitted) == 3
        assert launcher.jobs.pending(MODEL) is None
        assert {r.job_id for r in launcher.jobs.active(MODEL)} == {
            jobs_api.submitted[1].job_id,
            jobs_api.submitted[2].job_id,
        }
    finally:
        launcher.stop()


class FrozenClock(datetime):
    """``datetime`` whose ``now`` is one fixed moment: the launcher's clock, in a test."""

    moment: datetime

    def __new__(cls, moment: datetime) -> FrozenClock:  # type: ignore[misc]
        clock = super().__new__(cls, 2000, 1, 1)
        type(clock).moment = moment
        return clock

    @classmethod
    def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
        return cls.moment


# -- following a job to its end ---------------------------------------------------------


@pytest.fixture
def announcing(
    ctx: Context, jobs_api: RayThatRuns, event_sink: EventSink
) -> Iterator[TrainingLauncherFunction]:
    """A launcher whose events reach ``event_sink``."""
    launcher = launcher_with(ctx, jobs_api, broker_url=event_sink.url)
    try:
        yield launcher
    finally:
        launcher.stop()


@pytest.mark.parametrize(
    ("status", "exit_code", "message", "reason"),
    [
        ("FAILED", 137, "Job entrypoint command failed with exit code 137", "exit code 137"),
        ("FAILED", 3, "", "ended FAILED (exit code 3) without announcing why"),
        ("STOPPED", None, "Job was intentionally stopped.", "was stopped before it finished"),
    ],
    ids=["killed", "broker unreachable", "stopped"],
)
def test_a_job_that_could_not_announce_its_end_is_announced_failed_and_frees_the_model(
    ctx: Context,
    jobs_api: RayThatRuns,
    event_sink: EventSink,
    announcing: TrainingLauncherFunction,
    status: str,
    exit_code: int | None,
    message: str,
    reason: str,
) -> None:
    announcing.handle(requested(ctx))
    announcing.handle(requested(ctx))  # waits behind the first
    [first] = jobs_api.submitted
    jobs_api.end(first.job_id, status, exit_code, message)

    announcing.reconcile()
    [failed] = event_sink.wait_for(EventType.TRAINING_FAILED, job_id=first.job_id)
    assert reason in failed.data["reason"], failed.data["reason"]
    assert failed.data["model"] == MODEL
    [entry] = [e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "training.failed"]
    assert (entry["outcome"], entry["details"]["status"]) == ("failed", status)
    # The model is free: the request that waited went out.
    assert len(jobs_api.submitted) == 2
    ended = announcing.jobs.run(first.job_id)
    assert ended is not None and (ended.status, ended.announced) == (status, "failed")

    # Looking again announces nothing twice.
    announcing.reconcile()
    assert [r.type for r in event_sink.received()].count(EventType.TRAINING_FAILED) == 1


def test_a_job_that_announced_its_own_failure_is_not_announced_again(
    ctx: Context,
    jobs_api: RayThatRuns,
    event_sink: EventSink,
    announcing: TrainingLauncherFunction,
) -> None:
    announcing.handle(requested(ctx))
    [spec] = jobs_api.submitted
    jobs_api.end(spec.job_id, "FAILED", JobExit.FAILED_ANNOUNCED, "exit code 1")
    announcing.reconcile()
    assert announcing.jobs.active(MODEL) == []
    assert EventType.TRAINING_FAILED not in {r.type for r in event_sink.received()}


def test_a_lost_job_is_retried_resuming_its_run_then_given_up(
    ctx: Context,
    jobs_api: RayThatRuns,
    event_sink: EventSink,
    announcing: TrainingLauncherFunction,
) -> None:
    announcing.handle(drift_of(ctx, psi=0.9))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        spec = jobs_api.submitted[-1]
        assert dict(spec.metadata)["attempt"] == str(attempt)
        # Every retry resumes the first job's Ray Train run, so its checkpoints.
        assert spec.entrypoint.endswith(f"--run-name {jobs_api.submitted[0].job_id}")
        jobs_api.end(spec.job_id, LOST, message="the Ray head no longer knows the job")
        announcing.reconcile()
    assert len(jobs_api.submitted) == MAX_ATTEMPTS
    [failed] = event_sink.wait_for(EventType.TRAINING_FAILED, job_id=jobs_api.submitted[-1].job_id)
    assert f"lost {MAX_ATTEMPTS} time(s)" in failed.data["reason"]
    assert audit_actions(ctx).count("training.retried") == MAX_ATTEMPTS - 1
    assert announcing.jobs.pending(MODEL) is None


def test_the_jobs_own_events_record_its_progress_and_its_end_launches_the_next(
    ctx: Context,
    jobs_api: RayThatRuns,
    event_sink: EventSink,
    announcing: TrainingLauncherFunction,
) -> None:
    announcing.handle(requested(ctx))
    announcing.handle(requested(ctx))
    [spec] = jobs_api.submitted
    job = spec.job_id
    announcing.handle(
        event(
            ctx,
            EventType.TRAINING_STARTED,
            TrainingStarted(model=MODEL, job_id=job, reason=TrainingReason.MANUAL),
        )
    )
    for epoch in (3, 2):  # out of order: the later epoch stays
        announcing.handle(
            event(
                ctx,
                EventType.TRAINING_PROGRESS,
                TrainingProgress(
                    model=MODEL,
                    job_id=job,
                    stage=TrainingStage.TRAINING,
                    epoch=epoch,
                    epochs=10,
                    train_loss=0.1 * epoch,
                ),
            )
        )
    run = announcing.jobs.run(job)
    assert run is not None
    assert (run.stage, run.epoch, run.epochs) == (TrainingStage.TRAINING, 3, 10)
    assert run.train_loss == pytest.approx(0.3)

    # Ray has not said so yet; the job's own word frees the model.
    jobs_api.end(job, "SUCCEEDED", exit_code=0)
    announcing.handle(
        event(
            ctx,
            EventType.TRAINING_COMPLETED,
            TrainingCompleted(model=MODEL, job_id=job, version=1, metrics={"auc": 0.9}),
        )
    )
    assert len(jobs_api.submitted) == 2
    done = announcing.jobs.run(job)
    assert done is not None and (done.status, done.announced) == ("SUCCEEDED", "completed")


def test_the_watcher_follows_jobs_without_being_asked(
    ctx: Context, jobs_api: RayThatRuns, event_sink: EventSink
) -> None:
    settings = ctx.settings.model_copy(
        update={"broker_url": event_sink.url, "training_watch_interval_s": 0.05}
    )
    launcher = TrainingLauncherFunction()  # with its watcher thread
    launcher.start(Context.create(settings, actor="training-launcher"))
    try:
        launcher.handle(requested(ctx))
        [spec] = jobs_api.submitted
        jobs_api.end(spec.job_id, "FAILED", 137, "killed")
        event_sink.wait_for(EventType.TRAINING_FAILED, job_id=spec.job_id, timeout_s=10)
    finally:
        launcher.stop()
    assert launcher._watcher is None  # stopped and joined


# -- the job's environment ---------------------------------------------------------


def test_the_job_gets_a_token_file_never_the_token(ctx: Context) -> None:
    token = ctx.tokens.issue("training-launcher", Role.SERVICE)
    settings = ctx.settings.model_copy(update={"token": SecretStr(token)})
    launcher = TrainingLauncherFunction()
    launcher.start(Context.create(settings, actor="training-launcher"))
    launcher.stop()
    token_file = ctx.paths.keys / "training-launcher.token"
    assert token_file.read_text() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    request = TrainingRequest(model=MODEL, reason=TrainingReason.DRIFT, urgent=True)
    spec = job_spec("train-fraud-x", request, settings, token_file=token_file)
    assert token not in json.dumps(dict(spec.runtime_env))
    env = spec.runtime_env["env_vars"]
    assert "FALAJ_TOKEN" not in env
    assert env["FALAJ_TOKEN_FILE"] == str(token_file.resolve())
    assert env["FALAJ_HOME"] == str(ctx.paths.home)
    assert env["RAY_AUTH_MODE"] == "disabled"
    assert spec.entrypoint.split() == [
        sys.executable,
        "-m",
        "training.job",
        "--model",
        MODEL,
        "--reason",
        "drift",
        "--job-id",
        "train-fraud-x",
        "--run-name",
        "train-fraud-x",
    ]
    # The environment rebuilds the launcher's settings in the job, token aside.
    rebuilt = Settings.from_env({k: v for k, v in env.items() if k.startswith("FALAJ_")})
    assert rebuilt.bearer_token() == token
    assert rebuilt.model_copy(update={"token_file": None}) == settings.model_copy(
        update={"token": None, "home": ctx.paths.home}
    )


def test_job_env_without_a_token_names_no_token_file(settings: Settings) -> None:
    assert "FALAJ_TOKEN_FILE" not in job_env(settings, token_file=None)


def test_job_env_carries_no_secret_setting(settings: Settings) -> None:
    secret = settings.model_copy(
        update={"rabbitmq_url": SecretStr("amqp://falaj:s3cr3t@rabbit:5672/")}
    )
    env = job_env(secret, token_file=None)
    assert "FALAJ_RABBITMQ_URL" not in env
    assert "s3cr3t" not in json.dumps(env)


def test_the_job_gets_the_feast_stores_through_a_file_never_their_urls(
    jobs_api: RayThatRuns, ctx: Context
) -> None:
    redis = "redis://:r3dis@cache.falaj.svc:6379/2"
    postgres = "postgresql://feast:pg5ecret@db.falaj.svc:5432/registry"
    settings = ctx.settings.model_copy(
        update={
            "online_store": SecretStr(redis),
            "feature_registry": SecretStr(postgres),
            "rabbitmq_url": SecretStr("amqp://falaj:s3cr3t@rabbit:5672/"),
        }
    )
    launcher = TrainingLauncherFunction(watch=False)
    launcher.start(Context.create(settings, actor="training-launcher"))
    try:
        launcher.handle(drifted(ctx))
    finally:
        launcher.stop()

    [spec] = jobs_api.submitted
    shown = json.dumps(dict(spec.runtime_env))
    assert not [s for s in ("r3dis", "pg5ecret", "s3cr3t") if s in shown]
    env = spec.runtime_env["env_vars"]
    secrets_file = Path(env["FALAJ_SECRETS_FILE"])
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    # The job's settings, rebuilt from its environment, use the same stores;
    # the AMQP URL it never needs is not handed over.
    rebuilt = Settings.from_env({k: v for k, v in env.items() if k.startswith("FALAJ_")})
    assert rebuilt.online_store == SecretStr(redis)
    assert rebuilt.feature_registry == SecretStr(postgres)
    assert rebuilt.rabbitmq_url is None


# -- the job store -------------------------------------------------------------------


def test_one_active_run_per_model_and_requests_merge_while_it_runs(tmp_path: Path) -> None:
    with TrainingJobs(tmp_path) as jobs:
        first = TrainingRequest(model=MODEL, reason=TrainingReason.NEW_DATA)
        jobs.record_launch("job-1", first, limit=1)
        with pytest.raises(ModelBusy, match="FALAJ_TRAINING_MAX_CONCURRENT=1"):
            jobs.record_launch("job-2", first, limit=1)

        jobs.add_pending(TrainingRequest(model=MODEL, reason=TrainingReason.MANUAL))
        merged = jobs.add_pending(
            TrainingRequest(
                model=MODEL, reason=TrainingReason.DRIFT, urgent=True, cause_event_id="e"
            )
        )
        assert (merged.reason, merged.urgent, merged.requests) == (TrainingReason.DRIFT, True, 2)
        assert jobs.pending(MODEL) == merged

        jobs.update_status("job-1", "RUNNING")
        assert [r.job_id for r in jobs.active(MODEL)] == ["job-1"]
        jobs.update_status("job-1", "FAILED")
        assert jobs.active(MODEL) == []
        [ended] = jobs.runs(MODEL)
        assert (ended.status, ended.ended is not None) == ("FAILED", True)

        jobs.record_launch("job-2", merged, limit=1)
        assert jobs.pending(MODEL) is None
        assert [r.job_id for r in jobs.runs(MODEL)] == ["job-1", "job-2"]
    # The state outlives the process (scale to zero).
    with TrainingJobs(tmp_path) as reopened:
        [active] = reopened.active(MODEL)
        assert active.job_id == "job-2" and active.urgent


# -- the real thing on Ray -------------------------------------------------------------


def onnx_outputs(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
    """The model's outputs for ``features`` through onnxruntime, as serving computes them."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {name: features.astype(np.float32)})[0])


@pytest.mark.ray
def test_events_train_versions_on_ray_one_job_at_a_time(
    ray_head: RayHead, tmp_path: Path, event_sink: EventSink
) -> None:
    settings = Settings(
        home=tmp_path / ".falaj",
        ray_address=ray_head.address,
        ray_token_file=ray_head.token_file,
        broker_url=event_sink.url,
    )
    ctx = Context.create(settings, actor="training-launcher")
    token = ctx.tokens.issue("training-launcher", Role.SERVICE)
    settings = settings.model_copy(update={"token": SecretStr(token)})
    ctx = Context.create(settings, actor="training-launcher")
    schema = load_schema(settings)
    fraud = load_repo(settings).model(MODEL)
    store = FeatureStoreClient(ctx, schema, (fraud,))
    store.apply()
    store.write_offline(validate_frame(schema, generate_transactions(3000, seed=11)).good)

    client = ray_head.client()
    # The watcher stays off: the test itself says when the launcher looks again.
    launcher = TrainingLauncherFunction(watch=False)
    launcher.start(ctx)
    try:
        launcher.handle(ingested(ctx))  # no version yet: the bootstrap
        [first] = launcher.jobs.runs(MODEL)
        assert first.reason == TrainingReason.NEW_DATA
        # The job takes tens of seconds; this arrives while it runs and waits.
        launcher.handle(requested(ctx))
        assert launcher.jobs.runs(MODEL) == [first]
        pending = launcher.jobs.pending(MODEL)
        assert pending is not None and pending.reason == TrainingReason.MANUAL

        info = client.get_job_info(first.job_id)
        assert token not in json.dumps(info.runtime_env) + json.dumps(info.metadata)
        assert wait_for_job(client, first.job_id) == JobStatus.SUCCEEDED

        registry = ModelRegistry(ctx)
        v1 = registry.get(MODEL, 1)
        assert v1.metrics["auc"] > 0.8, v1.metrics
        assert set(v1.metrics) >= {"auc", "accuracy", "log_loss", "brier", "ece"}
        assert v1.feature_names == fraud.features
        assert (v1.lineage["dataset"], v1.lineage["family"]) == ("transactions", "mlp")
        assert v1.lineage["feature_service"] == "fraud_model"
        assert v1.lineage["training_job_id"] == first.job_id
        assert v1.lineage["reason"] == "new-data"
        assert v1.lineage["parent_version"] is None
        assert v1.lineage["onnx_parity"]["max_abs_diff"] < 1e-4
        assert v1.lineage["onnx_parity"]["rows_checked"] == v1.lineage["rows_held_out"]
        assert v1.lineage["rows_used"] == v1.lineage["rows_train"] + v1.lineage["rows_held_out"]
        assert v1.lineage["ray"]["workers"] == settings.training_workers
        assert v1.lineage["offline_location"].startswith("file://")
        assert registry.load_verified(MODEL, 1).profile.prediction is not None

        events = event_sink.wait_for(
            EventType.TRAINING_STARTED,
            EventType.TRAINING_COMPLETED,
            EventType.MODEL_REGISTERED,
            job_id=first.job_id,
        )
        lifecycle = [e.type for e in events if e.type != EventType.TRAINING_PROGRESS]
        assert lifecycle == [
            EventType.TRAINING_STARTED,
            EventType.TRAINING_COMPLETED,
            EventType.MODEL_REGISTERED,
        ]
        # Between them, the job's stages and every epoch, in order.
        progress = [e.data for e in events if e.type == EventType.TRAINING_PROGRESS]
        epochs = v1.lineage["train_config"]["epochs"]
        assert [p["epoch"] for p in progress if p["stage"] == "training"] == list(range(epochs + 1))
        assert [p["stage"] for p in progress if p["stage"] != "training"] == [
            "evaluating",
            "exporting",
            "registering",
        ]
        assert v1.lineage["ray"]["resumed_from_epoch"] is None
        assert events[-1].data["digest"] == v1.digest
        assert {e.authorization for e in events} == {f"Bearer {token}"}

        # The next event finds the job ended and launches the request that waited.
        launcher.handle(ingested(ctx))
        first_done, second = launcher.jobs.runs(MODEL)
        assert first_done.status == "SUCCEEDED"
        assert second.reason == TrainingReason.MANUAL
        assert launcher.jobs.pending(MODEL) is None
        assert wait_for_job(client, second.job_id) == JobStatus.SUCCEEDED
        v2 = registry.get(MODEL, 2)
        assert v2.lineage["training_job_id"] == second.job_id
        assert v2.lineage["parent_version"] == 1
        # The same snapshot and seed train the same model: the same outputs, to float noise.
        assert v2.lineage["training_set_sha256"] == v1.lineage["training_set_sha256"]
        assert v2.lineage["train_config"]["seed"] == v1.lineage["train_config"]["seed"]
        probe = np.random.default_rng(5).normal(0, 50, (256, len(fraud.features)))
        first_out, second_out = (
            onnx_outputs(registry.load_verified(MODEL, v).onnx_bytes, probe) for v in (1, 2)
        )
        np.testing.assert_allclose(second_out, first_out, rtol=0, atol=1e-6)
        event_sink.wait_for(EventType.MODEL_REGISTERED, job_id=second.job_id)
    finally:
        launcher.stop()
        for run in TrainingJobs(ctx.paths.training).runs(MODEL):
            if not client.get_job_status(run.job_id).is_terminal():
                client.stop_job(run.job_id)

    actions = audit_actions(ctx)
    assert actions.count("training.launched") == 2
    assert actions.count("training.coalesced") == 1
    assert actions.count("training.completed") == 2
    AuditLog(ctx.paths.audit).verify()


@pytest.mark.ray
def test_a_job_stopped_on_ray_is_announced_failed_by_the_watcher(
    ray_head: RayHead, tmp_path: Path, event_sink: EventSink
) -> None:
    settings = Settings(
        home=tmp_path / ".falaj",
        ray_address=ray_head.address,
        ray_token_file=ray_head.token_file,
        broker_url=event_sink.url,
        training_watch_interval_s=0.2,
    )
    ctx = Context.create(settings, actor="training-launcher")
    client = ray_head.client()
    launcher = TrainingLauncherFunction()  # its watcher asks Ray, unprompted
    launcher.start(ctx)
    try:
        launcher.handle(requested(ctx))
        [run] = launcher.jobs.runs(MODEL)
        client.stop_job(run.job_id)
        [failed] = event_sink.wait_for(EventType.TRAINING_FAILED, job_id=run.job_id, timeout_s=60)
    finally:
        launcher.stop()
        # Every job this test started, even when it failed before it knew the run.
        for started in TrainingJobs(ctx.paths.training).runs(MODEL):
            if not client.get_job_status(started.job_id).is_terminal():
                client.stop_job(started.job_id)
    assert "was stopped before it finished" in failed.data["reason"], failed.data
    with TrainingJobs(ctx.paths.training) as jobs:
        stopped = jobs.run(run.job_id)
    assert stopped is not None and (stopped.status, stopped.announced) == ("STOPPED", "failed")


# -- a slot is claimed before its job is submitted ------------------------------------


def test_the_slot_is_claimed_before_the_job_is_submitted(
    ctx: Context, jobs_api: RayThatRuns, scheduled_launcher: TrainingLauncherFunction
) -> None:
    seen: list[str | None] = []
    submit = jobs_api.submit

    def submit_seeing_the_claim(spec: JobSpec) -> str:
        run = scheduled_launcher.jobs.run(spec.job_id)
        seen.append(None if run is None else run.status)
        return submit(spec)

    jobs_api.submit = submit_seeing_the_claim  # type: ignore[method-assign]
    scheduled_launcher.handle(drifted(ctx))
    assert seen == [SUBMITTING]
    [run] = scheduled_launcher.jobs.active(MODEL)
    assert run.status == "PENDING"  # submitted: Ray's word from here on
    scheduled_launcher.reconcile()
    assert scheduled_launcher.jobs.active(MODEL)[0].status == "RUNNING"


def test_a_launcher_that_finds_the_slot_taken_submits_nothing(
    ctx: Context,
    jobs_api: RayThatRuns,
    scheduled_launcher: TrainingLauncherFunction,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def taken(*_: object, **__: object) -> None:
        raise ModelBusy("another launcher replica launched in between")

    monkeypatch.setattr(scheduled_launcher.jobs, "record_launch", taken)
    scheduled_launcher.handle(drifted(ctx))
    assert jobs_api.submitted == []  # no job runs that nothing records
    assert scheduled_launcher.jobs.pending(MODEL) is not None


def test_a_claim_whose_job_was_never_submitted_is_retried_as_lost_after_the_grace(
    ctx: Context,
    jobs_api: RayThatRuns,
    scheduled_launcher: TrainingLauncherFunction,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A launcher claimed the slot and died before it submitted (or is submitting now).
    request = TrainingRequest(model=MODEL, reason=TrainingReason.DRIFT, urgent=True)
    claimed = scheduled_launcher.jobs.record_launch("train-fraud-claimed", request, limit=1)
    assert claimed.status == SUBMITTING
    scheduled_launcher.reconcile()
    assert scheduled_launcher.jobs.run("train-fraud-claimed").status == SUBMITTING  # type: ignore[union-attr]
    assert jobs_api.submitted == []  # within the grace, left to whoever is submitting it

    # Past the grace (SUBMIT_GRACE_S, a minute), the claim is asked about like any run.
    monkeypatch.setattr(launcher_module, "SUBMIT_GRACE_S", 0.0)
    scheduled_launcher.reconcile()
    assert scheduled_launcher.jobs.run("train-fraud-claimed").status == LOST  # type: ignore[union-attr]
    [retry] = jobs_api.submitted  # retried at once: urgent, resuming the claimed run
    assert dict(retry.metadata)["attempt"] == "2"
    assert retry.entrypoint.endswith("--run-name train-fraud-claimed")
    assert "training.retried" in audit_actions(ctx)
