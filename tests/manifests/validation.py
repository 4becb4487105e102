"""Everything a render holds, validated strictly, and every pod spec in it found.

Two validators share the work, as a cluster's API server would do it:

- custom resources (Knative, KServe, KubeRay) against their CRDs in strict
  mode: ``falaj.manifest_schemas.SchemaStore``;
- the core kinds (Namespace, ConfigMap, RBAC, NetworkPolicy, ...) against the
  Kubernetes API's own schemas, strict (unknown fields refused), as the
  ``kubernetes-validate`` package bundles them for ``KUBERNETES_VERSION``.

Some CRDs keep parts of a pod spec as ``x-kubernetes-preserve-unknown-fields``
(Knative Serving's feature-flagged ``affinity``; the whole template of a
ContainerSource), so a misspelt residency pin there would pass their schema
and be dropped by the API server. Those parts are checked against the core
types themselves (``pod_spec_problems``). Knative Eventing's schemas keep the
specs of Triggers open the same way (on a cluster its webhook refuses unknown
fields); the local runtime's reader refuses them too, so every render must
also be one ``falaj.manifests.build_topology`` reads ("one spec, two runtimes").
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from kubernetes_validate.utils import schema_contents
from referencing import Registry
from referencing import Resource as SchemaResource

from falaj.errors import ManifestError
from falaj.manifest_schemas import SchemaStore
from falaj.manifests import Resource, build_topology
from falaj.topology import Topology

#: The Kubernetes release the core kinds are checked against (kubernetes-validate
#: bundles 1.25 to 1.37; 1.33 is what the managed offerings in the UAE regions run).
KUBERNETES_VERSION = "1.33.0"
_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
#: KServe's component specs: each is a pod spec plus the component's own fields,
#: and need not list containers (a predictor names a ``model`` instead).
KSERVE_COMPONENTS = frozenset({"predictor", "transformer", "explainer"})
#: Kinds whose pods their controllers make from a pod spec in the object.
POD_KINDS = frozenset(
    {
        ("serving.knative.dev", "Service"),
        ("sources.knative.dev", "ContainerSource"),
        ("serving.kserve.io", "InferenceService"),
        ("serving.kserve.io", "ServingRuntime"),
        ("ray.io", "RayJob"),
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("", "Pod"),
    }
)
#: Pod templates a CRD keeps without a schema: checked whole, as a PodTemplateSpec.
UNCHECKED_POD_TEMPLATES: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("sources.knative.dev", "ContainerSource"): ("spec", "template"),
}


def group_of(doc: Mapping[str, Any]) -> str:
    api_version = str(doc.get("apiVersion", ""))
    return api_version.rpartition("/")[0]


def name_of(doc: Mapping[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in an object, wherever it sits, with its dotted path.

    A pod spec is a mapping that lists ``containers`` (Knative's and a
    ContainerSource's template spec, a ServingRuntime's spec, each RayJob
    group's template spec, any Deployment or Job), or a KServe component spec.
    """
    if isinstance(node, Mapping):
        key = path.rpartition(".")[2]
        if "containers" in node or key in KSERVE_COMPONENTS:
            yield path or "(root)", node  # type: ignore[misc]
        for name, value in node.items():
            yield from pod_specs(value, f"{path}.{name}" if path else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pod_specs(value, f"{path}[{index}]")


class CoreSchemas:
    """kubernetes-validate's strict schemas for one Kubernetes version, compiled once.

    ``kubernetes_validate.validate`` reads the 1.4 MB definitions file on every
    call and stops at the first error; this keeps one registry and reports them all.
    """

    def __init__(self, version: str = KUBERNETES_VERSION) -> None:
        self.version = version
        self._folder = f"kubernetes-json-schema/v{version}-local-strict"
        definitions = schema_contents(f"{self._folder}/_definitions.json", version)
        self._registry: Registry[Any] = SchemaResource.from_contents(definitions) @ Registry()
        self._validators: dict[str, Draft202012Validator | None] = {}

    def knows(self, doc: Mapping[str, Any]) -> bool:
        """Whether the Kubernetes API itself serves the kind (else a CRD defines it)."""
        return self._validator(self._file(doc)) is not None

    def validate(self, doc: Mapping[str, Any]) -> list[str]:
        """Every problem, one line each; a kind without a schema is one problem."""
        validator = self._validator(self._file(doc))
        if validator is None:
            return [
                f"{name_of(doc)}: no Kubernetes {self.version} schema for {doc.get('apiVersion')} "
                f"{doc.get('kind')}"
            ]
        return [f"{name_of(doc)}: {line}" for line in _lines(validator.iter_errors(doc))]

    def validate_type(self, type_name: str, value: Any) -> list[str]:
        """Problems of a value of one API type, e.g. ``io.k8s.api.core.v1.Affinity``."""
        key = f"#{type_name}"
        if key not in self._validators:
            schema = {"$ref": f"{_DEFINITIONS}#/$defs/{type_name}"}
            self._validators[key] = Draft202012Validator(schema, registry=self._registry)
        validator = self._validators[key]
        assert validator is not None
        return _lines(validator.iter_errors(value))

    def _file(self, doc: Mapping[str, Any]) -> str:
        # kubernetes-validate's naming: rbac.authorization.k8s.io/v1 Role -> role-rbac-v1.json
        api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(doc.get("apiVersion", "")))
        return f"{str(doc.get('kind', '')).lower()}-{api_version}.json"

    def _validator(self, filename: str) -> Draft202012Validator | None:
        if filename not in self._validators:
            try:
                schema = schema_contents(f"{self._folder}/{filename}", self.version)
            except FileNotFoundError:
                self._validators[filename] = None
            else:
                self._validators[filename] = Draft202012Validator(schema, registry=self._registry)
        return self._validators[filename]


def _lines(errors: Iterator[ValidationError]) -> list[str]:
    lines = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        lines.append(f"{where}: {error.message[:300]}")
    return lines


@dataclass
class Report:
    """What validating one render found, and by which validator."""

    problems: list[str] = field(default_factory=list)
    #: Objects checked against their CRD (SchemaStore, strict).
    custom: int = 0
    #: Objects checked against the Kubernetes API's schemas (kubernetes-validate, strict).
    core: int = 0
    #: Pod specs whose scheduling fields were checked against the core types.
    pod_specs: int = 0
    #: What the local runtime reads from the render; None when it refused it.
    topology: Topology | None = None


def validate_render(
    docs: list[dict[str, Any]], store: SchemaStore, core: CoreSchemas, *, origin: str = "render"
) -> Report:
    """Every object of a render, each against the schema a cluster would use, strictly."""
    report = Report()
    for doc in docs:
        report.problems += doc_problems(doc, store, core)
        if core.knows(doc):
            report.core += 1
        else:
            report.custom += 1
            report.pod_specs += sum(1 for _ in pod_specs(doc))
    try:
        report.topology = build_topology(Resource(origin=origin, doc=doc) for doc in docs)
    except ManifestError as exc:
        report.problems.append(f"the local runtime's reading: {exc}")
    return report


def topology_problems(docs: list[dict[str, Any]], *, origin: str = "render") -> list[str]:
    """What the local runtime's reader refuses in a render (``validate_render`` does it too)."""
    try:
        build_topology(Resource(origin=origin, doc=doc) for doc in docs)
    except ManifestError as exc:
        return [f"the local runtime's reading: {exc}"]
    return []


def doc_problems(doc: Mapping[str, Any], store: SchemaStore, core: CoreSchemas) -> list[str]:
    """One object's problems: the core API's, or its CRD's (strict) and its pod specs'.

    A kind the Kubernetes API does not serve goes to ``SchemaStore``: its CRD,
    or the hand-written schema of a kind whose CRD is not in shared/schemas;
    a kind neither knows is a problem, never a pass.
    """
    if core.knows(doc):
        return core.validate(doc)
    problems = store.validate(doc, strict=True)
    for path, spec in pod_specs(doc):
        problems += [f"{name_of(doc)}: {path}.{line}" for line in pod_spec_problems(spec, core)]
    where = UNCHECKED_POD_TEMPLATES.get((group_of(doc), str(doc.get("kind"))))
    if where is not None:
        template: Any = doc
        for part in where:
            template = template.get(part, {}) if isinstance(template, Mapping) else {}
        problems += [
            f"{name_of(doc)}: {'.'.join(where)}.{line}"
            for line in core.validate_type("io.k8s.api.core.v1.PodTemplateSpec", template)
        ]
    return problems


def pod_spec_problems(spec: Mapping[str, Any], core: CoreSchemas) -> list[str]:
    """The scheduling fields of a pod spec, against the core types (CRDs may not check them)."""
    problems = []
    if "affinity" in spec:
        problems += [
            f"affinity.{line}"
            for line in core.validate_type("io.k8s.api.core.v1.Affinity", spec["affinity"])
        ]
    for index, toleration in enumerate(spec.get("tolerations") or []):
        problems += [
            f"tolerations[{index}].{line}"
            for line in core.validate_type("io.k8s.api.core.v1.Toleration", toleration)
        ]
    selector = spec.get("nodeSelector")
    if selector is not None and not (
        isinstance(selector, Mapping) and all(isinstance(v, str) for v in selector.values())
    ):
        problems.append(f"nodeSelector: expected a map of strings, got {selector!r}")
    return problems
