"""A small MLP for tabular binary classification, with its input scaling inside.

With no hidden layer it is a logistic regression (the ``logistic_regression``
family of a model spec); with hidden layers, the ``mlp`` family.

The standardisation (mean and scale of each training feature) is kept as
buffers of the module, not applied by the caller: the exported ONNX then takes
raw feature values, so the predictor and the training job cannot disagree about
how a feature is scaled, and a new version can change its scaling freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from falaj.errors import ConfigError
from falaj.model_spec import MLP_HIDDEN

#: A feature whose spread is below this is constant in the training data;
#: dividing by its std would blow up whatever production sends.
MIN_SCALE = 1e-6


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """The shape of the network; stored in every checkpoint to rebuild it.

    ``hidden=()`` is a single linear layer: a logistic regression.
    """

    features: int
    hidden: tuple[int, ...] = MLP_HIDDEN

    def __post_init__(self) -> None:
        problems = []
        if self.features < 1:
            problems.append(f"features: expected >= 1, got {self.features}")
        if any(width < 1 for width in self.hidden):
            problems.append(f"hidden: expected layer widths >= 1, got {self.hidden}")
        if problems:
            raise ConfigError("invalid network spec: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkSpec:
        return cls(features=int(data["features"]), hidden=tuple(int(w) for w in data["hidden"]))


@dataclass(frozen=True)
class Standardisation:
    """Per-feature mean and scale of the training data."""

    mean: npt.NDArray[np.float32]
    scale: npt.NDArray[np.float32]

    @classmethod
    def fit(cls, features: npt.NDArray[np.float32]) -> Standardisation:
        mean = features.mean(axis=0, dtype=np.float64)
        std = features.std(axis=0, dtype=np.float64)
        scale = np.where(std < MIN_SCALE, 1.0, std)
        return cls(mean=mean.astype(np.float32), scale=scale.astype(np.float32))


class TabularMLP(nn.Module):
    """Logits ``[N, 1]`` of raw features ``[N, F]``; trained with a logits loss."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, spec: NetworkSpec, standardisation: Standardisation | None = None) -> None:
        super().__init__()
        self.spec = spec
        # Buffers, so they travel in the state dict, move with .to(device) and
        # are broadcast by DDP, but are never trained.
        self.register_buffer("mean", torch.zeros(spec.features))
        self.register_buffer("scale", torch.ones(spec.features))
        if standardisation is not None:
            if standardisation.mean.shape != (spec.features,):
                raise ConfigError(
                    f"standardisation has {standardisation.mean.shape[0]} features, "
                    f"the network spec {spec.features}; fit it on the model's feature columns"
                )
            self.mean.copy_(torch.tensor(standardisation.mean))
            self.scale.copy_(torch.tensor(standardisation.scale))
        layers: list[nn.Module] = []
        width = spec.features
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.scale)


class ProbabilityModel(nn.Module):
    """What is exported and served: the probability of the positive class, ``[N, 1]``."""

    def __init__(self, mlp: TabularMLP) -> None:
        super().__init__()
        self.mlp = mlp

    @property
    def spec(self) -> NetworkSpec:
        return self.mlp.spec

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(features))

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``[N]`` of a float32 feature matrix, on the CPU."""
        self.eval()
        with torch.no_grad():
            out = self(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))
        return out.reshape(-1).cpu().numpy().astype(np.float32)
