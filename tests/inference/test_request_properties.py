"""Hostile prediction requests: V1 and V2 bodies become a checked matrix or a 400, nothing else.

Arbitrary JSON, and valid requests mutated (shape and data that disagree,
shapes negative or of 2**40 by 2**40, other datatypes, NaN and infinity,
strings, numbers past every machine type, ragged nested lists), through the
parsers of ``inference.inputs`` and through the predictor as KServe hands it
a request: a float32 matrix of finite values, one row per instance, or an
``InvalidPayload`` (KServe's ``InvalidInput``, a 400) that says what was
expected. Never a ``MemoryError`` or any other exception: a shape whose size
is absurd is refused by its count, before an array of it is made.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from kserve import InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from falaj.context import Context
from falaj.settings import Settings
from inference.errors import InvalidPayload
from inference.inputs import (
    Matrix,
    entity_ids_from_instances,
    entity_ids_from_tensors,
    matrix_from_instances,
    matrix_from_tensors,
    tensor_from_json,
)
from inference.predictor import OnlineFeaturesMode, OnnxPredictor, ServingOptions
from tests.support.hostile import (
    bodies,
    bounded,
    huge_numbers,
    json_bytes,
    json_values,
    mutated,
)
from tests.support.models import FEATURES, WEIGHTS_V1, register, sample_rows

ENTITY = "card_id"
ROWS = sample_rows(3, seed=7)
NUMBERS = st.one_of(huge_numbers, st.floats(-1e6, 1e6), st.integers(-1000, 1000))

V1_VALID = [
    {"instances": ROWS.tolist()},
    {"instances": [dict(zip(FEATURES, map(float, row), strict=True)) for row in ROWS]},
    {"instances": [{ENTITY: "card-1"}, {ENTITY: "card-2"}]},
]
V2_VALID = [
    {"inputs": [{"name": "input", "shape": [3, 6], "datatype": "FP32", "data": ROWS.tolist()}]},
    {
        "inputs": [
            {"name": name, "shape": [3], "datatype": "FP32", "data": ROWS[:, j].tolist()}
            for j, name in enumerate(FEATURES)
        ]
    },
    {"inputs": [{"name": ENTITY, "shape": [2, 1], "datatype": "BYTES", "data": ["c-1", "c-2"]}]},
]
#: The valid feature requests as they travel: each must be predicted.
VALID_BODIES = {json_bytes(valid) for valid in V1_VALID[:2] + V2_VALID[:2]}
SHAPES = st.one_of(
    st.lists(st.integers(-3, 8), max_size=3),
    st.sampled_from(
        [[2**40, 2**40], [2**62, 2**62, 2**62], [2**70], [0, 2**40], [2**40, 0], [1] * 70, [-1, 6]]
    ),
    st.lists(st.one_of(st.booleans(), st.floats(), st.text(max_size=3)), max_size=3),
)


@st.composite
def v2_inputs(draw: st.DrawFn) -> Any:
    """A valid V2 body mutated, or one input with a hostile shape, datatype and data."""
    if draw(st.booleans()):
        return draw(st.sampled_from(V2_VALID).flatmap(lambda valid: mutated(valid, times=3)))
    tensor = {
        "name": draw(st.sampled_from(["input", ENTITY, *FEATURES])),
        "shape": draw(SHAPES),
        "datatype": draw(st.sampled_from(["FP32", "BYTES", "FP64", "INT64", "fp32", "??"])),
        "data": draw(
            st.one_of(
                json_values,
                st.lists(NUMBERS, max_size=20),
                st.lists(st.lists(NUMBERS, max_size=7), max_size=4),  # ragged, or not
            )
        ),
    }
    return {"inputs": [tensor]}


def checked(matrix: Matrix, rows: int) -> None:
    assert matrix.dtype == np.float32 and matrix.shape == (rows, len(FEATURES))
    assert np.isfinite(matrix).all()


def refused(exc: InvalidPayload, body: Any) -> None:
    assert "expected" in str(exc), str(exc)
    assert body not in V1_VALID[:2] + V2_VALID[:2], f"a valid request was refused: {exc}"


@bounded
@given(
    body=st.one_of(
        json_values,
        st.sampled_from(V1_VALID).flatmap(lambda valid: mutated(valid, times=3)),
        st.lists(st.lists(NUMBERS, min_size=6, max_size=6), max_size=4).map(
            lambda rows: {"instances": rows}
        ),
    )
)
@example(body=V1_VALID[0])
@example(body=V1_VALID[1])
@example(body={"instances": [[10**400, 1, 2, 3, 4, 5]]})  # float() of it overflowed
def test_any_v1_body_is_ids_a_matrix_or_a_400(body: Any) -> None:
    instances = body.get("instances") if isinstance(body, dict) else body
    try:
        ids = entity_ids_from_instances(instances, ENTITY)
        if ids is not None:
            assert isinstance(instances, list) and len(ids) == len(instances)
            assert all(isinstance(i, str) and i for i in ids)
            return
        checked(matrix_from_instances(instances, FEATURES), len(instances))  # type: ignore[arg-type]
    except InvalidPayload as exc:
        refused(exc, body)


@bounded
@given(body=v2_inputs())
@example(body=V2_VALID[0])
@example(body=V2_VALID[1])
@example(
    body={"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [10**400] * 6}]}
)
@example(
    body={
        "inputs": [
            {"name": "input", "shape": [2**40, 2**40], "datatype": "FP32", "data": [1.0] * 6}
        ]
    }
)
def test_any_v2_body_is_ids_a_matrix_or_a_400(body: Any) -> None:
    raw = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(raw, list):
        return  # not a V2 body: KServe refuses it before any parser here (see below)
    try:
        tensors = [tensor_from_json(one) for one in raw]
        for tensor in tensors:
            assert tensor.values.shape == tensor.shape
        ids = entity_ids_from_tensors(tensors, ENTITY)
        if ids is not None:
            assert all(isinstance(i, str) and i for i in ids)
            return
        matrix = matrix_from_tensors(tensors, FEATURES)
        checked(matrix, tensors[0].shape[0])
    except InvalidPayload as exc:
        refused(exc, body)


# -- through the predictor, as KServe hands it a request ----------------------------


def one_input(shape: str, data: str) -> bytes:
    """A V2 body of one FP32 input named ``input``: its shape and data as JSON text."""
    tensor = f'{{"name": "input", "shape": {shape}, "datatype": "FP32", "data": {data}}}'
    return f'{{"inputs": [{tensor}]}}'.encode()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> OnnxPredictor:
    home = tmp_path_factory.mktemp("requests") / ".falaj"
    ctx = Context.create(Settings(home=home), actor="test")
    # Entity ids are parsed, then refused with a 400: reading the online store is not
    # what these properties are about (tests/inference/test_entity_requests.py is).
    off = ServingOptions(online_features=OnlineFeaturesMode.OFF)
    model = OnnxPredictor(ctx, model="fraud", version=register(ctx, WEIGHTS_V1), options=off)
    assert model.load() is True
    return model


@bounded
@given(
    body=st.one_of(
        bodies,
        st.sampled_from(V1_VALID).flatmap(lambda valid: mutated(valid, times=3)).map(json_bytes),
    )
)
@example(body=json_bytes(V1_VALID[0]))
def test_a_v1_request_is_predicted_or_a_400(predictor: OnnxPredictor, body: bytes) -> None:
    try:
        payload = orjson.loads(body)  # KServe's V1 endpoint parses the body so
        predictor.validate(payload)
        answer = predictor.predict(payload)
    except (orjson.JSONDecodeError, InvalidInput) as exc:
        assert str(exc) and body not in VALID_BODIES, str(exc)
        return
    assert isinstance(answer, dict) and isinstance(payload, dict)
    assert len(answer["predictions"]) == len(payload["instances"])


@bounded
@given(body=st.one_of(bodies, v2_inputs().map(json_bytes)))
@example(body=json_bytes(V2_VALID[0]))
@example(body=json_bytes(V2_VALID[1]))
@example(body=one_input("[1, 6]", "[1%s, 1, 2, 3, 4, 5]" % ("0" * 400)))  # past float's range
@example(body=one_input("[-1, 6]", "[1, 2, 3, 4, 5, 6]"))  # taken as [1, 6] before
def test_a_v2_request_is_predicted_or_a_400(predictor: OnnxPredictor, body: bytes) -> None:
    try:
        # What KServe's V2 REST endpoint does before the model sees the request.
        request = InferRequest.from_inference_request(
            InferenceRequest.model_validate_json(body), predictor.name
        )
        answer = predictor.predict(request)
    except ValidationError:
        assert body not in VALID_BODIES
        return  # FastAPI's 422: the body is not a V2 request at all
    except InvalidInput as exc:
        assert str(exc) and body not in VALID_BODIES, str(exc)
        return
    assert isinstance(answer, InferResponse)
    (output,) = answer.outputs
    assert output.shape[1:] == [1] and len(output.data) == output.shape[0]
