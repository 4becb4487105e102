"""skaffold.yaml against skaffold's own JSON Schema, and against the manifests it deploys."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from falaj.manifest_schemas import SchemaStore
from falaj.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "skaffold.yaml").read_text())
    return loaded


def images_in(node: Any) -> set[str]:
    """Every ``image`` a rendered object (or list of them) names, at any depth."""
    if isinstance(node, dict):
        found = {node["image"]} if isinstance(node.get("image"), str) else set()
        return found.union(*(images_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(images_in(value) for value in node))
    return set()


def test_skaffold_yaml_validates(schema_store: SchemaStore, skaffold: dict[str, Any]) -> None:
    assert skaffold["apiVersion"] == "skaffold/v4beta14"
    assert schema_store.validate(skaffold) == []


def test_skaffold_errors_name_the_misspelt_field(
    schema_store: SchemaStore, skaffold: dict[str, Any]
) -> None:
    bad = copy.deepcopy(skaffold)
    bad["build"]["artifacts"][0]["contxt"] = bad["build"]["artifacts"][0].pop("context")
    bad["portForward"][1]["localPor"] = bad["portForward"][1].pop("localPort")

    assert schema_store.validate(bad) == [
        "Config/falaj: build.artifacts[0]: Additional properties are not allowed "
        "('contxt' was unexpected)",
        "Config/falaj: portForward[1]: Additional properties are not allowed "
        "('localPor' was unexpected)",
    ]


def test_skaffold_builds_every_image_the_manifests_use(
    skaffold: dict[str, Any], local_docs: list[dict[str, Any]]
) -> None:
    artifacts = {artifact["image"] for artifact in skaffold["build"]["artifacts"]}
    assert artifacts == {"falaj-functions", "falaj-inference", "falaj-training"}
    assert images_in(local_docs) == artifacts


def test_dockerfiles_exist_and_drop_root(skaffold: dict[str, Any]) -> None:
    for artifact in skaffold["build"]["artifacts"]:
        dockerfile = PROJECT_ROOT / artifact["context"] / artifact["docker"]["dockerfile"]
        lines = dockerfile.read_text().splitlines()
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users, f"{dockerfile} never leaves root"
        assert not users[-1].startswith(("root", "0")), dockerfile


def test_skaffold_renders_the_local_overlay_and_forwards_the_default_ports(
    skaffold: dict[str, Any], local_docs: list[dict[str, Any]]
) -> None:
    paths = skaffold["manifests"]["kustomize"]["paths"]
    assert paths == ["manifests/overlays/local"]
    assert (PROJECT_ROOT / paths[0] / "kustomization.yaml").is_file()
    defaults = Settings()
    assert {forward["localPort"] for forward in skaffold["portForward"]} == {
        defaults.broker_port,
        defaults.router_port,
        defaults.control_port,
    }
    # The control API's forward names its Service in the render, on a port it has.
    [forward] = [f for f in skaffold["portForward"] if f["localPort"] == defaults.control_port]
    [service] = [
        doc
        for doc in local_docs
        if (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
        == ("v1", "Service", forward["resourceName"])
    ]
    assert service["metadata"]["namespace"] == forward["namespace"]
    assert forward["port"] in {port["port"] for port in service["spec"]["ports"]}
