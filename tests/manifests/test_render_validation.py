"""Every object of every render (the base and each overlay), checked as a cluster would.

Custom resources against their CRDs in strict mode, core kinds against the
Kubernetes API's schemas with kubernetes-validate, pod specs' scheduling
fields against the core types, and the whole render through the local
runtime's reader (``tests.manifests.validation`` says why each).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from falaj.manifest_schemas import SchemaStore
from tests.manifests.conftest import RENDERS
from tests.manifests.validation import (
    KUBERNETES_VERSION,
    CoreSchemas,
    doc_problems,
    name_of,
    pod_specs,
    topology_problems,
    validate_render,
)

#: The core kinds the base declares: each must have met kubernetes-validate.
CORE_KINDS = {
    "Namespace",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "Deployment",
    "Service",
}


def _renamed(node: dict[str, Any], key: str) -> str:
    wrong = key + key[-1]
    node[wrong] = node.pop(key)
    return wrong


def _at(doc: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = doc
    for part in path.replace("[", ".[").split("."):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    assert isinstance(node, dict)
    return node


def _typos(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Copies of a custom resource, each with one field misspelt, and the misspelling.

    Each key of its spec, each key of each pod spec and of its first
    container, and the required node affinity that pins the region.
    """
    for key in list(doc.get("spec") or {}):
        bad = copy.deepcopy(doc)
        yield _renamed(bad["spec"], key), bad
    for path, pod in pod_specs(doc):
        for key in list(pod):
            bad = copy.deepcopy(doc)
            yield _renamed(_at(bad, path), key), bad
        for key in list((pod.get("containers") or [{}])[0]):
            bad = copy.deepcopy(doc)
            yield _renamed(_at(bad, path)["containers"][0], key), bad
        if "affinity" in pod:
            bad = copy.deepcopy(doc)
            node_affinity = _at(bad, path)["affinity"]["nodeAffinity"]
            yield _renamed(node_affinity, "requiredDuringSchedulingIgnoredDuringExecution"), bad


def test_kubernetes_validate_bundles_the_version_checked_against() -> None:
    assert KUBERNETES_VERSION in all_versions()
    # What kubernetes-validate's own entry point would say of a core object.
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "falaj"}}
    assert kubernetes_validate.validate(namespace, KUBERNETES_VERSION, strict=True) == "1.33"


@pytest.mark.parametrize("render", RENDERS)
def test_every_object_of_the_render_validates_strictly(
    render: str,
    rendered: dict[str, list[dict[str, Any]]],
    schema_store: SchemaStore,
    core_schemas: CoreSchemas,
) -> None:
    docs = rendered[render]

    report = validate_render(docs, schema_store, core_schemas, origin=render)

    assert report.problems == []
    assert report.custom + report.core == len(docs)
    assert {doc["kind"] for doc in docs if core_schemas.knows(doc)} >= CORE_KINDS
    assert report.custom >= 20 and report.pod_specs >= 9
    assert report.topology is not None


@pytest.mark.parametrize("render", RENDERS)
def test_a_misspelt_field_in_any_custom_resource_fails(
    render: str,
    rendered: dict[str, list[dict[str, Any]]],
    schema_store: SchemaStore,
    core_schemas: CoreSchemas,
) -> None:
    docs = rendered[render]
    missed, tried = [], 0
    for index, doc in enumerate(docs):
        if core_schemas.knows(doc):
            continue
        for wrong, bad in _typos(doc):
            tried += 1
            problems = doc_problems(bad, schema_store, core_schemas) + topology_problems(
                [*docs[:index], bad, *docs[index + 1 :]]
            )
            if not any(wrong in line for line in problems):
                missed.append(f"{name_of(doc)}: {wrong}")

    assert missed == []
    assert tried >= 200


@pytest.mark.parametrize("render", RENDERS)
def test_a_misspelt_field_in_any_core_object_fails(
    render: str, rendered: dict[str, list[dict[str, Any]]], core_schemas: CoreSchemas
) -> None:
    missed, tried = [], 0
    for doc in rendered[render]:
        if not core_schemas.knows(doc):
            continue
        fields = [(), ("metadata",)] + ([("spec",)] if isinstance(doc.get("spec"), dict) else [])
        for path in fields:
            for key in list(_at(doc, ".".join(path)) if path else doc):
                if key in ("apiVersion", "kind"):
                    continue
                bad = copy.deepcopy(doc)
                wrong = _renamed(_at(bad, ".".join(path)) if path else bad, key)
                tried += 1
                if not any(repr(wrong) in line for line in core_schemas.validate(bad)):
                    missed.append(f"{name_of(doc)}: {wrong}")

    assert missed == []
    assert tried >= 24 * 3


def test_a_core_object_of_a_wrong_shape_names_the_field(
    rendered: dict[str, list[dict[str, Any]]], core_schemas: CoreSchemas
) -> None:
    [claim] = [
        copy.deepcopy(doc)
        for doc in rendered["smb"]
        if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == "falaj-registry"
    ]
    claim["spec"]["accessModes"] = "ReadWriteMany"

    assert core_schemas.validate(claim) == [
        "PersistentVolumeClaim/falaj-registry: spec.accessModes: 'ReadWriteMany' is not of "
        "type 'array', 'null'"
    ]


def test_a_kind_without_any_schema_is_a_problem_not_a_pass(
    rendered: dict[str, list[dict[str, Any]]],
    schema_store: SchemaStore,
    core_schemas: CoreSchemas,
) -> None:
    unknown = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "falaj"},
    }

    problems = validate_render([*rendered["local"], unknown], schema_store, core_schemas).problems

    assert any(line.startswith("Widget/w: no schema for Widget") for line in problems)
