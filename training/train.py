"""Data-parallel training on Ray Train v2 (``TorchTrainer``).

Each worker takes an equal, contiguous slice of one seeded shuffle of the
training rows (equal, so every rank runs the same number of steps and DDP's
all-reduce never waits for a rank that has finished). On CPU the workers talk
over gloo; with GPUs over NCCL, and the forward pass runs under bf16 autocast
(the loss is computed in float32). Seeds are fixed so a rerun on the same data
and the same worker count gives the same model.

Rank 0 reports the final state dict as a checkpoint under the run's storage
path: Ray Train v2 returns ``Result.metrics`` only for a report that carried a
checkpoint, and the job rebuilds the model from that checkpoint.
"""

from __future__ import annotations

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
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.nn import functional

from falaj.context import Context
from falaj.errors import ConfigError
from falaj.model_spec import MLP_HIDDEN, ModelSpec
from falaj.residency import Boundary
from training.data import TrainingData
from training.errors import TrainingError
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP

CHECKPOINT_FILE = "model.pt"


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
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainedModel:
    model: ProbabilityModel
    #: What the workers reported with the final checkpoint (losses, epochs).
    metrics: dict[str, float]
    checkpoint: str
    workers: int
    device: str


def train(
    ctx: Context,
    data: TrainingData,
    *,
    run_name: str,
    config: TrainConfig | None = None,
) -> TrainedModel:
    """Fit the model on ``data.train`` with ``settings.training_workers`` Ray workers."""
    config = config or TrainConfig()
    storage = ctx.paths.training / "runs"
    # Checkpoints hold the weights: they are a model artifact and stay in-region.
    ctx.policy.check_location(storage.as_uri(), boundary=Boundary.STORAGE_WRITE)
    storage.mkdir(parents=True, exist_ok=True)
    use_gpu = torch.cuda.is_available()
    workers = ctx.settings.training_workers
    spec = NetworkSpec(features=len(data.feature_names), hidden=config.hidden)
    scaling = Standardisation.fit(data.train.features)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.to_json(),
            "config": asdict(config),
            "mean": scaling.mean,
            "scale": scaling.scale,
            "features": data.train.features,
            "labels": data.train.labels,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"Ray Train run {run_name!r} failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise TrainingError(
            f"Ray Train run {run_name!r} ended without a checkpoint; the training loop must "
            "report one from rank 0"
        )
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    mlp = TabularMLP(NetworkSpec.from_json(saved["spec"]))
    mlp.load_state_dict(saved["state_dict"])
    return TrainedModel(
        model=ProbabilityModel(mlp).eval(),
        metrics={name: float(value) for name, value in (result.metrics or {}).items()},
        checkpoint=result.checkpoint.path,
        workers=workers,
        device="cuda" if use_gpu else "cpu",
    )


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: its slice of the rows, DDP, and the final report."""
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
    model = ray.train.torch.prepare_model(mlp)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    use_bf16 = device.type == "cuda"
    shuffler = torch.Generator().manual_seed(config.seed + 1 + rank)
    epoch_loss = 0.0
    epoch_seconds: list[float] = []
    for _ in range(config.epochs):
        epoch_started = time.perf_counter()
        model.train()
        total, count = torch.zeros((), device=device), 0
        for batch in torch.randperm(per_rank, generator=shuffler).split(config.batch_size):
            batch = batch.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(features[batch])
            loss = functional.binary_cross_entropy_with_logits(logits.float(), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * batch.numel()
            count += batch.numel()
        epoch_loss = _global_mean(total, count, device)
        epoch_seconds.append(time.perf_counter() - epoch_started)

    metrics = {
        "train_loss": epoch_loss,
        "epochs": float(config.epochs),
        "workers": float(world),
        # Wall time of the epochs themselves, apart from the run's fixed start-up
        # (benchmarks/training.py); after the first, which warms caches up.
        "epochs_s": sum(epoch_seconds),
        "epoch_s_steady": float(np.mean(epoch_seconds[1:] or epoch_seconds)),
    }
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        module = getattr(model, "module", model)  # unwrap DDP
        state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
        torch.save({"spec": spec.to_json(), "state_dict": state}, Path(directory) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _global_mean(total: torch.Tensor, count: int, device: torch.device) -> float:
    """The mean loss over every rank's rows (rank 0 alone reports it)."""
    pair = torch.stack([total.float(), torch.tensor(float(count), device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(pair)
    return float(pair[0] / pair[1])
