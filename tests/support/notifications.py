"""Bucket notifications as S3 and MinIO send them (``tests/support/s3/*.json``).

The AWS file follows the example of S3's documented event message structure
(version 2.1, with ``glacierEventData``); the MinIO file is a webhook body,
with MinIO's own additions (``EventName``, ``Key``, ``source``, ``contentType``,
``userMetadata``), an empty ``awsRegion``, no ``versionId`` (an unversioned
bucket) and a key whose ``/`` is encoded as ``%2F``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "s3"
AWS_PUT = "aws-object-created-put.json"
MINIO_PUT = "minio-object-created-put.json"


def notification(name: str) -> dict[str, Any]:
    """A whole notification body, as the service posts it."""
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return body


def record(
    name: str,
    *,
    bucket: str | None = None,
    raw_key: str | None = None,
    size: int | None = None,
    etag: str | None = None,
    version_id: str | None = None,
) -> dict[str, Any]:
    """The notification's one record, with the named fields replaced.

    ``raw_key`` is the key as it travels, URL-encoded by the service.
    """
    (found,) = notification(name)["Records"]
    s3 = found["s3"]
    if bucket is not None:
        s3["bucket"]["name"] = bucket
        s3["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    replacements = {"key": raw_key, "size": size, "eTag": etag, "versionId": version_id}
    s3["object"].update({k: v for k, v in replacements.items() if v is not None})
    return found
