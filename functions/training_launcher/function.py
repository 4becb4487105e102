"""The training launcher: turns events into Ray training jobs, one at a time per model.

The models it trains are the feature repository's model specs
(``feature_repo/models/<model>.yaml``). Policies, per event type:

- ``data.ingested`` trains each model of the dataset it names, only while the
  model has no version yet (the bootstrap); later issues add policies for new
  data (volume, schedule);
- ``drift.detected`` trains, urgently, for the drifted model;
- ``training.requested`` trains, with the reason it names;
- a PingSource's tick (``dev.knative.sources.ping``) trains the model its
  data names, for the reason ``schedule`` and not urgently: off-peak
  retraining that a run already going absorbs as its pending request.

At most one job runs per model. A request that arrives while one runs is kept
as the model's pending request (several merge into one) and is launched when
the launcher next sees that the running job ended. The launcher looks at the
job's status only when an event arrives; a later issue adds a watcher that
follows the job's end by itself.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from falaj.auth import write_token_file
from falaj.errors import EventError, FalajError
from falaj.events import (
    DataIngested,
    DriftDetected,
    EventType,
    ParsedEvent,
    Ping,
    TrainingReason,
    TrainingRequested,
)
from falaj.feature_repo import FeatureRepo, load_repo
from falaj.function import CloudEventFunction
from falaj.logs import get_logger
from falaj.registry import ModelRegistry, ModelVersion
from falaj.residency import Boundary
from falaj.settings import write_secrets_file
from functions.training_launcher.jobs import TrainingJobs, TrainingRequest, TrainingRun
from functions.training_launcher.ray_jobs import JOB_SECRETS, RayJobs, job_spec


class TrainingLauncherFunction(CloudEventFunction):
    name = "training-launcher"
    accepts = frozenset(
        {
            EventType.DATA_INGESTED,
            EventType.DRIFT_DETECTED,
            EventType.TRAINING_REQUESTED,
            EventType.PING,
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._jobs: TrainingJobs | None = None
        self._ray: RayJobs | None = None
        self._registry: ModelRegistry | None = None
        self._repo: FeatureRepo | None = None
        self._token_file: Path | None = None
        self._secrets_file: Path | None = None
        self.log = get_logger(function=self.name)

    def on_start(self) -> None:
        settings = self.ctx.settings
        self._jobs = TrainingJobs(self.ctx.paths.training)
        self._ray = RayJobs(settings.ray_jobs_address)
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

    @property
    def jobs(self) -> TrainingJobs:
        if self._jobs is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._jobs

    def stop(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None
        super().stop()

    def handle(self, event: ParsedEvent) -> None:
        models = self._models_of(event)
        if not models:
            self.log.info("training.no_model", event_type=event.type, event_id=event.id)
        for model in models:
            self._handle_for(event, model)

    def _handle_for(self, event: ParsedEvent, model: str) -> None:
        # The status first: a job that ended frees the model, and a bootstrap
        # job that succeeded has registered the version the policy looks for.
        running = self._refresh(model)
        request = self._request_for(event, model, running)
        if running is not None:
            if request is not None:
                self._coalesce(request, running)
            return
        pending = self.jobs.pending(model)
        if pending is not None and request is not None:
            request = pending.merged(request)
        elif pending is not None:
            request = pending
        if request is not None:
            self._launch(request)

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

    def _request_for(
        self, event: ParsedEvent, model: str, running: TrainingRun | None
    ) -> TrainingRequest | None:
        data = event.data
        if isinstance(data, DataIngested):
            # Bootstrap only: the first version. A job already running is that
            # bootstrap, so more data now does not queue a second one.
            if running is not None or self._registry_latest(model) is not None:
                return None
            return TrainingRequest(
                model=model, reason=TrainingReason.NEW_DATA, cause_event_id=event.id
            )
        if isinstance(data, DriftDetected):
            return TrainingRequest(
                model=model, reason=TrainingReason.DRIFT, urgent=True, cause_event_id=event.id
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

    def _registry_latest(self, model: str) -> ModelVersion | None:
        if self._registry is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._registry.latest(model)

    # -- jobs ----------------------------------------------------------------

    def _refresh(self, model: str) -> TrainingRun | None:
        """The model's running job after asking Ray how it is; None once it ended."""
        run = self.jobs.active(model)
        if run is None:
            return None
        status = self._ray_jobs().status(run.job_id)
        if status != run.status:
            self.jobs.update_status(run.job_id, status)
            self.log.info("training.status", model=model, job_id=run.job_id, status=status)
        return self.jobs.active(model)

    def _coalesce(self, request: TrainingRequest, running: TrainingRun) -> None:
        merged = self.jobs.add_pending(request)
        self.ctx.audit.record(
            "training.coalesced",
            actor=self.name,
            resource=f"model/{request.model}",
            region=self.ctx.settings.region,
            details={
                "running_job_id": running.job_id,
                "reason": str(merged.reason),
                "urgent": merged.urgent,
                "requests": merged.requests,
            },
        )
        self.log.info(
            "training.coalesced",
            model=request.model,
            running_job_id=running.job_id,
            requests=merged.requests,
        )

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
        # Submitted before it is recorded: if Ray refuses, nothing claims the
        # model and the pending request (if any) stays for the redelivery.
        self._ray_jobs().submit(spec)
        self.jobs.record_launch(job_id, request)
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
                "ray_address": settings.ray_jobs_address,
            },
        )
        self.log.info(
            "training.launched", model=request.model, job_id=job_id, reason=str(request.reason)
        )

    def _ray_jobs(self) -> RayJobs:
        if self._ray is None:
            raise FalajError(f"function {self.name} used before start()")
        return self._ray
