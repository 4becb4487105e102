"""The cluster overlays (local, smb, enterprise), rendered with kubectl kustomize.

Each overlay is checked for what it promises, and against the two other
readers of the same manifests: the Python reader ``falaj up`` uses
(``falaj.manifests.read_resources``, plain kustomizations only) and the
training launcher, which builds every run's RayJob from base/training-rayjob.yaml
and its settings (functions/training_launcher/rayjob.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from falaj.errors import ManifestError
from falaj.manifests import GPU_RESOURCE, Resource, build_topology, read_resources
from falaj.settings import Settings
from functions.training_launcher.ray_jobs import JobSpec
from functions.training_launcher.rayjob import (
    GPU_TOLERATION,
    ON_DEMAND_EXPRESSIONS,
    SPOT_TOLERATIONS,
    cluster_target,
    load_template,
    rayjob_body,
)
from tests.manifests.conftest import BASE, MANIFESTS, RENDERS
from tests.manifests.validation import pod_specs

Docs = list[dict[str, Any]]
GPU_COMPONENT = MANIFESTS / "components" / "gpu-inference"
REGION_KEY = "topology.kubernetes.io/region"
POOL_KEY = "falaj.dev/pool"
PART_OF = {"app.kubernetes.io/part-of": "falaj"}
MIN_SCALE = "autoscaling.knative.dev/min-scale"
#: The most an SMB pod may reserve, per container.
SMB_MAX_REQUESTS = {"cpu": 0.5, "memory": 1024**3}


def _named(docs: Docs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def _one(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    [doc] = _named(docs, kind, name)
    return doc


def _quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (cores, bytes): 250m, 2, 512Mi, 1Gi."""
    text = str(value)
    for suffix, factor in (("Ki", 1024), ("Mi", 1024**2), ("Gi", 1024**3), ("m", 0.001)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _containers(docs: Docs) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container with its requests: pod specs' containers, and KServe's model specs."""
    for doc in docs:
        for path, pod in pod_specs(doc):
            for container in pod.get("containers") or []:
                yield f"{doc['kind']}/{doc['metadata']['name']} {path}", container
            if "model" in pod:
                yield f"{doc['kind']}/{doc['metadata']['name']} {path}.model", pod["model"]


def _gpus(container: Mapping[str, Any]) -> Any:
    return (container.get("resources") or {}).get("limits", {}).get(GPU_RESOURCE)


def _required_terms(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    affinity = pod["affinity"]["nodeAffinity"]
    terms: list[dict[str, Any]] = affinity["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    return terms


def _plain(entries: Any) -> list[Any]:
    return json.loads(json.dumps([dict(entry) for entry in entries]))


# -- the renderers: kubectl kustomize, the Python reader, a system kubectl ------------------


def _as_kustomize_sets(resource: Resource, labels: Mapping[str, str]) -> dict[str, Any]:
    """An object as read by Python, with what the base's kustomization stamps on it."""
    doc = copy.deepcopy(dict(resource.doc))
    metadata = doc["metadata"]
    metadata["labels"] = {**metadata.get("labels", {}), **labels}
    if doc["kind"] != "Namespace":
        metadata["namespace"] = resource.namespace
    for subject in doc.get("subjects") or []:
        if subject.get("kind") == "ServiceAccount":
            subject.setdefault("namespace", resource.namespace)
    return doc


def _by_name(docs: Docs) -> dict[tuple[str, str, str], dict[str, Any]]:
    keyed = {(d["apiVersion"], d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(keyed) == len(docs), "two objects share a kind and name"
    return keyed


@pytest.mark.parametrize("render", ["base", "local"])
def test_the_python_reader_and_kubectl_read_the_same_objects(
    render: str, rendered: dict[str, Docs]
) -> None:
    """What ``falaj up`` reads is what a cluster gets, but for kustomize's namespace and label."""
    python = [_as_kustomize_sets(r, PART_OF) for r in read_resources(RENDERS[render])]

    assert _by_name(python) == _by_name(rendered[render])


@pytest.mark.parametrize("render", ["smb", "enterprise"])
def test_the_python_reader_refuses_a_patched_overlay_and_says_what_to_use(render: str) -> None:
    with pytest.raises(ManifestError, match="render_overlay"):
        read_resources(RENDERS[render])


@pytest.mark.parametrize("render", ["smb", "enterprise"])
def test_the_local_runtime_reads_the_same_topology_from_each_overlay(
    render: str, rendered: dict[str, Docs]
) -> None:
    """Patches change sizes and pools, never what is wired to what."""
    base = build_topology(Resource(origin="base", doc=d) for d in rendered["base"])
    overlay = build_topology(Resource(origin=render, doc=d) for d in rendered[render])

    assert overlay.triggers == base.triggers
    assert overlay.brokers == base.brokers
    assert overlay.sources == base.sources
    assert {n: s.command for n, s in overlay.services.items()} == {
        n: s.command for n, s in base.services.items()
    }
    assert set(overlay.inference_services) >= set(base.inference_services)
    assert {n: d.command for n, d in overlay.deployments.items()} == {
        n: d.command for n, d in base.deployments.items()
    }


def _system_kubectl() -> str | None:
    """A kubectl on PATH other than this environment's (whose kustomize may be older)."""
    found = shutil.which("kubectl")
    ours = Path(sys.executable).parent / "kubectl"
    if found is None or (ours.exists() and Path(found).resolve() == ours.resolve()):
        return None
    return found


@pytest.mark.skipif(_system_kubectl() is None, reason="no other kubectl on PATH")
@pytest.mark.parametrize("render", list(RENDERS))
def test_a_system_kubectl_renders_each_folder_the_same(
    render: str, rendered: dict[str, Docs]
) -> None:
    """`kubectl apply -k` with an older kubectl (kustomize v5.x) gets the same objects."""
    kubectl = _system_kubectl()
    assert kubectl is not None
    result = subprocess.run(
        [kubectl, "kustomize", str(RENDERS[render])], capture_output=True, text=True, check=True
    )

    assert [doc for doc in yaml.safe_load_all(result.stdout) if doc] == rendered[render]


def test_local_is_the_base_unchanged(rendered: dict[str, Docs]) -> None:
    assert rendered["local"] == rendered["base"]


def test_the_gpu_file_in_base_is_the_components(rendered: dict[str, Docs]) -> None:
    """`kubectl apply -f manifests/base/inference-service-gpu.yaml` applies the component's."""
    linked = BASE / "inference-service-gpu.yaml"
    assert linked.resolve() == (GPU_COMPONENT / "inference-service-gpu.yaml").resolve()
    gpu_docs = [doc for doc in yaml.safe_load_all(linked.read_text()) if doc]
    enterprise = _by_name(rendered["enterprise"])
    for doc in gpu_docs:
        assert enterprise[(doc["apiVersion"], doc["kind"], doc["metadata"]["name"])]


# -- smb: CPU only, small, scaled to zero -------------------------------------------------


def test_smb_has_no_gpu_anywhere(rendered: dict[str, Docs]) -> None:
    smb = rendered["smb"]

    assert GPU_RESOURCE not in json.dumps(smb)
    assert POOL_KEY not in json.dumps(smb)
    assert [doc["metadata"]["name"] for doc in _named(smb, "ServingRuntime")] == ["falaj-onnx"]
    for endpoint in _named(smb, "InferenceService"):
        assert endpoint["spec"]["predictor"]["model"]["runtime"] == "falaj-onnx"
    [job] = _named(smb, "RayJob")
    [group] = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu-workers"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    assert group["template"]["spec"]["tolerations"] == _plain(SPOT_TOLERATIONS)


def test_smb_scales_everything_to_zero_but_the_control_api(rendered: dict[str, Docs]) -> None:
    smb = rendered["smb"]
    functions = [d for d in _named(smb, "Service") if d["apiVersion"] == "serving.knative.dev/v1"]
    endpoints = _named(smb, "InferenceService")

    assert len(functions) == 4 and endpoints
    for function in functions:
        assert function["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] == "0"
    for endpoint in endpoints:
        assert endpoint["spec"]["predictor"]["minReplicas"] == 0
    # The one always-on pod: the dashboard's sessions live in it.
    assert [(d["metadata"]["name"], d["spec"]["replicas"]) for d in _named(smb, "Deployment")] == [
        ("control", 1)
    ]


def test_smb_asks_for_small_requests_never_more_than_the_base(
    rendered: dict[str, Docs],
) -> None:
    base = dict(_containers(rendered["base"]))
    checked = 0
    for where, container in _containers(rendered["smb"]):
        requests = container["resources"]["requests"]
        for resource, most in SMB_MAX_REQUESTS.items():
            assert _quantity(requests[resource]) <= most, where
            assert _quantity(requests[resource]) <= _quantity(
                base[where]["resources"]["requests"][resource]
            ), where
        checked += 1
    # 4 functions, the source, the runtime, the model, head, worker, the control API
    assert checked == 10


# -- enterprise: GPU pools, spot workers, stable replicas -------------------------------


def test_enterprise_serves_on_the_regions_gpu_pool(rendered: dict[str, Docs]) -> None:
    enterprise = rendered["enterprise"]
    runtime = _one(enterprise, "ServingRuntime", "falaj-onnx-gpu")["spec"]
    predictor = _one(enterprise, "InferenceService", "fraud-gpu")["spec"]["predictor"]

    assert predictor["model"]["runtime"] == "falaj-onnx-gpu"
    for where, pod, container in (
        ("runtime", runtime, runtime["containers"][0]),
        ("predictor", predictor, predictor["model"]),
    ):
        assert _gpus(container) == "1", where
        assert dict(GPU_TOLERATION) in pod["tolerations"], where
        assert pod["nodeSelector"] == {REGION_KEY: "me-central-1", POOL_KEY: "gpu"}, where
        [term] = _required_terms(pod)
        assert {"key": POOL_KEY, "operator": "In", "values": ["gpu"]} in term["matchExpressions"]
    # The component's objects land beside the base's, which kustomize put in the namespace.
    for kind, name in (("ServingRuntime", "falaj-onnx-gpu"), ("InferenceService", "fraud-gpu")):
        assert _one(enterprise, kind, name)["metadata"]["namespace"] == "falaj"


def test_enterprise_keeps_two_pods_of_every_endpoints_stable_version(
    rendered: dict[str, Docs],
) -> None:
    endpoints = _named(rendered["enterprise"], "InferenceService")

    assert sorted(e["metadata"]["name"] for e in endpoints) == ["fraud", "fraud-gpu"]
    for endpoint in endpoints:
        predictor = endpoint["spec"]["predictor"]
        assert predictor["minReplicas"] >= 2
        assert predictor["maxReplicas"] > predictor["minReplicas"]
        assert 0 < predictor["canaryTrafficPercent"] < 100


def test_enterprise_trains_on_gpu_workers_on_spot_nodes_with_the_head_on_demand(
    rendered: dict[str, Docs],
) -> None:
    [job] = _named(rendered["enterprise"], "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    workers, head = group["template"]["spec"], cluster["headGroupSpec"]["template"]["spec"]

    assert group["groupName"] == "gpu-workers"
    assert _gpus(workers["containers"][0]) == 1
    assert workers["nodeSelector"] == {REGION_KEY: "me-central-1", POOL_KEY: "gpu"}
    assert workers["tolerations"] == _plain([*SPOT_TOLERATIONS, GPU_TOLERATION])
    assert "tolerations" not in head and GPU_RESOURCE not in json.dumps(head)
    [term] = _required_terms(head)
    for expression in _plain(ON_DEMAND_EXPRESSIONS):
        assert expression in term["matchExpressions"]


# -- the training launcher: its runs look like the overlay's template ---------------------


def _launcher_settings(docs: Docs) -> Settings:
    """The launcher's settings as its pod gets them: its literal env, and the region."""
    [container] = _one(docs, "Service", "training-launcher")["spec"]["template"]["spec"][
        "containers"
    ]
    config = _one(docs, "ConfigMap", "falaj-config")["data"]
    env = {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}
    return Settings.from_env({"FALAJ_REGION": config["FALAJ_REGION"], **env})


def _placement(job: Mapping[str, Any]) -> dict[str, Any]:
    cluster = job["spec"]["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    workers, head = group["template"]["spec"], cluster["headGroupSpec"]["template"]["spec"]
    return {
        "group": group["groupName"],
        "replicas": (group["replicas"], group["minReplicas"], group["maxReplicas"]),
        "gpus": _gpus(workers["containers"][0]),
        "workers": (workers["nodeSelector"], workers.get("tolerations"), workers["affinity"]),
        "head": (head["nodeSelector"], head.get("tolerations"), head["affinity"]),
    }


@pytest.mark.parametrize("render", ["smb", "enterprise"])
def test_the_launchers_runs_are_placed_as_the_overlays_template(
    render: str, rendered: dict[str, Docs]
) -> None:
    """The overlay's launcher settings make runs like the overlay's (suspended) template."""
    docs = rendered[render]
    settings = _launcher_settings(docs)
    spec = JobSpec(
        job_id="train-fraud-overlay",
        entrypoint="python -m training.job --model fraud --reason drift --job-id x",
        runtime_env={},
        metadata={"model": "fraud"},
    )
    [template] = _named(docs, "RayJob")

    run = rayjob_body(spec, load_template(BASE), cluster_target(settings))

    assert _placement(run) == _placement(template)
    # The overlay's template would serve the launcher as well as the base's.
    assert _placement(rayjob_body(spec, template, cluster_target(settings))) == _placement(run)
