"""The int8 variant of an exported model, and whether it earns its place.

``onnxruntime.quantization.quantize_dynamic`` stores the weights of every
MatMul as int8 (activations are quantised on the fly, per batch). The variant
is measured against the fp32 model on the held-out rows, in the same run:

- size: bytes of each ONNX file;
- latency: the best of ``repeats`` onnxruntime runs over the whole held-out
  batch, each on a single-threaded session;
- accuracy: the held-out AUC and accuracy of each (both through onnxruntime).

It is kept only when it is smaller, not slower (``LATENCY_MARGIN``), and
within half a point of fp32's AUC and accuracy (``MAX_DELTA``). For a tiny MLP
the quantise/dequantise nodes cost more than the int8 weights save, in bytes
and in time (STACK.md), so refusing it there is the expected outcome.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from falaj.errors import ConfigError
from training.evaluate import evaluate
from training.export import INPUT_NAME, OUTPUT_NAME, onnx_predict

#: int8 may be at most this much slower than fp32 and still count as "not
#: slower": best-of-N timings of the same graph differ by a few percent from
#: run to run on a shared 2-core machine, and a variant must not be refused
#: (or kept) on that noise alone.
LATENCY_MARGIN = 1.05
#: "Within 0.5 points": |int8 - fp32| of the held-out AUC and of accuracy.
MAX_DELTA = 0.005
#: Timed runs of each model; the best is kept (the least disturbed by other load).
REPEATS = 30


@dataclass(frozen=True, kw_only=True)
class Int8Decision:
    """The figures of the int8 variant against fp32, and whether it is kept."""

    kept: bool
    #: Why it was refused (each failed criterion), or why it was kept.
    reason: str
    size_bytes: int
    fp32_size_bytes: int
    latency_s: float
    fp32_latency_s: float
    #: int8 - fp32 of the held-out AUC and accuracy (fractions, 0.005 = 0.5 points).
    auc_delta: float
    accuracy_delta: float
    #: The largest |int8 - fp32| probability over the held-out rows, recorded
    #: but not a criterion: dynamic quantisation scales each layer's input once
    #: per batch, so one outlier coarsens its whole batch. On the fraud MLP,
    #: 20,000 held-out rows in one batch, it reached 0.44 while AUC moved 0.12
    #: points and accuracy not at all.
    max_abs_diff: float

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.fp32_size_bytes

    @property
    def latency_ratio(self) -> float:
        return self.latency_s / self.fp32_latency_s

    def to_lineage(self) -> dict[str, Any]:
        """What a model version's lineage records of the decision (JSON)."""
        return {
            "kept": self.kept,
            "reason": self.reason,
            "size_bytes": self.size_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "latency_ratio": round(self.latency_ratio, 4),
            "latency_s": self.latency_s,
            "fp32_latency_s": self.fp32_latency_s,
            "auc_delta": self.auc_delta,
            "accuracy_delta": self.accuracy_delta,
            "max_abs_diff": self.max_abs_diff,
            "latency_margin": LATENCY_MARGIN,
            "max_delta": MAX_DELTA,
        }


@dataclass(frozen=True)
class Int8Variant:
    """The quantised model and the decision about it."""

    onnx_bytes: bytes
    decision: Int8Decision


def decide(
    *,
    size_bytes: int,
    fp32_size_bytes: int,
    latency_s: float,
    fp32_latency_s: float,
    auc_delta: float,
    accuracy_delta: float,
    max_abs_diff: float,
    latency_margin: float = LATENCY_MARGIN,
    max_delta: float = MAX_DELTA,
) -> Int8Decision:
    """Keep the variant only if it is smaller, not slower and as accurate; say why."""
    if fp32_size_bytes <= 0 or not fp32_latency_s > 0:
        raise ConfigError(
            f"expected a positive fp32 size and latency to compare with, got "
            f"{fp32_size_bytes} bytes and {fp32_latency_s} s"
        )
    refused = []
    if size_bytes >= fp32_size_bytes:
        refused.append(f"not smaller ({size_bytes} bytes against fp32's {fp32_size_bytes})")
    ratio = latency_s / fp32_latency_s
    if not ratio <= latency_margin:  # also refuses NaN
        refused.append(
            f"slower ({ratio:.2f}x fp32's latency, expected at most {latency_margin:.2f}x)"
        )
    for name, delta in (("AUC", auc_delta), ("accuracy", accuracy_delta)):
        if not abs(delta) <= max_delta:
            refused.append(
                f"{name} moved by {delta * 100:+.2f} points (expected within {max_delta * 100:.1f})"
            )
    reason = (
        "refused: " + "; ".join(refused)
        if refused
        else (
            f"kept: {size_bytes / fp32_size_bytes:.2f}x the size, {ratio:.2f}x the latency, "
            f"AUC {auc_delta * 100:+.2f} and accuracy {accuracy_delta * 100:+.2f} points"
        )
    )
    return Int8Decision(
        kept=not refused,
        reason=reason,
        size_bytes=size_bytes,
        fp32_size_bytes=fp32_size_bytes,
        latency_s=latency_s,
        fp32_latency_s=fp32_latency_s,
        auc_delta=auc_delta,
        accuracy_delta=accuracy_delta,
        max_abs_diff=max_abs_diff,
    )


def quantize_int8(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` with int8 weights (dynamic quantisation, QInt8)."""
    with tempfile.TemporaryDirectory() as directory, _quiet_preprocessing_advice():
        source, target = Path(directory) / "fp32.onnx", Path(directory) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()


def single_threaded_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A CPU session on one thread: two models timed on a shared machine get equal shares."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def best_latencies(
    models: tuple[bytes, ...], features: npt.NDArray[np.float32], *, repeats: int = REPEATS
) -> tuple[float, ...]:
    """The best of ``repeats`` timed runs of each model over ``features``, in seconds.

    The models take turns run by run, so a burst of other work on the machine
    falls on both alike rather than on whichever happened to be timed then.
    """
    if repeats < 1:
        raise ConfigError(f"repeats: expected at least 1 timed run, got {repeats}")
    batch = {INPUT_NAME: np.ascontiguousarray(features, dtype=np.float32)}
    sessions = [single_threaded_session(model) for model in models]
    for session in sessions:  # the first run allocates; it is not timed
        session.run([OUTPUT_NAME], batch)
    best = [math.inf] * len(sessions)
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            started = time.perf_counter()
            session.run([OUTPUT_NAME], batch)
            best[i] = min(best[i], time.perf_counter() - started)
    return tuple(best)


def int8_variant(
    fp32_bytes: bytes,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.float32],
    *,
    repeats: int = REPEATS,
) -> Int8Variant:
    """Quantise ``fp32_bytes`` and decide on it with the held-out ``features`` and ``labels``."""
    int8_bytes = quantize_int8(fp32_bytes)
    fp32_p, int8_p = (
        onnx_predict(model, features).reshape(-1) for model in (fp32_bytes, int8_bytes)
    )
    fp32_scores, int8_scores = evaluate(labels, fp32_p), evaluate(labels, int8_p)
    fp32_latency, int8_latency = best_latencies((fp32_bytes, int8_bytes), features, repeats=repeats)
    decision = decide(
        size_bytes=len(int8_bytes),
        fp32_size_bytes=len(fp32_bytes),
        latency_s=int8_latency,
        fp32_latency_s=fp32_latency,
        auc_delta=int8_scores.auc - fp32_scores.auc,
        accuracy_delta=int8_scores.accuracy - fp32_scores.accuracy,
        max_abs_diff=float(np.max(np.abs(int8_p - fp32_p))),
    )
    return Int8Variant(onnx_bytes=int8_bytes, decision=decision)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocessing_advice() -> Iterator[None]:
    # quantize_dynamic warns on the root logger whenever a model skipped
    # quant_pre_process. The TorchScript export needs none (STACK.md), and
    # pre-processing the fraud MLP made its int8 variant neither smaller nor
    # faster, so the advice would be noise in every training job's log.
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
