"""The KServe predictor of one model version: verified ONNX on onnxruntime.

``load`` asks the registry for the version's bytes, which it hands out only
after the signature, the decryption and the digest all check out, so no byte of
an untrusted artifact reaches onnxruntime. A refused version stays unloaded: the
model is not ready, the reason is kept and audited, and every readiness or
inference call answers 503 with that reason (the router reports it).

Which of the version's model variants is served (``ServingOptions.variant``):
``auto`` serves ``int8`` where training kept one (it was kept only because it
was smaller, no slower and as accurate, ``training.quantize``) and the session
runs on the CPU, where that was measured; ``fp32`` otherwise. ``fp32`` or
``int8`` force one. The variant served is logged with ``model.loaded``, kept in
``variant`` and returned in every V2 response's parameters (``model_variant``).

A request may name entities instead of giving features (``inference.inputs``):
``OnlineFeatures`` then reads the version's inputs from the Feast online store,
through the feature service the version was trained through. Feast costs
seconds to import, so it is imported on the first such request (``lazy``), at
load (``eager``), or never (``off``: such requests are refused).

The model is served under its model name, not ``name/version``: KServe cannot
address versions by URL (STACK.md), so each version runs in its own server.
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InferenceError, InvalidInput, ModelNotReady

from falaj.audit import Outcome
from falaj.context import Context
from falaj.errors import ArtifactError, ConfigError, FalajError
from falaj.feature_repo import load_repo
from falaj.logs import get_logger
from falaj.model_spec import ModelSpec
from falaj.registry import FP32, INT8, ModelRegistry, ModelVersion
from falaj.schema import FeatureSchema
from inference.errors import FeaturesUnavailable, InvalidPayload
from inference.inputs import (
    BYTES,
    DATATYPE,
    INPUT_NAME,
    OUTPUT_NAME,
    Matrix,
    Tensor,
    checked_shape,
    entity_ids_from_instances,
    entity_ids_from_tensors,
    matrix_from_instances,
    matrix_from_online,
    matrix_from_tensors,
)
from inference.session import CUDA, Device, create_session, providers

if TYPE_CHECKING:
    from falaj.features import FeatureStoreClient

#: The V2 response parameter naming the model variant that answered.
VARIANT_PARAMETER = "model_variant"


class VariantChoice(StrEnum):
    """Which model variant of a version to serve (``--variant``)."""

    AUTO = "auto"
    FP32 = FP32
    INT8 = INT8


class OnlineFeaturesMode(StrEnum):
    """When Feast is imported for entity requests (``--online-features``)."""

    #: On the first entity request: a server that never gets one never pays for Feast.
    LAZY = "lazy"
    #: At load: the start pays, the first entity request does not.
    EAGER = "eager"
    #: Never: entity requests are refused.
    OFF = "off"


@dataclass(frozen=True, kw_only=True)
class ServingOptions:
    """How a predictor serves its version; the defaults are what a plain server runs."""

    variant: VariantChoice = VariantChoice.AUTO
    device: Device = Device.AUTO
    online_features: OnlineFeaturesMode = OnlineFeaturesMode.LAZY


def choose_variant(version: ModelVersion, choice: VariantChoice, *, on_cuda: bool) -> str:
    """The model variant to load for ``choice``: a forced one as given, else the best kept.

    ``auto`` takes ``int8`` only on the CPU: training measured it there
    (smaller, not slower, as accurate); on a GPU, onnxruntime runs dynamically
    quantised graphs partly on the CPU, and fp32 is what the GPU is for.
    """
    if choice is not VariantChoice.AUTO:
        return str(choice)
    return INT8 if INT8 in version.variants and not on_cuda else FP32


class OnnxPredictor(Model):
    def __init__(
        self,
        ctx: Context,
        *,
        model: str,
        version: int,
        registry: ModelRegistry | None = None,
        options: ServingOptions | None = None,
    ) -> None:
        super().__init__(model)
        self.ctx = ctx
        self.model = model
        self.version = version
        self._registry = registry
        self.options = options or ServingOptions()
        self.feature_names: tuple[str, ...] = ()
        #: The model variant loaded (``fp32`` or ``int8``); None until loaded.
        self.variant: str | None = None
        #: Why the version was refused at load time, or None.
        self.refusal: str | None = None
        self._session: ort.InferenceSession | None = None
        #: Where the version's inputs are online, once found at load.
        self.online_source: OnlineSource | None = None
        #: Reads them by entity id; None where this server does not (``entity_refusal``).
        self.online: OnlineFeatures | None = None
        #: Why entity requests are refused, or None.
        self.entity_refusal: str | None = None
        self.log = get_logger(model=model, version=version)

    # -- lifecycle ---------------------------------------------------------------

    def load(self) -> bool:
        registry = self._registry or ModelRegistry(self.ctx)
        device = self.options.device
        try:
            entry = registry.get(self.model, self.version)
            on_cuda = CUDA in providers(device=device)  # what the session will be given
            variant = choose_variant(entry, self.options.variant, on_cuda=on_cuda)
            artifact = registry.load_verified(self.model, self.version, variant=variant)
            session = _open_session(artifact.onnx_bytes, self.model, self.version, device)
            _check_signature(session, artifact.version.feature_names, self.model, self.version)
        except FalajError as exc:
            self._refuse(exc)
            return False
        self.feature_names = artifact.version.feature_names
        self.variant = artifact.variant
        self._session = session
        self.refusal = None
        self.ready = True
        self._set_up_online_features(artifact.version)
        self.log.info(
            "model.loaded",
            digest=artifact.version.digest,
            variant=artifact.variant,
            variant_sha256=artifact.version.variants[artifact.variant],
            variants=sorted(artifact.version.variants),
            variant_choice=str(self.options.variant),
            providers=session.get_providers(),
            entity=self.entity_key,
            online_features=str(self.options.online_features),
        )
        return True

    def _set_up_online_features(self, version: ModelVersion) -> None:
        """Find where the version's inputs are online; a failure only disables entity requests."""
        try:
            self.online_source = online_source(self.ctx, version)
        except FalajError as exc:
            self.entity_refusal = str(exc)
            self.log.warning("model.entity_requests_unavailable", reason=self.entity_refusal)
            return
        if self.online_source.unreadable is not None:
            self.entity_refusal = self.online_source.unreadable
            self.log.warning("model.entity_requests_unavailable", reason=self.entity_refusal)
            return
        mode = self.options.online_features
        if mode is OnlineFeaturesMode.OFF:
            self.entity_refusal = "entity requests are off on this server (--online-features off)"
            return
        self.online = OnlineFeatures(self.ctx, self.online_source)
        if mode is OnlineFeaturesMode.EAGER:
            try:
                self.online.warm()
            except FeaturesUnavailable as exc:
                # Feature requests still work; the next entity request tries again.
                self.log.warning("model.online_features_not_warmed", reason=str(exc))

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
        # Entity ids are not listed: clients that fill every listed input
        # (Triton's perf_analyzer) would send features and ids together.
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
                parameters={VARIANT_PARAMETER: self.variant or FP32},
                # Triton's binary-data extension: tritonclient.grpc reads only
                # raw contents, and a REST caller may ask for binary outputs.
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        return {"predictions": [float(v) for v in probabilities.reshape(-1)]}

    def run(self, matrix: Matrix) -> Matrix:
        """Probabilities [N, 1] for a checked matrix [N, F]."""
        if self._session is None:
            raise ModelNotReady(self.name, detail=self.refusal or "not loaded")
        try:
            (result,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: matrix})
        except Exception as exc:  # onnxruntime raises its own pybind error classes
            # KServe's InferenceError is a 500 that keeps the connection; a
            # plain exception would drop the caller's keep-alive (STACK.md).
            raise InferenceError(
                f"{self.name} version {self.version} failed on a batch of {len(matrix)}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        return np.asarray(result, dtype=np.float32).reshape(-1, 1)

    def _matrix(self, payload: dict[str, Any] | InferRequest) -> Matrix:
        entity = self.entity_key
        if isinstance(payload, InferRequest):
            tensors = [_tensor(i) for i in payload.inputs]
            ids = entity_ids_from_tensors(tensors, entity)
            if ids is None:
                return matrix_from_tensors(tensors, self.feature_names)
            return self._online_matrix(ids)
        if not isinstance(payload, dict) or "instances" not in payload:
            got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise InvalidPayload(
                f'expected a V1 body {{"instances": [...]}} or a V2 body {{"inputs": [...]}}, '
                f"got {got}"
            )
        ids = entity_ids_from_instances(payload["instances"], entity)
        if ids is None:
            return matrix_from_instances(payload["instances"], self.feature_names)
        return self._online_matrix(ids)

    @property
    def entity_key(self) -> str | None:
        """The key entity requests name, once known (even where they are refused)."""
        return None if self.online_source is None else self.online_source.entity

    def _online_matrix(self, ids: Sequence[str]) -> Matrix:
        if self.online is None:
            raise InvalidPayload(
                f"expected the features: {self.model!r} version {self.version} cannot read them "
                f"by entity id here ({self.entity_refusal or 'not loaded'})"
            )
        try:
            return self.online.matrix(ids)
        except FeaturesUnavailable as exc:
            self.log.error("predict.online_features_unavailable", reason=str(exc))
            # A 503: the request was fine and may succeed later; a 500 would
            # also drop the caller's keep-alive connection (STACK.md).
            raise ModelNotReady(self.name, detail=str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class OnlineSource:
    """Where a model version's inputs are in the online store: its dataset's entity and view."""

    entity: str
    schema: FeatureSchema
    #: The version's inputs, in its input order.
    features: tuple[str, ...]
    #: The model spec whose feature service gives exactly ``features``, the one training
    #: read through; None when the spec has changed since (they are read by name then).
    spec: ModelSpec | None
    #: Why they cannot be read online after all (the dataset no longer stores some), or None.
    unreadable: str | None = None


def online_source(ctx: Context, version: ModelVersion) -> OnlineSource:
    """Where ``version``'s inputs are online, from what it recorded and the feature repository.

    The dataset is the one its lineage names (the spec's, for versions that
    recorded none); its features are the version's own, whatever the spec says
    today, so every version of a canary reads what it was trained on. A
    ``ConfigError`` when the dataset cannot be told.
    """
    from falaj.features import feature_service_name  # falaj.features imports feast lazily itself

    repo = load_repo(ctx.settings)
    spec = repo.models.get(version.model)
    recorded = version.lineage.get("dataset")
    dataset = recorded if isinstance(recorded, str) else (spec.dataset if spec else None)
    where = f"{version.model!r} version {version.version}"
    if dataset is None:
        raise ConfigError(
            f"{where}: expected its dataset in its lineage or a model spec "
            f"models/{version.model}.yaml in the feature repository {repo.path}; found neither"
        )
    schema = repo.dataset(dataset)
    gone = [name for name in version.feature_names if name not in schema.stored_features]
    service = version.lineage.get("feature_service")
    same = (
        spec is not None
        and spec.dataset == dataset
        and spec.features == version.feature_names
        and service in (None, feature_service_name(spec.name))
    )
    return OnlineSource(
        entity=schema.entity,
        schema=schema,
        features=version.feature_names,
        spec=spec if same else None,
        unreadable=(
            f"{where}: its features {gone} are no longer stored by dataset {dataset!r}"
            if gone
            else None
        ),
    )


class OnlineFeatures:
    """A version's inputs from the Feast online store, by entity id.

    Feast is imported and its store opened on the first read (or ``warm``),
    once, under a lock. An id asked twice in one request is read once.
    """

    def __init__(self, ctx: Context, source: OnlineSource) -> None:
        self.ctx = ctx
        self.source = source
        self._client: FeatureStoreClient | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Import Feast, open the store and find the feature service now, not on a request."""
        with _store_errors():
            client = self._store()
            if self.source.spec is not None:
                client.feature_service(self.source.spec)  # kept by the client once found

    def matrix(self, ids: Sequence[str]) -> Matrix:
        """[N, F] for ``ids``; an ``InvalidPayload`` names the ids the store does not know."""
        unique = list(dict.fromkeys(ids))
        with _store_errors():
            # Through the feature service training read through; without one (the
            # spec moved on), every feature the dataset stores, the version's among them.
            online = self._store().online_features(unique, self.source.spec)
        matrix = matrix_from_online(online, self.source.entity, self.source.features)
        if len(unique) == len(ids):
            return matrix
        row = {entity_id: i for i, entity_id in enumerate(unique)}
        return matrix[[row[entity_id] for entity_id in ids]]

    def _store(self) -> FeatureStoreClient:
        with self._lock:
            if self._client is None:
                from falaj.features import FeatureStoreClient

                source = self.source
                client = FeatureStoreClient(
                    self.ctx, source.schema, (source.spec,) if source.spec else ()
                )
                client.store  # noqa: B018 - imports Feast and opens the store, once
                self._client = client
            return self._client


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Whatever reading the online store raises, as ``FeaturesUnavailable``."""
    try:
        yield
    except FalajError as exc:
        raise FeaturesUnavailable(f"the online feature store cannot be read: {exc}") from exc
    except Exception as exc:  # Feast, Redis and SQLite raise their own classes
        # Only the class: a store's message may carry its URL (and a password).
        raise FeaturesUnavailable(
            f"the online feature store cannot be read ({type(exc).__name__}); "
            "try again once it is back"
        ) from exc


def _tensor(infer_input: Any) -> Tensor:
    """A KServe input (REST or gRPC) as a checked Tensor; data is decoded for FP32 and BYTES."""
    name, datatype = str(infer_input.name), str(infer_input.datatype).upper()
    shape = checked_shape(name, list(infer_input.shape))
    if datatype not in (BYTES, DATATYPE):
        return Tensor(name, datatype, shape, np.empty(0, dtype=np.float32))
    what = f"{datatype} {'elements' if datatype == BYTES else 'numbers'}"
    try:
        values = np.asarray(
            infer_input.as_numpy(), dtype=object if datatype == BYTES else np.float32
        )
    except (TypeError, ValueError, OverflowError):
        # An integer past float's range (JSON has no bound), ragged lists, or a count
        # that is not the shape's (checked by KServe's reshape, which makes no copy).
        data = infer_input.data
        got = f"{len(data)} values" if isinstance(data, list) else "data that does not fit it"
        raise InvalidPayload(
            f"input {name!r}: expected {math.prod(shape)} {what} for shape {list(shape)}, got {got}"
        ) from None
    return Tensor(name, datatype, shape, values)


def _open_session(
    onnx_bytes: bytes, model: str, version: int, device: Device
) -> ort.InferenceSession:
    try:
        return create_session(onnx_bytes, device)
    except FalajError:
        raise  # the device cannot be had: its message says why
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
