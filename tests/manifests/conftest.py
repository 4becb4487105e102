"""The manifests as a cluster would receive them, and the schemas to check them with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from falaj.manifests import read_resources, render_overlay
from falaj.settings import PROJECT_ROOT
from tests.manifests.validation import CoreSchemas

MANIFESTS = PROJECT_ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = MANIFESTS / "overlays"
LOCAL_OVERLAY = OVERLAYS / "local"
#: Every folder kustomize renders for a cluster: the base and each overlay.
RENDERS: dict[str, Path] = {
    "base": BASE,
    "local": LOCAL_OVERLAY,
    "smb": OVERLAYS / "smb",
    "enterprise": OVERLAYS / "enterprise",
}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """``kubectl kustomize`` of each folder of RENDERS, once per session (treat as read-only)."""
    return {name: render_overlay(path) for name, path in RENDERS.items()}


@pytest.fixture(scope="session")
def core_schemas() -> CoreSchemas:
    return CoreSchemas()


@pytest.fixture(scope="session")
def base_docs() -> list[dict[str, Any]]:
    return [dict(resource.doc) for resource in read_resources(BASE)]


@pytest.fixture(scope="session")
def local_docs(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["local"]


@pytest.fixture(scope="session")
def base_rendered(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """manifests/base as kustomize renders it (namespaces and labels set), for the policies."""
    return rendered["base"]
