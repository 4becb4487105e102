"""Hostile request and response bodies through the payload log's decoder: logged or refused."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from falaj.errors import FalajError
from inference.payload_log import Prediction, Protocol, decode
from tests.support.hostile import bodies, bounded, json_bytes, json_values

FEATURES = ("amount", "hour")
V2_REQUESTS = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["input", "amount", "x"]),
                    "shape": st.lists(st.integers(-2, 4), max_size=3),
                    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES", "BOOL", "??"]),
                    "data": json_values,
                }
            ),
            max_size=3,
        )
    }
).map(json_bytes)


@bounded
@given(
    protocol=st.sampled_from(list(Protocol)),
    request=st.one_of(bodies, V2_REQUESTS),
    response=st.one_of(bodies, st.just(b'{"outputs": [{"name": "probability", "data": [0.5]}]}')),
    header_length=st.one_of(st.none(), st.integers(-5, 400)),
)
def test_any_body_is_decoded_or_refused_with_a_falaj_error(
    protocol: Protocol, request: bytes, response: bytes, header_length: int | None
) -> None:
    prediction = Prediction(
        model="fraud",
        version=1,
        variant="stable",
        protocol=protocol,
        request=request,
        response=response,
        request_header_length=header_length,
    )
    try:
        logged = decode(prediction, FEATURES)
    except FalajError as exc:
        assert str(exc)
        return
    assert set(logged.inputs) == set(FEATURES)
