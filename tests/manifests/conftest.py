"""The manifests as a cluster would receive them, and the schemas to check them with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from falaj.manifest_schemas import SchemaStore
from falaj.manifests import read_resources, render_overlay
from falaj.settings import PROJECT_ROOT

MANIFESTS = PROJECT_ROOT / "manifests"
BASE = MANIFESTS / "base"
LOCAL_OVERLAY = MANIFESTS / "overlays" / "local"


@pytest.fixture(scope="session")
def schema_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> SchemaStore:
    # Converted schemas are kept in pytest's cache folder between runs (the
    # KServe and KubeRay CRDs cost seconds to parse); without the cache plugin,
    # in a session temp folder.
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("falaj-schemas") if cache is not None else tmp_path_factory.mktemp("s")
    return SchemaStore(cache_dir=Path(folder))


@pytest.fixture(scope="session")
def base_docs() -> list[dict[str, Any]]:
    return [dict(resource.doc) for resource in read_resources(BASE)]


@pytest.fixture(scope="session")
def local_docs() -> list[dict[str, Any]]:
    return render_overlay(LOCAL_OVERLAY)
