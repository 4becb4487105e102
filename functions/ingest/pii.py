"""Pseudonymizing the columns the feature schema marks ``pii: true``.

A keyed BLAKE2b digest replaces each value: the same value always maps to the
same token (so joins and counts still work), and without the key, kept in
``<home>/keys/pii.key`` and never logged, a token cannot be traced back.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

KEY_BYTES = 32


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


def pseudonymize(frame: pd.DataFrame, columns: Sequence[str], key: bytes) -> pd.DataFrame:
    """A copy of ``frame`` with each value of ``columns`` replaced by its keyed digest."""
    if not columns:
        return frame
    out = frame.copy()
    for column in columns:
        present = out[column].notna()
        out.loc[present, column] = out.loc[present, column].map(
            lambda value: (
                "pii_" + hashlib.blake2b(str(value).encode(), key=key, digest_size=16).hexdigest()
            )
        )
    return out
