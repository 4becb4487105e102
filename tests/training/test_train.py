"""The training config is checked whole before Ray is asked for anything; what a checkpoint resumes.

The training loop itself runs on Ray: ``test_resume`` trains, fails and resumes
with it; the launcher's ``ray`` test trains through the whole job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from falaj.errors import ConfigError
from training.data import LabelledRows, TrainingData
from training.model import NetworkSpec
from training.train import TrainConfig, checkpoint_due, run_fingerprint


def test_a_config_names_every_problem() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(
            epochs=0,
            batch_size=0,
            learning_rate=0.0,
            weight_decay=-1.0,
            seed=-1,
            checkpoint_every=0,
            checkpoint_min_interval_s=-1.0,
            max_failures=-1,
        )
    message = str(refused.value)
    for field in (
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "seed",
        "checkpoint_every",
        "checkpoint_min_interval_s",
        "max_failures",
    ):
        assert f"{field}: expected" in message


@pytest.mark.parametrize("epoch", [0, 3, 4])
def test_the_failure_hook_must_fall_between_two_epochs_of_the_run(epoch: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"fail_after_epoch: expected None or 1 to 2 .*got {epoch}"
    ):
        TrainConfig(epochs=3, fail_after_epoch=epoch)


@pytest.mark.parametrize(
    ("done", "since_s", "due"),
    [
        (2, 0.5, False),  # checkpoint_every says yes, but the last one is too recent
        (2, 2.5, True),
        (3, 9.0, False),  # not a multiple of checkpoint_every
        (4, 9.0, False),  # the last epoch's would come 1 s after it, and wait for it
        (5, 0.0, True),  # the last epoch, always: the model comes back from it
    ],
)
def test_a_checkpoint_is_due_every_few_epochs_no_sooner_than_the_interval(
    done: int, since_s: float, due: bool
) -> None:
    config = TrainConfig(epochs=5, checkpoint_every=2, checkpoint_min_interval_s=2.0)
    assert checkpoint_due(config, done, since_s=since_s, epoch_s=1.0) is due


def data(seed: int = 0) -> TrainingData:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(50, 3)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.float32)
    rows = LabelledRows(features, labels)
    return TrainingData(
        feature_names=("a", "b", "c"),
        train=rows,
        held_out=rows,
        cutoff="2026-01-01T00:00:00",
        rows_used=100,
        rows_dropped=0,
    )


SPEC = NetworkSpec(features=3, hidden=(4,))
CONFIG = TrainConfig(epochs=3)


def test_a_retry_may_change_how_a_run_is_carried_out_and_still_resume_it() -> None:
    first = run_fingerprint(data(), SPEC, CONFIG, workers=2)
    retried = replace(
        CONFIG,
        checkpoint_every=2,
        checkpoint_min_interval_s=0.0,
        max_failures=0,
        fail_after_epoch=1,
    )
    assert run_fingerprint(data(), SPEC, retried, workers=2) == first


@pytest.mark.parametrize(
    "changed",
    [
        lambda: run_fingerprint(data(seed=1), SPEC, CONFIG, workers=2),
        lambda: run_fingerprint(data(), NetworkSpec(features=3, hidden=(5,)), CONFIG, workers=2),
        lambda: run_fingerprint(data(), SPEC, replace(CONFIG, learning_rate=1e-3), workers=2),
        lambda: run_fingerprint(data(), SPEC, replace(CONFIG, seed=7), workers=2),
        lambda: run_fingerprint(data(), SPEC, CONFIG, workers=3),
    ],
    ids=["rows", "network", "learning-rate", "seed", "workers"],
)
def test_a_checkpoint_resumes_only_a_run_that_learns_the_same(changed: Callable[[], str]) -> None:
    assert changed() != run_fingerprint(data(), SPEC, CONFIG, workers=2)
