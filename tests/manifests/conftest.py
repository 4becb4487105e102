"""The manifests as a cluster would receive them, and the schemas to check them with."""

from __future__ import annotations

from typing import Any

import pytest

from falaj.manifests import read_resources, render_overlay
from falaj.settings import PROJECT_ROOT

MANIFESTS = PROJECT_ROOT / "manifests"
BASE = MANIFESTS / "base"
LOCAL_OVERLAY = MANIFESTS / "overlays" / "local"


@pytest.fixture(scope="session")
def base_docs() -> list[dict[str, Any]]:
    return [dict(resource.doc) for resource in read_resources(BASE)]


@pytest.fixture(scope="session")
def local_docs() -> list[dict[str, Any]]:
    return render_overlay(LOCAL_OVERLAY)


@pytest.fixture(scope="session")
def base_rendered() -> list[dict[str, Any]]:
    """manifests/base as kustomize renders it (namespaces and labels set), for the policies."""
    return render_overlay(BASE)
