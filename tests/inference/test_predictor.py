"""The KServe predictor: verified load, V1/V2 answers equal onnxruntime's, 400s that keep alive;
the int8 variant where training kept one, and the device the session runs on."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from kserve import InferInput, InferRequest, InferResponse
from kserve.errors import InvalidInput, ModelNotReady
from structlog.testing import capture_logs

from falaj.context import Context
from falaj.errors import ConfigError
from falaj.profile import ReferenceProfile
from falaj.registry import FP32, INT8, MODEL_FILE, SIGNATURE_FILE, ModelRegistry
from inference import server
from inference.inputs import OUTPUT_NAME
from inference.predictor import (
    OnlineFeaturesMode,
    OnnxPredictor,
    ServingOptions,
    VariantChoice,
    choose_variant,
)
from inference.session import CPU, CUDA, Device, providers, session_options
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
    ctx: Context, start_predictor: Starter, caller_headers: dict[str, str]
) -> None:
    version = register(ctx, WEIGHTS_V1)
    _, port = start_predictor(version)
    rows = sample_rows(3, seed=9)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10.0, headers=caller_headers) as client:
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


# -- the int8 variant -----------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_bytes() -> bytes:
    from training.quantize import quantize_int8

    return quantize_int8(fraud_onnx(WEIGHTS_V1))


def register_with_int8(ctx: Context, int8_bytes: bytes) -> int:
    rows = sample_rows(300, seed=6)
    return (
        ModelRegistry(ctx)
        .register(
            "fraud",
            onnx_bytes=fraud_onnx(WEIGHTS_V1),
            int8_onnx_bytes=int8_bytes,
            profile=ReferenceProfile.from_columns(
                {name: rows[:, j] for j, name in enumerate(FEATURES)}
            ),
            metrics={"auc": 0.9},
            lineage={"training_job_id": "test", "int8": {"kept": True}},
            feature_names=FEATURES,
        )
        .version
    )


def run_onnx(onnx_bytes: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=[CPU])
    (out,) = session.run([OUTPUT_NAME], {"input": rows})
    return np.asarray(out).reshape(-1)


def loaded(ctx: Context, version: int, **options: Any) -> OnnxPredictor:
    predictor = OnnxPredictor(
        ctx, model="fraud", version=version, options=ServingOptions(**options)
    )
    assert predictor.load() is True, predictor.refusal
    return predictor


def test_auto_serves_the_int8_variant_training_kept_and_says_so(
    ctx: Context, int8_bytes: bytes
) -> None:
    version = register_with_int8(ctx, int8_bytes)
    rows = sample_rows(50, seed=4)
    with capture_logs() as logs:
        predictor = loaded(ctx, version)
    assert predictor.variant == INT8
    (event,) = [e for e in logs if e["event"] == "model.loaded"]
    assert (event["variant"], event["variants"], event["variant_choice"]) == (
        INT8,
        [FP32, INT8],
        "auto",
    )
    answer = run(predictor, {"instances": rows.tolist()})
    np.testing.assert_allclose(answer["predictions"], run_onnx(int8_bytes, rows), rtol=1e-6)
    # Not fp32's answers: this toy model on raw-scale inputs quantises coarsely
    # (training would not have kept it; the registry is told it did).
    assert not np.allclose(answer["predictions"], reference(rows), rtol=1e-3)
    request = InferRequest(
        model_name="fraud",
        infer_inputs=[InferInput("input", [2, 6], "FP32", data=rows[:2].ravel().tolist())],
    )
    response = run(predictor, request)
    assert response.parameters == {"model_variant": INT8}


def test_fp32_can_be_forced_and_is_the_default_without_an_int8_variant(
    ctx: Context, int8_bytes: bytes
) -> None:
    rows = sample_rows(20, seed=5)
    forced = loaded(ctx, register_with_int8(ctx, int8_bytes), variant=VariantChoice.FP32)
    assert forced.variant == FP32
    np.testing.assert_allclose(
        run(forced, {"instances": rows.tolist()})["predictions"], reference(rows), rtol=1e-6
    )
    plain = loaded(ctx, register(ctx, WEIGHTS_V1))
    assert plain.variant == FP32


def test_forcing_int8_on_a_version_without_one_refuses_it_with_the_reason(ctx: Context) -> None:
    version = register(ctx, WEIGHTS_V1)
    predictor = OnnxPredictor(
        ctx, model="fraud", version=version, options=ServingOptions(variant=VariantChoice.INT8)
    )
    assert predictor.load() is False
    assert predictor.refusal is not None
    assert "has no 'int8' variant; it has fp32" in predictor.refusal
    with pytest.raises(ModelNotReady, match="version 1 refused: RegistryError"):
        asyncio.run(predictor.healthy())


def test_auto_keeps_fp32_on_a_gpu(ctx: Context, int8_bytes: bytes) -> None:
    """int8 was measured (and kept) on the CPU; on CUDA it runs partly on the CPU anyway."""
    entry = ModelRegistry(ctx).get("fraud", register_with_int8(ctx, int8_bytes))
    assert choose_variant(entry, VariantChoice.AUTO, on_cuda=False) == INT8
    assert choose_variant(entry, VariantChoice.AUTO, on_cuda=True) == FP32
    assert choose_variant(entry, VariantChoice.INT8, on_cuda=True) == INT8
    plain = ModelRegistry(ctx).get("fraud", register(ctx, WEIGHTS_V1))
    assert choose_variant(plain, VariantChoice.AUTO, on_cuda=False) == FP32


# -- the device -----------------------------------------------------------------------


def test_the_device_decides_the_providers() -> None:
    assert providers([CUDA, CPU], Device.CPU) == [CPU]
    assert providers([CUDA, CPU], Device.CUDA) == [CUDA, CPU]
    assert providers([CPU], Device.AUTO) == [CPU]
    with pytest.raises(ConfigError, match="--device cuda: this onnxruntime build has no CUDA"):
        providers([CPU, "AzureExecutionProvider"], Device.CUDA)


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this build has CUDA")
def test_cuda_demanded_where_there_is_none_refuses_the_version(ctx: Context) -> None:
    """A GPU pod on an image without CUDA says so (503) instead of serving from its CPU."""
    version = register(ctx, WEIGHTS_V1)
    predictor = OnnxPredictor(
        ctx, model="fraud", version=version, options=ServingOptions(device=Device.CUDA)
    )
    assert predictor.load() is False
    assert predictor.refusal is not None
    assert predictor.refusal.startswith("ConfigError: --device cuda: this onnxruntime build")


# -- the server's flags -----------------------------------------------------------------


def test_server_flags_name_the_predictors_choices() -> None:
    assert set(server.VARIANTS) == {str(v) for v in VariantChoice}
    assert set(server.DEVICES) == {str(d) for d in Device}
    assert set(server.ONLINE_FEATURES) == {str(m) for m in OnlineFeaturesMode}
    defaults = server.parse_args(["--model", "fraud"])
    assert (defaults.variant, defaults.device, defaults.online_features) == ("auto", "auto", "lazy")
    # As the GPU ServingRuntime passes them, in KServe's --flag=value form.
    given = server.parse_args(
        ["--model_name=fraud", "--variant=fp32", "--device=cuda", "--online-features=eager"]
    )
    assert (given.model, given.variant, given.device, given.online_features) == (
        "fraud",
        "fp32",
        "cuda",
        "eager",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "fraud", "--variant", "int4"],
        ["--model", "fraud", "--device", "tpu"],
        ["--model="],
    ],
)
def test_server_refuses_unknown_choices(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        server.parse_args(argv)
    assert "error" in capsys.readouterr().err
