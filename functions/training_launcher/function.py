"""The training launcher: turns events into Ray training jobs, and follows them to their end.

The models it trains are the feature repository's model specs
(``feature_repo/models/<model>.yaml``). Policies, per event type:

- ``data.ingested`` trains each model of the dataset it names, only while the
  model has no version yet (the bootstrap);
- ``drift.detected`` trains for the drifted model: at once when the drift is
  severe (its largest score reaches ``training_urgent_psi``), otherwise as
  retraining that can wait for the off-peak window;
- ``training.requested`` trains, with the reason and urgency it names;
- a PingSource's tick (``dev.knative.sources.ping``) trains the model its data
  names, for the reason ``schedule`` and not urgently.

A request goes out when the model runs fewer than ``training_max_concurrent``
jobs and, unless it is urgent, the off-peak window is open; until then it waits
as the model's pending request (later ones merge into it; none is lost).

The job's own events (``training.started``, ``.progress``, ``.completed``,
``.failed``) come back here: they record its progress, and its end frees the
model for the pending request at once. A watcher thread also asks Ray about
every job that has not ended, every ``training_watch_interval_s``, so a job
that could not announce its end (killed, out of memory, stopped, lost with
the head) still ends in ``training.failed`` with the reason, and a lost job is
retried, resuming its checkpoints, up to ``MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

from falaj.audit import Outcome
from falaj.auth import write_token_file
from falaj.errors import EventError, FalajError, ModelBusy
from falaj.events import (
    DataIngested,
    DriftDetected,
    EventType,
    ParsedEvent,
    Ping,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingReason,
    TrainingRequested,
    TrainingStage,
    TrainingStarted,
)
from falaj.feature_repo import FeatureRepo, load_repo
from falaj.function import CloudEventFunction
from falaj.kubernetes_api import in_cluster_api_client
from falaj.logs import get_logger
from falaj.metrics import TrainingOutcome
from falaj.registry import ModelRegistry, ModelVersion
from falaj.residency import Boundary
from falaj.settings import write_secrets_file
from falaj.training_job import MAX_ATTEMPTS, JobExit
from falaj.training_runs import (
    ACTIVE_STATES,
    SUBMITTING,
    TrainingJobs,
    TrainingRequest,
    TrainingRun,
)
from functions.training_launcher.kuberay import KubeRayJobs
from functions.training_launcher.ray_jobs import (
    JOB_SECRETS,
    LOST,
    JobsBackend,
    JobState,
    RayJobs,
    job_spec,
)
from functions.training_launcher.rayjob import cluster_target, load_template

#: How long a claimed run may take to be submitted before a job Ray does not know of
#: counts as lost: a submission is one HTTP call (or one RayJob created), seconds at most.
SUBMIT_GRACE_S = 60.0

#: The job's own events: they report its progress and its end.
JOB_EVENTS = frozenset(
    {
        EventType.TRAINING_STARTED,
        EventType.TRAINING_PROGRESS,
        EventType.TRAINING_COMPLETED,
        EventType.TRAINING_FAILED,
    }
)


class TrainingLauncherFunction(CloudEventFunction):
    name = "training-launcher"
    accepts = frozenset(
        {
            EventType.DATA_INGESTED,
            EventType.DRIFT_DETECTED,
            EventType.TRAINING_REQUESTED,
            EventType.PING,
            *JOB_EVENTS,
        }
    )

    def __init__(self, *, watch: bool = True) -> None:
        super().__init__()
        self._jobs: TrainingJobs | None = None
        self._ray: JobsBackend | None = None
        self._registry: ModelRegistry | None = None
        self._repo: FeatureRepo | None = None
        self._token_file: Path | None = None
        self._secrets_file: Path | None = None
        # The handler and the watcher share the job store and the publisher.
        self._lock = threading.Lock()
        self._watch = watch
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        settings = self.ctx.settings
        self._jobs = TrainingJobs(self.ctx.paths.training)
        self._ray = self._jobs_backend()
        self._registry = ModelRegistry(self.ctx)
        self._repo = load_repo(settings)
        self._token_file = settings.token_file
        token = settings.bearer_token()
        if settings.token is not None and token is not None:
            # The job needs the token to publish its events, but Ray shows a
            # job's environment on its dashboard: hand over a 0600 file instead.
            self._token_file = self.ctx.paths.keys / f"{self.name}.token"
            write_token_file(self._token_file, token)
        # The Feast stores' URLs hold passwords: a 0600 file too.
        secrets_file = self.ctx.paths.keys / f"{self.name}.secrets"
        wrote = write_secrets_file(secrets_file, settings, JOB_SECRETS)
        self._secrets_file = secrets_file if wrote else None
        if self._watch:
            self._stopping.clear()
            self._watcher = threading.Thread(
                target=self._watch_jobs, name=f"{self.name}-watcher", daemon=True
            )
            self._watcher.start()

    def _jobs_backend(self) -> JobsBackend:
        """The Ray Jobs API of a head (local, ``falaj up``), or KubeRay on a cluster."""
        settings = self.ctx.settings
        if settings.training_backend == "kuberay":
            return KubeRayJobs(
                in_cluster_api_client("training-launcher"),
                target=cluster_target(settings),
                template=load_template(settings.manifests_dir),
                policy=self.ctx.policy,
            )
        return RayJobs(settings.ray_jobs_address, token_file=settings.ray_token_file)

    @property
    def jobs(self) -> TrainingJobs:
        if self._jobs is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._jobs

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        with self._lock:
            if event.type in JOB_EVENTS:
                self._record_job_event(event)
                return
            models = self._models_of(event)
            if not models:
                self.log.info("training.no_model", event_type=event.type, event_id=event.id)
            for model in models:
                self._handle_for(event, model)

    def reconcile(self, now: datetime | None = None) -> None:
        """Ask Ray about every run that has not ended, and launch what may start now."""
        with self._lock:
            for model in self.jobs.models():
                self._reconcile(model, now or datetime.now(UTC))

    def _watch_jobs(self) -> None:
        interval = self.ctx.settings.training_watch_interval_s
        while not self._stopping.wait(interval):
            try:
                self.reconcile()
            except FalajError as exc:
                # Ray or the broker away: the next round tries again.
                self.log.warning("training.watch_failed", error=str(exc))

    def _handle_for(self, event: ParsedEvent, model: str) -> None:
        now = datetime.now(UTC)
        # The status first: a job that ended frees the model, and a bootstrap
        # job that succeeded has registered the version the policy looks for.
        self._refresh(model)
        request = self._request_for(event, model)
        if request is not None:
            self.jobs.add_pending(request)
        launched = self._launch_pending(model, now)
        if request is not None and not launched:
            self._audit_waiting(model, now)

    # -- policy --------------------------------------------------------------

    def _models_of(self, event: ParsedEvent) -> list[str]:
        """The models an event is about: the one it names, or its dataset's."""
        if self._repo is None:
            raise FalajError(f"function {self.name} used before start()")
        repo, data = self._repo, event.data
        if isinstance(data, DataIngested):
            if data.dataset not in repo.datasets:
                raise EventError(
                    f"{event.type} names dataset {data.dataset!r}; the feature repository holds "
                    + ", ".join(repo.datasets),
                    problems=[f"data.dataset: {data.dataset!r} is not a dataset"],
                )
            return [spec.name for spec in repo.models_of(data.dataset)]
        if isinstance(data, DriftDetected | TrainingRequested | Ping):
            if data.model not in repo.models:
                raise EventError(
                    f"{event.type} asks to train model {data.model!r}; this launcher trains "
                    + (", ".join(repo.models) or "no model")
                    + " (each model needs a spec, feature_repo/models/<model>.yaml)",
                    problems=[f"data.model: {data.model!r} is not a trainable model"],
                )
            return [data.model]
        raise EventError(f"{self.name} has no policy for {event.type}")

    def _request_for(self, event: ParsedEvent, model: str) -> TrainingRequest | None:
        data = event.data
        if isinstance(data, DataIngested):
            # Bootstrap only: the first version. A job already running or
            # waiting is that bootstrap, so more data now adds nothing.
            if (
                self.jobs.active(model)
                or self.jobs.pending(model) is not None
                or self._registry_latest(model) is not None
            ):
                return None
            return TrainingRequest(
                model=model, reason=TrainingReason.NEW_DATA, cause_event_id=event.id
            )
        if isinstance(data, DriftDetected):
            worst = max(data.scores.values(), default=0.0)
            return TrainingRequest(
                model=model,
                reason=TrainingReason.DRIFT,
                urgent=worst >= self.ctx.settings.training_urgent_psi,
                cause_event_id=event.id,
            )
        if isinstance(data, TrainingRequested):
            return TrainingRequest(
                model=model,
                reason=data.reason,
                urgent=data.urgent,
                cause_event_id=data.cause_event_id or event.id,
            )
        if isinstance(data, Ping):
            return TrainingRequest(
                model=model, reason=TrainingReason.SCHEDULE, urgent=False, cause_event_id=event.id
            )
        raise EventError(f"{self.name} has no policy for {event.type}")

    def _may_start(self, request: TrainingRequest, now: datetime) -> bool:
        """Urgent requests start at once; the rest wait for the off-peak window, if one is set."""
        window = self.ctx.settings.training_off_peak
        return (
            request.urgent
            or window is None
            or window.contains(now, self.ctx.settings.training_zone)
        )

    def _registry_latest(self, model: str) -> ModelVersion | None:
        if self._registry is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._registry.latest(model)

    # -- jobs ----------------------------------------------------------------

    def _reconcile(self, model: str, now: datetime) -> None:
        self._refresh(model)
        self._launch_pending(model, now)

    def _refresh(self, model: str) -> None:
        """Ask Ray how the model's unfinished runs are, and settle those that ended."""
        for run in self.jobs.active(model):
            if run.status == SUBMITTING and _age_s(run) < SUBMIT_GRACE_S:
                continue  # another launcher is submitting it right now
            state = self._ray_jobs().state(run.job_id)
            if state.status == run.status:
                continue
            self.jobs.update_status(run.job_id, state.status, state.message)
            self.log.info("training.status", model=model, job_id=run.job_id, status=state.status)
            if state.status not in ACTIVE_STATES:
                self._ended(run, state)

    def _ended(self, run: TrainingRun, state: JobState) -> None:
        """A run ended: speak for it when it could not, and retry it when it was lost."""
        if state.status == "SUCCEEDED" or state.exit_code == JobExit.FAILED_ANNOUNCED:
            return  # the job announced its own end
        if run.announced is not None:
            return  # its training.failed came back here already
        if state.status == LOST and run.attempt < MAX_ATTEMPTS:
            self._retry(run)
            return
        reason = _ending_reason(run, state)
        self.ctx.audit.record(
            "training.failed",
            actor=self.name,
            resource=f"model/{run.model}",
            region=self.ctx.settings.region,
            outcome=Outcome.FAILED,
            details={"job_id": run.job_id, "status": state.status, "error": reason},
        )
        self._settle(run.job_id, "failed", reason)
        self.emit(
            EventType.TRAINING_FAILED,
            TrainingFailed(model=run.model, job_id=run.job_id, reason=reason),
            subject=run.model,
        )
        self.log.error("training.failed", model=run.model, job_id=run.job_id, error=reason)

    def _retry(self, run: TrainingRun) -> None:
        """Queue a lost run again, to resume its Ray Train run; urgent, as it was promised."""
        retry = TrainingRequest(
            model=run.model,
            reason=run.reason,
            urgent=True,
            cause_event_id=run.cause_event_id,
            run_name=run.run_name,
            attempt=run.attempt + 1,
        )
        self.jobs.add_pending(retry)
        self.ctx.audit.record(
            "training.retried",
            actor=self.name,
            resource=f"model/{run.model}",
            region=self.ctx.settings.region,
            details={"lost_job_id": run.job_id, "run_name": run.run_name, "attempt": retry.attempt},
        )
        self.log.warning(
            "training.retried", model=run.model, lost_job_id=run.job_id, attempt=retry.attempt
        )

    def _launch_pending(self, model: str, now: datetime) -> bool:
        """Launch the model's pending request if a slot is free and it may start now."""
        request = self.jobs.pending(model)
        if request is None or not self._may_start(request, now):
            return False
        if len(self.jobs.active(model)) >= self.ctx.settings.training_max_concurrent:
            return False
        try:
            self._launch(request)
        except ModelBusy:
            return False  # another replica took the slot; the request still waits
        return True

    def _audit_waiting(self, model: str, now: datetime) -> None:
        """Say why the model's request waits: runs going, or the off-peak window closed."""
        request = self.jobs.pending(model)
        if request is None:
            return
        settings = self.ctx.settings
        running = [run.job_id for run in self.jobs.active(model)]
        details: dict[str, object] = {
            "reason": str(request.reason),
            "urgent": request.urgent,
            "requests": request.requests,
            "running_job_ids": running,
        }
        if settings.training_off_peak is not None and not self._may_start(request, now):
            action = "training.deferred"
            details["off_peak"] = str(settings.training_off_peak)
            details["starts_after"] = settings.training_off_peak.next_opening(
                now, settings.training_zone
            ).isoformat()
        else:
            action = "training.coalesced"
        self.ctx.audit.record(
            action,
            actor=self.name,
            resource=f"model/{model}",
            region=settings.region,
            details=details,
        )
        self.log.info(action, model=model, requests=request.requests, running_job_ids=running)

    def _launch(self, request: TrainingRequest) -> None:
        settings = self.ctx.settings
        self.ctx.policy.check_region(
            settings.region, resource=f"ray job for {request.model}", boundary=Boundary.JOB_LAUNCH
        )
        job_id = f"train-{request.model}-{uuid.uuid4().hex[:12]}"
        spec = job_spec(
            job_id,
            request,
            settings,
            token_file=self._token_file,
            secrets_file=self._secrets_file,
        )
        # The slot is claimed before the job is submitted, so a launcher that
        # finds it taken (ModelBusy) submits nothing. If Ray refuses, the claim
        # is withdrawn and the request waits again for the redelivery; if this
        # process dies in between, the claim outlives SUBMIT_GRACE_S, Ray knows
        # no such job, and it is retried as lost.
        self.jobs.record_launch(job_id, request, limit=settings.training_max_concurrent)
        try:
            self._ray_jobs().submit(spec)
        except BaseException:
            self.jobs.withdraw_launch(job_id, request)
            raise
        self.jobs.update_status(job_id, "PENDING")
        self.ctx.audit.record(
            "training.launched",
            actor=self.name,
            resource=f"model/{request.model}",
            region=settings.region,
            details={
                "job_id": job_id,
                "reason": str(request.reason),
                "urgent": request.urgent,
                "cause_event_id": request.cause_event_id,
                "requests": request.requests,
                "run_name": request.run_name or job_id,
                "attempt": request.attempt,
                "ray_address": settings.ray_jobs_address,
            },
        )
        self.log.info(
            "training.launched", model=request.model, job_id=job_id, reason=str(request.reason)
        )

    # -- the job's own events ------------------------------------------------

    def _record_job_event(self, event: ParsedEvent) -> None:
        data = event.data
        if isinstance(data, TrainingStarted):
            known = self.jobs.record_progress(
                data.job_id, stage=TrainingStage.DATA, epoch=0, epochs=0, train_loss=None
            )
        elif isinstance(data, TrainingProgress):
            known = self.jobs.record_progress(
                data.job_id,
                stage=data.stage,
                epoch=data.epoch,
                epochs=data.epochs,
                train_loss=data.train_loss,
            )
        elif isinstance(data, TrainingCompleted):
            known = self._settle(data.job_id, "completed")
        elif isinstance(data, TrainingFailed):
            known = self._settle(data.job_id, "failed", data.reason)
        else:
            raise EventError(f"{self.name} has no policy for {event.type}")
        if not known:
            # A job someone else started (a benchmark, another launcher's home).
            self.log.info("training.unknown_job", event_type=event.type, event_id=event.id)
            return
        if event.type in (EventType.TRAINING_COMPLETED, EventType.TRAINING_FAILED):
            # Its end frees the model: the pending request need not wait for the watcher.
            self._reconcile(data.model, datetime.now(UTC))

    def _settle(self, job_id: str, announced: str, reason: str | None = None) -> bool:
        """Store a run's announced end, counted once: the job's own word and the
        launcher's (its ``training.failed`` comes back here) are one end. False: not ours."""
        run = self.jobs.run(job_id)
        known = self.jobs.record_announced(job_id, announced, reason)
        if run is not None and run.announced is None:
            outcome = (
                TrainingOutcome.SUCCEEDED if announced == "completed" else TrainingOutcome.FAILED
            )
            self.metrics.training_runs.labels(run.model, outcome).inc()
            took = datetime.now(UTC) - datetime.fromisoformat(run.submitted)
            self.metrics.training_duration_seconds.labels(run.model).observe(
                max(took.total_seconds(), 0.0)
            )
        return known

    def _ray_jobs(self) -> JobsBackend:
        if self._ray is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ray


def _age_s(run: TrainingRun) -> float:
    """Seconds since the run's slot was claimed."""
    return (datetime.now(UTC) - datetime.fromisoformat(run.submitted)).total_seconds()


def _ending_reason(run: TrainingRun, state: JobState) -> str:
    """The reason a job that could not announce its end gets, in the cluster's own words."""
    said = f": {state.message.strip()[:1500]}" if state.message else ""
    if state.status == LOST:
        return (
            f"training job {run.job_id} was lost {run.attempt} time(s) (the Ray head forgot it)"
            f"; gave up after {MAX_ATTEMPTS} attempts{said}"
        )
    if state.status == "STOPPED":
        return f"training job {run.job_id} was stopped before it finished{said}"
    code = "no exit code" if state.exit_code is None else f"exit code {state.exit_code}"
    return f"training job {run.job_id} ended {state.status} ({code}) without announcing why{said}"
