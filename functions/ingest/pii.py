"""Pseudonymizing the columns the feature schema marks ``pii: true``.

An HMAC-SHA256 under the platform's key replaces each value (its first 128
bits, hex): the same value always maps to the same token (so joins and counts
still work), and without the key, kept in ``<home>/keys/pii.key`` and never
logged, a token cannot be traced back, not even by hashing guessed values. Each
distinct value of a batch is hashed once (a column is dictionary-encoded
first), so a card seen a thousand times costs one digest.

Quarantined rows get the same tokens (``pseudonymize_rejections``): a data
steward finds a bad row by its row number in the landed file, which stays
where it landed, and can match its tokens with the stores', but the
quarantine holds no raw PII a second time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from falaj.validation import UNPARSED_ROW, RowRejection

KEY_BYTES = 32
#: 128 bits of the MAC: collisions stay out of reach for any dataset's distinct values.
TOKEN_HEX = 32
TOKEN_PREFIX = "pii_"


def pii_key(path: Path) -> bytes:
    """The platform's pseudonymization key, created (owner-only) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
    return path.read_bytes()


def token(value: object, key: bytes) -> str:
    """The pseudonym of one value."""
    digest = hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()
    return TOKEN_PREFIX + digest[:TOKEN_HEX]


def pseudonymize(table: pa.Table, columns: Sequence[str], key: bytes) -> pa.Table:
    """``table`` with each value of ``columns`` replaced by its token (nulls stay null)."""
    for column in columns:
        at = table.schema.get_field_index(column)
        encoded = pc.dictionary_encode(table.column(column).combine_chunks())
        tokens = pa.array([token(v, key) for v in encoded.dictionary.to_pylist()], pa.string())
        table = table.set_column(at, column, tokens.take(encoded.indices))
    return table


def pseudonymize_rejections(
    rejected: Sequence[RowRejection], columns: Sequence[str], key: bytes
) -> list[RowRejection]:
    """Rejected rows with each value of ``columns`` replaced by its token.

    A string is trimmed first, as validation trims it, so a row's token is the
    one its value would have in the stores. A line that could not be split into
    columns may hold PII anywhere in it: it is replaced by its token whole.
    (Reasons never quote a PII value: ``falaj.validation`` withholds them.)
    """
    if not columns:
        return list(rejected)
    hidden = set(columns)

    def hide(name: str, value: Any) -> Any:
        if value is None or (name not in hidden and name != UNPARSED_ROW):
            return value
        return token(value.strip() if isinstance(value, str) else value, key)

    return [
        replace(rejection, row={name: hide(name, v) for name, v in rejection.row.items()})
        for rejection in rejected
    ]
