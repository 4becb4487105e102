"""Training: Ray TorchTrainer (2 workers) against a plain single-process torch loop.

The same network (the fraud model's MLP), rows, batch size, optimizer, seed and
epochs, in one run. Every process steps on ``batch_size`` rows: the plain loop
through all the rows; each of Ray's 2 workers through its half, averaging its
gradients with the other's (DDP's all-reduce) before every step. So Ray takes
half the optimiser steps an epoch, each on twice the rows, as ``training.train``
always does; each of its steps pays the all-reduce.

Each side times its epochs itself (Ray's rank 0 returns its timings with the
model); an epoch of Ray's includes the checkpoints the default ``TrainConfig``
takes (after every epoch, but no sooner than 2 s after the last one). The first
epoch warms caches up, so an epoch's time is the mean of the others. Ray's fixed
start-up is the rest of its run: the controller, the worker group, torch's
process group, moving the rows to the workers, the teardown. ``ray.init`` is
timed apart: a running head, as ``falaj up`` keeps one, has paid it already.

- ``ray_epoch_overhead_ratio``: Ray's seconds per epoch / the plain loop's.
- ``ray_startup_s``: Ray's fixed seconds per training run.
- ``ray_checkpoint_s``: the mean seconds of one checkpoint (rank 0 saves the
  weights and optimizer state; Ray's report copies them into the run's storage).

The plain loop's model is then exported and quantised to int8, and both ONNX
files are run on the held-out rows (``training.quantize``, single-threaded
sessions, best of ``REPEATS`` runs each, taking turns):

- ``int8_size_ratio``, ``int8_latency_ratio``: int8 / fp32 bytes and seconds
  (``int8_latency_ms`` has both latencies, fp32's as the peer);
- ``int8_auc_delta_points``: the held-out AUC of int8 minus fp32's, in points;
- ``int8_kept``: 1 when the variant would be registered beside fp32, else 0.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from benchmarks.common import Row
from falaj.context import Context
from falaj.demo.data import generate_transactions
from falaj.feature_repo import load_repo
from falaj.runtime.ray_head import ray_env
from falaj.schema import load_schema
from falaj.settings import Settings
from falaj.validation import validate_frame
from training.data import TrainingData, split_by_time
from training.export import export_checked
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP
from training.quantize import REPEATS, int8_variant
from training.train import TrainConfig, train


@dataclass(frozen=True)
class Sizes:
    rows: int
    epochs: int


QUICK = Sizes(rows=10_000, epochs=3)
FULL = Sizes(rows=100_000, epochs=8)


def training_data(rows: int) -> TrainingData:
    settings = Settings()
    schema = load_schema(settings)
    spec = load_repo(settings).model("fraud")
    frame = validate_frame(schema, generate_transactions(rows, seed=21).astype(str)).good
    return split_by_time(
        frame, feature_names=spec.features, label=spec.label, timestamp=schema.timestamp
    )


def plain_loop(data: TrainingData, config: TrainConfig) -> tuple[float, float, ProbabilityModel]:
    """(whole run, one epoch after the first) in seconds, in this process alone; the model."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    features = torch.from_numpy(data.train.features)
    labels = torch.from_numpy(data.train.labels).reshape(-1, 1)
    scaling = Standardisation.fit(data.train.features)
    model = TabularMLP(NetworkSpec(features=features.shape[1], hidden=config.hidden), scaling)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    shuffler = torch.Generator().manual_seed(config.seed + 1)
    epochs = []
    for _ in range(config.epochs):
        epoch_started = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(labels), generator=shuffler).split(config.batch_size):
            loss = functional.binary_cross_entropy_with_logits(
                model(features[batch]), labels[batch]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epochs.append(time.perf_counter() - epoch_started)
    took = time.perf_counter() - started
    return took, float(np.mean(epochs[1:] or epochs)), ProbabilityModel(model)


def int8_rows(model: ProbabilityModel, data: TrainingData, *, repeats: int = REPEATS) -> list[Row]:
    """The int8 variant of ``model`` against its fp32 export, on the held-out rows."""
    exported = export_checked(model, data.held_out.features)
    decision = int8_variant(
        exported.onnx_bytes, data.held_out.features, data.held_out.labels, repeats=repeats
    ).decision
    print(
        f"int8 on {data.held_out.rows:,} held-out rows: {decision.size_bytes:,} bytes "
        f"(fp32 {decision.fp32_size_bytes:,}), {decision.latency_s * 1e3:.3f} ms "
        f"(fp32 {decision.fp32_latency_s * 1e3:.3f} ms); {decision.reason}"
    )
    return [
        Row(metric="int8_size_ratio", value=round(decision.size_ratio, 3), unit="x"),
        Row(metric="int8_latency_ratio", value=round(decision.latency_ratio, 3), unit="x"),
        Row(
            metric="int8_latency_ms",
            value=round(decision.latency_s * 1e3, 4),
            unit="ms",
            peer="fp32_onnx",
            peer_value=round(decision.fp32_latency_s * 1e3, 4),
        ),
        Row(
            metric="int8_auc_delta_points", value=round(decision.auc_delta * 100, 3), unit="points"
        ),
        Row(metric="int8_kept", value=float(decision.kept), unit="bool"),
    ]


@dataclass(frozen=True)
class RayTimes:
    """Seconds: the whole run, the epochs in it, one epoch after the first, one checkpoint."""

    total: float
    epochs: float
    epoch: float
    checkpoint: float


def ray_run(ctx: Context, data: TrainingData, config: TrainConfig) -> RayTimes:
    started = time.perf_counter()
    trained = train(ctx, data, run_name=f"bench-{config.epochs}", config=config)
    return RayTimes(
        total=time.perf_counter() - started,
        epochs=trained.metrics["epochs_s"],
        epoch=trained.metrics["epoch_s_steady"],
        checkpoint=trained.metrics["checkpoint_s"],
    )


def run(quick: bool = False) -> list[Row]:
    import ray

    sizes = QUICK if quick else FULL
    data = training_data(sizes.rows)
    config = TrainConfig(epochs=sizes.epochs)
    plain_total, plain_epoch, plain_model = plain_loop(data, config)
    quantised = int8_rows(plain_model, data)
    with tempfile.TemporaryDirectory(prefix="falaj-bench-training-") as tmp:
        ctx = Context.create(Settings(home=Path(tmp) / ".falaj"), actor="benchmark")
        # As the platform's own head runs: no auth token file, no usage reporting.
        os.environ.update({k: v for k, v in ray_env().items() if k.startswith("RAY_")})
        started = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            # Workers import the project's modules from where the driver runs.
            runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
        )
        init_s = time.perf_counter() - started
        try:
            times = ray_run(ctx, data, config)
        finally:
            ray.shutdown()
    samples = data.train.rows
    print(
        f"{samples:,} rows, {sizes.epochs} epochs: plain loop {plain_total:.2f} s "
        f"({plain_epoch:.3f} s an epoch); Ray {times.total:.2f} s, of which epochs "
        f"{times.epochs:.2f} s ({times.epoch:.3f} s an epoch, a checkpoint "
        f"{times.checkpoint:.3f} s); ray.init {init_s:.1f} s"
    )
    return [
        Row(metric="ray_epoch_overhead_ratio", value=round(times.epoch / plain_epoch, 3), unit="x"),
        Row(metric="ray_startup_s", value=round(times.total - times.epochs, 2), unit="s"),
        Row(metric="ray_checkpoint_s", value=round(times.checkpoint, 4), unit="s"),
        Row(
            metric="ray_epoch_s",
            value=round(times.epoch, 4),
            unit="s",
            peer="plain_torch_loop",
            peer_value=round(plain_epoch, 4),
        ),
        Row(metric="ray_init_s", value=round(init_s, 2), unit="s"),
        Row(
            metric="ray_samples_per_s",
            value=round(samples / times.epoch),
            unit="samples/s",
            peer="plain_torch_loop",
            peer_value=round(samples / plain_epoch),
        ),
        *quantised,
    ]
