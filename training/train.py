"""Data-parallel training on Ray Train v2 (``TorchTrainer``), checkpointed and resumable.

Each worker takes an equal, contiguous slice of one seeded shuffle of the
training rows (equal, so every rank runs the same number of steps and DDP's
all-reduce never waits for a rank that has finished). On CPU the workers talk
over gloo; with GPUs over NCCL, and the forward pass runs under bf16 autocast
(the loss is computed in float32). Seeds are fixed so a rerun on the same data
and the same worker count gives the same model.

Checkpoints. Every ``checkpoint_every`` epochs, and after the last, rank 0
reports a checkpoint into the run's directory (``<training>/runs/<run name>``,
in-region): the weights, the optimizer's state and the number of epochs done.
The model comes back from the last one. A checkpoint waits until
``checkpoint_min_interval_s`` have passed since the one before: Ray Train's
controller takes one report per worker each health check
(``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default) and a worker's next
report blocks until it has: epochs shorter than that, each checkpointed, train
at one epoch a health check (measured with a checkpoint after every epoch: an
epoch of ``benchmarks/training.py``'s quick run took 1.13 s instead of 0.09 s).

Resuming. A worker that dies (a spot node taken away, a process killed) fails
the worker group; Ray Train restarts it, up to ``max_failures`` times, and every
worker starts from ``ray.train.get_checkpoint()``. A new ``train()`` with the
same run name and storage resumes too: Ray Train v2 reloads the run's
checkpoint list from its directory (``checkpoint_manager_snapshot.json``) and
hands the latest to the workers, so the job that the launcher resubmits after a
failure needs nothing more. A checkpoint only resumes the run that wrote it:
it carries a fingerprint of what decides the weights (rows, network, config,
worker count); one that does not match is ignored and the run starts afresh.

A resumed run ends with the same weights, bit for bit, as one that never
stopped: the weights and AdamW's moments are saved exactly; the shuffle of an
epoch is drawn from a generator seeded by (seed, rank, epoch), not from one
carried across epochs, so no generator state has to survive the restart; the
network has no dropout, so the shuffle is the only randomness after
initialisation (which the checkpoint overwrites); and the gradient all-reduce
over a fixed number of ranks adds in a fixed order.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchConfig, TorchTrainer
from torch.nn import functional

from falaj.context import Context
from falaj.errors import ConfigError
from falaj.logs import get_logger
from falaj.model_spec import MLP_HIDDEN, ModelSpec
from falaj.residency import Boundary
from training.data import TrainingData
from training.errors import TrainingError, WorkersFailed
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP
from training.progress import EpochAnnouncer, ProgressTarget

CHECKPOINT_FILE = "model.pt"
#: Checkpoints kept per run: the latest, which a resumed run starts from, and
#: the one before it, to go back to by hand should the latest prove bad (a loss
#: that diverged). Each holds the whole state; more would be disk for nothing.
CHECKPOINTS_KEPT = 2
#: The exit status of a worker that the chaos hook (``fail_after_epoch``) ends.
CHAOS_EXIT = 75
#: TrainConfig fields that say how a run is carried out, not what it learns:
#: left out of the fingerprint, so a retry may change them and still resume.
_HOW_IT_RUNS = frozenset(
    {"checkpoint_every", "checkpoint_min_interval_s", "max_failures", "fail_after_epoch"}
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of one run; checked as a whole, keyword-only."""

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    #: The network's hidden layers; () trains a logistic regression.
    hidden: tuple[int, ...] = MLP_HIDDEN
    seed: int = 0
    #: Rank 0 checkpoints every this many epochs, and after the last. Every
    #: epoch by default: a checkpoint of this network is a few kB written to
    #: local disk, tens of milliseconds with Ray's report (``checkpoint_s`` in
    #: ``benchmarks/training.py``), and every epoch not checkpointed is work a
    #: failure throws away...
    checkpoint_every: int = 1
    #: ... once this many seconds have passed since the last checkpoint (the
    #: last epoch's is never skipped). Ray Train takes a report per health
    #: check, 2 s by default, and blocks the next one until then: checkpoints
    #: closer together stall the training (the module docstring). 0: every
    #: ``checkpoint_every`` epochs, however short.
    checkpoint_min_interval_s: float = 2.0
    #: Worker-group failures (a worker that raised or died) that Ray Train
    #: recovers from by restarting the workers from the last checkpoint; then
    #: the run fails. A node that the cloud reclaims with notice (a spot
    #: eviction Ray sees coming) counts against Ray's own preemption budget,
    #: not this one. 2: enough for a lost node or two; a bug that fails every
    #: attempt stops after three.
    max_failures: int = 2
    #: For tests and chaos drills only: after this many epochs (and their
    #: checkpoint, if one was due), the last rank's process exits as a reclaimed
    #: node's would, once per run (a marker file in the run's directory
    #: remembers). None: never.
    fail_after_epoch: int | None = None

    @classmethod
    def for_model(cls, spec: ModelSpec) -> TrainConfig:
        """The config a model spec asks for: its family's layers, its options over the defaults."""
        return cls(hidden=spec.hidden, **spec.training.overrides())

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size: expected >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate: expected > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay: expected >= 0, got {self.weight_decay}")
        if self.seed < 0:
            # The per-epoch shuffles are seeded from (seed, rank, epoch) by numpy's
            # SeedSequence, which takes non-negative integers only.
            problems.append(f"seed: expected >= 0, got {self.seed}")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every: expected >= 1 epoch, got {self.checkpoint_every}")
        if not self.checkpoint_min_interval_s >= 0:
            problems.append(
                f"checkpoint_min_interval_s: expected >= 0 seconds, "
                f"got {self.checkpoint_min_interval_s}"
            )
        if self.max_failures < 0:
            problems.append(
                f"max_failures: expected >= 0 (0: fail on the first worker failure), "
                f"got {self.max_failures}"
            )
        if self.fail_after_epoch is not None and not 1 <= self.fail_after_epoch < self.epochs:
            problems.append(
                f"fail_after_epoch: expected None or 1 to {self.epochs - 1} (a failure between "
                f"two epochs of this run), got {self.fail_after_epoch}"
            )
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainedModel:
    model: ProbabilityModel
    #: What rank 0 reported with the final checkpoint (loss, epochs, workers),
    #: and its timings of this attempt's epochs (``epochs_s``, ``epoch_s_steady``,
    #: ``checkpoint_s``).
    metrics: dict[str, float]
    checkpoint: str
    workers: int
    device: str
    #: The epochs done in the checkpoint the last attempt started from; None
    #: when it started from scratch. Set after a worker failure Ray recovered
    #: from, or when this call resumed a run of the same name that had failed
    #: (or had finished: then it equals the epochs, and no epoch ran again).
    resumed_from_epoch: int | None = None


def train(
    ctx: Context,
    data: TrainingData,
    *,
    run_name: str,
    config: TrainConfig | None = None,
    progress: ProgressTarget | None = None,
) -> TrainedModel:
    """Fit the model on ``data.train`` with ``settings.training_workers`` Ray workers.

    A run of the same ``run_name`` that failed before is resumed from its last
    checkpoint. Raises ``WorkersFailed`` when the workers fail more often than
    ``config.max_failures`` allows. With ``progress``, rank 0 announces every
    epoch as ``training.progress`` of that job.
    """
    config = config or TrainConfig()
    storage = ctx.paths.training / "runs"
    # Checkpoints hold the weights: they are a model artifact and stay in-region.
    ctx.policy.check_location(storage.as_uri(), boundary=Boundary.STORAGE_WRITE)
    storage.mkdir(parents=True, exist_ok=True)
    # The worker pool decides (on a cluster the driver runs on a head without a
    # GPU); only when nobody said does the driver look for CUDA itself.
    use_gpu = ctx.settings.training_use_gpu
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    workers = ctx.settings.training_workers
    spec = NetworkSpec(features=len(data.feature_names), hidden=config.hidden)
    scaling = Standardisation.fit(data.train.features)
    trainer = TorchTrainer(
        # Ray Train v2 hands rank 0's return value back in Result.return_value;
        # the type hints mypy reads are v1's (ray.train binds v1 names first),
        # where the loop returns None and Result has no return_value.
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={
            "spec": spec.to_json(),
            "config": asdict(config),
            "mean": scaling.mean,
            "scale": scaling.scale,
            "features": data.train.features,
            "labels": data.train.labels,
            "fingerprint": run_fingerprint(data, spec, config, workers=workers),
            "run_dir": str(storage / run_name),
            "progress": None if progress is None else asdict(progress),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise WorkersFailed(
            f"Ray Train run {run_name!r} failed, with {config.max_failures} worker restart(s) "
            f"allowed (TrainConfig.max_failures): {_what_failed(exc)}. Its checkpoints stay "
            f"in {storage / run_name}: training again with run name {run_name!r} resumes "
            "from the latest; a larger max_failures lets Ray restart the workers itself"
        ) from exc
    if result.checkpoint is None:
        raise TrainingError(
            f"Ray Train run {run_name!r} ended without a checkpoint; the training loop must "
            "report one from rank 0"
        )
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    mlp = TabularMLP(NetworkSpec.from_json(saved["spec"]))
    mlp.load_state_dict(saved["state_dict"])
    attempt = dict(result.return_value or {})  # type: ignore[attr-defined]
    resumed = attempt.pop("resumed_from_epoch", None)
    return TrainedModel(
        model=ProbabilityModel(mlp).eval(),
        metrics={
            name: float(value) for name, value in {**(result.metrics or {}), **attempt}.items()
        },
        checkpoint=result.checkpoint.path,
        workers=workers,
        device="cuda" if use_gpu else "cpu",
        resumed_from_epoch=None if resumed is None else int(resumed),
    )


def run_fingerprint(
    data: TrainingData, spec: NetworkSpec, config: TrainConfig, *, workers: int
) -> str:
    """A digest of what decides the weights: a checkpoint resumes only a run with the same.

    The rows, the network, the hyper-parameters and the worker count (each rank
    trains on its own slice with its own shuffles).
    """
    learned = {name: value for name, value in asdict(config).items() if name not in _HOW_IT_RUNS}
    digest = hashlib.sha256(
        json.dumps(
            {"config": learned, "spec": spec.to_json(), "workers": workers}, sort_keys=True
        ).encode()
    )
    for array in (data.train.features, data.train.labels):
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def train_loop_per_worker(loop: dict[str, Any]) -> dict[str, float | int | None] | None:
    """One Ray Train worker: its slice of the rows, DDP, a checkpoint every few epochs.

    Rank 0 returns its timings and the epoch it resumed from (``Result.return_value``).
    """
    config = TrainConfig(**{**loop["config"], "hidden": tuple(loop["config"]["hidden"])})
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Same seed on every rank: identical initial weights (DDP also broadcasts
    # rank 0's), and the same global shuffle from which each rank takes its slice.
    ray.train.torch.enable_reproducibility(config.seed)
    device = ray.train.torch.get_device()
    features = torch.from_numpy(np.array(loop["features"], dtype=np.float32))
    labels = torch.from_numpy(np.array(loop["labels"], dtype=np.float32)).reshape(-1, 1)
    order = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(config.seed))
    per_rank = features.shape[0] // world
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    features, labels = features[mine].to(device), labels[mine].to(device)

    spec = NetworkSpec.from_json(loop["spec"])
    mlp = TabularMLP(spec, Standardisation(mean=loop["mean"], scale=loop["scale"]))
    saved = _resume_state(loop["fingerprint"], rank=rank)
    if saved is not None:
        # Before DDP wraps the module: DDP broadcasts rank 0's weights as it starts.
        mlp.load_state_dict(saved["state_dict"])
    model = ray.train.torch.prepare_model(
        mlp,
        parallel_strategy_kwargs={
            # The buffers (the standardisation) are equal on every rank and never
            # change; DDP would otherwise broadcast them before every forward pass.
            "broadcast_buffers": False,
            # Gradients live in the all-reduce bucket itself: one copy fewer a step.
            "gradient_as_bucket_view": True,
        },
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    start = 0
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        start = int(saved["epoch"])
    use_bf16 = device.type == "cuda"
    announcer = (
        EpochAnnouncer(ProgressTarget(**loop["progress"]), epochs=config.epochs)
        if rank == 0 and loop.get("progress")
        else None
    )
    epoch_seconds: list[float] = []
    checkpoint_seconds: list[float] = []
    last_checkpoint = time.perf_counter()
    for epoch in range(start, config.epochs):
        epoch_started = time.perf_counter()
        model.train()
        total, count = torch.zeros((), device=device), 0
        for batch in torch.randperm(per_rank, generator=_shuffler(config.seed, rank, epoch)).split(
            config.batch_size
        ):
            batch = batch.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(features[batch])
            loss = functional.binary_cross_entropy_with_logits(logits.float(), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * batch.numel()
            count += batch.numel()
        done = epoch + 1
        # Rank 0's clock decides and the all-reduce tells the others, so that
        # every rank reports (Ray's report is a barrier) or none does.
        now = time.perf_counter()
        wanted = rank == 0 and checkpoint_due(
            config,
            done,
            since_s=now - last_checkpoint,
            epoch_s=(sum(epoch_seconds) + now - epoch_started) / (len(epoch_seconds) + 1),
        )
        train_loss, due = _epoch_end(total, count, due=wanted, device=device)
        if due:
            checkpoint_started = time.perf_counter()
            metrics = {"train_loss": train_loss, "epochs": float(done), "workers": float(world)}
            _report(metrics, model, optimizer, spec, epoch=done, rank=rank, loop=loop)
            checkpoint_seconds.append(time.perf_counter() - checkpoint_started)
            last_checkpoint = time.perf_counter()
        # An epoch's time includes its checkpoint, when it took one.
        epoch_seconds.append(time.perf_counter() - epoch_started)
        if announcer is not None:
            announcer.epoch_done(done, train_loss)
        if config.fail_after_epoch == done and rank == world - 1:
            _fail_once(Path(loop["run_dir"]), epoch=done)

    if announcer is not None:
        announcer.close()
    if rank != 0:
        return None
    return {
        "resumed_from_epoch": None if saved is None else start,
        # Wall time of this attempt's epochs, apart from the run's fixed start-up
        # (benchmarks/training.py); the steady one after the first, which warms
        # caches up.
        "epochs_s": sum(epoch_seconds),
        "epoch_s_steady": float(np.mean(epoch_seconds[1:] or epoch_seconds or [0.0])),
        "checkpoint_s": float(np.mean(checkpoint_seconds or [0.0])),
    }


def _resume_state(fingerprint: str, *, rank: int) -> dict[str, Any] | None:
    """The state to go on from: the run's latest checkpoint, if it was written by this run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        saved: dict[str, Any] = torch.load(
            Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True
        )
    if saved.get("fingerprint") != fingerprint:
        if rank == 0:
            get_logger().warning(
                "training.checkpoint_ignored",
                checkpoint=checkpoint.path,
                reason="written by a run with other rows, network, config or worker count",
            )
        return None
    return saved


def _report(
    metrics: dict[str, float],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    spec: NetworkSpec,
    *,
    epoch: int,
    rank: int,
    loop: dict[str, Any],
) -> None:
    """Every rank reports (Ray Train's report is a barrier); rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        module = getattr(model, "module", model)  # unwrap DDP
        state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
        torch.save(
            {
                "spec": spec.to_json(),
                "state_dict": state,
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "fingerprint": loop["fingerprint"],
            },
            Path(directory) / CHECKPOINT_FILE,
        )
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _shuffler(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The generator of one rank's shuffle in one epoch: a function of the three alone.

    So a run resumed at epoch k shuffles epoch k as the uninterrupted run did,
    with no generator state saved from before.
    """
    (state,) = np.random.SeedSequence((seed, rank, epoch)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state))


def _fail_once(run_dir: Path, *, epoch: int) -> None:
    """The chaos hook: this worker's process vanishes, as on a node taken away; once a run."""
    marker = run_dir / f"chaos-failed-after-epoch-{epoch}"
    if marker.exists():
        return
    # Not before the controller has committed this epoch's checkpoint: a failure
    # a moment earlier resumes from the one before, and a test could not tell which.
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    marker.touch(exist_ok=False)
    os._exit(CHAOS_EXIT)  # no exception, no clean-up: what a reclaimed node leaves


def checkpoint_due(config: TrainConfig, done: int, *, since_s: float, epoch_s: float) -> bool:
    """Whether ``done`` epochs call for a checkpoint, ``since_s`` after the last one.

    ``epoch_s``: the epochs' mean seconds so far, to tell when the last epoch is near.
    """
    if done == config.epochs:
        return True  # the model comes back from it
    if done % config.checkpoint_every or since_s < config.checkpoint_min_interval_s:
        return False
    # The last epoch's checkpoint, never skipped, would follow this one sooner
    # than the interval and wait for Ray to take this one: leave this one out.
    return (config.epochs - done) * epoch_s >= config.checkpoint_min_interval_s


def _epoch_end(
    total: torch.Tensor, count: int, *, due: bool, device: torch.device
) -> tuple[float, bool]:
    """The mean loss over every rank's rows, and whether rank 0 (alone ``due``) checkpoints.

    One all-reduce for both: the loss needs one anyway.
    """
    summed = torch.stack(
        [
            total.float(),
            torch.tensor(float(count), device=device),
            torch.tensor(float(due), device=device),
        ]
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(summed)
    return float(summed[0] / summed[1]), bool(summed[2] > 0)


def _what_failed(exc: TrainingFailedError) -> str:
    """What each failed rank said, in a line each; Ray's own text carries whole tracebacks."""
    failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    if not failures:
        return _gist(exc)
    return "; ".join(f"rank {rank}: {_gist(error)}" for rank, error in sorted(failures.items()))


def _gist(error: BaseException) -> str:
    """The error's type and first line, and the line that says a process died, if one does."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    gist = [lines[0][:200]] if lines else []
    gist += [line for line in lines[1:] if "died" in line][:1]
    return f"{type(error).__name__}: {' '.join(gist)}"
