"""Every pod of every render is pinned to the in-region node pool (data residency).

A pod spec is found wherever it sits in an object (``validation.pod_specs``),
not by a list of known paths, so a pod template added later is checked too.
Pinned means: a required node affinity whose every term admits only allowed
regions (``falaj.settings.UAE_REGIONS``), and a nodeSelector, where there is
one, naming the namespace's data region, which the affinity admits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from falaj.settings import UAE_REGIONS
from tests.manifests.conftest import RENDERS
from tests.manifests.validation import POD_KINDS, group_of, name_of, pod_specs

REGION_KEY = "topology.kubernetes.io/region"
DATA_REGION_LABEL = "falaj.dev/data-region"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
WORKERS = "spec.rayClusterSpec.workerGroupSpecs[0].template.spec"
#: The pod specs of the base: four functions, the storage source's adapter, the
#: runtime, the endpoint's predictor, the RayJob's head and worker group, and the
#: control API's Deployment.
BASE_PODS = 10
#: The enterprise overlay adds the GPU runtime and the GPU endpoint.
PODS = {"base": BASE_PODS, "local": BASE_PODS, "smb": BASE_PODS, "enterprise": BASE_PODS + 2}


def admitted_regions(pod: Mapping[str, Any]) -> set[str] | None:
    """The regions a pod's required node affinity admits; None when it admits any.

    Terms are ORed, so every term must pin the region; expressions within a
    term are ANDed, so several ``In`` on the region intersect.
    """
    affinity = pod.get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(REQUIRED) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return None
    admitted: set[str] = set()
    for term in terms:
        pins = [
            set(expression.get("values") or [])
            for expression in term.get("matchExpressions") or []
            if expression.get("key") == REGION_KEY and expression.get("operator") == "In"
        ]
        if not pins:
            return None
        admitted |= set.intersection(*pins)
    return admitted


def pin_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every pod spec of a render that could land outside the allowed regions, and why."""
    namespaces = [doc for doc in docs if doc["kind"] == "Namespace"]
    data_region = namespaces[0]["metadata"]["labels"][DATA_REGION_LABEL] if namespaces else None
    problems = []
    for doc in docs:
        for path, pod in pod_specs(doc):
            where = f"{name_of(doc)} {path}"
            admitted = admitted_regions(pod)
            selected = (pod.get("nodeSelector") or {}).get(REGION_KEY)
            if admitted is None:
                problems.append(f"{where}: no required node affinity on {REGION_KEY} In [...]")
            elif not admitted or not admitted <= set(UAE_REGIONS):
                problems.append(
                    f"{where}: admits {sorted(admitted)}; expected allowed regions only, "
                    f"among {', '.join(UAE_REGIONS)}"
                )
            if selected is not None and (
                (admitted is not None and selected not in admitted)
                or (data_region is not None and selected != data_region)
            ):
                problems.append(
                    f"{where}: nodeSelector {REGION_KEY}={selected}, expected the namespace's "
                    f"data region {data_region}, which the affinity admits"
                )
    return problems


@pytest.mark.parametrize("render", RENDERS)
def test_every_pod_spec_of_the_render_is_pinned_to_the_allowed_regions(
    render: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[render]

    assert pin_problems(docs) == []
    pods = [(doc, path) for doc in docs for path, _ in pod_specs(doc)]
    assert len(pods) == PODS[render]
    # Every object whose controller makes pods from it was found to hold a pod spec.
    makers = {name_of(doc) for doc in docs if (group_of(doc), doc["kind"]) in POD_KINDS}
    assert makers == {name_of(doc) for doc, _ in pods}


@pytest.mark.parametrize(
    ("how", "where"),
    [
        ("no affinity", f"RayJob/fraud-training {WORKERS}"),
        ("region outside", "InferenceService/fraud-gpu spec.predictor"),
        ("an unpinned term", "Service/ingest spec.template.spec"),
        ("NotIn", "ServingRuntime/falaj-onnx-gpu spec"),
        ("selector elsewhere", "ContainerSource/storage-source spec.template.spec"),
    ],
)
def test_a_pod_that_could_leave_the_region_is_named(
    rendered: dict[str, list[dict[str, Any]]], how: str, where: str
) -> None:
    docs = copy.deepcopy(rendered["enterprise"])
    name, path = where.split(" ")
    [pod] = [p for doc in docs for at, p in pod_specs(doc) if (name_of(doc), at) == (name, path)]
    [term] = pod["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    pin = next(e for e in term["matchExpressions"] if e["key"] == REGION_KEY)
    match how:
        case "no affinity":
            del pod["affinity"]
        case "region outside":
            pin["values"] = [*pin["values"], "eu-west-1"]
        case "an unpinned term":
            linux = {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
            pod["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"].append(
                {"matchExpressions": [linux]}
            )
        case "NotIn":
            pin["operator"] = "NotIn"
        case "selector elsewhere":
            pod["nodeSelector"][REGION_KEY] = "eu-west-1"

    problems = pin_problems(docs)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{where}: ")


def test_pod_specs_are_found_wherever_they_sit() -> None:
    containers = [{"name": "c", "image": "i"}]
    cron_job = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": containers}}}}},
    }
    endpoint = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "m"},
        "spec": {"predictor": {"model": {}}, "transformer": {"containers": containers}},
    }

    assert [path for path, _ in pod_specs(cron_job)] == ["spec.jobTemplate.spec.template.spec"]
    assert [path for path, _ in pod_specs(endpoint)] == ["spec.predictor", "spec.transformer"]
    assert pin_problems([cron_job, endpoint]) == [
        f"CronJob/nightly spec.jobTemplate.spec.template.spec: no required node affinity on "
        f"{REGION_KEY} In [...]",
        f"InferenceService/m spec.predictor: no required node affinity on {REGION_KEY} In [...]",
        f"InferenceService/m spec.transformer: no required node affinity on {REGION_KEY} In [...]",
    ]
