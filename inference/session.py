"""An onnxruntime session for one model version, sized for small CPU machines.

``Device`` says where it runs: ``auto`` takes CUDA where this onnxruntime
build has it and the CPU otherwise; ``cpu`` never touches a GPU; ``cuda``
insists on one, so a GPU pod whose image or node cannot give it CUDA fails
loudly instead of serving from its CPU at a fraction of the speed.
"""

from __future__ import annotations

import os
from enum import StrEnum

import onnxruntime as ort

from falaj.errors import ConfigError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def providers(available: list[str] | None = None, device: Device = Device.AUTO) -> list[str]:
    """The execution providers for ``device``, the CPU always last as the fallback.

    ``cuda`` with a build that has no CUDA provider is a ``ConfigError``.
    """
    have = ort.get_available_providers() if available is None else available
    if device is Device.CPU:
        return [CPU]
    if CUDA in have:
        return [CUDA, CPU]
    if device is Device.CUDA:
        raise ConfigError(
            f"--device cuda: this onnxruntime build has no {CUDA} (it has {', '.join(have)}); "
            "run the GPU image (onnxruntime-gpu) or pass --device cpu"
        )
    return [CPU]


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


def create_session(onnx_bytes: bytes, device: Device = Device.AUTO) -> ort.InferenceSession:
    """A session over verified model bytes (never a path: nothing unverified is read).

    With ``cuda``, a session onnxruntime quietly put on the CPU (its CUDA
    libraries would not load on this node) is a ``ConfigError`` too.
    """
    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(), providers=providers(device=device)
    )
    if device is Device.CUDA and CUDA not in session.get_providers():
        raise ConfigError(
            f"--device cuda: onnxruntime could not start {CUDA} on this node (the session runs "
            f"on {', '.join(session.get_providers())}); check the node's NVIDIA driver and the "
            "pod's nvidia.com/gpu limit, or pass --device cpu"
        )
    return session
