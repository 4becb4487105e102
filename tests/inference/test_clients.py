"""Triton's and KServe's own clients, unchanged, against a real predictor process.

The predictor speaks the Open Inference Protocol (KServe V2) over REST and gRPC,
so a caller that already uses ``tritonclient`` or ``kserve``'s clients must be
able to point them at it without a line of glue: health, model metadata and
inference, JSON and binary tensors, and a 400-class error that says what was
expected when a request does not fit the model.

Three gaps these tests found are fixed in the predictor: ``tritonclient.http``
posts JSON with no content type (``inference.server.JsonByDefault``), and
binary outputs, asked for over REST or implied by raw gRPC inputs, are answered
as such (the response keeps the request's ``use_binary_outputs``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    InferResponse,
    RESTConfig,
)
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from falaj.context import Context
from inference.inputs import DATATYPE, INPUT_NAME, OUTPUT_NAME
from inference.session import CPU
from tests.inference.conftest import (
    FEATURES,
    WEIGHTS_V1,
    GrpcStarter,
    fraud_onnx,
    register,
    sample_rows,
)

MODEL = "fraud"
WIDTH = len(FEATURES)
WRONG_SHAPE = f"shape [2, {WIDTH - 1}], expected [N, {WIDTH}]"
EXPECTED_INPUTS = [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, WIDTH]}]
EXPECTED_OUTPUTS = [{"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": [-1, 1]}]


def reference(rows: np.ndarray) -> np.ndarray:
    """The same model, run by onnxruntime directly: probabilities [N, 1]."""
    session = ort.InferenceSession(fraud_onnx(WEIGHTS_V1), providers=[CPU])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: rows})
    return np.asarray(out).reshape(-1, 1)


@dataclass(frozen=True)
class Served:
    version: int
    http_port: int
    grpc_port: int
    #: The caller's Authorization header: every endpoint but the probes admits it.
    headers: dict[str, str]

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """The same, as gRPC metadata (lower-case keys)."""
        return [(k.lower(), v) for k, v in self.headers.items()]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture
def served(
    ctx: Context, start_predictor_grpc: GrpcStarter, caller_headers: dict[str, str]
) -> Served:
    version = register(ctx, WEIGHTS_V1)
    _, http_port, grpc_port = start_predictor_grpc(version)
    return Served(version, http_port, grpc_port, caller_headers)


class BearerToken(InferenceServerClientPlugin):
    """tritonclient's way to add a header to every call (as its own BasicAuth plugin does)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.authorization = headers["Authorization"]

    def __call__(self, request: Any) -> None:
        request.headers["authorization"] = self.authorization


def triton_http(served: Served) -> httpclient.InferenceServerClient:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.http_port}")
    client.register_plugin(BearerToken(served.headers))
    return client


def triton_input(rows: np.ndarray, *, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(INPUT_NAME, list(rows.shape), DATATYPE)
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


# -- tritonclient.http ----------------------------------------------------------


def test_triton_http_client_health_metadata_and_binary_tensors(served: Served) -> None:
    rows = sample_rows(7, seed=11)
    with triton_http(served) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        metadata = client.get_model_metadata(MODEL)
        assert metadata["name"] == MODEL
        assert metadata["inputs"] == EXPECTED_INPUTS
        assert metadata["outputs"] == EXPECTED_OUTPUTS

        for outputs in (None, [httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]):
            result = client.infer(MODEL, [triton_input(rows, binary=True)], outputs=outputs)
            probabilities = result.as_numpy(OUTPUT_NAME)
            assert probabilities is not None
            assert (probabilities.dtype, probabilities.shape) == (np.float32, (7, 1))
            np.testing.assert_allclose(probabilities, reference(rows), rtol=1e-6)
            response = result.get_response()
            assert (response["model_name"], response["model_version"]) == (
                MODEL,
                str(served.version),
            )


def test_triton_http_client_bad_shape_is_a_400_that_says_what_was_expected(
    served: Served,
) -> None:
    wrong = np.ones((2, WIDTH - 1), dtype=np.float32)
    with triton_http(served) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [triton_input(wrong, binary=True)])
        assert caught.value.status() == "400", str(caught.value)
        assert WRONG_SHAPE in str(caught.value.message())
        # The 400 left the server serving: a good request on the same client works.
        rows = sample_rows(2, seed=14)
        probabilities = client.infer(MODEL, [triton_input(rows, binary=True)]).as_numpy(OUTPUT_NAME)
        np.testing.assert_allclose(np.asarray(probabilities), reference(rows), rtol=1e-6)


def test_triton_http_client_json_tensors(served: Served) -> None:
    rows = sample_rows(7, seed=11)
    with triton_http(served) as client:
        requested = [httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=False)]
        result = client.infer(MODEL, [triton_input(rows, binary=False)], outputs=requested)
        np.testing.assert_allclose(
            np.asarray(result.as_numpy(OUTPUT_NAME)), reference(rows), rtol=1e-6
        )
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [triton_input(np.ones((2, WIDTH - 1), np.float32), binary=False)])
        assert caught.value.status() == "400"
        assert WRONG_SHAPE in str(caught.value.message())


def test_triton_http_client_gets_binary_outputs_when_it_asks(served: Served) -> None:
    rows = sample_rows(3, seed=15)
    requested = [httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]
    with triton_http(served) as client:
        result = client.infer(MODEL, [triton_input(rows, binary=True)], outputs=requested)
    output = result.get_output(OUTPUT_NAME)
    assert output is not None
    assert "data" not in output
    assert output["parameters"] == {"binary_data_size": rows.shape[0] * 4}


# -- tritonclient.grpc ----------------------------------------------------------

# tritonclient.grpc and kserve both register the Open Inference Protocol's
# messages as package ``inference`` in protobuf's default descriptor pool, from
# different .proto files: whichever is imported second fails with "duplicate
# symbol 'inference.ServerLiveRequest'" (kserve/kserve#3099). This test process
# imports kserve (the predictor, the REST client), so Triton's gRPC client runs
# as a caller of its own, as it would in a real client application.
TRITON_GRPC_CALLER = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

ask = json.load(sys.stdin)


class Bearer(InferenceServerClientPlugin):
    def __call__(self, request):
        request.headers["authorization"] = ask["authorization"]


rows = np.asarray(ask["rows"], dtype=np.float32)
wrong = np.asarray(ask["wrong"], dtype=np.float32)
model, name, output, datatype = ask["model"], ask["input"], ask["output"], ask["datatype"]
told = {}
with grpcclient.InferenceServerClient(ask["url"]) as client:
    # gRPC metadata: every call carries the caller's token.
    client.register_plugin(Bearer())
    told["live"] = client.is_server_live()
    told["ready"] = client.is_server_ready()
    told["model_ready"] = client.is_model_ready(model)
    told["metadata"] = client.get_model_metadata(model, as_json=True)
    tensor = grpcclient.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(output)])
    told["response"] = result.get_response(as_json=True)
    try:
        values = result.as_numpy(output)
        told["dtype"], told["values"] = str(values.dtype), values.tolist()
    except ValueError as exc:
        told["as_numpy_error"] = str(exc)
    bad = grpcclient.InferInput(name, list(wrong.shape), datatype)
    bad.set_data_from_numpy(wrong)
    try:
        client.infer(model, [bad])
        told["error"] = None
    except InferenceServerException as exc:
        told["error"] = {"status": exc.status(), "message": exc.message()}
print(json.dumps(told))
"""


def call_triton_grpc(served: Served, rows: np.ndarray) -> dict[str, Any]:
    """What tritonclient.grpc, in a process of its own, was told by the predictor."""
    ask = {
        "url": f"127.0.0.1:{served.grpc_port}",
        "authorization": served.headers["Authorization"],
        "model": MODEL,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "datatype": DATATYPE,
        "rows": rows.tolist(),
        "wrong": np.ones((2, WIDTH - 1)).tolist(),
    }
    caller = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC_CALLER],
        input=json.dumps(ask),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert caller.returncode == 0, caller.stderr
    told: dict[str, Any] = json.loads(caller.stdout)
    return told


def test_triton_grpc_client_health_metadata_response_and_a_bad_shape(served: Served) -> None:
    told = call_triton_grpc(served, sample_rows(5, seed=12))

    assert (told["live"], told["ready"], told["model_ready"]) == (True, True, True)
    metadata = told["metadata"]
    assert metadata["name"] == MODEL
    # Protobuf's JSON form writes int64 dimensions as strings.
    inputs = [{**i, "shape": [int(d) for d in i["shape"]]} for i in metadata["inputs"]]
    outputs = [{**o, "shape": [int(d) for d in o["shape"]]} for o in metadata["outputs"]]
    assert inputs == EXPECTED_INPUTS
    assert outputs == EXPECTED_OUTPUTS

    response = told["response"]
    assert (response["model_name"], response["model_version"]) == (MODEL, str(served.version))
    (output,) = response["outputs"]
    assert (output["name"], output["datatype"]) == (OUTPUT_NAME, DATATYPE)
    assert [int(d) for d in output["shape"]] == [5, 1]

    # INVALID_ARGUMENT is gRPC's 400 (the code HTTP gateways map to it).
    assert told["error"] is not None, "a [2, 5] input was accepted"
    assert told["error"]["status"] == "StatusCode.INVALID_ARGUMENT", told["error"]
    assert WRONG_SHAPE in told["error"]["message"]


def test_triton_grpc_client_reads_the_probabilities(served: Served) -> None:
    rows = sample_rows(5, seed=12)
    told = call_triton_grpc(served, rows)
    assert "as_numpy_error" not in told, told["as_numpy_error"]
    assert told["dtype"] == "float32"
    probabilities = np.asarray(told["values"], dtype=np.float32)
    assert probabilities.shape == (5, 1)
    np.testing.assert_allclose(probabilities, reference(rows), rtol=1e-6)


# -- kserve's own clients -------------------------------------------------------


def kserve_request(rows: np.ndarray) -> InferRequest:
    tensor = InferInput(INPUT_NAME, list(rows.shape), DATATYPE)
    tensor.set_data_from_numpy(rows, binary_data=False)
    return InferRequest(MODEL, [tensor])


def test_kserve_rest_client_v2_and_v1(served: Served) -> None:
    rows = sample_rows(4, seed=13)

    async def v2() -> InferResponse:
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
            assert await client.is_server_live(served.http_url)
            assert await client.is_server_ready(served.http_url)
            assert await client.is_model_ready(served.http_url, MODEL, headers=served.headers)
            response = await client.infer(
                served.http_url, kserve_request(rows), model_name=MODEL, headers=served.headers
            )
            assert isinstance(response, InferResponse)
            return response

    async def v1() -> object:
        async with InferenceRESTClient(RESTConfig(protocol="v1", timeout=30)) as client:
            assert await client.is_server_live(served.http_url)
            assert await client.is_model_ready(served.http_url, MODEL, headers=served.headers)
            return await client.infer(
                served.http_url,
                {"instances": rows.tolist()},
                model_name=MODEL,
                headers=served.headers,
            )

    response = asyncio.run(v2())
    assert response.model_name == MODEL
    # (kserve's InferResponse.from_bytes drops model_version: it is None client-side.)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (OUTPUT_NAME, DATATYPE, [4, 1])
    np.testing.assert_allclose(output.as_numpy(), reference(rows), rtol=1e-6)

    predictions = asyncio.run(v1())
    assert isinstance(predictions, dict)
    np.testing.assert_allclose(predictions["predictions"], reference(rows).ravel(), rtol=1e-6)


def test_kserve_grpc_client(served: Served) -> None:
    rows = sample_rows(3, seed=16)

    async def call() -> InferResponse:
        client = InferenceGRPCClient(f"127.0.0.1:{served.grpc_port}", timeout=30)
        try:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready(MODEL, headers=served.metadata)
            return await client.infer(kserve_request(rows), headers=served.metadata)
        finally:
            await client.close()

    response = asyncio.run(call())
    assert (response.model_name, response.model_version) == (MODEL, str(served.version))
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (OUTPUT_NAME, DATATYPE, [3, 1])
    np.testing.assert_allclose(output.as_numpy(), reference(rows), rtol=1e-6)
