"""Errors of the training job; all derive from the kernel's root.

FalajError                  (falaj.errors)
└── TrainingError           a training run could not produce a model version
    ├── NotEnoughData       the training set is too small or has one class only
    ├── IncompleteFeatures  too many rows lack a feature value (null, NaN, infinite)
    ├── ExportMismatch      the exported ONNX does not compute what the torch model does
    └── WorkersFailed       Ray Train's workers failed more often than max_failures allows
"""

from __future__ import annotations

from falaj.errors import FalajError


class TrainingError(FalajError):
    """Raised when a training run cannot produce a model version."""


class NotEnoughData(TrainingError):
    """Raised when the training set is too small to split, or a split holds one class only."""


class IncompleteFeatures(TrainingError):
    """Raised when more rows than the limit lack a feature value (null, NaN or infinite)."""


class ExportMismatch(TrainingError):
    """Raised when onnxruntime's outputs differ from torch's beyond the tolerance."""


class WorkersFailed(TrainingError):
    """Raised when Ray Train's workers fail more often than ``TrainConfig.max_failures`` allows.

    The run's checkpoints are kept: a new run of the same name resumes from the latest.
    """
