"""manifests/base and its rendered local overlay, checked like a cluster would check them."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from falaj.events import EventType
from falaj.manifest_schemas import SchemaStore
from falaj.manifests import GPU_RESOURCE
from falaj.settings import Settings
from inference.server import parse_args
from tests.manifests.conftest import BASE
from tests.manifests.validation import CoreSchemas, doc_problems

REGION_KEY = "topology.kubernetes.io/region"
REGION_SELECTOR = {REGION_KEY: "me-central-1"}
#: The region's GPU node pool: its label, and the taint its pods must tolerate.
GPU_POOL = {"falaj.dev/pool": "gpu"}
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: Files of manifests/base a cluster applies only where it fits (their headers say how).
OPT_IN_FILES = {"inference-service-gpu.yaml"}


def _name(doc: Mapping[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _knative_services(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The functions: Knative Services, not the core Service in front of the control API."""
    return [d for d in _by_kind(docs, "Service") if d["apiVersion"] == "serving.knative.dev/v1"]


def test_every_base_document_validates_strictly(
    schema_store: SchemaStore, core_schemas: CoreSchemas, base_docs: list[dict[str, Any]]
) -> None:
    # Custom resources against their CRDs, core kinds (the control API's Deployment and
    # Service among them) against the Kubernetes API's own schemas.
    problems = [line for doc in base_docs for line in doc_problems(doc, schema_store, core_schemas)]
    assert problems == []
    assert len(base_docs) >= 20


def test_every_rendered_local_document_validates_strictly(
    schema_store: SchemaStore,
    core_schemas: CoreSchemas,
    local_docs: list[dict[str, Any]],
    base_docs: list[dict[str, Any]],
) -> None:
    problems = [
        line for doc in local_docs for line in doc_problems(doc, schema_store, core_schemas)
    ]
    assert problems == []
    assert sorted(map(_name, local_docs)) == sorted(map(_name, base_docs))
    # kustomize put everything namespaced into the falaj namespace.
    namespaced = [doc for doc in local_docs if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"falaj"}


def _misspell(doc: dict[str, Any], path: tuple[str | int, ...], wrong: str) -> dict[str, Any]:
    bad = copy.deepcopy(doc)
    parent: Any = bad
    for part in path[:-1]:
        parent = parent[part]
    parent[wrong] = parent.pop(path[-1])
    return bad


@pytest.mark.parametrize(
    ("kind", "path", "wrong", "where"),
    [
        (
            "InferenceService",
            ("spec", "predictor", "canaryTrafficPercent"),
            "canaryTraficPercent",
            "spec.predictor",
        ),
        (
            "Service",
            ("spec", "template", "spec", "containers", 0, "image"),
            "imagee",
            "spec.template.spec.containers[0]",
        ),
        (
            "RayJob",
            ("spec", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"),
            "replica",
            "spec.rayClusterSpec.workerGroupSpecs[0]",
        ),
        ("ContainerSource", ("spec", "sink"), "snk", "spec"),
        (
            "RabbitmqSource",
            ("spec", "rabbitmqResourcesConfig", "queueName"),
            "queueNmae",
            "spec.rabbitmqResourcesConfig",
        ),
        ("PingSource", ("spec", "timezone"), "timeZone", "spec"),
        ("ConfigMap", ("data",), "dat", "(root)"),
    ],
)
def test_a_misspelt_field_fails_only_in_strict_mode(
    schema_store: SchemaStore,
    local_docs: list[dict[str, Any]],
    kind: str,
    path: tuple[str | int, ...],
    wrong: str,
    where: str,
) -> None:
    bad = _misspell(_by_kind(local_docs, kind)[0], path, wrong)

    problems = schema_store.validate(bad, strict=True)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{_name(bad)}: {where}: ")
    assert repr(wrong) in problems[0]
    if kind != "ConfigMap":  # the CRD's own (structural) schema lets the typo through
        assert schema_store.validate(bad, strict=False) == []


def test_a_wrong_type_fails_with_its_path(
    schema_store: SchemaStore, local_docs: list[dict[str, Any]]
) -> None:
    trigger = copy.deepcopy(_by_kind(local_docs, "Trigger")[0])
    trigger["spec"]["filter"] = "type=dev.falaj.data.ingested"

    problems = schema_store.validate(trigger)

    assert problems == [
        f"{_name(trigger)}: spec.filter: 'type=dev.falaj.data.ingested' is not of type 'object'"
    ]


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for doc in docs:
        spec = doc.get("spec", {})
        match doc["kind"]:
            case "Service" if doc["apiVersion"] == "v1":
                continue  # the control API's address: it makes no pods
            case "Service" | "ContainerSource" | "Deployment":
                yield _name(doc), spec["template"]["spec"]
            case "InferenceService":
                yield _name(doc), spec["predictor"]
            case "ServingRuntime":
                yield _name(doc), spec
            case "RayJob":
                cluster = spec["rayClusterSpec"]
                yield f"{_name(doc)} head", cluster["headGroupSpec"]["template"]["spec"]
                for group in cluster["workerGroupSpecs"]:
                    yield f"{_name(doc)} {group['groupName']}", group["template"]["spec"]


def _holders_of_containers(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(node, Mapping):
        if "containers" in node:
            yield path, node
        for key, value in node.items():
            yield from _holders_of_containers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _holders_of_containers(value, f"{path}[{index}]")


def test_every_pod_runs_on_the_in_region_node_pool(local_docs: list[dict[str, Any]]) -> None:
    pods = dict(_pod_specs(local_docs))
    assert {name.split("/")[0] for name in pods} == {
        "Service",
        "ContainerSource",
        "InferenceService",
        "ServingRuntime",
        "RayJob",
        "Deployment",
    }
    off_region = [name for name, pod in pods.items() if not _in_region(pod.get("nodeSelector"))]
    assert off_region == []
    # No pod template hides anywhere else: whatever lists containers is pinned too.
    for doc in local_docs:
        for path, holder in _holders_of_containers(doc):
            assert _in_region(holder.get("nodeSelector")), f"{_name(doc)}{path}"


def _in_region(selector: Mapping[str, str] | None) -> bool:
    """The region's nodes: the region alone, or the region's GPU pool."""
    return selector in (REGION_SELECTOR, {**REGION_SELECTOR, **GPU_POOL})


def test_every_container_runs_as_non_root(local_docs: list[dict[str, Any]]) -> None:
    for doc in local_docs:
        for path, holder in _holders_of_containers(doc):
            pod_non_root = holder.get("securityContext", {}).get("runAsNonRoot") is True
            for container in holder["containers"]:
                context = container.get("securityContext", {})
                where = f"{_name(doc)}{path} {container['name']}"
                assert pod_non_root or context.get("runAsNonRoot") is True, where
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("capabilities", {}).get("drop") == ["ALL"], where


def _filtered_types(spec: dict[str, Any]) -> set[str]:
    """The event types a Trigger names, in `filter.attributes` or in `filters` (any depth)."""

    def walk(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*(walk(item) for item in node))
        if isinstance(node, dict):
            exact = node.get("exact", {}).get("type")
            return ({exact} if exact else set()) | set().union(
                *(walk(v) for k, v in node.items() if k != "exact")
            )
        return set()

    named = spec.get("filter", {}).get("attributes", {}).get("type")
    return ({named} if named else set()) | walk(spec.get("filters", []))


def test_every_trigger_filters_on_a_catalog_event_type(local_docs: list[dict[str, Any]]) -> None:
    triggers = _by_kind(local_docs, "Trigger")
    types = [_filtered_types(trigger["spec"]) for trigger in triggers]
    assert len(types) == 9
    assert all(types), "a Trigger without a type filter would take every event"
    assert set().union(*types) <= set(EventType)


def test_functions_scale_to_zero_and_read_wiring_from_config(
    local_docs: list[dict[str, Any]],
) -> None:
    config = _by_kind(local_docs, "ConfigMap")[0]
    services = _knative_services(local_docs)
    assert {_name(s) for s in services} == {
        "Service/ingest",
        "Service/training-launcher",
        "Service/rollout",
        "Service/drift",
    }
    for service in services:
        template = service["spec"]["template"]
        assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
        (container,) = template["spec"]["containers"]
        refs = {
            entry["name"]: entry["valueFrom"]["configMapKeyRef"]
            for entry in container["env"]
            if "valueFrom" in entry
        }
        for name in ("FALAJ_REGION", "FALAJ_BROKER_URL", "FALAJ_TOKEN_FILE"):
            assert refs[name] == {"name": config["metadata"]["name"], "key": name}
            assert name in config["data"]
        # The token file lies in the mounted Secret.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secrets = {v["name"] for v in template["spec"]["volumes"] if "secret" in v}
        token_dir = config["data"]["FALAJ_TOKEN_FILE"].rsplit("/", 1)[0]
        assert any(mounts.get(name) == token_dir for name in secrets)


# -- the control API: one pod, always on --------------------------------------------------


def _one(docs: list[dict[str, Any]], api_version: str, kind: str, name: str) -> dict[str, Any]:
    [doc] = [
        d
        for d in docs
        if (d["apiVersion"], d["kind"], d["metadata"]["name"]) == (api_version, kind, name)
    ]
    return doc


def test_the_control_api_runs_one_pod_on_the_state_volume_with_the_service_token(
    local_docs: list[dict[str, Any]],
) -> None:
    deployment = _one(local_docs, "apps/v1", "Deployment", "control")
    service = _one(local_docs, "v1", "Service", "control")
    config = _by_kind(local_docs, "ConfigMap")[0]
    spec, pod = deployment["spec"], deployment["spec"]["template"]
    # One process, also during a rollout: its sessions are in its memory.
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    labels = pod["metadata"]["labels"]
    for selector in (spec["selector"]["matchLabels"], service["spec"]["selector"]):
        assert selector.items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    [port] = container["ports"]
    assert port["containerPort"] == Settings().control_port
    assert service["spec"]["ports"] == [{"name": "http", "port": 8090, "targetPort": port["name"]}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["FALAJ_CONTROL_PORT"] == str(port["containerPort"])
    for name in ("FALAJ_REGION", "FALAJ_BROKER_URL", "FALAJ_TOKEN_FILE", "FALAJ_SERVING_BACKEND"):
        assert env[name] == {"configMapKeyRef": {"name": config["metadata"]["name"], "key": name}}
    # The Falaj home is the one the InferenceService loads from (pvc://falaj-registry/state).
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    home_mount = mounts["/data/registry"]
    assert env["FALAJ_HOME"] == "/data/registry/state" and not home_mount.get("readOnly")
    assert volumes[home_mount["name"]]["persistentVolumeClaim"] == {"claimName": "falaj-registry"}
    token_mount = mounts[config["data"]["FALAJ_TOKEN_FILE"].rsplit("/", 1)[0]]
    assert token_mount["readOnly"] is True
    assert volumes[token_mount["name"]]["secret"] == {"secretName": "falaj-token"}
    assert pod["spec"]["serviceAccountName"] == "control"


def test_the_control_api_may_only_read_and_replace_inference_services(
    local_docs: list[dict[str, Any]],
) -> None:
    rbac = "rbac.authorization.k8s.io/v1"
    role = _one(local_docs, rbac, "Role", "control")
    binding = _one(local_docs, rbac, "RoleBinding", "control")
    [rule] = role["rules"]
    assert rule == {
        "apiGroups": ["serving.kserve.io"],
        "resources": ["inferenceservices"],
        "verbs": ["get", "update"],
    }
    # Never more than the rollout function may do to the same resource.
    [rollout] = _one(local_docs, rbac, "Role", "rollout")["rules"]
    assert set(rule["verbs"]) < set(rollout["verbs"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "control",
    }
    assert [s["name"] for s in binding["subjects"]] == ["control"]
    _one(local_docs, "v1", "ServiceAccount", "control")


def test_base_kustomization_lists_every_manifest_file() -> None:
    listed = set(
        line.strip()[2:]
        for line in (BASE / "kustomization.yaml").read_text().splitlines()
        if line.strip().startswith("- ") and line.strip().endswith(".yaml")
    )
    on_disk = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - OPT_IN_FILES
    assert on_disk >= OPT_IN_FILES


# -- the model endpoints: CPU (every cluster) and GPU (where a GPU pool exists) ------------


def _gpu_docs() -> list[dict[str, Any]]:
    text = (BASE / "inference-service-gpu.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def endpoints(base_docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every InferenceService, the base's and the opt-in GPU one, by name."""
    docs = _by_kind(base_docs + _gpu_docs(), "InferenceService")
    return {doc["metadata"]["name"]: doc for doc in docs}


@pytest.fixture(scope="module")
def runtimes(base_docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    docs = _by_kind(base_docs + _gpu_docs(), "ServingRuntime")
    return {doc["metadata"]["name"]: doc for doc in docs}


def test_the_gpu_file_holds_the_gpu_runtime_and_endpoint_all_in_region(
    schema_store: SchemaStore,
) -> None:
    docs = _gpu_docs()
    assert [_name(doc) for doc in docs] == [
        "ServingRuntime/falaj-onnx-gpu",
        "InferenceService/fraud-gpu",
    ]
    for doc in docs:
        assert schema_store.validate(doc, strict=True) == [], _name(doc)
        for path, holder in _holders_of_containers(doc):
            assert _in_region(holder.get("nodeSelector")), f"{_name(doc)}{path}"
            for container in holder["containers"]:
                context = container.get("securityContext", {})
                assert context.get("runAsNonRoot") is True
                assert context.get("allowPrivilegeEscalation") is False
                assert context.get("capabilities", {}).get("drop") == ["ALL"]


def test_every_endpoint_validates_strictly_scales_to_zero_and_canaries(
    schema_store: SchemaStore, endpoints: dict[str, dict[str, Any]]
) -> None:
    assert sorted(endpoints) == ["fraud", "fraud-gpu"]
    for name, doc in endpoints.items():
        assert schema_store.validate(doc, strict=True) == [], name
        predictor = doc["spec"]["predictor"]
        assert predictor["minReplicas"] == 0, name
        assert 0 < predictor["canaryTrafficPercent"] < 100, name
        assert predictor["maxReplicas"] >= 1, name
        assert predictor["nodeSelector"][REGION_KEY] == REGION_SELECTOR[REGION_KEY], name
        assert predictor["model"]["storageUri"] == "pvc://falaj-registry/state", name
    # A misspelt field in the GPU endpoint fails as it does in the base ones.
    bad = _misspell(endpoints["fraud-gpu"], ("spec", "predictor", "minReplicas"), "minReplica")
    assert len(schema_store.validate(bad, strict=True)) == 1


def _gpus(container: Mapping[str, Any]) -> str | None:
    return container.get("resources", {}).get("limits", {}).get(GPU_RESOURCE)


def test_the_gpu_endpoint_asks_for_a_gpu_and_the_cpu_one_never_does(
    endpoints: dict[str, dict[str, Any]], runtimes: dict[str, dict[str, Any]]
) -> None:
    gpu, cpu = endpoints["fraud-gpu"]["spec"]["predictor"], endpoints["fraud"]["spec"]["predictor"]
    assert _gpus(gpu["model"]) == "1"
    assert gpu["model"]["runtime"] == "falaj-onnx-gpu"
    assert gpu["nodeSelector"] == {**REGION_SELECTOR, **GPU_POOL}
    assert GPU_TOLERATION in gpu["tolerations"]
    gpu_runtime = runtimes["falaj-onnx-gpu"]["spec"]
    (container,) = gpu_runtime["containers"]
    assert _gpus(container) == "1"
    assert "--device=cuda" in container["args"]
    assert gpu_runtime["nodeSelector"] == {**REGION_SELECTOR, **GPU_POOL}
    assert GPU_TOLERATION in gpu_runtime["tolerations"]
    # Never picked for an onnx model by format alone: only an endpoint naming it gets a GPU.
    assert [f["autoSelect"] for f in gpu_runtime["supportedModelFormats"]] == [False]

    assert cpu["model"]["runtime"] == "falaj-onnx"
    assert _gpus(cpu["model"]) is None and "tolerations" not in cpu
    (container,) = runtimes["falaj-onnx"]["spec"]["containers"]
    assert _gpus(container) is None
    assert "--device=cpu" in container["args"]


def test_each_endpoints_arguments_are_the_servers_flags(
    endpoints: dict[str, dict[str, Any]], runtimes: dict[str, dict[str, Any]]
) -> None:
    """The args a pod gets (its runtime's, then its own, as KServe appends them) parse."""
    for name, doc in endpoints.items():
        model = doc["spec"]["predictor"]["model"]
        (container,) = runtimes[model["runtime"]]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "inference.server"]
        # KServe fills the runtime's {{.Name}} with the InferenceService's name.
        argv = [arg.replace("{{.Name}}", name) for arg in container["args"]]
        args = parse_args([*argv, *model.get("args", [])])
        assert args.model == "fraud", name
        assert args.http_port == container["ports"][0]["containerPort"] == 8080
        assert args.device == ("cuda" if _gpus(container) else "cpu")
        assert (args.variant, args.online_features) == ("auto", "lazy")
