"""The KServe predictor of one model version: verified ONNX on onnxruntime.

``load`` asks the registry for the version's bytes, which it hands out only
after the signature, the decryption and the digest all check out, so no byte of
an untrusted artifact reaches onnxruntime. A refused version stays unloaded: the
model is not ready, the reason is kept and audited, and every readiness or
inference call answers 503 with that reason (the router reports it).

The model is served under its model name, not ``name/version``: KServe cannot
address versions by URL (STACK.md), so each version runs in its own server.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput, ModelNotReady

from falaj.audit import Outcome
from falaj.context import Context
from falaj.errors import ArtifactError, FalajError
from falaj.logs import get_logger
from falaj.registry import ModelRegistry
from inference.errors import InvalidPayload
from inference.inputs import (
    DATATYPE,
    INPUT_NAME,
    OUTPUT_NAME,
    Matrix,
    Tensor,
    matrix_from_instances,
    matrix_from_tensors,
)
from inference.session import create_session


class OnnxPredictor(Model):
    def __init__(
        self,
        ctx: Context,
        *,
        model: str,
        version: int,
        registry: ModelRegistry | None = None,
    ) -> None:
        super().__init__(model)
        self.ctx = ctx
        self.model = model
        self.version = version
        self._registry = registry
        self.feature_names: tuple[str, ...] = ()
        #: Why the version was refused at load time, or None.
        self.refusal: str | None = None
        self._session: ort.InferenceSession | None = None
        self.log = get_logger(model=model, version=version)

    # -- lifecycle ---------------------------------------------------------------

    def load(self) -> bool:
        registry = self._registry or ModelRegistry(self.ctx)
        try:
            artifact = registry.load_verified(self.model, self.version)
            session = _open_session(artifact.onnx_bytes, self.model, self.version)
            _check_signature(session, artifact.version.feature_names, self.model, self.version)
        except FalajError as exc:
            self._refuse(exc)
            return False
        self.feature_names = artifact.version.feature_names
        self._session = session
        self.refusal = None
        self.ready = True
        self.log.info(
            "model.loaded", digest=artifact.version.digest, providers=session.get_providers()
        )
        return True

    def _refuse(self, exc: FalajError) -> None:
        self.ready = False
        self._session = None
        self.refusal = f"{type(exc).__name__}: {exc}"
        self.ctx.audit.record(
            "model.load.refused",
            actor=self.ctx.actor,
            resource=f"model/{self.model}/{self.version}",
            region=self.ctx.settings.region,
            outcome=Outcome.REFUSED,
            details={"reason": str(exc), "error": type(exc).__name__},
        )
        self.log.error("model.load.refused", reason=self.refusal)

    def start(self) -> None:
        # kserve's default start() marks any model ready; ours is ready only
        # when a verified session exists.
        self.ready = self._session is not None

    async def healthy(self) -> bool:
        if self.refusal is not None:
            # KServe answers this with 503 and the detail, on every readiness
            # and inference call: the refusal is visible to whoever asks.
            raise ModelNotReady(self.name, detail=f"version {self.version} refused: {self.refusal}")
        return bool(self.ready)

    # -- metadata ----------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, len(self.feature_names)]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, 1]}]

    # -- inference ---------------------------------------------------------------

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        try:
            matrix = self._matrix(payload)
        except InvalidPayload as exc:
            # InvalidInput is KServe's 400; anything else is a 500 that also
            # drops the client's keep-alive connection (STACK.md).
            raise InvalidInput(str(exc)) from exc
        probabilities = self.run(matrix)
        if isinstance(payload, InferRequest):
            output = InferOutput(
                name=OUTPUT_NAME,
                shape=list(probabilities.shape),
                datatype=DATATYPE,
                data=[float(v) for v in probabilities.reshape(-1)],
            )
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()),
                model_name=self.name,
                model_version=str(self.version),
                infer_outputs=[output],
            )
        return {"predictions": [float(v) for v in probabilities.reshape(-1)]}

    def run(self, matrix: Matrix) -> Matrix:
        """Probabilities [N, 1] for a checked matrix [N, F]."""
        if self._session is None:
            raise ModelNotReady(self.name, detail=self.refusal or "not loaded")
        (result,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: matrix})
        return np.asarray(result, dtype=np.float32).reshape(-1, 1)

    def _matrix(self, payload: dict[str, Any] | InferRequest) -> Matrix:
        if isinstance(payload, InferRequest):
            return matrix_from_tensors([_tensor(i) for i in payload.inputs], self.feature_names)
        if not isinstance(payload, dict) or "instances" not in payload:
            got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise InvalidPayload(
                f'expected a V1 body {{"instances": [...]}} or a V2 body {{"inputs": [...]}}, '
                f"got {got}"
            )
        return matrix_from_instances(payload["instances"], self.feature_names)


def _tensor(infer_input: Any) -> Tensor:
    """A KServe input (REST or gRPC) as a checked Tensor; data is decoded only for FP32."""
    name, datatype = str(infer_input.name), str(infer_input.datatype).upper()
    shape = tuple(int(d) for d in infer_input.shape)
    if datatype != DATATYPE:
        return Tensor(name, datatype, shape, np.empty(0, dtype=np.float32))
    try:
        values = np.asarray(infer_input.as_numpy(), dtype=np.float32)
    except (TypeError, ValueError):
        data = infer_input.data
        got = f"{len(data)} values" if isinstance(data, list) else "data that does not fit it"
        raise InvalidPayload(
            f"input {name!r}: expected {int(np.prod(shape))} {DATATYPE} numbers for shape "
            f"{list(shape)}, got {got}"
        ) from None
    return Tensor(name, datatype, shape, values)


def _open_session(onnx_bytes: bytes, model: str, version: int) -> ort.InferenceSession:
    try:
        return create_session(onnx_bytes)
    except Exception as exc:  # onnxruntime raises its own pybind error classes
        raise ArtifactError(
            f"onnxruntime cannot load {model!r} version {version} "
            f"({type(exc).__name__}: {str(exc)[:200]}); re-export it to ONNX"
        ) from None


def _check_signature(
    session: ort.InferenceSession, features: tuple[str, ...], model: str, version: int
) -> None:
    """The graph must take ``input`` [N, F] float and give ``probability``."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    problems: list[str] = []
    if set(inputs) != {INPUT_NAME}:
        problems.append(f"inputs {sorted(inputs)}, expected ['{INPUT_NAME}']")
    else:
        shape, kind = inputs[INPUT_NAME].shape, inputs[INPUT_NAME].type
        if kind != "tensor(float)":
            problems.append(f"input type {kind}, expected tensor(float)")
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(features)):
            problems.append(f"input shape {shape}, expected [N, {len(features)}]")
    if OUTPUT_NAME not in outputs:
        problems.append(f"outputs {sorted(outputs)}, expected '{OUTPUT_NAME}' among them")
    if problems:
        raise ArtifactError(
            f"{model!r} version {version} does not fit the serving contract: " + "; ".join(problems)
        )
