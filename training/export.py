"""Export a trained model to ONNX and prove onnxruntime computes the same thing.

The TorchScript exporter (``dynamo=False``, opset 17) is used on purpose: the
dynamo exporter of torch 2.13 needs onnxscript, writes weights to a side file
and makes graphs that need pre-processing before quantisation (STACK.md).

Input ``input`` ``[N, F]`` float32 of raw features; output ``probability``
``[N, 1]``; the batch axis is dynamic. The parity check runs the held-out rows
through both and refuses the export when they differ by more than
``TOLERANCE`` anywhere.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from training.errors import ExportMismatch
from training.model import ProbabilityModel

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
OPSET = 17
TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedModel:
    onnx_bytes: bytes
    opset: int
    #: The largest |onnxruntime - torch| over the checked rows.
    max_abs_diff: float
    rows_checked: int
    tolerance: float


def to_onnx(model: ProbabilityModel) -> bytes:
    """The model as ONNX bytes (weights inside the one file)."""
    model = model.cpu().eval()
    example = torch.zeros(2, model.spec.features, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; it is chosen on purpose.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        path = Path(directory) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return path.read_bytes()


def onnx_predict(onnx_bytes: bytes, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """onnxruntime's output ``[N, 1]`` for a float32 feature matrix (CPU)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (output,) = session.run(
        [OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)}
    )
    return np.asarray(output, dtype=np.float32)


def check_parity(
    model: ProbabilityModel,
    onnx_bytes: bytes,
    features: npt.NDArray[np.float32],
    *,
    tolerance: float = TOLERANCE,
) -> float:
    """The largest |onnx - torch| over ``features``; raises past ``tolerance``."""
    if features.ndim != 2 or features.shape[0] == 0:
        raise ExportMismatch(
            f"parity needs a non-empty [N, {model.spec.features}] matrix, got {features.shape}"
        )
    expected = model.predict(features).reshape(-1, 1)
    actual = onnx_predict(onnx_bytes, features)
    if actual.shape != expected.shape:
        raise ExportMismatch(
            f"the ONNX model's {OUTPUT_NAME!r} has shape {actual.shape}, torch's {expected.shape}; "
            "check the export's output and dynamic axes"
        )
    diff = float(np.max(np.abs(actual - expected)))
    if not diff <= tolerance:  # also catches NaN
        row = int(np.argmax(np.abs(actual - expected)))
        raise ExportMismatch(
            f"the ONNX model differs from torch by {diff:.3g} (row {row}: onnx "
            f"{float(actual[row, 0]):.6f}, torch {float(expected[row, 0]):.6f}); expected at most "
            f"{tolerance:g}. The exported graph does not compute the trained model: do not serve it"
        )
    return diff


def export_checked(
    model: ProbabilityModel, features: npt.NDArray[np.float32], *, tolerance: float = TOLERANCE
) -> ExportedModel:
    """Export, then check parity on ``features`` (the held-out rows)."""
    onnx_bytes = to_onnx(model)
    diff = check_parity(model, onnx_bytes, features, tolerance=tolerance)
    return ExportedModel(
        onnx_bytes=onnx_bytes,
        opset=OPSET,
        max_abs_diff=diff,
        rows_checked=int(features.shape[0]),
        tolerance=tolerance,
    )
