"""Checkpoints, a worker lost mid-run, and a failed run trained again: on the shared Ray head.

Ray's fixed cost is ~20 s a run on 2 cores, so one Ray job, submitted as the
launcher submits the training job, trains four small runs in order and writes
what each gave back to a JSON file; the tests read it:

- ``whole``: never interrupted; the reference.
- ``evicted``: the last rank's process exits after epoch 1 (``fail_after_epoch``,
  as a reclaimed spot node's would); ``max_failures=1``, so Ray restarts the
  workers and they resume from epoch 1's checkpoint.
- ``fatal``: the same failure with ``max_failures=0``: the run fails.
- ``fatal`` again, the same call, as a failed job is submitted again under its
  run name: it resumes from the failed run's epoch-1 checkpoint (the failure
  hook fires once per run, so it does not fail again).
- ``whole`` again, as a job that failed after training (exporting, registering)
  is submitted again: its run is complete, so it trains no epoch at all.

The job runs ``python -m tests.training.test_resume OUT`` (``main`` below).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ray.job_submission import JobStatus

from falaj.context import Context
from falaj.settings import Settings
from functions.training_launcher.ray_jobs import job_env
from tests.support.ray_jobs import RayHead, wait_for_job
from training.data import LabelledRows, TrainingData
from training.errors import TrainingError
from training.train import CHECKPOINT_FILE, TrainConfig, TrainedModel, train

pytestmark = pytest.mark.ray

JOB_MODULE = "tests.training.test_resume"

EPOCHS = 3
BATCH = 32
ROWS = 400  # 200 a rank on 2 workers: 7 steps an epoch
# A checkpoint every epoch, however short: the tests know which epochs have one.
BASE = TrainConfig(epochs=EPOCHS, batch_size=BATCH, checkpoint_min_interval_s=0.0)
CONFIGS = {
    "whole": BASE,
    "evicted": replace(BASE, fail_after_epoch=1, max_failures=1),
    "fatal": replace(BASE, fail_after_epoch=1, max_failures=0),
}


def tiny_data() -> TrainingData:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(ROWS + 100, 4)).astype(np.float32)
    labels = (features[:, 0] - features[:, 1] > 0).astype(np.float32)
    return TrainingData(
        feature_names=("a", "b", "c", "d"),
        train=LabelledRows(features[:ROWS], labels[:ROWS]),
        held_out=LabelledRows(features[ROWS:], labels[ROWS:]),
        cutoff="2026-01-01T00:00:00",
        rows_used=ROWS + 100,
        rows_dropped=0,
    )


# -- the job: runs on the Ray head, as the training job does --------------------------


def kept_checkpoints(run_dir: Path) -> list[dict[str, float]]:
    """The epoch and AdamW's step count of each checkpoint Ray kept, oldest first."""
    kept = []
    for path in sorted(run_dir.glob("checkpoint_*/" + CHECKPOINT_FILE)):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        steps = {float(state["step"]) for state in saved["optimizer"]["state"].values()}
        (step,) = steps  # every parameter takes every step
        kept.append({"epoch": float(saved["epoch"]), "optimizer_step": step})
    return kept


def outcome(ctx: Context, name: str, config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    run_dir = ctx.paths.training / "runs" / name
    try:
        trained: TrainedModel = train(ctx, data, run_name=name, config=config)
    except TrainingError as exc:
        return {
            "error": {"type": type(exc).__name__, "message": str(exc)},
            "checkpoints": kept_checkpoints(run_dir),
        }
    weights = b"".join(
        tensor.numpy().tobytes() for tensor in trained.model.mlp.state_dict().values()
    )
    return {
        "error": None,
        "resumed_from_epoch": trained.resumed_from_epoch,
        "metrics": trained.metrics,
        "outputs": trained.model.predict(data.held_out.features).tolist(),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "checkpoints": kept_checkpoints(run_dir),
        "config": asdict(config),
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    ctx = Context.create(Settings.from_env(os.environ), actor="test")
    data = tiny_data()
    runs = {name: outcome(ctx, name, config, data) for name, config in CONFIGS.items()}
    runs["fatal_again"] = outcome(ctx, "fatal", CONFIGS["fatal"], data)
    runs["whole_again"] = outcome(ctx, "whole", CONFIGS["whole"], data)
    out.write_text(json.dumps(runs, indent=1))
    return 0


# -- the tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("resume") / ".falaj"
    out = home.parent / "runs.json"
    settings = Settings(home=home, ray_address=ray_head.address, ray_token_file=ray_head.token_file)
    client = ray_head.client()
    job_id = client.submit_job(
        entrypoint=shlex.join([sys.executable, "-m", JOB_MODULE, str(out)]),
        runtime_env={"env_vars": job_env(settings, token_file=None)},
    )
    assert wait_for_job(client, job_id, timeout_s=600) == JobStatus.SUCCEEDED
    runs: dict[str, Any] = json.loads(out.read_text())
    return runs


def test_every_epoch_is_checkpointed_with_its_optimizer_state_and_two_are_kept(
    runs: dict[str, Any],
) -> None:
    whole = runs["whole"]
    assert whole["error"] is None
    assert whole["resumed_from_epoch"] is None
    steps_per_epoch = -(-ROWS // 2 // BATCH)
    assert whole["checkpoints"] == [
        {"epoch": epoch, "optimizer_step": epoch * steps_per_epoch} for epoch in (2, 3)
    ]
    assert whole["metrics"]["epochs"] == EPOCHS


def test_a_worker_lost_after_epoch_1_resumes_there_and_ends_as_if_never_lost(
    runs: dict[str, Any],
) -> None:
    whole, evicted = runs["whole"], runs["evicted"]
    assert evicted["error"] is None, evicted["error"]
    assert evicted["resumed_from_epoch"] == 1
    # Bit for bit (the module docstring of training.train says why it can be).
    assert evicted["weights_sha256"] == whole["weights_sha256"]
    np.testing.assert_array_equal(evicted["outputs"], whole["outputs"])
    assert evicted["metrics"]["train_loss"] == whole["metrics"]["train_loss"]


def test_with_no_restart_allowed_the_run_fails_saying_what_happened_and_how_to_go_on(
    runs: dict[str, Any],
) -> None:
    fatal = runs["fatal"]
    assert fatal["error"] is not None
    assert fatal["error"]["type"] == "WorkersFailed"
    message = fatal["error"]["message"]
    assert "Ray Train run 'fatal' failed, with 0 worker restart(s) allowed" in message
    assert "rank 1: " in message and "died" in message  # the worker that was lost
    assert "training again with run name 'fatal' resumes from the latest" in message
    # What the failed run leaves to resume from: epoch 1, and nothing after it.
    assert [c["epoch"] for c in fatal["checkpoints"]] == [1]


def test_a_failed_run_trained_again_under_its_name_resumes_from_its_last_checkpoint(
    runs: dict[str, Any],
) -> None:
    whole, again = runs["whole"], runs["fatal_again"]
    assert again["error"] is None, again["error"]
    assert again["resumed_from_epoch"] == 1
    assert again["weights_sha256"] == whole["weights_sha256"]
    np.testing.assert_array_equal(again["outputs"], whole["outputs"])


def test_a_complete_run_trained_again_under_its_name_gives_its_model_back_untrained(
    runs: dict[str, Any],
) -> None:
    whole, again = runs["whole"], runs["whole_again"]
    assert again["error"] is None, again["error"]
    assert again["resumed_from_epoch"] == EPOCHS
    assert again["metrics"]["epochs_s"] == 0.0  # no epoch ran
    assert again["weights_sha256"] == whole["weights_sha256"]
    assert again["checkpoints"] == whole["checkpoints"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
