"""Prediction requests -> the float32 matrix [N, F] an ONNX model takes, checked.

Pure functions, independent of transport: the predictor feeds them KServe's
decoded V1 bodies and V2 tensors, the router the JSON it forwarded (to log the
payload). Every problem found is collected into one ``InvalidPayload`` that
says what was expected and what came, without echoing the payload back.

Accepted shapes, with F = the model's feature names in order and E = the
entity key of the dataset the model learns from (``card_id`` for fraud):

* V1 features: ``{"instances": [[f1, ..., fF], ...]}`` or
  ``{"instances": [{"amount": ..., ...}, ...]}``
* V1 entity ids: ``{"instances": [{"card_id": "c-1"}, {"card_id": "c-2"}]}``, each row
  the entity key alone (no feature); the features are read from the online store
* V2 features: one tensor ``input`` FP32 ``[N, F]``, or one FP32 tensor per feature,
  ``[N]`` or ``[N, 1]``
* V2 entity ids: one tensor named E, BYTES, ``[N]`` (or ``[N, 1]``), each element an id:
  ``{"inputs": [{"name": "card_id", "datatype": "BYTES", "shape": [2], "data": ["c-1", "c-2"]}]}``

Features and entity ids never mix in one request. The online store's answer
becomes the same [N, F] matrix (``matrix_from_online``), so a prediction by
entity id is exactly the prediction of the features the store holds for it;
an id the store does not know is a 400 that names it.
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
#: The V2 datatype of strings, entity ids among them.
BYTES = "BYTES"
#: Characters of an entity id quoted back in an error, at most.
MAX_ID_CHARS = 64
#: Problems listed in one message at most; the count says how many more there were.
MAX_LISTED = 8
#: Sizes in a V2 shape at most: the inputs taken are [N] and [N, F], and numpy's limit is 64.
MAX_DIMS = 8

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
    """A finite float, or None; bools are not numbers here, nor an integer past float's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # JSON integers have no bound; Python's json reads them whole
        return None
    return number if math.isfinite(number) else None


def _describe(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and _number(value) is None:
        return "an integer too large for a float"
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
    name, datatype = raw.get("name"), str(raw.get("datatype")).upper()
    shape = checked_shape(name, raw.get("shape"))
    what = "strings" if datatype == BYTES else "numbers"
    try:
        values = np.asarray(raw.get("data"), dtype=object if datatype == BYTES else np.float32)
    except (TypeError, ValueError, OverflowError):
        raise InvalidPayload(
            f"input {name!r}: expected {math.prod(shape)} {what} for shape {list(shape)}, "
            "got data that is not a (nested) list of them"
        ) from None
    return Tensor(str(name), datatype, shape, shaped(name, values, shape, what))


def checked_shape(name: object, shape: object) -> tuple[int, ...]:
    """A V2 input's shape: a list of sizes, whole numbers none negative, at most ``MAX_DIMS``."""
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        shown = repr(shape) if len(repr(shape)) <= 60 else repr(shape)[:60] + "..."
        raise InvalidPayload(
            f"input {name!r}: expected shape as a list of at most {MAX_DIMS} sizes (whole "
            f"numbers, none negative), got {shown}"
        )
    return tuple(shape)


def shaped(name: object, values: npt.NDArray[Any], shape: tuple[int, ...], what: str) -> Any:
    """``values`` in ``shape``, refused by their count before anything of that shape is
    made: [2**40, 2**40] declares more elements than any request carries."""
    declared = math.prod(shape)
    if values.size != declared:
        raise InvalidPayload(
            f"input {name!r}: expected {declared} {what} for shape {list(shape)}, got {values.size}"
        )
    return values.reshape(shape)


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


def entity_ids_from_instances(instances: object, entity: str | None) -> tuple[str, ...] | None:
    """V1 rows naming an entity each, or None when the rows are not that (features, say).

    Rows are entity ids as soon as one of them is an object holding ``entity``;
    then every row must be such an object, holding nothing else.
    """
    if (
        entity is None
        or not isinstance(instances, list)
        or not any(isinstance(row, Mapping) and entity in row for row in instances)
    ):
        return None
    expected = (
        f'expected every row as {{"{entity}": "<id>"}}, the entity key alone (the features '
        "are read from the online store), or every row as features"
    )
    ids: list[str] = []
    problems: list[str] = []
    for i, row in enumerate(instances):
        if not isinstance(row, Mapping) or entity not in row:
            got = f"an object without {entity!r}" if isinstance(row, Mapping) else _describe(row)
            problems.append(f"row {i}: expected an object with {entity!r}, got {got}")
            continue
        others = sorted(str(key) for key in row if key != entity)
        if others:
            problems.append(f"row {i}: expected {entity!r} alone, got also {others}")
        entity_id = _entity_id(row[entity])
        if entity_id is None:
            got = _kind(row[entity])
            problems.append(f"row {i} {entity}: expected a non-empty string, got {got}")
        else:
            ids.append(entity_id)
    if problems:
        raise _fail(expected, problems)
    return tuple(ids)


def entity_ids_from_tensors(
    tensors: Sequence[Tensor], entity: str | None
) -> tuple[str, ...] | None:
    """The V2 input named ``entity`` (BYTES, [N]) as ids, or None when no input is named so."""
    names = [t.name for t in tensors]
    if entity is None or entity not in names:
        return None
    expected = (
        f'expected one {BYTES} input "{entity}" of shape [N] (entity ids; the features are '
        "read from the online store), or the features alone"
    )
    problems: list[str] = []
    others = [name for name in names if name != entity]
    if others or names.count(entity) > 1:
        problems.append(f"expected the input {entity!r} alone, got inputs {names}")
    tensor = tensors[names.index(entity)]
    if tensor.datatype != BYTES:
        problems.append(f"input {entity!r}: datatype {tensor.datatype}, expected {BYTES}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] == 0:
        problems.append(f"input {entity!r}: shape {list(shape)}, expected [N] or [N, 1]")
    if problems:
        raise _fail(expected, problems)
    ids: list[str] = []
    for i, value in enumerate(np.asarray(tensor.values, dtype=object).reshape(-1)):
        entity_id = _entity_id(value)
        if entity_id is None:
            problems.append(f"{entity}[{i}]: expected a non-empty UTF-8 string, got {_kind(value)}")
        else:
            ids.append(entity_id)
    if problems:
        raise _fail(expected, problems)
    return tuple(ids)


def matrix_from_online(
    online: Mapping[str, Sequence[object]], entity: str, features: Sequence[str]
) -> Matrix:
    """The online store's answer (one list per name, entity ids under ``entity``) as [N, F].

    An id whose every feature is missing is one the store does not know; one
    missing some of them has rows the store could not complete. Both are named
    in one ``InvalidPayload``: a 400 for the caller, never a 500.
    """
    ids = [str(entity_id) for entity_id in online[entity]]
    matrix = np.zeros((len(ids), len(features)), dtype=np.float32)
    unknown: list[str] = []
    problems: list[str] = []
    for i, entity_id in enumerate(ids):
        values = [online[name][i] for name in features]
        absent = [name for name, value in zip(features, values, strict=True) if value is None]
        if len(absent) == len(features):
            unknown.append(_quote_id(entity_id))
            continue
        if absent:
            problems.append(f"{entity} {_quote_id(entity_id)}: no online value for {absent}")
        for j, (name, value) in enumerate(zip(features, values, strict=True)):
            number = _number(value)
            if number is None and value is not None:
                problems.append(
                    f"{entity} {_quote_id(entity_id)} {name}: expected a finite number online, "
                    f"got {_describe(value)}"
                )
            elif number is not None:
                matrix[i, j] = number
    if unknown:
        listed = ", ".join(unknown[:MAX_LISTED])
        more = len(unknown) - min(len(unknown), MAX_LISTED)
        tail = f" (and {more} more)" if more else ""
        raise InvalidPayload(
            f"not found: no features in the online store for {entity} {listed}{tail}; expected "
            f"ids whose rows were ingested (check the ids, or ingest their data first)",
            problems=[f"{entity} {quoted}: not found" for quoted in unknown] + problems,
        )
    if problems:
        raise _fail("expected every feature of each id in the online store", problems)
    return matrix


def _entity_id(value: object) -> str | None:
    """A non-empty id; bytes (V2 BYTES over gRPC or binary REST) are decoded as UTF-8."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and value else None


def _kind(value: object) -> str:
    if isinstance(value, str | bytes) and not value:
        return "an empty string"
    return "bytes that are not UTF-8" if isinstance(value, bytes) else _describe(value)


def _quote_id(entity_id: str) -> str:
    """An id as an error quotes it: in full when short, cut when it is not."""
    if len(entity_id) <= MAX_ID_CHARS:
        return repr(entity_id)
    return repr(entity_id[:MAX_ID_CHARS]) + f"... ({len(entity_id)} characters)"


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
