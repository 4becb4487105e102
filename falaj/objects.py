"""Objects in buckets: the one place a bucket and a key become a location.

S3 and MinIO name an object by its bucket and its key; Falaj reads it through a
location URI: ``file://`` for a bucket that is a folder on this machine (the
landing folder of a local platform), ``s3://bucket/key`` for any other bucket.
``Buckets.locate`` is the only translation. The storage source calls it before
it emits an event, the ingest function before it reads a byte, so both refuse
the same keys and check the same residency policy.

A key is refused when, made into a path, it could name something outside its
bucket: empty, absolute (a leading ``/``), with a ``..`` segment or a NUL; and,
in a local bucket, when it resolves through a symlink to a file outside the
bucket's folder. S3 notifications carry keys URL-encoded: ``decode_key`` them
before locating, so that ``%2E%2E%2F`` is seen for the ``../`` it is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import quote_plus, unquote_plus

from falaj.audit import AuditLog, Outcome
from falaj.errors import ObjectKeyError, StorageError
from falaj.residency import Boundary, ResidencyPolicy

if TYPE_CHECKING:
    from falaj.context import Context

#: The bucket a local platform lands files in: the folder ``<home>/landing``.
LANDING_BUCKET = "landing"
#: A backslash is a separator on Windows; splitting on it too keeps ``..\\`` out everywhere.
_SEGMENTS = re.compile(r"[/\\]")
#: Characters that end a URI's host or change what it names (RFC 3986 gen-delims), and controls.
_NOT_IN_HOST = re.compile(r"[/\\:?#\[\]@\x00-\x1f\x7f]")
_KEY_EXAMPLE = "a key relative to its bucket, such as 'day1.csv' or '2026/day1.csv'"


def encode_key(key: str) -> str:
    """A key as S3 notifications carry it: URL-encoded, ``/`` kept, a space as ``+``."""
    return quote_plus(key, safe="/")


def decode_key(raw: str) -> str:
    """The key an S3 or MinIO notification names (both URL-encode it, form style)."""
    return unquote_plus(raw)


def key_problem(key: str) -> str | None:
    """Why a decoded key could leave its bucket, or None when it cannot."""
    if not key:
        return "it is empty"
    if "\x00" in key:
        return "it contains a NUL character"
    if key.startswith(("/", "\\")):
        return "it is absolute (starts with a separator)"
    if ".." in _SEGMENTS.split(key):
        return "it has a '..' segment"
    return None


def bucket_problem(bucket: str) -> str | None:
    """Why a bucket name cannot be one path segment of a location, or None."""
    if not bucket:
        return "it is empty"
    if bucket in (".", "..") or _SEGMENTS.search(bucket) or "\x00" in bucket:
        return "it is not a single name (it has a separator, a NUL, or is '.' or '..')"
    # In s3://<bucket>/<key> these end the host or make it an IPv6 address, also once
    # NFKC-normalised as URL parsers do: the location would name another bucket, or none.
    found = _NOT_IN_HOST.search(unicodedata.normalize("NFKC", bucket))
    if found:
        return (
            f"it holds {found.group()!r} (or a character that normalises to it), "
            "which a bucket's name cannot"
        )
    return None


@dataclass(frozen=True)
class ObjectLocation:
    """Where one object is: its bucket and key, its URI and, locally, the file to read."""

    bucket: str
    key: str
    uri: str
    #: For an object in a local bucket: the file, symlinks resolved, inside the bucket's folder.
    path: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Buckets:
    """Turns (bucket, key) into a checked location: keys first, then residency."""

    policy: ResidencyPolicy
    #: Buckets that are folders on this machine; every other bucket is ``s3://<bucket>``.
    local: Mapping[str, Path] = field(default_factory=dict)
    audit: AuditLog | None = None

    @classmethod
    def of(cls, ctx: Context) -> Buckets:
        """A platform's buckets: its landing folder is the bucket ``landing``."""
        return cls(policy=ctx.policy, local={LANDING_BUCKET: ctx.paths.landing}, audit=ctx.audit)

    def locate(self, bucket: str, key: str) -> ObjectLocation:
        """The location of ``key`` (decoded) in ``bucket``, refused if it leaves the bucket.

        Raises ``ObjectKeyError`` for a key or bucket name that escapes, and
        ``ResidencyViolation`` (audited) for a location outside the allowed regions.
        """
        problem = bucket_problem(bucket)
        if problem is not None:
            self._refuse(
                bucket,
                key,
                f"bucket name {bucket!r} is refused: {problem}; expected a bucket name "
                "such as 'landing' or 'bank-raw'",
            )
        problem = key_problem(key)
        if problem is not None:
            self._refuse(
                bucket,
                key,
                f"object key {key!r} in bucket {bucket!r} is refused: {problem}; "
                f"expected {_KEY_EXAMPLE}",
            )
        folder = self.local.get(bucket)
        if folder is None:
            location = ObjectLocation(bucket, key, f"s3://{bucket}/{key}")
        else:
            root = folder.resolve()
            named = root.joinpath(*key.split("/"))
            target = named.resolve()
            if not target.is_relative_to(root):
                self._refuse(
                    bucket,
                    key,
                    f"object key {key!r} in bucket {bucket!r} resolves to {target}, outside "
                    f"the bucket's folder {root} (a symlink?); expected an object stored "
                    "inside the bucket: copy the file in rather than linking to it",
                )
            location = ObjectLocation(bucket, key, named.as_uri(), target)
        self.policy.check_location(location.uri, boundary=Boundary.STORAGE_READ)
        return location

    def local_file(self, location: ObjectLocation) -> Path:
        """The file to read for a located object; ``StorageError`` when it cannot be read here."""
        if location.path is None:
            local = ", ".join(f"{name} ({path})" for name, path in sorted(self.local.items()))
            raise StorageError(
                f"{location.uri} is in an allowed region, but this process reads objects only "
                f"from its local buckets ({local or 'none'}); land the file in one of them, "
                "or ingest it where the bucket is mounted"
            )
        if not location.path.is_file():
            raise StorageError(
                f"object {location.uri} does not exist or is not a file; was it moved or "
                "deleted before it was read?"
            )
        return location.path

    def _refuse(self, bucket: str, key: str, message: str) -> NoReturn:
        if self.audit is not None:
            self.audit.record(
                "storage.refused",
                actor=self.policy.actor,
                resource=f"bucket {bucket!r} key {key!r}",
                region=self.policy.local_region,
                outcome=Outcome.REFUSED,
                details={"reason": message},
            )
        raise ObjectKeyError(message)
