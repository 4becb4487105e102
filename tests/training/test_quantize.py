"""The int8 variant: quantised for real with onnxruntime, measured, and kept only where it pays."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional

from benchmarks.training import int8_rows
from falaj.errors import ConfigError
from tests.support.models import sample_rows
from training.data import LabelledRows, TrainingData
from training.export import onnx_predict, to_onnx
from training.model import NetworkSpec, ProbabilityModel, Standardisation, TabularMLP
from training.quantize import (
    LATENCY_MARGIN,
    MAX_DELTA,
    best_latencies,
    decide,
    int8_variant,
    quantize_int8,
)

#: Dynamic quantisation rounds the weights to int8 and every layer's input to
#: uint8 with one scale per batch, so a batch with outliers (raw amounts are
#: lognormal, many standard deviations out) coarsens every row of it. Measured on
#: this MLP over 500-row batches, four seeds: max |int8 - fp32| 0.025-0.040,
#: mean 0.0045-0.0065. The bounds leave room for other seeds and would still
#: catch a wrongly scaled or dropped layer, which moves probabilities by 0.1+.
MAX_OUTPUT_DIFF = 0.05
MEAN_OUTPUT_DIFF = 0.01


def rows(rng: np.random.Generator, n: int) -> LabelledRows:
    """Six features on raw scales, as the fraud model's; the label follows two of them."""
    features = sample_rows(n, seed=int(rng.integers(0, 2**31)))
    logit = 1.5 * (np.log(features[:, 0]) - 3.5) + 2.0 * features[:, 5] - 1.0
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return LabelledRows(features, labels)


@pytest.fixture(scope="module")
def data() -> TrainingData:
    rng = np.random.default_rng(11)
    return TrainingData(
        feature_names=("amount", "hour", "distance_km", "card_age_days", "tx_count_24h", "foreign"),
        train=rows(rng, 2000),
        held_out=rows(rng, 500),
        cutoff="2025-01-01T00:00:00+00:00",
        rows_used=2500,
        rows_dropped=0,
    )


@pytest.fixture(scope="module")
def model(data: TrainingData) -> ProbabilityModel:
    """The fraud model's MLP, trained a few epochs with a plain torch loop (no Ray)."""
    torch.manual_seed(3)
    spec = NetworkSpec(features=6, hidden=(32, 16))
    mlp = TabularMLP(spec, Standardisation.fit(data.train.features))
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=0.01)
    features = torch.from_numpy(data.train.features)
    labels = torch.from_numpy(data.train.labels).reshape(-1, 1)
    for _ in range(5):
        for batch in torch.randperm(len(labels)).split(128):
            loss = functional.binary_cross_entropy_with_logits(mlp(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return ProbabilityModel(mlp)


@pytest.fixture(scope="module")
def fp32_bytes(model: ProbabilityModel) -> bytes:
    return to_onnx(model)


def test_int8_weights_are_int8_and_outputs_stay_close(
    fp32_bytes: bytes, data: TrainingData
) -> None:
    int8_bytes = quantize_int8(fp32_bytes)
    graph = onnx.load_model_from_string(int8_bytes).graph
    assert "MatMulInteger" in {node.op_type for node in graph.node}
    int8_weights = {
        t.name
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
    }
    # One per Linear layer; no fp32 weight matrix is left.
    assert int8_weights == {f"mlp.net.{i}.weight_quantized" for i in (0, 2, 4)}
    assert not any(
        t.name.endswith(".weight") and t.data_type == onnx.TensorProto.FLOAT
        for t in graph.initializer
    )
    fp32 = onnx_predict(fp32_bytes, data.held_out.features)
    int8 = onnx_predict(int8_bytes, data.held_out.features)
    assert int8.shape == fp32.shape
    diff = np.abs(int8 - fp32)
    assert float(diff.max()) <= MAX_OUTPUT_DIFF
    assert float(diff.mean()) <= MEAN_OUTPUT_DIFF


def test_the_variant_is_measured_on_the_held_out_rows(
    fp32_bytes: bytes, data: TrainingData
) -> None:
    variant = int8_variant(fp32_bytes, data.held_out.features, data.held_out.labels, repeats=5)
    decision = variant.decision
    assert decision.size_bytes == len(variant.onnx_bytes)
    assert decision.fp32_size_bytes == len(fp32_bytes)
    assert decision.latency_s > 0 and decision.fp32_latency_s > 0
    assert abs(decision.auc_delta) <= MAX_DELTA
    assert 0 < decision.max_abs_diff <= MAX_OUTPUT_DIFF
    # Whatever the timings were, the decision is the rule applied to them.
    again = decide(
        size_bytes=decision.size_bytes,
        fp32_size_bytes=decision.fp32_size_bytes,
        latency_s=decision.latency_s,
        fp32_latency_s=decision.fp32_latency_s,
        auc_delta=decision.auc_delta,
        accuracy_delta=decision.accuracy_delta,
        max_abs_diff=decision.max_abs_diff,
    )
    assert again == decision
    lineage = json.loads(json.dumps(decision.to_lineage(), allow_nan=False))
    assert {
        "kept",
        "size_bytes",
        "fp32_size_bytes",
        "latency_ratio",
        "auc_delta",
        "accuracy_delta",
        "reason",
    } <= lineage.keys()


FIGURES = {
    "size_bytes": 2_000,
    "fp32_size_bytes": 5_000,
    "latency_s": 0.8e-3,
    "fp32_latency_s": 1.0e-3,
    "auc_delta": -0.001,
    "accuracy_delta": 0.0,
    "max_abs_diff": 0.003,
}


def test_a_smaller_not_slower_as_accurate_variant_is_kept() -> None:
    decision = decide(**FIGURES)
    assert decision.kept
    assert decision.reason.startswith("kept: 0.40x the size, 0.80x the latency")
    assert decision.size_ratio == pytest.approx(0.4)
    assert decision.latency_ratio == pytest.approx(0.8)


def test_slower_within_the_noise_margin_counts_as_not_slower() -> None:
    just_within = FIGURES | {"latency_s": 1.0e-3 * (LATENCY_MARGIN - 0.01)}
    assert decide(**just_within).kept


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"size_bytes": 5_000}, "not smaller (5000 bytes against fp32's 5000)"),
        ({"size_bytes": 5_782}, "not smaller"),
        ({"latency_s": 1.0e-3 * (LATENCY_MARGIN + 0.01)}, "slower (1.06x fp32's latency"),
        ({"latency_s": float("nan")}, "slower"),
        ({"auc_delta": -0.006}, "AUC moved by -0.60 points (expected within 0.5)"),
        ({"auc_delta": 0.006}, "AUC moved by +0.60 points"),
        ({"accuracy_delta": -0.0051}, "accuracy moved by -0.51 points"),
    ],
)
def test_a_variant_failing_any_criterion_is_refused(change: dict[str, float], reason: str) -> None:
    decision = decide(**(FIGURES | change))
    assert not decision.kept
    assert decision.reason.startswith("refused: ")
    assert reason in decision.reason


def test_every_failed_criterion_is_named() -> None:
    worse = FIGURES | {"size_bytes": 6_000, "latency_s": 2.0e-3, "auc_delta": 0.01}
    decision = decide(**worse)
    assert not decision.kept
    for part in ("not smaller", "slower (2.00x", "AUC moved by +1.00"):
        assert part in decision.reason
    assert "accuracy" not in decision.reason


def test_figures_without_an_fp32_baseline_are_refused() -> None:
    with pytest.raises(ConfigError, match="positive fp32 size and latency"):
        decide(**(FIGURES | {"fp32_latency_s": 0.0}))
    with pytest.raises(ConfigError, match="at least 1 timed run"):
        best_latencies((b"",), np.zeros((1, 6), dtype=np.float32), repeats=0)


def test_best_latencies_time_each_model(fp32_bytes: bytes, data: TrainingData) -> None:
    int8_bytes = quantize_int8(fp32_bytes)
    timings = best_latencies((fp32_bytes, int8_bytes), data.held_out.features, repeats=3)
    assert len(timings) == 2
    assert all(0 < t < 1.0 for t in timings)


def test_the_training_benchmark_reports_the_int8_rows(
    model: ProbabilityModel, data: TrainingData
) -> None:
    reported = {row.metric: row for row in int8_rows(model, data, repeats=3)}
    assert set(reported) == {
        "int8_size_ratio",
        "int8_latency_ratio",
        "int8_latency_ms",
        "int8_auc_delta_points",
        "int8_kept",
    }
    assert reported["int8_latency_ms"].peer == "fp32_onnx"
    latency = reported["int8_latency_ms"]
    assert latency.peer_value is not None and latency.ratio is not None
    assert reported["int8_latency_ratio"].value == pytest.approx(latency.ratio, rel=0.01)
    assert abs(reported["int8_auc_delta_points"].value) <= MAX_DELTA * 100
    assert reported["int8_kept"].value in (0.0, 1.0)
