"""The KServe predictor: verified load, V1/V2 answers equal onnxruntime's, 400s that keep alive."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kserve import InferInput, InferRequest, InferResponse
from kserve.errors import InvalidInput, ModelNotReady

from falaj.context import Context
from falaj.registry import MODEL_FILE, SIGNATURE_FILE
from inference.inputs import OUTPUT_NAME
from inference.predictor import OnnxPredictor
from inference.session import CPU, CUDA, providers, session_options
from tests.inference.conftest import (
    FEATURES,
    WEIGHTS_V1,
    Starter,
    fraud_onnx,
    register,
    sample_rows,
)


def reference(rows: np.ndarray) -> np.ndarray:
    """The same model, run by onnxruntime directly."""
    session = ort.InferenceSession(fraud_onnx(WEIGHTS_V1), providers=[CPU])
    (out,) = session.run([OUTPUT_NAME], {"input": rows})
    return np.asarray(out).reshape(-1)


@pytest.fixture
def predictor(ctx: Context) -> OnnxPredictor:
    version = register(ctx, WEIGHTS_V1)
    model = OnnxPredictor(ctx, model="fraud", version=version)
    assert model.load() is True
    return model


def run(predictor: OnnxPredictor, payload: Any) -> Any:
    return predictor.predict(payload)


def test_v1_lists_and_objects_match_onnxruntime(predictor: OnnxPredictor) -> None:
    rows = sample_rows(5)
    expected = reference(rows)
    as_lists = run(predictor, {"instances": rows.tolist()})
    as_objects = run(
        predictor, {"instances": [dict(zip(FEATURES, map(float, r), strict=True)) for r in rows]}
    )
    np.testing.assert_allclose(as_lists["predictions"], expected, rtol=1e-6)
    np.testing.assert_allclose(as_objects["predictions"], expected, rtol=1e-6)
    assert predictor.ready and predictor.feature_names == FEATURES


def test_v2_one_tensor_and_per_feature_tensors_match_onnxruntime(predictor: OnnxPredictor) -> None:
    rows = sample_rows(4, seed=3)
    expected = reference(rows)
    one = InferRequest(
        model_name="fraud",
        request_id="r-1",
        infer_inputs=[InferInput("input", [4, 6], "FP32", data=rows.ravel().tolist())],
    )
    response = run(predictor, one)
    assert isinstance(response, InferResponse)
    (output,) = response.outputs
    assert (output.name, output.shape, output.datatype) == ("probability", [4, 1], "FP32")
    assert (response.id, response.model_version) == ("r-1", "1")
    np.testing.assert_allclose(output.data, expected, rtol=1e-6)

    per_feature = InferRequest(
        model_name="fraud",
        infer_inputs=[
            InferInput(name, [4], "FP32", data=rows[:, j].tolist())
            for j, name in enumerate(FEATURES)
        ],
    )
    np.testing.assert_allclose(run(predictor, per_feature).outputs[0].data, expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"instances": [[1.0, 2.0]]}, "row 0: expected 6 values, got 2"),
        (
            {"instances": [[1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]]},
            "distance_km: expected a finite number, got nan",
        ),
        ({"instances": []}, "got an empty list"),
        ({"instances": [{"amount": 3.0}]}, "missing features ['hour'"),
        ({"rows": []}, 'expected a V1 body {"instances": [...]}'),
    ],
)
def test_bad_v1_input_is_invalid_input(
    predictor: OnnxPredictor, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        run(predictor, payload)
    assert message in str(caught.value)


def test_bad_v2_input_is_invalid_input(predictor: OnnxPredictor) -> None:
    wrong_type = InferRequest(
        model_name="fraud", infer_inputs=[InferInput("input", [1, 6], "INT32", data=[1] * 6)]
    )
    with pytest.raises(InvalidInput, match="datatype INT32, expected FP32"):
        run(predictor, wrong_type)
    short = InferRequest(
        model_name="fraud", infer_inputs=[InferInput("input", [2, 6], "FP32", data=[1.0] * 6)]
    )
    with pytest.raises(InvalidInput, match="expected 12 FP32 numbers for shape \\[2, 6\\], got 6"):
        run(predictor, short)


def test_tampered_artifact_is_never_loaded_and_is_audited(ctx: Context) -> None:
    version = register(ctx, WEIGHTS_V1)
    encrypted = ctx.paths.registry / "fraud" / str(version) / MODEL_FILE
    blob = bytearray(encrypted.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    encrypted.write_bytes(bytes(blob))

    predictor = OnnxPredictor(ctx, model="fraud", version=version)
    assert predictor.load() is False
    predictor.start()  # kserve's start() must not flip it ready
    assert predictor.ready is False
    assert predictor.refusal is not None and predictor.refusal.startswith("SignatureInvalid")
    with pytest.raises(ModelNotReady, match="version 1 refused: SignatureInvalid"):
        asyncio.run(predictor.healthy())
    with pytest.raises(ModelNotReady):
        predictor.run(sample_rows(1))
    refused = [e for e in ctx.audit.entries() if e["action"] == "model.load.refused"]
    assert len(refused) == 1
    assert refused[0]["resource"] == "model/fraud/1"
    assert refused[0]["outcome"] == "refused"
    assert refused[0]["details"]["error"] == "SignatureInvalid"


def test_unsigned_artifact_is_refused(ctx: Context) -> None:
    version = register(ctx, WEIGHTS_V1)
    (ctx.paths.registry / "fraud" / str(version) / SIGNATURE_FILE).unlink()
    predictor = OnnxPredictor(ctx, model="fraud", version=version)
    assert predictor.load() is False
    assert predictor.refusal is not None


def test_model_without_the_serving_contract_is_refused(ctx: Context) -> None:
    from falaj.profile import ReferenceProfile
    from falaj.registry import ModelRegistry

    entry = ModelRegistry(ctx).register(
        "fraud",
        onnx_bytes=fraud_onnx((0.5, -0.25)),  # two inputs, but six features declared
        profile=ReferenceProfile.from_columns({"amount": np.arange(50.0)}),
        metrics={},
        lineage={},
        feature_names=FEATURES,
    )
    predictor = OnnxPredictor(ctx, model="fraud", version=entry.version)
    assert predictor.load() is False
    assert predictor.refusal is not None and "input shape" in predictor.refusal


def test_providers_prefer_cuda_and_options_stay_small() -> None:
    assert providers([CPU]) == [CPU]
    assert providers([CUDA, CPU, "AzureExecutionProvider"]) == [CUDA, CPU]
    options = session_options(cpu_count=16)
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(cpu_count=1).intra_op_num_threads == 1


def _local_port(response: httpx.Response) -> int:
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def test_served_over_http_bad_input_is_400_and_keeps_the_connection(
    ctx: Context, start_predictor: Starter
) -> None:
    version = register(ctx, WEIGHTS_V1)
    _, port = start_predictor(version)
    rows = sample_rows(3, seed=9)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10.0) as client:
        bad = client.post(
            "/v2/models/fraud/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]
            },
        )
        assert bad.status_code == 400
        assert "shape [1, 5], expected [N, 6]" in bad.json()["error"]
        good = client.post(
            "/v2/models/fraud/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": [3, 6],
                        "datatype": "FP32",
                        "data": rows.ravel().tolist(),
                    }
                ]
            },
        )
        assert good.status_code == 200
        # The same TCP connection answered both: the 400 did not drop keep-alive.
        assert _local_port(good) == _local_port(bad)
        np.testing.assert_allclose(good.json()["outputs"][0]["data"], reference(rows), rtol=1e-6)

        v1 = client.post("/v1/models/fraud:predict", json={"instances": rows.tolist()})
        assert v1.status_code == 200
        np.testing.assert_allclose(v1.json()["predictions"], reference(rows), rtol=1e-6)
        v1_bad = client.post("/v1/models/fraud:predict", json={"instances": [{"amount": 1}]})
        assert v1_bad.status_code == 400 and "missing features" in v1_bad.json()["error"]
        assert _local_port(v1_bad) == _local_port(bad)
        metadata = client.get("/v2/models/fraud").json()
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 6]}]
