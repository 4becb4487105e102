"""Prediction requests -> the float32 matrix [N, F] an ONNX model takes, checked.

Pure functions, independent of transport: the predictor feeds them KServe's
decoded V1 bodies and V2 tensors, the router the JSON it forwarded (to log the
payload). Every problem found is collected into one ``InvalidPayload`` that
says what was expected and what came, without echoing the payload back.

Accepted shapes, with F = the model's feature names in order:

* V1: ``{"instances": [[f1, ..., fF], ...]}`` or ``{"instances": [{"amount": ..., ...}, ...]}``
* V2: one tensor ``input`` FP32 ``[N, F]``, or one FP32 tensor per feature, ``[N]`` or ``[N, 1]``
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import InvalidPayload

INPUT_NAME = "input"
OUTPUT_NAME = "probability"
DATATYPE = "FP32"
#: Problems listed in one message at most; the count says how many more there were.
MAX_LISTED = 8

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tensor:
    """One V2 input tensor, its values already shaped as ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: npt.NDArray[Any]


def _fail(what: str, problems: list[str]) -> InvalidPayload:
    listed = problems[:MAX_LISTED]
    more = len(problems) - len(listed)
    tail = f" (and {more} more)" if more else ""
    return InvalidPayload(f"{what}: " + "; ".join(listed) + tail, problems=problems)


def _number(value: object) -> float | None:
    """A finite float, or None; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _describe(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return type(value).__name__


def matrix_from_instances(instances: object, features: Sequence[str]) -> Matrix:
    """V1 ``instances``: rows as lists in feature order, or as objects keyed by feature."""
    width = len(features)
    expected = (
        f'expected "instances": a non-empty list of rows, each a list of {width} finite '
        f"numbers ({', '.join(features)}) or an object with those keys"
    )
    if not isinstance(instances, list) or not instances:
        got = "an empty list" if isinstance(instances, list) else _describe(instances)
        raise InvalidPayload(f"{expected}; got {got}")
    matrix = np.zeros((len(instances), width), dtype=np.float32)
    problems: list[str] = []
    for i, row in enumerate(instances):
        if isinstance(row, Mapping):
            missing = [name for name in features if name not in row]
            extra = sorted(str(k) for k in row if k not in features)
            if missing:
                problems.append(f"row {i}: missing features {missing}")
            if extra:
                problems.append(f"row {i}: unknown features {extra}")
            values: list[object] = [row.get(name) for name in features]
            labels: Sequence[str] = features
        elif isinstance(row, list):
            if len(row) != width:
                problems.append(f"row {i}: expected {width} values, got {len(row)}")
                continue
            values, labels = row, features
        else:
            problems.append(f"row {i}: expected a list or an object, got {_describe(row)}")
            continue
        for j, (name, value) in enumerate(zip(labels, values, strict=True)):
            if value is None and isinstance(row, Mapping) and name not in row:
                continue  # already reported as missing
            number = _number(value)
            if number is None:
                problems.append(f"row {i} {name}: expected a finite number, got {_describe(value)}")
            else:
                matrix[i, j] = number
    if problems:
        raise _fail(expected, problems)
    return _finite(matrix, features)


def tensor_from_json(raw: object) -> Tensor:
    """One V2 input tensor from its JSON form (as the router forwards it)."""
    if not isinstance(raw, Mapping):
        raise InvalidPayload(f"expected each V2 input to be an object, got {_describe(raw)}")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidPayload(f"input {name!r}: expected shape as a list of sizes, got {shape!r}")
    try:
        values = np.asarray(raw.get("data"), dtype=np.float32).reshape(shape)
    except (TypeError, ValueError):
        raise InvalidPayload(
            f"input {name!r}: expected {math.prod(shape)} numbers for shape {shape}"
        ) from None
    return Tensor(str(name), str(datatype).upper(), tuple(shape), values)


def matrix_from_tensors(tensors: Sequence[Tensor], features: Sequence[str]) -> Matrix:
    """V2 inputs: one ``input`` [N, F] tensor, or one tensor per feature."""
    width = len(features)
    expected = (
        f'expected one {DATATYPE} input "{INPUT_NAME}" of shape [N, {width}] '
        f"(features {', '.join(features)}), or one {DATATYPE} input per feature of shape [N]"
    )
    names = [t.name for t in tensors]
    if not tensors:
        raise InvalidPayload(f"{expected}; got no inputs")
    problems = [
        f"input {t.name!r}: datatype {t.datatype}, expected {DATATYPE}"
        for t in tensors
        if t.datatype != DATATYPE
    ]
    if names == [INPUT_NAME]:
        (tensor,) = tensors
        if len(tensor.shape) != 2 or tensor.shape[1] != width or tensor.shape[0] == 0:
            problems.append(
                f'input "{INPUT_NAME}": shape {list(tensor.shape)}, expected [N, {width}]'
            )
        if problems:
            raise _fail(expected, problems)
        return _finite(np.asarray(tensor.values, dtype=np.float32), features)
    missing = [f for f in features if f not in names]
    unknown = [n for n in names if n not in features]
    if missing or unknown or len(names) != len(set(names)):
        got = ", ".join(repr(n) for n in names)
        raise InvalidPayload(f"{expected}; got inputs {got} (missing {missing}, unknown {unknown})")
    by_name = {t.name: t for t in tensors}
    rows = {t.shape[0] if t.shape else -1 for t in tensors}
    for name in features:
        shape = by_name[name].shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
            problems.append(f"input {name!r}: shape {list(shape)}, expected [N] or [N, 1]")
    if len(rows) > 1:
        problems.append(f"inputs have different row counts {sorted(rows)}; expected one N")
    if problems:
        raise _fail(expected, problems)
    columns = [np.asarray(by_name[name].values, dtype=np.float32).reshape(-1) for name in features]
    return _finite(np.stack(columns, axis=1), features)


def _finite(matrix: Matrix, features: Sequence[str]) -> Matrix:
    bad = ~np.isfinite(matrix)
    if bad.any():
        problems = [
            f"row {int(i)} {features[int(j)]}: {float(matrix[i, j])!r}" for i, j in np.argwhere(bad)
        ]
        raise _fail("expected finite numbers, got NaN or infinity", problems)
    return matrix


def feature_columns(matrix: Matrix, features: Sequence[str]) -> dict[str, list[float]]:
    """The batch as {feature: [values]}, the shape payload logging records."""
    return {name: [float(v) for v in matrix[:, j]] for j, name in enumerate(features)}
