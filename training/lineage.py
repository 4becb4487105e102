"""What a model version's lineage records of the data and code that made it.

- ``training_set_sha256``: a digest of the exact rows trained and scored on
  (entity, timestamp, features, label), independent of row order, so two
  versions trained on the same snapshot show the same digest and any changed
  value shows a different one.
- ``feature_view_sha256``: a digest of the feature view's definition as Feast
  registers it (its spec, deterministically serialized): which version of the
  features the rows were read through.
- ``code_commit``: the commit of the code that trained it. ``FALAJ_CODE_COMMIT``
  when set (an image built without ``.git`` gets it as a build argument), else
  ``git rev-parse HEAD`` of the project, with ``dirty`` when the work tree had
  uncommitted changes; ``unknown`` when neither can say.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from falaj.settings import PROJECT_ROOT

CODE_COMMIT_ENV = "FALAJ_CODE_COMMIT"


def training_set_digest(frame: pd.DataFrame, columns: Sequence[str], order: Sequence[str]) -> str:
    """SHA-256 of ``columns`` of the rows, sorted by ``order`` first."""
    rows = frame[list(columns)].sort_values(list(order), kind="mergesort").reset_index(drop=True)
    hashes = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    digest = hashlib.sha256(",".join(columns).encode())
    digest.update(hashes.tobytes())
    return digest.hexdigest()


def definition_digest(feature_view: Any) -> str:
    """SHA-256 of a Feast feature view's spec, serialized deterministically."""
    spec = feature_view.to_proto().spec
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def code_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": bool or None}."""
    given = os.environ.get(CODE_COMMIT_ENV)
    if given:
        return {"commit": given, "dirty": None}
    try:
        head = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": head, "dirty": bool(changed)}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
