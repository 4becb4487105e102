"""Traffic splits as KServe InferenceServices: the rollout's cluster path.

Locally a split lives in the deployment store the router reads
(``falaj.deployments``); on a cluster it is the model's InferenceService,
which KServe turns into Knative revisions. KServe's canary model: the
predictor's spec is the newest revision, and ``canaryTrafficPercent`` is the
share it gets while the previously rolled-out revision keeps the rest. So:

- stable v1 alone: the predictor serves ``--version=1``, no canaryTrafficPercent;
- v2 as a 10% canary: the predictor serves ``--version=2`` with
  ``canaryTrafficPercent: 10`` (v1 is the revision rolled out before it);
- promote: ``--version=2``, canaryTrafficPercent dropped (100%);
- roll back: ``--version=1`` again, canaryTrafficPercent dropped.

The versions are also written as annotations (``falaj.dev/stable-version``,
``falaj.dev/canary-version``), so the split reads back without asking KServe
which revision is which. Every body is checked against KServe's CRD in strict
mode before it is sent, and sent with ``fieldValidation=Strict``. The
InferenceService must exist (``kubectl apply`` of the manifests): the rollout's
Role may get and update InferenceServices, not create them. Shadow traffic
has no KServe equivalent and is refused here with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from falaj.closeable import Closeable
from falaj.deployments import TrafficSplit
from falaj.errors import ConfigError, DeploymentError, RolloutRefused
from falaj.kubernetes_api import CustomResource, api_problem, crd_problems
from falaj.manifest_schemas import SchemaStore

INFERENCE_SERVICES = CustomResource(
    group="serving.kserve.io",
    version="v1beta1",
    plural="inferenceservices",
    service_account="rollout",
    project="KServe",
    installed_by="KServe",
)
STABLE_ANNOTATION = "falaj.dev/stable-version"
CANARY_ANNOTATION = "falaj.dev/canary-version"
UPDATED_ANNOTATION = "falaj.dev/updated"
VERSION_FLAG = "--version="
#: The metadata a replace carries: the object's identity, its labels and
#: annotations, and the resourceVersion it was read at.
CLIENT_METADATA = frozenset({"name", "namespace", "labels", "annotations", "resourceVersion"})


class InferenceServiceTraffic(Closeable):
    """The deployment store's ``get``/``set``, on a cluster's InferenceServices."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        schemas: SchemaStore | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.host = str(api_client.configuration.host)
        self._client = api_client
        self._api = CustomObjectsApi(api_client)
        self._schemas = schemas
        self._timeout_s = timeout_s

    def get(self, model: str) -> TrafficSplit | None:
        """The split the InferenceService ``model`` says; None before the rollout set one."""
        return split_of(self._read(model))

    def set(self, split: TrafficSplit) -> None:
        """Make the InferenceService serve ``split`` (read, change, check, replace)."""
        current = self._read(split.model)
        body = inference_service_body(current, split)
        problems = crd_problems(as_applied(body), self._schemas)
        if problems:
            raise ConfigError(
                f"the InferenceService {self.namespace}/{split.model} for {_describe(split)} "
                "does not fit KServe's CRD: " + "; ".join(problems) + " (nothing was sent); "
                "fix manifests/base/inference-service.yaml"
            )
        try:
            self._api.replace_namespaced_custom_object(
                INFERENCE_SERVICES.group,
                INFERENCE_SERVICES.version,
                self.namespace,
                INFERENCE_SERVICES.plural,
                split.model,
                body,
                field_validation="Strict",
                _request_timeout=self._timeout_s,
            )
        except ApiException as exc:
            raise DeploymentError(
                f"the Kubernetes API at {self.host} did not update InferenceService "
                f"{self.namespace}/{split.model} to {_describe(split)}: "
                + api_problem(exc, INFERENCE_SERVICES, "update", self.namespace, split.model)
            ) from exc
        except HTTPError as exc:
            raise DeploymentError(self._unreachable("update", split.model, exc)) from exc

    def _read(self, model: str) -> Mapping[str, Any]:
        try:
            found = self._api.get_namespaced_custom_object(
                INFERENCE_SERVICES.group,
                INFERENCE_SERVICES.version,
                self.namespace,
                INFERENCE_SERVICES.plural,
                model,
                _request_timeout=self._timeout_s,
            )
        except ApiException as exc:
            raise DeploymentError(
                f"cannot read InferenceService {self.namespace}/{model} from the Kubernetes API "
                f"at {self.host}: "
                + api_problem(exc, INFERENCE_SERVICES, "get", self.namespace, model)
            ) from exc
        except HTTPError as exc:
            raise DeploymentError(self._unreachable("read", model, exc)) from exc
        if not isinstance(found, Mapping):
            raise DeploymentError(
                f"expected InferenceService {self.namespace}/{model} as a JSON object from "
                f"{self.host}, got {type(found).__name__}"
            )
        return found

    def _unreachable(self, verb: str, model: str, exc: BaseException) -> str:
        return (
            f"cannot reach the Kubernetes API at {self.host} to {verb} InferenceService "
            f"{self.namespace}/{model}: {type(exc).__name__}; is the API server up, and the "
            "rollout function in the cluster?"
        )

    def close(self) -> None:
        self._client.close()


def inference_service_body(current: Mapping[str, Any], split: TrafficSplit) -> dict[str, Any]:
    """``current`` changed to serve ``split``, as the replace sends it (resourceVersion kept)."""
    if split.shadow_version is not None:
        raise RolloutRefused(
            f"{split.model}: shadow traffic (a copy of every request to version "
            f"{split.shadow_version}) has no KServe equivalent; run the shadow on the local "
            "router, or mirror with the mesh (an Istio VirtualService mirror)"
        )
    body = copy.deepcopy(dict(current))
    body.pop("status", None)
    # What a client sets; the server's own fields (uid, managedFields, ...) stay
    # with it, but resourceVersion goes back so a concurrent change is a 409.
    metadata = {k: v for k, v in (body.get("metadata") or {}).items() if k in CLIENT_METADATA}
    body["metadata"] = metadata
    annotations = dict(metadata.get("annotations") or {})
    annotations[STABLE_ANNOTATION] = str(split.stable_version)
    if split.canary_version is None:
        annotations.pop(CANARY_ANNOTATION, None)
    else:
        annotations[CANARY_ANNOTATION] = str(split.canary_version)
    if split.updated:
        annotations[UPDATED_ANNOTATION] = split.updated
    metadata["annotations"] = annotations
    predictor = body.setdefault("spec", {}).setdefault("predictor", {})
    model = predictor.setdefault("model", {})
    served = split.canary_version if split.canary_version is not None else split.stable_version
    model["args"] = [
        *(arg for arg in model.get("args") or [] if not str(arg).startswith(VERSION_FLAG)),
        f"{VERSION_FLAG}{served}",
    ]
    if split.canary_version is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = split.canary_percent
    return body


def as_applied(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as a manifest would carry it (without resourceVersion), for the CRD check."""
    metadata = {k: v for k, v in body["metadata"].items() if k != "resourceVersion"}
    return {**body, "metadata": metadata}


def split_of(service: Mapping[str, Any]) -> TrafficSplit | None:
    """The split an InferenceService serves, from its annotations and canaryTrafficPercent."""
    metadata = service.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    stable = annotations.get(STABLE_ANNOTATION)
    if stable is None:
        return None  # applied from the manifests, never rolled out by Falaj yet
    canary = annotations.get(CANARY_ANNOTATION)
    predictor = (service.get("spec") or {}).get("predictor") or {}
    try:
        return TrafficSplit(
            model=str(metadata.get("name")),
            stable_version=int(stable),
            canary_version=None if canary is None else int(canary),
            canary_percent=int(predictor.get("canaryTrafficPercent", 0)) if canary else 0,
            updated=str(annotations.get(UPDATED_ANNOTATION, "")),
        )
    except (TypeError, ValueError) as exc:
        raise DeploymentError(
            f"InferenceService {metadata.get('name')}: expected whole version numbers in "
            f"{STABLE_ANNOTATION}/{CANARY_ANNOTATION}, got {stable!r}/{canary!r} ({exc})"
        ) from None


def _describe(split: TrafficSplit) -> str:
    if split.canary_version is None:
        return f"version {split.stable_version} alone"
    return (
        f"version {split.stable_version} with version {split.canary_version} at "
        f"{split.canary_percent}%"
    )
