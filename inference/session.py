"""An onnxruntime session for one model version, sized for small CPU machines."""

from __future__ import annotations

import os

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def providers(available: list[str] | None = None) -> list[str]:
    """CUDA first where this onnxruntime build has it, the CPU always as the fallback."""
    have = ort.get_available_providers() if available is None else available
    return [CUDA, CPU] if CUDA in have else [CPU]


def session_options(cpu_count: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # The fraud models are tiny MLPs served at batch 1..100: one request's work
    # is microseconds, so a thread pool per request costs more in wake-ups than
    # it saves, and on a 2-core pod it fights the HTTP server for the cores.
    # Two intra-op threads at most; no inter-op parallelism (a chain of MatMuls
    # has none to exploit).
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    options.intra_op_num_threads = max(1, min(2, cores))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Constant folding and node fusion are done once at load time and make
    # every later run cheaper; a model loads once per process.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a core while idle between requests: bad for a
    # scale-to-zero pod sharing a small node.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A session over verified model bytes (never a path: nothing unverified is read)."""
    return ort.InferenceSession(onnx_bytes, sess_options=session_options(), providers=providers())
