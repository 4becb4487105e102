"""The training config is checked whole before Ray is asked for anything.

The training loop itself runs on Ray; the launcher's ``ray`` test trains with it.
"""

from __future__ import annotations

import pytest

from falaj.errors import ConfigError
from training.train import TrainConfig


def test_a_config_names_every_problem() -> None:
    with pytest.raises(ConfigError) as refused:
        TrainConfig(epochs=0, batch_size=0, learning_rate=0.0, weight_decay=-1.0)
    message = str(refused.value)
    for field in ("epochs", "batch_size", "learning_rate", "weight_decay"):
        assert field in message
