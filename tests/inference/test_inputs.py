"""Request bodies (features or entity ids) -> the checked float32 matrix; every problem at once."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import InvalidPayload
from inference.inputs import (
    Tensor,
    entity_ids_from_instances,
    entity_ids_from_tensors,
    feature_columns,
    matrix_from_instances,
    matrix_from_online,
    matrix_from_tensors,
    tensor_from_json,
)

FEATURES = ("a", "b", "c")


def test_instances_as_lists_and_objects_give_the_same_matrix() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.5, 6.0]]
    objects = [dict(zip(FEATURES, row, strict=True)) for row in rows]
    expected = np.asarray(rows, dtype=np.float32)
    np.testing.assert_array_equal(matrix_from_instances(rows, FEATURES), expected)
    np.testing.assert_array_equal(matrix_from_instances(objects, FEATURES), expected)
    assert feature_columns(expected, FEATURES) == {
        "a": [1.0, 4.0],
        "b": [2.0, 5.5],
        "c": [3.0, 6.0],
    }


def test_every_bad_instance_is_reported_at_once() -> None:
    with pytest.raises(InvalidPayload) as caught:
        matrix_from_instances([[1, 2], {"a": 1, "b": "x", "z": 3}, [1, True, 3], "row"], FEATURES)
    problems = caught.value.problems
    assert "row 0: expected 3 values, got 2" in problems
    assert "row 1: missing features ['c']" in problems
    assert "row 1: unknown features ['z']" in problems
    assert "row 1 b: expected a finite number, got str" in problems
    assert "row 2 b: expected a finite number, got bool" in problems
    assert "row 3: expected a list or an object, got str" in problems
    assert "3 finite numbers (a, b, c)" in str(caught.value)


@pytest.mark.parametrize("instances", [[], None, {"a": 1}])
def test_missing_or_empty_instances_are_refused(instances: object) -> None:
    with pytest.raises(InvalidPayload, match="non-empty list of rows"):
        matrix_from_instances(instances, FEATURES)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(bad: float) -> None:
    with pytest.raises(InvalidPayload, match="finite"):
        matrix_from_instances([[1.0, bad, 3.0]], FEATURES)
    tensor = Tensor("input", "FP32", (1, 3), np.asarray([[1.0, 2.0, bad]], dtype=np.float32))
    with pytest.raises(InvalidPayload, match="row 0 c"):
        matrix_from_tensors([tensor], FEATURES)


def test_one_input_tensor_and_per_feature_tensors() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    one = tensor_from_json(
        {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": matrix.ravel().tolist()}
    )
    np.testing.assert_array_equal(matrix_from_tensors([one], FEATURES), matrix)
    per_feature = [
        Tensor(name, "FP32", (2,), matrix[:, j].copy()) for j, name in enumerate(FEATURES)
    ]
    np.testing.assert_array_equal(matrix_from_tensors(per_feature[::-1], FEATURES), matrix)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ([], "got no inputs"),
        ([Tensor("input", "FP32", (2, 2), np.zeros((2, 2)))], "shape [2, 2], expected [N, 3]"),
        ([Tensor("input", "FP32", (0, 3), np.zeros((0, 3)))], "shape [0, 3], expected [N, 3]"),
        ([Tensor("input", "INT64", (1, 3), np.zeros((1, 3)))], "datatype INT64, expected FP32"),
        ([Tensor("a", "FP32", (1,), np.zeros(1))], "missing ['b', 'c']"),
        (
            [
                Tensor("a", "FP32", (1,), np.zeros(1)),
                Tensor("b", "FP32", (2,), np.zeros(2)),
                Tensor("c", "FP32", (1,), np.zeros(1)),
            ],
            "different row counts [1, 2]",
        ),
    ],
)
def test_bad_tensors_say_what_was_expected(tensors: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        matrix_from_tensors(tensors, FEATURES)
    assert message in str(caught.value)
    assert 'expected one FP32 input "input" of shape [N, 3]' in str(caught.value)


def test_tensor_data_that_does_not_fit_its_shape() -> None:
    with pytest.raises(InvalidPayload, match="expected 6 numbers for shape"):
        tensor_from_json({"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [1, 2]})


# -- entity ids instead of features --------------------------------------------------


def test_v1_rows_of_entity_ids_are_read_as_ids() -> None:
    rows = [{"card_id": "c-1"}, {"card_id": "c-2"}, {"card_id": "c-1"}]
    assert entity_ids_from_instances(rows, "card_id") == ("c-1", "c-2", "c-1")


@pytest.mark.parametrize(
    "instances",
    [
        [[1.0, 2.0, 3.0]],
        [{"a": 1.0, "b": 2.0, "c": 3.0}],
        [],
        None,
        [{"a": 1.0}, "row"],
    ],
)
def test_v1_rows_without_the_entity_key_are_left_to_the_features_parser(
    instances: object,
) -> None:
    assert entity_ids_from_instances(instances, "card_id") is None
    # A model whose entity key is unknown takes features only.
    assert entity_ids_from_instances([{"card_id": "c-1"}], None) is None


def test_v1_entity_rows_report_every_problem_at_once() -> None:
    rows = [
        {"card_id": "c-1", "a": 2.0},
        {"a": 1.0, "b": 2.0, "c": 3.0},
        {"card_id": 17},
        {"card_id": ""},
        [1.0, 2.0, 3.0],
    ]
    with pytest.raises(InvalidPayload) as caught:
        entity_ids_from_instances(rows, "card_id")
    assert caught.value.problems == [
        "row 0: expected 'card_id' alone, got also ['a']",
        "row 1: expected an object with 'card_id', got an object without 'card_id'",
        "row 2 card_id: expected a non-empty string, got int",
        "row 3 card_id: expected a non-empty string, got an empty string",
        "row 4: expected an object with 'card_id', got list",
    ]
    assert str(caught.value).startswith('expected every row as {"card_id": "<id>"}')


def test_v2_bytes_tensor_of_entity_ids() -> None:
    as_json = tensor_from_json(
        {"name": "card_id", "shape": [2], "datatype": "BYTES", "data": ["c-1", "c-2"]}
    )
    assert entity_ids_from_tensors([as_json], "card_id") == ("c-1", "c-2")
    # gRPC and binary REST give bytes; [N, 1] is accepted like [N].
    as_bytes = Tensor("card_id", "BYTES", (2, 1), np.asarray([[b"c-1"], [b"c-2"]], dtype=object))
    assert entity_ids_from_tensors([as_bytes], "card_id") == ("c-1", "c-2")
    features = Tensor("input", "FP32", (1, 3), np.zeros((1, 3), dtype=np.float32))
    assert entity_ids_from_tensors([features], "card_id") is None
    assert entity_ids_from_tensors([as_json], None) is None


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            [
                Tensor("card_id", "BYTES", (1,), np.asarray(["c-1"], dtype=object)),
                Tensor("input", "FP32", (1, 3), np.zeros((1, 3))),
            ],
            "expected the input 'card_id' alone, got inputs ['card_id', 'input']",
        ),
        (
            [Tensor("card_id", "INT64", (1,), np.zeros(1))],
            "input 'card_id': datatype INT64, expected BYTES",
        ),
        (
            [Tensor("card_id", "BYTES", (1, 2), np.asarray([["a", "b"]], dtype=object))],
            "input 'card_id': shape [1, 2], expected [N] or [N, 1]",
        ),
        (
            [Tensor("card_id", "BYTES", (0,), np.asarray([], dtype=object))],
            "input 'card_id': shape [0], expected [N] or [N, 1]",
        ),
        (
            [Tensor("card_id", "BYTES", (2,), np.asarray(["", b"\xff"], dtype=object))],
            "card_id[0]: expected a non-empty UTF-8 string, got an empty string; "
            "card_id[1]: expected a non-empty UTF-8 string, got bytes that are not UTF-8",
        ),
    ],
)
def test_bad_entity_tensors_say_what_was_expected(tensors: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        entity_ids_from_tensors(tensors, "card_id")
    assert message in str(caught.value)
    assert 'expected one BYTES input "card_id" of shape [N]' in str(caught.value)


def test_bytes_tensor_data_that_does_not_fit_its_shape() -> None:
    with pytest.raises(InvalidPayload, match="expected 3 strings for shape"):
        tensor_from_json({"name": "card_id", "shape": [3], "datatype": "BYTES", "data": ["a"]})


def test_online_rows_become_the_matrix_in_feature_order() -> None:
    online: dict[str, list[object]] = {
        "card_id": ["c-2", "c-1"],
        "c": [3, 6],
        "a": [1.0, 4.0],
        "b": [2.5, 5.0],
    }
    np.testing.assert_array_equal(
        matrix_from_online(online, "card_id", FEATURES),
        np.asarray([[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32),
    )


def test_ids_unknown_online_are_named_in_one_error() -> None:
    ids = ["c-1", *(f"gone-{i}" for i in range(10))]
    online: dict[str, list[object]] = {
        "card_id": list(ids),
        "a": [1.0] + [None] * 10,
        "b": [2.0] + [None] * 10,
        "c": [3.0] + [None] * 10,
    }
    with pytest.raises(InvalidPayload) as caught:
        matrix_from_online(online, "card_id", FEATURES)
    message = str(caught.value)
    assert message.startswith(
        "not found: no features in the online store for card_id 'gone-0', 'gone-1'"
    )
    assert "'gone-7' (and 2 more)" in message and "gone-8" not in message
    assert "c-1" not in message
    assert len(caught.value.problems) == 10


def test_long_unknown_ids_are_cut_and_incomplete_rows_named() -> None:
    long_id = "x" * 500
    online: dict[str, list[object]] = {"card_id": [long_id], "a": [None], "b": [None], "c": [None]}
    with pytest.raises(InvalidPayload) as caught:
        matrix_from_online(online, "card_id", FEATURES)
    assert "... (500 characters)" in str(caught.value)
    assert long_id not in str(caught.value)

    partial: dict[str, list[object]] = {
        "card_id": ["c-1"],
        "a": [1.0],
        "b": [None],
        "c": [float("nan")],
    }
    with pytest.raises(InvalidPayload) as caught:
        matrix_from_online(partial, "card_id", FEATURES)
    assert caught.value.problems == [
        "card_id 'c-1': no online value for ['b']",
        "card_id 'c-1' c: expected a finite number online, got nan",
    ]
