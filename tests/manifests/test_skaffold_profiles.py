"""skaffold.yaml's profiles: `skaffold dev -p smb` and `-p enterprise`.

A profile is checked as skaffold would run it: its sections laid over the
main config and its JSON patches applied, then the result validated against
skaffold's schema (a patch's ``value`` is free-form in the schema, so only
the effective config shows a misspelt artifact field).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from falaj.manifest_schemas import SchemaStore
from falaj.settings import PROJECT_ROOT, Settings
from tests.manifests.test_skaffold import images_in

PROFILES = {"smb": "manifests/overlays/smb", "enterprise": "manifests/overlays/enterprise"}
#: The sections a profile may replace (skaffold overlays them on the main config).
SECTIONS = ("build", "test", "manifests", "deploy", "portForward", "verify", "customActions")


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "skaffold.yaml").read_text())
    return loaded


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _apply(config: dict[str, Any], patch: dict[str, Any]) -> None:
    """One JSON patch (RFC 6902) operation: add, replace or remove."""
    *parents, last = _pointer(patch["path"])
    node: Any = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = patch.get("op", "replace")  # skaffold's default
    if isinstance(node, list):
        if op == "add":
            node.insert(len(node) if last == "-" else int(last), patch["value"])
        elif op == "replace":
            node[int(last)] = patch["value"]
        else:
            assert op == "remove", op
            del node[int(last)]
    elif op in ("add", "replace"):
        node[last] = patch["value"]
    else:
        assert op == "remove", op
        del node[last]


def effective(config: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The config skaffold runs with profile ``name`` (None: no profile)."""
    result = copy.deepcopy({key: value for key, value in config.items() if key != "profiles"})
    if name is None:
        return result
    [profile] = [p for p in config["profiles"] if p["name"] == name]
    for section in SECTIONS:
        if section in profile:
            result[section] = copy.deepcopy(profile[section])
    for patch in profile.get("patches", []):
        _apply(result, copy.deepcopy(patch))
    return result


def test_each_profile_renders_its_overlay_and_the_default_stays_local(
    skaffold: dict[str, Any],
) -> None:
    assert skaffold["manifests"]["kustomize"]["paths"] == ["manifests/overlays/local"]
    assert [profile["name"] for profile in skaffold["profiles"]] == list(PROFILES)
    for name, overlay in PROFILES.items():
        assert effective(skaffold, name)["manifests"]["kustomize"]["paths"] == [overlay]
        assert (PROJECT_ROOT / overlay / "kustomization.yaml").is_file()


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_each_profiles_config_validates_and_forwards_the_default_ports(
    schema_store: SchemaStore, skaffold: dict[str, Any], profile: str | None
) -> None:
    config = effective(skaffold, profile)

    assert schema_store.validate(config) == []
    defaults = Settings()
    forwards = {(f["resourceName"], f["localPort"]) for f in config["portForward"]}
    assert forwards == {
        ("broker-ingress", defaults.broker_port),
        ("istio-ingressgateway", defaults.router_port),
        ("control", defaults.control_port),
    }


def test_a_misspelt_field_in_a_profile_or_its_patched_artifact_fails(
    schema_store: SchemaStore, skaffold: dict[str, Any]
) -> None:
    bad = copy.deepcopy(skaffold)
    [enterprise] = [p for p in bad["profiles"] if p["name"] == "enterprise"]
    enterprise["manifest"] = enterprise.pop("manifests")
    enterprise["patches"][0]["value"]["contxt"] = enterprise["patches"][0]["value"].pop("context")

    assert schema_store.validate(bad) == [
        "Config/falaj: profiles[1]: Additional properties are not allowed "
        "('manifest' was unexpected)"
    ]
    assert schema_store.validate(effective(bad, "enterprise")) == [
        "Config/falaj: build.artifacts[3]: Additional properties are not allowed "
        "('contxt' was unexpected)"
    ]


@pytest.mark.parametrize(("profile", "render"), [(None, "local"), *[(p, p) for p in PROFILES]])
def test_each_profile_builds_exactly_the_images_its_overlay_uses(
    skaffold: dict[str, Any],
    rendered: dict[str, list[dict[str, Any]]],
    profile: str | None,
    render: str,
) -> None:
    artifacts = {a["image"] for a in effective(skaffold, profile)["build"]["artifacts"]}

    assert images_in(rendered[render]) == artifacts


def _dockerfile(artifact: dict[str, Any]) -> Path:
    return PROJECT_ROOT / artifact["context"] / artifact["docker"]["dockerfile"]


def _profile_artifacts() -> list[dict[str, Any]]:
    config = yaml.safe_load((PROJECT_ROOT / "skaffold.yaml").read_text())
    main = {artifact["image"] for artifact in config["build"]["artifacts"]}
    return [
        artifact
        for name in PROFILES
        for artifact in effective(config, name)["build"]["artifacts"]
        if artifact["image"] not in main
    ]


@pytest.mark.parametrize("artifact", _profile_artifacts(), ids=lambda artifact: artifact["image"])
def test_a_profiles_own_artifact_has_a_dockerfile_that_drops_root(artifact: dict[str, Any]) -> None:
    lines = _dockerfile(artifact).read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))
