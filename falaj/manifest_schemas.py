"""Manifests checked against the official schemas, the way a cluster would check them.

No Kubernetes API server runs here, so ``validate_manifest`` does its job
offline: each custom resource is validated against the ``openAPIV3Schema`` of
its upstream CRD (Knative, KServe, KubeRay) and ``skaffold.yaml`` against
skaffold's JSON Schema, all kept byte-for-byte in ``shared/schemas`` beside
the repository (see its README).

CRD schemas are *structural*: they accept unknown fields, so a misspelt
``canaryTraficPercent`` would pass. The strict variant built here adds
``additionalProperties: false`` to every object that declares ``properties``
(unless it preserves unknown fields), which is what ``kubectl
--validate=strict`` does. The core kinds Falaj uses (ConfigMap,
ServiceAccount, ...) get small hand-written strict schemas until a full
Kubernetes schema set is available, and so do prometheus-operator's
PrometheusRule and PodMonitor, whose CRDs ``shared/schemas`` does not carry.

Parsing the multi-MB KServe and KubeRay CRDs takes seconds, so a
``SchemaStore`` keeps each converted schema for the life of the process and,
given a ``cache_dir``, on disk as JSON keyed by the source file's hash.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from jsonschema import Draft4Validator, Draft7Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from falaj.errors import ConfigError
from falaj.settings import PROJECT_ROOT

DEFAULT_SCHEMAS_DIR = PROJECT_ROOT.parent / "shared" / "schemas"
SKAFFOLD_API_VERSION = "skaffold/v4beta14"
SKAFFOLD_SCHEMA = "skaffold/v4beta14.json"

#: Bump when the conversion below changes, so stale disk caches are not reused.
_CACHE_FORMAT = 1
#: jsonschema puts the offending value in its messages; a whole pod spec is noise.
_MAX_MESSAGE = 300

#: (API group, kind) -> the CRD file, relative to the schemas directory.
CRD_FILES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("serving.knative.dev", "Service"): "knative-serving/service.yaml",
        ("eventing.knative.dev", "Broker"): "knative-eventing/broker.yaml",
        ("eventing.knative.dev", "Trigger"): "knative-eventing/trigger.yaml",
        ("sources.knative.dev", "PingSource"): "knative-eventing/pingsource.yaml",
        ("sources.knative.dev", "ApiServerSource"): "knative-eventing/apiserversource.yaml",
        ("sources.knative.dev", "SinkBinding"): "knative-eventing/sinkbindings.yaml",
        ("sources.knative.dev", "ContainerSource"): "knative-eventing/containersource.yaml",
        ("sources.knative.dev", "KafkaSource"): "knative-eventing-kafka/100-kafka-source.yaml",
        ("sources.knative.dev", "RabbitmqSource"): (
            "knative-eventing-rabbitmq/300-rabbitmqsource.yaml"
        ),
        (
            "serving.kserve.io",
            "InferenceService",
        ): "kserve/serving.kserve.io_inferenceservices.yaml",
        ("serving.kserve.io", "ServingRuntime"): "kserve/serving.kserve.io_servingruntimes.yaml",
        ("serving.kserve.io", "ClusterServingRuntime"): (
            "kserve/serving.kserve.io_clusterservingruntimes.yaml"
        ),
        ("serving.kserve.io", "InferenceGraph"): "kserve/serving.kserve.io_inferencegraphs.yaml",
        ("ray.io", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
        ("ray.io", "RayCluster"): "kuberay/ray.io_rayclusters.yaml",
    }
)


def _strings() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _strict(properties: Mapping[str, Any], *required: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


#: The part of ObjectMeta a manifest may set; the server fills in the rest.
OBJECT_META: Mapping[str, Any] = MappingProxyType(
    _strict(
        {
            "name": {"type": "string", "minLength": 1},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": _strings(),
            "annotations": _strings(),
            "finalizers": {"type": "array", "items": {"type": "string"}},
        },
        "name",
    )
)


def _core(api_version: str, kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    return _strict(
        {
            "apiVersion": {"enum": [api_version]},
            "kind": {"enum": [kind]},
            "metadata": dict(OBJECT_META),
            **fields,
        },
        "apiVersion",
        "kind",
        "metadata",
    )


_NAME_LIST = {"type": "array", "items": _strict({"name": {"type": "string"}}, "name")}
_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_LABEL_SELECTOR = _strict(
    {
        "matchLabels": _strings(),
        "matchExpressions": {
            "type": "array",
            "items": _strict(
                {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": _STRING_LIST,
                },
                "key",
                "operator",
            ),
        },
    }
)
_NETWORK_PEER = _strict(
    {
        "podSelector": _LABEL_SELECTOR,
        "namespaceSelector": _LABEL_SELECTOR,
        "ipBlock": _strict({"cidr": {"type": "string"}, "except": _STRING_LIST}, "cidr"),
    }
)
_NETWORK_PORT = _strict(
    {
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        "port": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]
        },
        "endPort": {"type": "integer", "minimum": 1, "maximum": 65535},
    }
)


def _network_rule(peers: str) -> dict[str, Any]:
    return _strict(
        {
            peers: {"type": "array", "items": _NETWORK_PEER},
            "ports": {"type": "array", "items": _NETWORK_PORT},
        }
    )


#: Structural checks for the core kinds, keyed by (apiVersion, kind). Deliberately
#: small: only the fields Falaj's manifests use, strictly typed.
CORE_SCHEMAS: Mapping[tuple[str, str], Mapping[str, Any]] = MappingProxyType(
    {
        ("v1", "Namespace"): _core("v1", "Namespace", {}),
        ("v1", "ConfigMap"): _core(
            "v1",
            "ConfigMap",
            {"data": _strings(), "binaryData": _strings(), "immutable": {"type": "boolean"}},
        ),
        ("v1", "ServiceAccount"): _core(
            "v1",
            "ServiceAccount",
            {
                "automountServiceAccountToken": {"type": "boolean"},
                "imagePullSecrets": _NAME_LIST,
                "secrets": _NAME_LIST,
            },
        ),
        ("v1", "PersistentVolumeClaim"): _core(
            "v1",
            "PersistentVolumeClaim",
            {
                "spec": _strict(
                    {
                        "accessModes": {
                            "type": "array",
                            "items": {
                                "enum": [
                                    "ReadWriteOnce",
                                    "ReadOnlyMany",
                                    "ReadWriteMany",
                                    "ReadWriteOncePod",
                                ]
                            },
                        },
                        "resources": _strict(
                            {
                                "requests": _strict({"storage": {"type": "string"}}, "storage"),
                                "limits": _strict({"storage": {"type": "string"}}),
                            },
                            "requests",
                        ),
                        "storageClassName": {"type": "string"},
                        "volumeMode": {"enum": ["Filesystem", "Block"]},
                        "volumeName": {"type": "string"},
                    },
                    "accessModes",
                    "resources",
                ),
            },
        ),
        # Every field the kind has (network-policies.yaml uses most of them).
        ("networking.k8s.io/v1", "NetworkPolicy"): _core(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            {
                "spec": _strict(
                    {
                        "podSelector": _LABEL_SELECTOR,
                        "policyTypes": {
                            "type": "array",
                            "items": {"enum": ["Ingress", "Egress"]},
                            "uniqueItems": True,
                        },
                        "ingress": {"type": "array", "items": _network_rule("from")},
                        "egress": {"type": "array", "items": _network_rule("to")},
                    },
                    "podSelector",
                ),
            },
        ),
        ("rbac.authorization.k8s.io/v1", "Role"): _core(
            "rbac.authorization.k8s.io/v1",
            "Role",
            {
                "rules": {
                    "type": "array",
                    "items": _strict(
                        {
                            "apiGroups": _STRING_LIST,
                            "resources": _STRING_LIST,
                            "resourceNames": _STRING_LIST,
                            "verbs": _STRING_LIST,
                        },
                        "verbs",
                    ),
                }
            },
        ),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): _core(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            {
                "roleRef": _strict(
                    {
                        "apiGroup": {"enum": ["rbac.authorization.k8s.io"]},
                        "kind": {"enum": ["Role", "ClusterRole"]},
                        "name": {"type": "string"},
                    },
                    "apiGroup",
                    "kind",
                    "name",
                ),
                "subjects": {
                    "type": "array",
                    "items": _strict(
                        {
                            "kind": {"enum": ["ServiceAccount", "User", "Group"]},
                            "name": {"type": "string"},
                            "namespace": {"type": "string"},
                            "apiGroup": {"type": "string"},
                        },
                        "kind",
                        "name",
                    ),
                },
            },
        ),
    }
)


#: prometheus-operator's duration (``30s``, ``1h30m``, ``0``), as its CRDs write it.
_PROMETHEUS_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
_RULE = {
    **_strict(
        {
            "alert": {"type": "string", "minLength": 1},
            # A recording rule's name is a metric name.
            "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
            "expr": {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]},
            "for": _PROMETHEUS_DURATION,
            "labels": _strings(),
            "annotations": _strings(),
        },
        "expr",
    ),
    # The CRD leaves these to the operator's admission webhook: exactly one of
    # alert and record, and `for` and annotations on alerts only.
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "dependencies": {"for": ["alert"], "annotations": ["alert"]},
}
_SECRET_KEY = _strict(
    {"name": {"type": "string", "minLength": 1}, "key": {"type": "string"}}, "name", "key"
)


def _operator_kind(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    schema = _core("monitoring.coreos.com/v1", kind, {"spec": spec})
    schema["required"].append("spec")  # as the CRDs require it
    return schema


#: The prometheus-operator kinds manifests/base/monitoring uses, keyed like
#: ``CORE_SCHEMAS``. Written from the CRDs of prometheus-operator v0.93.0
#: (example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
#: and ..._podmonitors.yaml): only the fields Falaj sets, with the CRDs' types,
#: patterns and required fields, and no others (the CRDs themselves, being
#: structural, let a misspelt field through).
MONITORING_SCHEMAS: Mapping[tuple[str, str], Mapping[str, Any]] = MappingProxyType(
    {
        ("monitoring.coreos.com/v1", "PrometheusRule"): _operator_kind(
            "PrometheusRule",
            _strict(
                {
                    "groups": {
                        "type": "array",
                        "items": _strict(
                            {
                                "name": {"type": "string", "minLength": 1},
                                "rules": {"type": "array", "items": _RULE},
                            },
                            "name",
                        ),
                    }
                }
            ),
        ),
        ("monitoring.coreos.com/v1", "PodMonitor"): _operator_kind(
            "PodMonitor",
            _strict(
                {
                    "selector": _LABEL_SELECTOR,
                    "podMetricsEndpoints": {
                        "type": "array",
                        "items": _strict(
                            {
                                "port": {"type": "string", "minLength": 1},
                                "path": {"type": "string"},
                                "interval": _PROMETHEUS_DURATION,
                                # The successor of the deprecated bearerTokenSecret.
                                "authorization": _strict(
                                    {"type": {"type": "string"}, "credentials": _SECRET_KEY},
                                    "credentials",
                                ),
                            }
                        ),
                    },
                },
                "selector",
            ),
        ),
    }
)


def convert_schema(openapi: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """An OpenAPI v3 CRD schema as a JSON Schema (draft 4) ``jsonschema`` can check.

    ``nullable: true`` becomes a ``"null"`` type. With ``strict``, objects that
    list their ``properties`` refuse any other key, and the root declares
    ``apiVersion``, ``kind`` and ``metadata`` (Knative's schemas omit them).
    """
    converted = _convert_node(openapi, strict=strict)
    if strict:
        properties = converted.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string"}
        properties["kind"] = {"type": "string"}
        properties["metadata"] = copy.deepcopy(dict(OBJECT_META))
        converted["additionalProperties"] = False
        required = [*converted.get("required", ()), "apiVersion", "kind", "metadata"]
        converted["required"] = list(dict.fromkeys(required))
    return converted


def _convert_node(node: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    # Walk the schema's own structure (not every dict): a property may well be
    # named "type" or "properties".
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert_node(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = _convert_node(value, strict=strict)
        elif key in ("allOf", "anyOf", "oneOf") or (key == "items" and isinstance(value, list)):
            out[key] = [_convert_node(sub, strict=strict) for sub in value]
        else:
            out[key] = value
    if out.pop("nullable", False) and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if out.get("x-kubernetes-embedded-resource") and "properties" in out:
        # An embedded object (a RawExtension with a schema) always carries these.
        for name in ("apiVersion", "kind"):
            out["properties"].setdefault(name, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (
        strict
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


class SchemaStore:
    """Finds, converts and caches the schema for each (apiVersion, kind).

    One store per process is enough (``default_store``); parsed CRDs and
    compiled validators live as long as it does.
    """

    def __init__(
        self, schemas_dir: Path = DEFAULT_SCHEMAS_DIR, *, cache_dir: Path | None = None
    ) -> None:
        self.schemas_dir = schemas_dir
        self.cache_dir = cache_dir
        self._crds: dict[Path, dict[str, Any]] = {}
        self._validators: dict[tuple[str, str, bool], Validator] = {}

    def validate(self, doc: Mapping[str, Any], *, strict: bool = True) -> list[str]:
        """Every problem with ``doc``, one readable line each; empty when it is valid."""
        api_version = doc.get("apiVersion")
        kind = doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [
                f"expected a Kubernetes object with string 'apiVersion' and 'kind', "
                f"got apiVersion={api_version!r}, kind={kind!r}"
            ]
        label = _label(doc, kind)
        try:
            validator = self.validator(api_version, kind, strict=strict)
        except LookupError as exc:
            return [f"{label}: {exc.args[0]}"]
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{label}: {line}" for line in _readable(errors)]

    def validator(self, api_version: str, kind: str, *, strict: bool = True) -> Validator:
        """A compiled validator; raises ``LookupError`` when no schema is known."""
        key = (api_version, kind, strict)
        if key not in self._validators:
            # skaffold's schema is plain draft-07; OpenAPI 3.0 is closest to draft 4.
            cls = Draft7Validator if api_version == SKAFFOLD_API_VERSION else Draft4Validator
            self._validators[key] = cls(self.schema(api_version, kind, strict=strict))
        return self._validators[key]

    def schema(self, api_version: str, kind: str, *, strict: bool = True) -> dict[str, Any]:
        """The JSON Schema for one kind at one API version (skaffold's is already strict)."""
        if api_version == SKAFFOLD_API_VERSION:
            return self._skaffold_schema()
        written = CORE_SCHEMAS.get((api_version, kind)) or MONITORING_SCHEMAS.get(
            (api_version, kind)
        )
        if written is not None:
            return copy.deepcopy(dict(written))
        group, _, version = api_version.rpartition("/")
        relative = CRD_FILES.get((group, kind))
        if relative is None:
            known = sorted(f"{g}/{k}" for g, k in CRD_FILES) + sorted(
                f"{v}/{k}" for v, k in {**CORE_SCHEMAS, **MONITORING_SCHEMAS}
            )
            raise LookupError(
                f"no schema for {kind} in {api_version!r}; expected one of {', '.join(known)} "
                f"(add its CRD to shared/schemas and to falaj.manifest_schemas.CRD_FILES)"
            )
        path = self._path(relative)
        mode = "strict" if strict else "lenient"
        cached = self._read_cache(path, f"{version}-{mode}")
        if cached is not None:
            return cached
        crd = self._crd(path)
        versions = {v["name"]: v for v in crd["spec"]["versions"]}
        entry = versions.get(version)
        if entry is None or not entry.get("served", True):
            served = sorted(name for name, v in versions.items() if v.get("served", True))
            raise LookupError(
                f"{kind} is not served at version {version!r}; expected apiVersion "
                f"{' or '.join(f'{group}/{v}' for v in served)}"
            )
        schema = convert_schema(entry["schema"]["openAPIV3Schema"], strict=strict)
        self._write_cache(path, f"{version}-{mode}", schema)
        return schema

    def _skaffold_schema(self) -> dict[str, Any]:
        path = self._path(SKAFFOLD_SCHEMA)
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return loaded

    def _path(self, relative: str) -> Path:
        path = self.schemas_dir / relative
        if not path.is_file():
            raise ConfigError(
                f"schema file {path} is missing; expected the official schemas in "
                f"{self.schemas_dir} (the shared/schemas folder beside the repository). "
                f"Check it out there, or pass SchemaStore(schemas_dir=...)"
            )
        return path

    def _crd(self, path: Path) -> dict[str, Any]:
        if path not in self._crds:
            # CSafeLoader (libyaml) parses the 2 MB KServe CRD ~10x faster than pure Python.
            docs = [d for d in yaml.load_all(path.read_text("utf-8"), Loader=yaml.CSafeLoader) if d]
            crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
            if len(crds) != 1:
                raise ConfigError(
                    f"expected one CustomResourceDefinition in {path}, found {len(crds)}"
                )
            self._crds[path] = crds[0]
        return self._crds[path]

    def _cache_file(self, source: Path, variant: str) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:20]
        return self.cache_dir / f"{source.stem}-{variant}-f{_CACHE_FORMAT}-{digest}.json"

    def _read_cache(self, source: Path, variant: str) -> dict[str, Any] | None:
        cache_file = self._cache_file(source, variant)
        if cache_file is None or not cache_file.is_file():
            return None
        try:
            loaded: dict[str, Any] = json.loads(cache_file.read_text("utf-8"))
        except (OSError, ValueError):
            return None  # a half-written or corrupt entry: rebuild it from the source
        return loaded

    def _write_cache(self, source: Path, variant: str, schema: Mapping[str, Any]) -> None:
        cache_file = self._cache_file(source, variant)
        if cache_file is None:
            return
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a parallel test process never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(schema, out)
            os.replace(tmp, cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@functools.cache
def default_store() -> SchemaStore:
    """The process's store over ``DEFAULT_SCHEMAS_DIR`` (memory cache only)."""
    return SchemaStore()


def validate_manifest(
    doc: Mapping[str, Any], *, strict: bool = True, store: SchemaStore | None = None
) -> list[str]:
    """Problems with one manifest (a CRD object, a core object or skaffold.yaml).

    Each line names the resource and the path of the offending field, e.g.
    ``InferenceService/fraud: spec.predictor: Additional properties are not
    allowed ('minReplica' was unexpected)``. An empty list means valid.
    """
    return (store or default_store()).validate(doc, strict=strict)


def _label(doc: Mapping[str, Any], kind: str) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{kind}/{name}" if name else kind


def _readable(errors: Iterable[ValidationError]) -> list[str]:
    lines: list[str] = []
    for error in errors:
        for leaf in _leaves(error):
            path = _path_text(leaf.absolute_path)
            message = leaf.message
            if len(message) > _MAX_MESSAGE:
                message = message[: _MAX_MESSAGE - 3] + "..."
            line = f"{path}: {message}"
            if line not in lines:
                lines.append(line)
    return lines


def _leaves(error: ValidationError) -> list[ValidationError]:
    # "Not valid under any of the given schemas" (skaffold wraps every struct
    # in anyOf) says nothing useful; the errors of the branch that fits best
    # do: the one that got furthest into the document with the fewest
    # complaints. When branches tie (int-or-string), the summary is the answer.
    if not error.context:
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def fit(errors: list[ValidationError]) -> tuple[int, int]:
        return max(len(e.absolute_path) for e in errors), -sum(map(_weight, errors))

    best = max(fit(errors) for errors in branches.values())
    winners = [errors for errors in branches.values() if fit(errors) == best]
    if len(winners) > 1:
        return [error]
    return [leaf for sub in winners[0] for leaf in _leaves(sub)]


def _weight(error: ValidationError) -> int:
    # One "Additional properties" error may name several unexpected keys; a
    # branch that objects to fewer of them fits better.
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        return max(1, sum(1 for key in error.instance if key not in declared))
    return 1


def _path_text(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(root)"
