"""The Kubernetes API, as the platform's cluster paths use it: one client, one error reading.

The training launcher (RayJobs) and the rollout (InferenceServices) each have a
local implementation (a Ray head's Jobs API; the deployment store the router
reads) and a cluster one that goes through here: a client with the pod's
service account, and the API server's refusals turned into messages that carry
its own words (never a request header) and the fix.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.config import load_incluster_config
from kubernetes.config.config_exception import ConfigException

from falaj.errors import ConfigError
from falaj.logs import get_logger
from falaj.manifest_schemas import SchemaStore, default_store, validate_manifest


def in_cluster_api_client(service_account: str) -> ApiClient:
    """A Kubernetes client with the pod's service account (``service_account``'s token)."""
    configuration = Configuration()
    try:
        load_incluster_config(client_configuration=configuration)
    except ConfigException as exc:
        raise ConfigError(
            f"the cluster path runs in a pod with a service account token mounted (the "
            f"{service_account} ServiceAccount, manifests/base/rbac.yaml); here: {exc}"
        ) from None
    return ApiClient(configuration)


@dataclass(frozen=True)
class CustomResource:
    """Which custom resources a cluster path works on, and who may: for the error's fix."""

    group: str
    version: str
    plural: str
    #: The ServiceAccount whose Role must allow the verbs.
    service_account: str
    #: The project whose CRD it is (``KubeRay``), and what installs it.
    project: str
    installed_by: str


def crd_problems(body: Mapping[str, Any], store: SchemaStore | None = None) -> list[str]:
    """What the CRD (strict) finds wrong with ``body`` before it is sent.

    The official schemas live beside the repository (``shared/schemas``), not in
    the images: in a pod there are none to read, and the API server's own
    strict validation (every write sends ``fieldValidation=Strict``) is the
    check; that is logged, once per process. The tests validate every body.
    """
    store = store or default_store()
    if not store.schemas_dir.is_dir():
        _log_schemas_absent(str(store.schemas_dir))
        return []
    return validate_manifest(body, strict=True, store=store)


@functools.cache  # once per process and folder, not per write
def _log_schemas_absent(schemas_dir: str) -> None:
    get_logger(component="kubernetes").warning(
        "crd.schemas_absent",
        schemas_dir=schemas_dir,
        checked_by="the API server (fieldValidation=Strict)",
    )


def server_status(exc: ApiException) -> Mapping[str, Any]:
    """The API server's Status object, when the answer was one."""
    try:
        document = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return document if isinstance(document, Mapping) else {}


def names_missing_object(exc: ApiException, name: str) -> bool:
    """A NotFound Status naming ``name``; a 404 without one means the API serves no such kind."""
    status = server_status(exc)
    details = status.get("details")
    return (
        status.get("reason") == "NotFound"
        and isinstance(details, Mapping)
        and details.get("name") == name
    )


def api_problem(
    exc: ApiException,
    resource: CustomResource,
    verb: str,
    namespace: str,
    name: str,
    *,
    conflict: str | None = None,
) -> str:
    """What the API server said, and what to do about it (``conflict``: the 409's fix)."""
    said = str(server_status(exc).get("message") or exc.reason or "no message")[:300]
    kind = f"{resource.plural}.{resource.group}"
    code = exc.status
    if code == 401:
        fix = (
            f"the API server did not accept the {resource.service_account} credentials; is its "
            "service account token mounted?"
        )
    elif code == 403:
        fix = (
            f"the {resource.service_account} ServiceAccount may not {verb} {kind} in namespace "
            f"{namespace}; apply its Role and RoleBinding (manifests/base/rbac.yaml)"
        )
    elif code == 404:
        fix = (
            f"the API server serves no {kind}/{resource.version} named {name} in namespace "
            f"{namespace}; install {resource.installed_by} (its CRD), create the namespace and "
            "apply the manifests"
        )
    elif code == 409:
        fix = conflict or f"{name} changed since it was read; read it again and retry"
    elif code in (400, 422):
        fix = (
            f"the API server refused the body, which fits {resource.project}'s CRD; is the "
            f"cluster's {resource.project} older? Upgrade it or align the manifests with it"
        )
    else:
        fix = "try again when the API server is healthy"
    return f"HTTP {code} ({said}); {fix}"
