"""Training: Ray TorchTrainer (2 workers) against a plain single-process torch loop.

The same network (the fraud model's MLP), rows, batch size, optimizer, seed and
epochs, in one run. Each side times its epochs itself (the Ray workers report
theirs with the final checkpoint); the first epoch warms caches up, so an
epoch's time is the mean of the others. Ray's fixed start-up is the rest of its
run: the worker group, torch's process group, moving the rows to the workers,
the checkpoint. ``ray.init`` is timed apart: a running head, as ``falaj up``
keeps one, has paid it already.

- ``ray_epoch_overhead_ratio``: Ray's seconds per epoch / the plain loop's
  (2 workers each take half the rows, and synchronise gradients every batch).
- ``ray_startup_s``: Ray's fixed seconds per training run.
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
from training.model import NetworkSpec, Standardisation, TabularMLP
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


def plain_loop(data: TrainingData, config: TrainConfig) -> tuple[float, float]:
    """(whole run, one epoch after the first) in seconds, in this process alone."""
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
    return time.perf_counter() - started, float(np.mean(epochs[1:] or epochs))


def ray_run(ctx: Context, data: TrainingData, config: TrainConfig) -> tuple[float, float, float]:
    """(whole run, the epochs in it, one epoch after the first) in seconds."""
    started = time.perf_counter()
    trained = train(ctx, data, run_name=f"bench-{config.epochs}", config=config)
    took = time.perf_counter() - started
    return took, trained.metrics["epochs_s"], trained.metrics["epoch_s_steady"]


def run(quick: bool = False) -> list[Row]:
    import ray

    sizes = QUICK if quick else FULL
    data = training_data(sizes.rows)
    config = TrainConfig(epochs=sizes.epochs)
    plain_total, plain_epoch = plain_loop(data, config)
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
            ray_total, ray_epochs, ray_epoch = ray_run(ctx, data, config)
        finally:
            ray.shutdown()
    samples = data.train.rows
    print(
        f"{samples:,} rows, {sizes.epochs} epochs: plain loop {plain_total:.2f} s "
        f"({plain_epoch:.3f} s an epoch); Ray {ray_total:.2f} s, of which epochs "
        f"{ray_epochs:.2f} s ({ray_epoch:.3f} s an epoch); ray.init {init_s:.1f} s"
    )
    return [
        Row(metric="ray_epoch_overhead_ratio", value=round(ray_epoch / plain_epoch, 3), unit="x"),
        Row(metric="ray_startup_s", value=round(ray_total - ray_epochs, 2), unit="s"),
        Row(
            metric="ray_epoch_s",
            value=round(ray_epoch, 4),
            unit="s",
            peer="plain_torch_loop",
            peer_value=round(plain_epoch, 4),
        ),
        Row(metric="ray_init_s", value=round(init_s, 2), unit="s"),
        Row(
            metric="ray_samples_per_s",
            value=round(samples / ray_epoch),
            unit="samples/s",
            peer="plain_torch_loop",
            peer_value=round(samples / plain_epoch),
        ),
    ]
