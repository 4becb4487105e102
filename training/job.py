"""The training job: ``python -m training.job --model fraud --reason drift --job-id ID``.

Submitted by the training launcher as a Ray job (a RayJob on a cluster). The
model's spec (``feature_repo/models/<model>.yaml``) says what it learns from and
how: its dataset, inputs, label and family. It reads the model's point-in-time
training set from Feast (its feature service), trains on Ray Train, scores
the newest 20% of rows it held out, exports ONNX and proves onnxruntime agrees
with torch, profiles the training data for drift scoring, and registers the
new model version with its lineage. Every step is announced as an event and
the outcome is audited; any failure emits ``training.failed`` and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from falaj.audit import Outcome
from falaj.context import Context
from falaj.deployments import DeploymentStore
from falaj.errors import ConfigError, RegistryError
from falaj.events import (
    EventData,
    EventType,
    ModelRegistered,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingReason,
    TrainingStage,
    TrainingStarted,
    make_event,
)
from falaj.feature_repo import load_repo
from falaj.features import FeatureStoreClient, feature_service_name, feature_view_name
from falaj.logs import configure_logging, get_logger
from falaj.profile import ReferenceProfile, categorical_columns
from falaj.publisher import EventPublisher
from falaj.registry import ModelRegistry, ModelVersion
from falaj.residency import Boundary
from falaj.settings import Settings
from falaj.tls import client_verify
from falaj.training_job import JobExit
from training.compare import compare_with_production
from training.data import split_by_time
from training.evaluate import evaluate
from training.export import export_checked
from training.lineage import code_commit, definition_digest, training_set_digest
from training.progress import ProgressTarget
from training.quantize import int8_variant
from training.train import TrainConfig, train

ACTOR = "training"


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    model: str
    reason: TrainingReason
    job_id: str
    #: The Ray Train run: the job id on a first try; a lost job's on a retry,
    #: so the retry resumes that run's last checkpoint.
    run_name: str


def parse_args(argv: Sequence[str] | None = None) -> JobRequest:
    parser = argparse.ArgumentParser(prog="python -m training.job", description=__doc__)
    parser.add_argument("--model", required=True, help="the model to train, e.g. fraud")
    parser.add_argument(
        "--reason", required=True, choices=[str(r) for r in TrainingReason], help="why it trains"
    )
    parser.add_argument("--job-id", required=True, help="the Ray job's submission id")
    parser.add_argument(
        "--run-name", help="the Ray Train run to start or resume (default: the job id)"
    )
    args = parser.parse_args(argv)
    return JobRequest(
        model=args.model,
        reason=TrainingReason(args.reason),
        job_id=args.job_id,
        run_name=args.run_name or args.job_id,
    )


class TrainingJob:
    """One run of the job: train, check, register, announce."""

    def __init__(
        self,
        ctx: Context,
        publisher: EventPublisher,
        request: JobRequest,
        *,
        config: TrainConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.publisher = publisher
        self.request = request
        #: None: the model spec's own (``TrainConfig.for_model``).
        self.config = config
        self.log = get_logger(job_id=request.job_id, model=request.model)

    def run(self) -> int:
        """Train and register; on any failure announce and audit it, and return 1."""
        request = self.request
        try:
            self.emit(
                EventType.TRAINING_STARTED,
                TrainingStarted(model=request.model, job_id=request.job_id, reason=request.reason),
            )
            version = self.train_and_register()
            self.emit(
                EventType.TRAINING_COMPLETED,
                TrainingCompleted(
                    model=request.model,
                    job_id=request.job_id,
                    version=version.version,
                    metrics=dict(version.metrics),
                ),
            )
            self.emit(
                EventType.MODEL_REGISTERED,
                ModelRegistered(
                    model=version.model,
                    version=version.version,
                    digest=version.digest,
                    metrics=dict(version.metrics),
                    location=version.location,
                    training_job_id=request.job_id,
                ),
            )
        except Exception as exc:
            # Every failure, expected or not, ends the same way: announced,
            # audited, and a non-zero exit that Ray records as FAILED. The
            # code says whether the announcement went out (the launcher
            # speaks for a job that could not).
            announced = self.fail(exc)
            return JobExit.FAILED_ANNOUNCED if announced else JobExit.FAILED_UNANNOUNCED
        self.ctx.audit.record(
            "training.completed",
            actor=ACTOR,
            resource=f"model/{version.model}/{version.version}",
            region=self.ctx.settings.region,
            details={
                "job_id": request.job_id,
                "reason": str(request.reason),
                "metrics": dict(version.metrics),
            },
        )
        self.log.info("training.completed", version=version.version, **dict(version.metrics))
        return JobExit.SUCCEEDED

    def train_and_register(self) -> ModelVersion:
        ctx, request = self.ctx, self.request
        ctx.policy.check_region(
            ctx.settings.region,
            resource=f"training job {request.job_id}",
            boundary=Boundary.JOB_LAUNCH,
        )
        repo = load_repo(ctx.settings)
        spec = repo.model(request.model)
        schema = repo.dataset(spec.dataset)
        config = self.config or TrainConfig.for_model(spec)
        store = FeatureStoreClient(ctx, schema, models=(spec,))
        # Registers the model's feature service, which Feast reads through, even
        # when the spec was added after ingest applied the repository.
        store.apply()
        training_set = store.training_frame(spec)
        data = split_by_time(
            training_set.frame,
            feature_names=spec.features,
            label=spec.label,
            timestamp=schema.timestamp,
            dropped=training_set.dropped.count,
        )
        self.log.info(
            "training.data",
            rows_train=data.train.rows,
            rows_held_out=data.held_out.rows,
            rows_dropped=data.rows_dropped,
            held_out_from=data.cutoff,
        )
        self.progress(TrainingStage.TRAINING, epochs=config.epochs)
        trained = train(
            ctx,
            data,
            run_name=request.run_name,
            config=config,
            progress=ProgressTarget(model=request.model, job_id=request.job_id),
        )
        self.progress(TrainingStage.EVALUATING, epoch=config.epochs, epochs=config.epochs)
        evaluation = evaluate(data.held_out.labels, trained.model.predict(data.held_out.features))
        self.progress(TrainingStage.EXPORTING, epoch=config.epochs, epochs=config.epochs)
        exported = export_checked(trained.model, data.held_out.features)
        int8 = int8_variant(exported.onnx_bytes, data.held_out.features, data.held_out.labels)
        self.log.info("training.int8", **int8.decision.to_lineage())
        profile = ReferenceProfile.from_columns(
            data.columns(),
            predictions=trained.model.predict(data.train.features),
            categorical=categorical_columns(schema, spec.features),
        )
        registry = ModelRegistry(ctx)
        parent = registry.latest(request.model)
        production = _production_version(ctx, registry, request.model)
        comparison = None
        if production is not None and production.feature_names == spec.features:
            # Verified before it is loaded, like every artifact; scored on our rows.
            comparison = compare_with_production(
                evaluation,
                registry.load_verified(request.model, production.version),
                data.held_out,
            )
            self.log.info("training.compared", **comparison.to_lineage())
        lineage: dict[str, Any] = {
            "training_job_id": request.job_id,
            "reason": str(request.reason),
            "dataset": schema.dataset,
            "feature_service": feature_service_name(spec.name),
            "family": str(spec.family),
            "offline_location": store.offline_root.as_uri(),
            # Where the data came from, exactly: the rows Feast returned, the
            # definition they were read through, and the code that trained.
            "training_set_sha256": training_set_digest(
                training_set.frame,
                [schema.entity, schema.timestamp, spec.label, *spec.features],
                order=[schema.entity, schema.timestamp],
            ),
            "feature_view": {
                "name": feature_view_name(schema.dataset),
                "sha256": definition_digest(
                    store.store.get_feature_view(feature_view_name(schema.dataset))
                ),
            },
            "code": code_commit(),
            "rows_used": data.rows_used,
            "rows_dropped": data.rows_dropped,
            "rows_dropped_by_reason": dict(training_set.dropped.by_reason),
            "rows_train": data.train.rows,
            "rows_held_out": data.held_out.rows,
            "held_out_from": data.cutoff,
            "parent_version": None if parent is None else parent.version,
            "production_version": None if production is None else production.version,
            "production_metrics": None if production is None else dict(production.metrics),
            # The production model scored on this version's held-out rows, and the verdict.
            "compared_with_production": None if comparison is None else comparison.to_lineage(),
            "onnx_parity": {
                "max_abs_diff": exported.max_abs_diff,
                "rows_checked": exported.rows_checked,
                "tolerance": exported.tolerance,
                "opset": exported.opset,
            },
            # Kept beside the fp32 model only where it pays (training.quantize).
            "int8": int8.decision.to_lineage(),
            "ray": {
                "workers": trained.workers,
                "device": trained.device,
                "checkpoint": trained.checkpoint,
                "run_name": request.run_name,
                # Set when this job resumed a run that failed or was lost.
                "resumed_from_epoch": trained.resumed_from_epoch,
                "train_loss": trained.metrics.get("train_loss"),
            },
            "train_config": {**asdict(config), "hidden": list(config.hidden)},
        }
        self.progress(TrainingStage.REGISTERING, epoch=config.epochs, epochs=config.epochs)
        return registry.register(
            request.model,
            onnx_bytes=exported.onnx_bytes,
            profile=profile,
            metrics=evaluation.metrics(),
            lineage=lineage,
            feature_names=spec.features,
            int8_onnx_bytes=int8.onnx_bytes if int8.decision.kept else None,
        )

    def progress(self, stage: TrainingStage, *, epoch: int = 0, epochs: int = 0) -> None:
        """Announce a stage; best effort: a broker that is away must not fail the training."""
        try:
            self.emit(
                EventType.TRAINING_PROGRESS,
                TrainingProgress(
                    model=self.request.model,
                    job_id=self.request.job_id,
                    stage=stage,
                    epoch=epoch,
                    epochs=epochs,
                ),
            )
        except Exception as exc:
            self.log.warning("training.progress_not_announced", stage=str(stage), error=str(exc))

    def emit(self, event_type: EventType, data: EventData) -> None:
        self.publisher.publish(
            make_event(
                event_type, data, region=self.ctx.settings.region, subject=self.request.model
            )
        )

    def fail(self, exc: Exception) -> bool:
        """Log, audit and announce a failure; True when the broker took the announcement."""
        request = self.request
        reason = f"{type(exc).__name__}: {exc}"
        self.log.error("training.failed", error=reason, error_type=type(exc).__name__)
        self.ctx.audit.record(
            "training.failed",
            actor=ACTOR,
            resource=f"model/{request.model}",
            region=self.ctx.settings.region,
            outcome=Outcome.FAILED,
            details={"job_id": request.job_id, "reason": str(request.reason), "error": reason},
        )
        try:
            self.emit(
                EventType.TRAINING_FAILED,
                TrainingFailed(model=request.model, job_id=request.job_id, reason=reason[:2000]),
            )
        except Exception as publish_error:
            # The failure is audited already; an unreachable broker must not hide it.
            self.log.error("training.failed_not_announced", error=str(publish_error))
            return False
        return True


def _production_version(ctx: Context, registry: ModelRegistry, model: str) -> ModelVersion | None:
    """The version serving ``model``'s stable traffic, if it is deployed."""
    with DeploymentStore(ctx) as deployments:
        split = deployments.get(model)
    if split is None:
        return None
    try:
        return registry.get(model, split.stable_version)
    except RegistryError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    request = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        token = settings.bearer_token()
    except ConfigError as exc:
        # Without settings there is no broker to tell; stderr lands in the Ray job's logs.
        print(f"training job {request.job_id}: {exc}", file=sys.stderr)
        return JobExit.CONFIG
    configure_logging(ACTOR, settings.log_level)
    ctx = Context.create(settings, actor=ACTOR)
    with EventPublisher(
        settings.broker_ingress, token, verify=client_verify(settings)
    ) as publisher:
        return TrainingJob(ctx, publisher, request).run()


if __name__ == "__main__":
    sys.exit(main())
