"""Payload logging: predictions become inference.logged events, off the request path."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from falaj.events import EventType, InferenceLogged
from falaj.publisher import EventPublisher
from falaj.runtime.processes import free_port
from inference.binary_tensors import read_body
from inference.errors import InvalidPayload
from inference.payload_log import PayloadLogger, Prediction, Protocol, decode
from tests.inference.conftest import FEATURES, BrokerStandIn, wait_until

ROWS = [[10.0, 3.0, 4.0, 100.0, 1.0, 0.0], [20.0, 4.0, 5.0, 200.0, 2.0, 1.0]]
FLAT = [v for row in ROWS for v in row]


def v1(rows: list[list[float]] = ROWS) -> Prediction:
    return Prediction(
        model="fraud",
        version=2,
        variant="canary",
        protocol=Protocol.V1,
        request=json.dumps({"instances": rows}).encode(),
        response=json.dumps({"predictions": [0.25] * len(rows)}).encode(),
    )


def test_decode_v1_and_v2_into_feature_columns() -> None:
    logged = decode(v1(), FEATURES)
    assert logged.inputs["amount"] == [10.0, 20.0]
    assert logged.inputs["is_foreign"] == [0.0, 1.0]
    assert (logged.model, logged.version, logged.variant) == ("fraud", 2, "canary")
    assert logged.outputs == [0.25, 0.25]
    v2 = Prediction(
        model="fraud",
        version=1,
        variant="stable",
        protocol=Protocol.V2,
        request=json.dumps(
            {"inputs": [{"name": "input", "shape": [2, 6], "datatype": "FP32", "data": FLAT}]}
        ).encode(),
        response=json.dumps(
            {"outputs": [{"name": "probability", "shape": [2, 1], "data": [0.5, 0.75]}]}
        ).encode(),
    )
    logged_v2 = decode(v2, FEATURES)
    assert logged_v2.inputs == logged.inputs
    assert logged_v2.outputs == [0.5, 0.75]


def binary_body(key: str, tensors: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, int]:
    """A V2 body in KServe's binary extension, and its JSON header's length."""
    header = json.dumps(
        {
            key: [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for name, datatype, shape, raw in tensors
            ]
        }
    ).encode()
    return header + b"".join(raw for *_, raw in tensors), len(header)


def test_decode_binary_v2_requests_and_answers_like_json() -> None:
    request, request_length = binary_body(
        "inputs", [("input", "FP32", [2, 6], np.asarray(FLAT, dtype="<f4").tobytes())]
    )
    answer, answer_length = binary_body(
        "outputs", [("probability", "FP32", [2, 1], np.asarray([0.5, 0.75], "<f4").tobytes())]
    )
    binary = Prediction(
        "fraud", 1, "stable", Protocol.V2, request, answer, "id-1", request_length, answer_length
    )
    logged = decode(binary, FEATURES)
    assert logged.inputs == decode(v1(), FEATURES).inputs
    assert logged.outputs == [0.5, 0.75] and logged.inference_id == "id-1"
    # BYTES elements (entity ids) are length-prefixed strings.
    ids = b"".join(struct.pack("<I", len(s)) + s for s in (b"c-1", b"card-22"))
    body, length = binary_body("inputs", [("card_id", "BYTES", [2], ids)])
    assert read_body(body, length, "inputs")["inputs"][0]["data"] == ["c-1", "card-22"]
    with pytest.raises(InvalidPayload, match=r"expected 1\.\.12"):
        read_body(b"{}" + b"0" * 10, 99, "inputs")


def test_events_reach_the_broker_with_the_token(broker: BrokerStandIn) -> None:
    logger = PayloadLogger(
        EventPublisher(broker.url, "svc-token"), region="uaenorth", features=lambda m, v: FEATURES
    )
    logger.start()
    assert logger.submit(v1()) is True
    logger.submit(
        Prediction("fraud", 1, "stable", Protocol.V1, b"not json", b"{}")
    )  # undecodable: skipped, counted, never raised
    wait_until(lambda: len(broker.received()) == 1 and logger.stats.skipped == 1)
    logger.stop()
    (event,) = broker.received()
    assert event["type"] == EventType.INFERENCE_LOGGED
    assert event["dataregion"] == "uaenorth"
    data = InferenceLogged.model_validate(event.get_data())
    assert data.inputs["hour"] == [3.0, 4.0]
    assert broker.authorizations == ["Bearer svc-token"]
    assert (logger.stats.sent, logger.stats.failed) == (1, 0)


def test_broker_down_is_counted_not_raised() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    logger = PayloadLogger(
        EventPublisher(nobody, None, timeout_s=1.0),
        region="uaenorth",
        features=lambda m, v: FEATURES,
    )
    logger.start()
    assert logger.submit(v1()) is True
    wait_until(lambda: logger.stats.failed == 1)
    logger.stop()
    assert logger.stats.sent == 0


def test_full_queue_drops_and_counts_without_blocking() -> None:
    logger = PayloadLogger(
        EventPublisher("http://127.0.0.1:9", None),
        region="uaenorth",
        features=lambda m, v: FEATURES,
        capacity=2,
    )
    # Not started: nothing drains the queue.
    assert [logger.submit(v1()) for _ in range(4)] == [True, True, False, False]
    assert logger.stats.dropped == 2
