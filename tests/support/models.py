"""A small fraud model with the platform's serving contract, in the real registry.

Shared by the tests that need a served model without training one on Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, helper

from falaj.context import Context
from falaj.profile import ReferenceProfile
from falaj.registry import ModelRegistry

FEATURES = ("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "is_foreign")
WEIGHTS_V1 = (0.004, -0.05, 0.01, -0.002, 0.3, 1.5)
WEIGHTS_V2 = (0.006, 0.02, -0.01, -0.001, 0.1, 2.0)


def fraud_onnx(weights: Sequence[float], bias: float = -2.0) -> bytes:
    """A logistic regression with the platform's serving contract: input -> probability."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [len(weights), 1], list(weights))
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["probability"]),
        ],
        "fraud",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(weights)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def failing_onnx(features: int = len(FEATURES)) -> bytes:
    """A model that fits the serving contract and loads, but fails at run time.

    It reshapes each batch to rows of ``features + 1`` values, which a batch of
    one row cannot be: onnxruntime raises on every request of one row.
    """
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, features + 1])
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["rows"]),
            helper.make_node("ReduceSum", ["rows"], ["probability"], keepdims=1),
        ],
        "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def sample_rows(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.lognormal(3.5, 1.0, rows),
            rng.integers(0, 24, rows),
            rng.exponential(10.0, rows),
            rng.integers(1, 3000, rows),
            rng.poisson(2.0, rows),
            rng.integers(0, 2, rows),
        ],
        axis=1,
    ).astype(np.float32)


def register(ctx: Context, weights: Sequence[float], *, onnx_bytes: bytes | None = None) -> int:
    """Register a fraud version of ``weights`` (or of ``onnx_bytes``); its version number."""
    rows = sample_rows(300, seed=len(weights))
    profile = ReferenceProfile.from_columns(
        {name: rows[:, j] for j, name in enumerate(FEATURES)}, predictions=np.linspace(0, 1, 300)
    )
    return (
        ModelRegistry(ctx)
        .register(
            "fraud",
            onnx_bytes=onnx_bytes if onnx_bytes is not None else fraud_onnx(weights),
            profile=profile,
            metrics={"auc": 0.9},
            lineage={"training_job_id": "test"},
            feature_names=FEATURES,
        )
        .version
    )
