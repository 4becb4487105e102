"""Training runs as KubeRay RayJobs: the training launcher's cluster path.

On a cluster the launcher talks to no Ray head: it creates one RayJob per
training run through the Kubernetes API (the body is ``rayjob.rayjob_body``),
and the KubeRay operator starts a Ray cluster for it, runs the entrypoint and
deletes the cluster when the job ends. ``KubeRayJobs`` has the interface of
``ray_jobs.RayJobs``, so the launcher uses either.

Before anything is sent, the pool's region is checked against the residency
policy and the body against KubeRay's CRD in strict mode: a RayJob outside the
allowed regions, or one the cluster would refuse, never reaches the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from falaj.errors import ConfigError
from falaj.kubernetes_api import CustomResource, api_problem, crd_problems, names_missing_object
from falaj.manifest_schemas import SchemaStore
from falaj.residency import Boundary, ResidencyPolicy
from functions.training_launcher.errors import JobSubmissionFailed
from functions.training_launcher.ray_jobs import LOST, JobSpec, JobState, short_error
from functions.training_launcher.rayjob import (
    GROUP,
    PLURAL,
    TEMPLATE_FILE,
    VERSION,
    ClusterTarget,
    job_state,
    rayjob_body,
)

#: RayJobs, for the API's error messages.
RAYJOBS = CustomResource(
    group=GROUP,
    version=VERSION,
    plural=PLURAL,
    service_account="training-launcher",
    project="KubeRay",
    installed_by="the KubeRay operator",
)


class KubeRayJobs:
    """Training runs as RayJobs; the same boundary as ``RayJobs``, for a cluster.

    The Kubernetes API's errors become ``JobSubmissionFailed``; their messages
    carry the API server's own words (never a request header) and the fix.
    """

    def __init__(
        self,
        api_client: ApiClient,
        *,
        target: ClusterTarget,
        template: Mapping[str, Any],
        policy: ResidencyPolicy,
        schemas: SchemaStore | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.target = target
        self.template = template
        self.policy = policy
        self.host = str(api_client.configuration.host)
        self._client = api_client
        self._api = CustomObjectsApi(api_client)
        self._schemas = schemas
        self._timeout_s = timeout_s

    def body(self, spec: JobSpec) -> dict[str, Any]:
        """The RayJob ``submit`` would send, checked against KubeRay's CRD (strict)."""
        body = rayjob_body(spec, self.template, self.target)
        problems = crd_problems(body, self._schemas)
        if problems:
            raise ConfigError(
                f"the RayJob for training job {spec.job_id} does not fit KubeRay's RayJob CRD: "
                + "; ".join(problems)
                + f"; fix manifests/base/{TEMPLATE_FILE} (nothing was sent)"
            )
        return body

    def submit(self, spec: JobSpec) -> str:
        namespace = self.target.namespace
        # The builder pins every pod of the RayJob to the pool's region.
        self.policy.check_region(
            self.target.pool.region,
            resource=f"RayJob {namespace}/{spec.job_id}",
            boundary=Boundary.JOB_LAUNCH,
        )
        body = self.body(spec)
        try:
            self._api.create_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                body,
                # What kubectl --validate=strict asks: unknown fields are refused, not dropped.
                field_validation="Strict",
                _request_timeout=self._timeout_s,
            )
        except ApiException as exc:
            raise JobSubmissionFailed(
                f"the Kubernetes API at {self.host} did not create RayJob {namespace}/"
                f"{spec.job_id}: {_problem(exc, 'create', namespace, spec.job_id)}"
            ) from exc
        except HTTPError as exc:
            raise JobSubmissionFailed(
                f"cannot reach the Kubernetes API at {self.host} to create RayJob {namespace}/"
                f"{spec.job_id}: {short_error(exc)}; is the API server up, and the launcher in the "
                "cluster?"
            ) from exc
        return spec.job_id

    def state(self, job_id: str) -> JobState:
        """The RayJob's status (``job_state``); LOST when the RayJob is gone."""
        namespace = self.target.namespace
        try:
            rayjob = self._api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, job_id, _request_timeout=self._timeout_s
            )
        except ApiException as exc:
            if exc.status == 404 and names_missing_object(exc, job_id):
                return JobState(
                    status=LOST, message=f"RayJob {namespace}/{job_id} no longer exists (deleted)"
                )
            raise JobSubmissionFailed(
                f"cannot read RayJob {namespace}/{job_id} from the Kubernetes API at {self.host}: "
                f"{_problem(exc, 'get', namespace, job_id)}"
            ) from exc
        except HTTPError as exc:
            raise JobSubmissionFailed(
                f"cannot reach the Kubernetes API at {self.host} to read RayJob {namespace}/"
                f"{job_id}: {short_error(exc)}; is the API server up, and the launcher in the "
                "cluster?"
            ) from exc
        if not isinstance(rayjob, Mapping):
            raise JobSubmissionFailed(
                f"expected RayJob {namespace}/{job_id} as a JSON object from {self.host}, "
                f"got {type(rayjob).__name__}"
            )
        return job_state(rayjob)

    def close(self) -> None:
        """Close the client's connections; the launcher calls it when it stops."""
        self._client.close()


def _problem(exc: ApiException, verb: str, namespace: str, name: str) -> str:
    conflict = (
        f"a RayJob named {name} already exists; a job id names one run, submit under a new one"
    )
    return api_problem(exc, RAYJOBS, verb, namespace, name, conflict=conflict)
