"""A model server admits every caller itself, over REST and gRPC: the README's access table.

Probes stay open (kubelet and Knative's queue-proxy carry no token); inference
needs ``predict``, metadata and metrics ``read``, loading or unloading a model
``deploy``. Every refusal is a 401 or 403 (UNAUTHENTICATED / PERMISSION_DENIED
over gRPC) that says why, audited with the caller when known.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from falaj.auth import PERMISSIONS, Action, Role
from falaj.context import Context
from inference.access import required_action, rpc_action
from tests.inference.conftest import WEIGHTS_V1, GrpcStarter, register, sample_rows


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("GET", "/", None),
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/v2/models/fraud/infer", Action.PREDICT),
        ("POST", "/v2/models/fraud/versions/1/infer", Action.PREDICT),
        ("POST", "/v1/models/fraud:predict", Action.PREDICT),
        ("POST", "/v1/models/fraud:explain", Action.PREDICT),
        ("GET", "/v2/models/fraud", Action.READ),
        ("GET", "/v2/models/fraud/ready", Action.READ),
        ("GET", "/v1/models/fraud", Action.READ),
        ("GET", "/v2", Action.READ),
        ("GET", "/metrics", Action.READ),
        ("POST", "/v2/repository/models/fraud/unload", Action.DEPLOY),
        ("POST", "/v2/repository/models/fraud/load", Action.DEPLOY),
        # A path that only looks like a probe is not one.
        ("GET", "/v2/health/live/../../models/fraud", Action.READ),
    ],
)
def test_each_rest_path_needs_its_action(method: str, path: str, action: Action | None) -> None:
    assert required_action(method, path) == action


def test_each_rpc_needs_its_action() -> None:
    service = "/inference.GRPCInferenceService/"
    assert rpc_action(f"{service}ServerLive") is None
    assert rpc_action(f"{service}ServerReady") is None
    assert rpc_action(f"{service}ModelInfer") is Action.PREDICT
    assert rpc_action(f"{service}ModelMetadata") is Action.READ
    assert rpc_action(f"{service}RepositoryModelUnload") is Action.DEPLOY
    assert rpc_action("/some.Other/Method") is Action.READ


def _tokens(ctx: Context) -> dict[Role, str]:
    return {role: ctx.tokens.issue(f"{role}-person", role) for role in Role}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _v2_body(rows: np.ndarray) -> dict[str, Any]:
    shape = list(rows.shape)
    return {
        "inputs": [
            {"name": "input", "shape": shape, "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }


def _refusals(ctx: Context) -> list[dict[str, Any]]:
    return [e for e in ctx.audit.entries() if e["action"] == "auth.refused"]


def test_rest_endpoints_admit_by_role_and_audit_every_refusal(
    ctx: Context, start_predictor_grpc: GrpcStarter
) -> None:
    version = register(ctx, WEIGHTS_V1)
    _, port, _ = start_predictor_grpc(version)
    tokens = _tokens(ctx)
    body = _v2_body(sample_rows(2, seed=3))
    infer = "/v2/models/fraud/infer"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
        # Probes: open, and they say nothing but "up".
        for probe in ("/", "/v2/health/live", "/v2/health/ready"):
            assert client.get(probe).status_code == 200, probe

        anonymous = client.post(infer, json=body)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert "missing bearer token" in anonymous.json()["error"]
        forged = client.post(infer, json=body, headers=_bearer("flj_not-a-real-token"))
        assert forged.status_code == 401
        assert "flj_not-a-real-token" not in forged.text  # a token is never echoed

        # One request per role and action of the access table.
        for role, token in tokens.items():
            predicted = client.post(infer, json=body, headers=_bearer(token))
            metadata = client.get("/v2/models/fraud", headers=_bearer(token))
            metrics = client.get("/metrics", headers=_bearer(token))
            allowed = PERMISSIONS[role]
            assert (predicted.status_code == 200) is (Action.PREDICT in allowed), role
            assert (metadata.status_code == 200) is (Action.READ in allowed), role
            assert (metrics.status_code == 200) is (Action.READ in allowed), role
            if Action.PREDICT not in allowed:
                assert predicted.status_code == 403
                assert f"({role}) may not predict" in predicted.json()["error"]

        # Unloading the model is a deployment: a data scientist may not.
        unload = "/v2/repository/models/fraud/unload"
        refused = client.post(unload, headers=_bearer(tokens[Role.DATA_SCIENTIST]))
        assert refused.status_code == 403
        assert (
            client.get("/v2/models/fraud/ready", headers=_bearer(tokens[Role.VIEWER])).status_code
            == 200
        )

    refusals = _refusals(ctx)
    resource = f"predictor/fraud/{version} POST {infer}"
    anonymous_entries = [e for e in refusals if e["actor"] == "unknown"]
    assert [e["resource"] for e in anonymous_entries] == [resource, resource]
    viewer = [e for e in refusals if e["actor"] == "viewer-person" and e["resource"] == resource]
    assert viewer and viewer[0]["role"] == "viewer" and viewer[0]["outcome"] == "refused"
    assert any(e["resource"].endswith(f"POST {unload}") for e in refusals)
    # The audit never holds a token, forged or real.
    audit_text = "\n".join(map(str, ctx.audit.entries()))
    assert "flj_" not in audit_text


def test_grpc_methods_admit_by_role_and_audit_every_refusal(
    ctx: Context, start_predictor_grpc: GrpcStarter
) -> None:
    version = register(ctx, WEIGHTS_V1)
    _, _, grpc_port = start_predictor_grpc(version)
    tokens = _tokens(ctx)
    rows = sample_rows(2, seed=4)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(rows.shape)
    )
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    request = pb.ModelInferRequest(model_name="fraud", inputs=[tensor])

    def metadata(role: Role) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {tokens[role]}")]

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live  # open probe

        with pytest.raises(grpc.RpcError) as anonymous:
            stub.ModelInfer(request, timeout=10)
        assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in str(anonymous.value.details())

        with pytest.raises(grpc.RpcError) as viewer:
            stub.ModelInfer(request, metadata=metadata(Role.VIEWER), timeout=10)
        assert viewer.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "(viewer) may not predict" in str(viewer.value.details())

        answer = stub.ModelInfer(request, metadata=metadata(Role.DATA_SCIENTIST), timeout=10)
        assert answer.model_name == "fraud" and answer.outputs[0].shape == [2, 1]
        ready = stub.ModelReady(
            pb.ModelReadyRequest(name="fraud"), metadata=metadata(Role.VIEWER), timeout=10
        )
        assert ready.ready

        with pytest.raises(grpc.RpcError) as unload:
            stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="fraud"),
                metadata=metadata(Role.DATA_SCIENTIST),
                timeout=10,
            )
        assert unload.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # The refused unload left the model served.
        assert stub.ModelReady(
            pb.ModelReadyRequest(name="fraud"), metadata=metadata(Role.VIEWER), timeout=10
        ).ready

    refusals = _refusals(ctx)
    infer = f"predictor/fraud/{version} grpc /inference.GRPCInferenceService/ModelInfer"
    assert [(e["actor"], e["role"]) for e in refusals if e["resource"] == infer] == [
        ("unknown", "none"),
        ("viewer-person", "viewer"),
    ]
