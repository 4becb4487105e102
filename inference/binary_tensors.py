"""KServe's (and Triton's) binary tensor extension, read back into JSON tensors.

A V2 body with ``inference-header-content-length: N`` is N bytes of JSON
followed by raw tensor data: each tensor whose ``parameters.binary_data_size``
is set has that many bytes, in the order the tensors are listed, little-endian
(BYTES elements as a 4-byte length and the bytes). The payload log reads both
the request and the response this way, so predictions sent in binary are
logged (and watched for drift) like JSON ones.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from inference.errors import InvalidPayload

HEADER = "inference-header-content-length"
#: Little-endian numpy dtypes of the V2 datatypes the extension carries raw.
_DTYPES = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def _strings(raw: bytes) -> list[str]:
    values, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        values.append(raw[at + 4 : at + 4 + size].decode("utf-8", errors="replace"))
        at += 4 + size
    return values


def read_body(body: bytes, header_length: int | None, key: str) -> dict[str, Any]:
    """The JSON of a V2 body; with ``header_length``, each binary tensor's ``data`` filled in.

    ``key`` is ``inputs`` for a request, ``outputs`` for a response.
    """
    if header_length is None:
        parsed: Any = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    if not 0 < header_length <= len(body):
        raise InvalidPayload(
            f"{HEADER}: expected 1..{len(body)} (the body's length), got {header_length}"
        )
    header: Any = json.loads(body[:header_length])
    if not isinstance(header, dict):
        raise InvalidPayload("expected the binary body's header to be a JSON object")
    at = header_length
    for tensor in header.get(key) or []:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        raw = body[at : at + int(size)]
        at += int(size)
        datatype = str(tensor.get("datatype", "")).upper()
        if datatype == "BYTES":
            tensor["data"] = _strings(raw)
        elif datatype in _DTYPES:
            tensor["data"] = np.frombuffer(raw, dtype=_DTYPES[datatype]).tolist()
        else:
            raise InvalidPayload(f"tensor {tensor.get('name')!r}: datatype {datatype} unknown")
    return header
