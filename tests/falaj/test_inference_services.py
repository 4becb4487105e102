"""The rollout's cluster path: traffic splits written to KServe InferenceServices.

Every body is checked against KServe's CRD in strict mode here, as the API
server (``fieldValidation=Strict``) would; the real ``kubernetes`` client talks
to a fake API server in this process (``tests/support/fake_kubernetes.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration

from falaj.context import Context
from falaj.deployments import TrafficSplit
from falaj.errors import DeploymentError, RolloutRefused
from falaj.inference_services import (
    CANARY_ANNOTATION,
    STABLE_ANNOTATION,
    InferenceServiceTraffic,
    as_applied,
    inference_service_body,
    split_of,
)
from falaj.manifest_schemas import SchemaStore, validate_manifest
from falaj.registry import ModelRegistry
from falaj.rollouts import RolloutAction, Rollouts, RolloutStep
from falaj.settings import Settings
from tests.support.fake_kubernetes import Answer, FakeKubernetes, serving
from tests.support.models import WEIGHTS_V1, WEIGHTS_V2, register

NAMESPACE = "falaj"
COLLECTION = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices"
TOKEN = "sa-token-3c1e-never-in-a-message"


def applied() -> dict[str, Any]:
    """The fraud InferenceService as `kubectl apply` of manifests/base leaves it."""
    path = Settings().manifests_dir / "inference-service.yaml"
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    server = {"resourceVersion": "7", "uid": "0c1d", "generation": 3, "managedFields": []}
    return {**doc, "metadata": {**doc["metadata"], "namespace": NAMESPACE, **server}}


STABLE = TrafficSplit(model="fraud", stable_version=1)
CANARY = TrafficSplit(model="fraud", stable_version=1, canary_version=2, canary_percent=10)
PROMOTED = TrafficSplit(model="fraud", stable_version=2)


@pytest.mark.parametrize("split", [STABLE, CANARY, PROMOTED], ids=["stable", "canary", "promoted"])
def test_every_split_is_a_strictly_valid_inference_service_that_reads_back(
    split: TrafficSplit, schema_store: SchemaStore
) -> None:
    body = inference_service_body(applied(), split)
    assert validate_manifest(as_applied(body), strict=True, store=schema_store) == []
    predictor = body["spec"]["predictor"]
    served = split.canary_version or split.stable_version
    assert predictor["model"]["args"] == [f"--version={served}"]
    # KServe's canary: the newest spec gets canaryTrafficPercent, the revision
    # rolled out before it the rest; without a canary, the spec gets it all.
    assert predictor.get("canaryTrafficPercent") == (split.canary_percent or None)
    assert body["metadata"]["resourceVersion"] == "7"  # optimistic concurrency
    assert split_of(body) == split


def test_a_typo_in_the_inference_service_fails_strict_validation(
    schema_store: SchemaStore,
) -> None:
    body = as_applied(inference_service_body(applied(), CANARY))
    body["spec"]["predictor"]["canaryTraficPercent"] = 10
    problems = validate_manifest(body, strict=True, store=schema_store)
    assert any("canaryTraficPercent" in p for p in problems), problems


def test_an_inference_service_falaj_never_rolled_out_has_no_split() -> None:
    assert split_of(applied()) is None
    broken = copy.deepcopy(applied())
    broken["metadata"]["annotations"][STABLE_ANNOTATION] = "one"
    with pytest.raises(DeploymentError, match="expected whole version numbers"):
        split_of(broken)


def test_shadow_traffic_is_refused_on_a_cluster_with_the_reason() -> None:
    shadowed = TrafficSplit(model="fraud", stable_version=1, shadow_version=2)
    with pytest.raises(RolloutRefused, match="no KServe equivalent"):
        inference_service_body(applied(), shadowed)


@pytest.fixture
def cluster(schema_store: SchemaStore) -> Iterator[tuple[FakeKubernetes, InferenceServiceTraffic]]:
    fake = FakeKubernetes(collection=COLLECTION, objects={"fraud": applied()})
    with serving(fake) as (_, host):
        configuration = Configuration(host=host, api_key={"authorization": f"Bearer {TOKEN}"})
        traffic = InferenceServiceTraffic(
            ApiClient(configuration), namespace=NAMESPACE, schemas=schema_store, timeout_s=5.0
        )
        try:
            yield fake, traffic
        finally:
            traffic.close()


def test_canary_promote_and_rollback_through_the_kubernetes_api(
    ctx: Context, cluster: tuple[FakeKubernetes, InferenceServiceTraffic]
) -> None:
    fake, traffic = cluster
    register(ctx, WEIGHTS_V1)
    register(ctx, WEIGHTS_V2)
    rollouts = Rollouts(ctx, traffic, ModelRegistry(ctx))

    rollouts.apply(RolloutStep(model="fraud", action=RolloutAction.DEPLOY, version=1), actor="t")
    rollouts.apply(RolloutStep(model="fraud", action=RolloutAction.DEPLOY, version=2), actor="t")
    assert traffic.get("fraud") == TrafficSplit(
        model="fraud",
        stable_version=1,
        canary_version=2,
        canary_percent=ctx.settings.canary_percent,
        updated=traffic.get("fraud").updated,  # type: ignore[union-attr]
    )
    stored = fake.objects["fraud"]
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == ctx.settings.canary_percent
    assert stored["metadata"]["annotations"][CANARY_ANNOTATION] == "2"

    rollouts.apply(RolloutStep(model="fraud", action=RolloutAction.PROMOTE), actor="t")
    promoted = fake.objects["fraud"]["spec"]["predictor"]
    assert "canaryTrafficPercent" not in promoted and promoted["model"]["args"] == ["--version=2"]

    third = register(ctx, WEIGHTS_V1)
    rollouts.apply(
        RolloutStep(model="fraud", action=RolloutAction.DEPLOY, version=third), actor="t"
    )
    assert fake.objects["fraud"]["spec"]["predictor"]["model"]["args"] == [f"--version={third}"]
    rollouts.apply(RolloutStep(model="fraud", action=RolloutAction.ROLLBACK), actor="t")
    back = traffic.get("fraud")
    assert back is not None and (back.stable_version, back.canary_version) == (2, None)
    # Every write was a replace of the object read just before (no create: the
    # rollout's Role may get and update InferenceServices only), strictly validated.
    writes = [s for s in fake.seen if s.method != "GET"]
    assert {s.method for s in writes} == {"PUT"}
    assert all("fieldValidation=Strict" in s.query for s in writes)
    steps = ("model.deployed", "model.canary", "model.promoted", "model.rolled_back")
    audited = [e["action"] for e in ctx.audit.entries() if e["action"] in steps]
    assert audited == [
        "model.deployed",
        "model.canary",
        "model.promoted",
        "model.canary",
        "model.rolled_back",
    ]


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (403, "the rollout ServiceAccount may not get inferenceservices.serving.kserve.io"),
        (404, "install KServe"),
        (500, "try again when the API server is healthy"),
    ],
)
def test_api_refusals_say_what_to_do_and_never_the_token(
    cluster: tuple[FakeKubernetes, InferenceServiceTraffic], code: int, fix: str
) -> None:
    fake, traffic = cluster
    fake.answer = Answer(code, {"kind": "Status", "message": "refused here", "code": code}, True)
    with pytest.raises(DeploymentError) as caught:
        traffic.set(CANARY)
    message = str(caught.value)
    assert fix in message and "refused here" in message
    assert TOKEN not in message


def test_without_the_crd_schemas_a_pod_leaves_the_check_to_the_api_server(
    tmp_path: Path, schema_store: SchemaStore
) -> None:
    """The images carry no shared/schemas: the API server's strict validation checks instead."""
    shipped_none = SchemaStore(schemas_dir=tmp_path / "not-in-the-image")
    fake = FakeKubernetes(collection=COLLECTION, objects={"fraud": applied()})
    with serving(fake) as (_, host):
        traffic = InferenceServiceTraffic(
            ApiClient(Configuration(host=host)), namespace=NAMESPACE, schemas=shipped_none
        )
        try:
            traffic.set(CANARY)
        finally:
            traffic.close()
    (put,) = [s for s in fake.seen if s.method == "PUT"]
    assert "fieldValidation=Strict" in put.query
    # What was sent is still what the CRD accepts (checked here, where the schemas are).
    assert validate_manifest(as_applied(put.body), strict=True, store=schema_store) == []
