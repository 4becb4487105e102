"""ONNX export of a tiny model, checked against torch with onnxruntime (no Ray)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from training.errors import ExportMismatch
from training.export import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    check_parity,
    export_checked,
    onnx_predict,
    to_onnx,
)
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP


@pytest.fixture
def raw_features() -> np.ndarray:
    rng = np.random.default_rng(7)
    # Raw scales far apart (amounts in the thousands, a 0/1 flag), as in the demo.
    return np.column_stack(
        [rng.lognormal(5.0, 1.0, 64), rng.uniform(0, 24, 64), rng.integers(0, 2, 64)]
    ).astype(np.float32)


@pytest.fixture
def model(raw_features: np.ndarray) -> ProbabilityModel:
    torch.manual_seed(0)
    spec = NetworkSpec(features=3, hidden=(8,))
    return ProbabilityModel(TabularMLP(spec, Standardisation.fit(raw_features)))


def test_export_takes_raw_features_and_matches_torch(
    model: ProbabilityModel, raw_features: np.ndarray
) -> None:
    exported = export_checked(model, raw_features)
    assert exported.opset == OPSET
    assert exported.rows_checked == 64
    assert exported.max_abs_diff < 1e-4
    graph = onnx.load_model_from_string(exported.onnx_bytes).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == [OUTPUT_NAME]
    # The scaling is inside the graph: raw amounts in, probabilities out.
    probabilities = onnx_predict(exported.onnx_bytes, raw_features)
    assert probabilities.shape == (64, 1)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_batch_axis_is_dynamic(model: ProbabilityModel, raw_features: np.ndarray) -> None:
    onnx_bytes = to_onnx(model)
    for rows in (1, 5, 64):
        assert onnx_predict(onnx_bytes, raw_features[:rows]).shape == (rows, 1)


def test_a_graph_that_computes_something_else_is_refused(
    model: ProbabilityModel, raw_features: np.ndarray
) -> None:
    onnx_bytes = to_onnx(model)
    # The model changes after export, as if the wrong weights were exported.
    last = model.mlp.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.bias.add_(0.5)
    with pytest.raises(ExportMismatch, match="differs from torch"):
        check_parity(model, onnx_bytes, raw_features)


def test_parity_needs_rows(model: ProbabilityModel) -> None:
    with pytest.raises(ExportMismatch, match="non-empty"):
        check_parity(model, to_onnx(model), np.zeros((0, 3), dtype=np.float32))
