"""Request bodies -> the checked float32 matrix; every problem named in one error."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import InvalidPayload
from inference.inputs import (
    Tensor,
    feature_columns,
    matrix_from_instances,
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
