"""The manifests as a cluster would receive them, and the schemas to check them with."""

from __future__ import annotations

from typing import Any

import pytest

from falaj.manifest_schemas import SchemaStore
from falaj.manifests import read_resources, render_overlay
from falaj.settings import PROJECT_ROOT
from tests.support.network_policy import NetworkPolicySchemaStore

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


@pytest.fixture(scope="session")
def schema_store(schema_store: SchemaStore) -> SchemaStore:
    """The shared store, plus a strict schema for NetworkPolicy (a core kind it lacks)."""
    return NetworkPolicySchemaStore.like(schema_store)
