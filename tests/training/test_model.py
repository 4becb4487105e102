"""The MLP carries its own input scaling, so it takes raw features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falaj.errors import ConfigError
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP


def test_scaling_is_fitted_on_training_columns_and_a_constant_one_is_left_alone() -> None:
    features = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    scaling = Standardisation.fit(features)
    assert scaling.mean.tolist() == [2.0, 5.0]
    # The constant column keeps scale 1: dividing by its zero std would blow up.
    assert scaling.scale.tolist() == [1.0, 1.0]


def test_the_scaling_travels_in_the_state_dict() -> None:
    features = np.random.default_rng(0).normal(50.0, 10.0, size=(100, 3)).astype(np.float32)
    torch.manual_seed(0)
    trained = TabularMLP(NetworkSpec(features=3, hidden=(4,)), Standardisation.fit(features))
    rebuilt = TabularMLP(NetworkSpec(features=3, hidden=(4,)))
    rebuilt.load_state_dict(trained.state_dict())
    assert torch.equal(rebuilt.mean, trained.mean)
    a = ProbabilityModel(trained).predict(features)
    b = ProbabilityModel(rebuilt).predict(features)
    assert a.shape == (100,)
    assert np.array_equal(a, b)


def test_a_spec_names_every_problem() -> None:
    with pytest.raises(ConfigError) as refused:
        NetworkSpec(features=0, hidden=(8, 0))
    assert "features" in str(refused.value) and "hidden" in str(refused.value)
    assert NetworkSpec.from_json(NetworkSpec(features=6).to_json()) == NetworkSpec(features=6)


def test_scaling_of_the_wrong_width_is_refused() -> None:
    scaling = Standardisation.fit(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="2 features, the network spec 3"):
        TabularMLP(NetworkSpec(features=3), scaling)


def test_no_hidden_layer_is_a_logistic_regression() -> None:
    features = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    model = TabularMLP(NetworkSpec(features=3, hidden=()), Standardisation.fit(features))
    [layer] = list(model.net)
    assert isinstance(layer, torch.nn.Linear) and (layer.in_features, layer.out_features) == (3, 1)
    scaled = (torch.from_numpy(features) - model.mean) / model.scale
    expected = scaled @ layer.weight.T + layer.bias
    assert torch.allclose(model(torch.from_numpy(features)), expected)
