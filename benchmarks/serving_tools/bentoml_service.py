"""The serving benchmark's BentoML peer: the same ONNX model on onnxruntime, one worker.

Run by ``benchmarks/serving.py`` in its own virtual environment (``make
bench`` creates ``.venv-bentoml``: BentoML 1.4.39 pins opentelemetry 1.45.1,
which the stack's packages do not accept)::

    FALAJ_BENCH_ONNX=/path/model.onnx .venv-bentoml/bin/bentoml serve \\
        bentoml_service:FraudOnnx --host 127.0.0.1 --port 3000   (cwd: this folder)

``POST /predict`` with ``{"input": [[f1, ..., f6]]}`` answers the probabilities.
Configured to match the predictor it is compared with: one worker process (the
predictor runs one uvicorn worker), onnxruntime with the predictor's own
session options (two intra-op threads at most, no spinning, all graph
optimisations), uvicorn on httptools and uvloop as our router runs (the
Makefile installs both into ``.venv-bentoml``; without them uvicorn falls back
to h11 and asyncio), and BentoML's defaults for everything else: its access
log and request metrics stay on, as the predictor writes an access line (and
two KServe timing lines) per request and keeps Prometheus histograms.

The API is ``async def``: it runs ``session.run`` on the event loop, as
KServe runs our predictor's ``predict``. Measured here, a plain ``def`` (which
BentoML hands to its thread pool) served 410 requests/s against 730 at 16
connections: the thread hop and the GIL between the threads cost more than
the model's microseconds of work, so the peer is given its faster form.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

INPUT_NAME = "input"
OUTPUT_NAME = "probability"


def _session(path: str) -> ort.InferenceSession:
    # The same options as inference/session.py (not imported: this venv has no falaj).
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


@bentoml.service(workers=1)
class FraudOnnx:
    def __init__(self) -> None:
        self.session = _session(os.environ["FALAJ_BENCH_ONNX"])

    @bentoml.api
    async def predict(self, input: np.ndarray) -> np.ndarray:
        (result,) = self.session.run(
            [OUTPUT_NAME], {INPUT_NAME: np.asarray(input, dtype=np.float32)}
        )
        return np.asarray(result, dtype=np.float32)
