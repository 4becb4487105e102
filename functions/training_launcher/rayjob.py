"""The RayJob of one training run: a pure function of the run and the cluster target.

On a cluster each training run is a KubeRay RayJob (``kuberay.KubeRayJobs``
creates it). It is a copy of ``manifests/base/training-rayjob.yaml`` (applied
suspended, so deploying it trains nothing) with the run's choices filled in:

- metadata: the job id is the name; model, reason and urgency are labels, and
  every entry of the job's metadata is a ``falaj.dev/...`` annotation;
- the entrypoint, run by the training image's interpreter;
- the job's ``FALAJ_*`` settings as the Ray containers' env. No secret is among
  them: the token and the Feast stores' URLs are files mounted from Kubernetes
  Secrets (``falaj-token``, and ``ClusterTarget.secrets_secret``);
- placement, from the ``WorkerPool``: every pod pinned to the pool's region,
  the workers to its node pool, with GPUs and spot tolerations as the pool
  says, the head kept off spot nodes;
- lifecycle, from the ``ClusterTarget``: ``shutdownAfterJobFinishes``,
  ``ttlSecondsAfterFinished``, ``activeDeadlineSeconds``, ``backoffLimit``.

``job_state`` reads a RayJob's status back in Ray's job statuses.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args

import yaml

from falaj.errors import ConfigError
from falaj.manifests import GPU_RESOURCE
from falaj.settings import ENV_PREFIX, SECRET_SETTINGS, Settings
from functions.training_launcher.ray_jobs import JobSpec, JobState

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayjobs"
KIND = "RayJob"
TEMPLATE_FILE = "training-rayjob.yaml"
DEFAULT_NAMESPACE = "falaj"

REGION_LABEL = "topology.kubernetes.io/region"
POOL_LABEL = "falaj.dev/pool"
LABEL_PREFIX = "falaj.dev/"
#: Job metadata that is also a label, so ``kubectl get rayjobs -l falaj.dev/model=fraud`` works.
LABELLED_METADATA = ("model", "reason", "urgent")

#: Where the Secret of the job's secret settings is mounted, and the key that
#: holds them (FALAJ_<NAME>=value lines, as ``write_secrets_file`` writes them).
SECRETS_MOUNT = "/var/run/secrets/falaj-training"
SECRETS_KEY = "secrets"
SECRETS_VOLUME = "falaj-training-secrets"

#: KubeRay's Ray container is the first of each pod (its RayContainerIndex).
RAY_CONTAINER = 0
#: KubeRay names the RayCluster after the RayJob plus a suffix, and refuses a
#: RayJob name longer than this or not a DNS-1035 label (utils.ValidateRayJobMetadata).
MAX_NAME_LENGTH = 47
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_MAX_LABEL_VALUE = 63

# Spot nodes are tainted so that only pods that accept being evicted land on
# them. The UAE regions Falaj runs in are AWS's, Azure's and Oracle's (no
# Google Cloud region, so no cloud.google.com/gke-spot):
# - AKS taints every spot node pool with scalesetpriority=spot, and the taint
#   cannot be removed;
# - EKS and OKE do not taint spot or preemptible nodes; Falaj's runbook has
#   operators taint those pools falaj.dev/spot=true:NoSchedule.
SPOT_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    MappingProxyType(
        {
            "key": "kubernetes.azure.com/scalesetpriority",
            "operator": "Equal",
            "value": "spot",
            "effect": "NoSchedule",
        }
    ),
    MappingProxyType({"key": "falaj.dev/spot", "operator": "Exists", "effect": "NoSchedule"}),
)
#: The taint GPU node pools carry (EKS's GPU AMIs, the NVIDIA GPU operator's
#: guidance), so that pods which need no GPU stay off them.
GPU_TOLERATION: Mapping[str, str] = MappingProxyType(
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
)
# The head runs the driver and Ray's control plane; losing it loses the whole
# job, so it never runs on spot capacity. Untainted spot nodes (EKS) are
# recognised by the labels their provisioners set; a node without the label
# satisfies NotIn, so on-demand nodes qualify everywhere.
ON_DEMAND_EXPRESSIONS: tuple[Mapping[str, Any], ...] = (
    MappingProxyType(
        {"key": "kubernetes.azure.com/scalesetpriority", "operator": "NotIn", "values": ("spot",)}
    ),
    MappingProxyType(
        {"key": "karpenter.sh/capacity-type", "operator": "NotIn", "values": ("spot",)}
    ),
    MappingProxyType(
        {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ("SPOT",)}
    ),
)


def _settings_env(names: frozenset[str]) -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in names)


def _path_settings() -> frozenset[str]:
    fields = Settings.model_fields.items()
    return frozenset(
        name
        for name, info in fields
        if info.annotation is Path or Path in get_args(info.annotation)
    )


#: Variables of the job's env that are not carried to the cluster: paths on the
#: launcher's own file system (its home, its token file, ...), which mean
#: nothing in the training image, and secret settings (which ``job_env`` already
#: leaves out; a body that reaches the API server is seen by anyone who may
#: read RayJobs).
NOT_CARRIED = (
    _settings_env(_path_settings()) | _settings_env(SECRET_SETTINGS) | frozenset({"PYTHONPATH"})
)
WORKERS_ENV = f"{ENV_PREFIX}TRAINING_WORKERS"
USE_GPU_ENV = f"{ENV_PREFIX}TRAINING_USE_GPU"
TOKEN_FILE_ENV = f"{ENV_PREFIX}TOKEN_FILE"
SECRETS_FILE_ENV = f"{ENV_PREFIX}SECRETS_FILE"


@dataclass(frozen=True, kw_only=True)
class WorkerPool:
    """The cluster's nodes a training run's Ray workers go to.

    ``gpus_per_worker`` 0 is a CPU pool. ``node_pool`` is the value of the
    ``falaj.dev/pool`` label the pool's nodes carry; None lets the workers run
    on any node of the region. ``spot`` lets them run on spot nodes: Ray Train
    restarts a worker group that lost a node from the run's last checkpoint,
    which lies on the registry volume (``training.train``).
    """

    region: str
    workers: int = 2
    gpus_per_worker: int = 0
    node_pool: str | None = None
    spot: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.region:
            problems.append("region: expected the region of the pool's nodes, e.g. me-central-1")
        if self.workers < 1:
            problems.append(f"workers: expected 1 or more, got {self.workers}")
        if self.gpus_per_worker < 0:
            problems.append(
                f"gpus_per_worker: expected 0 (a CPU pool) or more, got {self.gpus_per_worker}"
            )
        if self.node_pool is not None and not _is_label_value(self.node_pool):
            problems.append(
                f"node_pool: expected a label value (letters, digits, '-', '_', '.'; at most "
                f"{_MAX_LABEL_VALUE}), got {self.node_pool!r}"
            )
        if problems:
            raise ConfigError("invalid worker pool: " + "; ".join(problems))

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass(frozen=True, kw_only=True)
class ClusterTarget:
    """Where on the cluster training runs go, and how long their RayJobs live."""

    pool: WorkerPool
    namespace: str = DEFAULT_NAMESPACE
    #: How long the Ray cluster stays after the job ended, for its logs.
    ttl_seconds_after_finished: int = 600
    #: The longest a run may take, retries included, before KubeRay stops it.
    active_deadline_seconds: int = 3600
    #: Retries on a new Ray cluster after the job failed (a head or many workers lost).
    backoff_limit: int = 2
    #: The Secret holding the job's secret settings under the key ``secrets``.
    secrets_secret: str = "falaj-training-secrets"

    def __post_init__(self) -> None:
        problems = []
        if not _DNS_1123.fullmatch(self.namespace):
            problems.append(f"namespace: expected a DNS-1123 label, got {self.namespace!r}")
        if self.ttl_seconds_after_finished < 0:
            problems.append(
                f"ttl_seconds_after_finished: expected 0 or more, got "
                f"{self.ttl_seconds_after_finished}"
            )
        if self.active_deadline_seconds < 1:
            problems.append(
                f"active_deadline_seconds: expected 1 or more, got {self.active_deadline_seconds}"
            )
        if self.backoff_limit < 0:
            problems.append(f"backoff_limit: expected 0 or more, got {self.backoff_limit}")
        if not _DNS_1123.fullmatch(self.secrets_secret):
            problems.append(
                f"secrets_secret: expected a Secret's name (DNS-1123), got {self.secrets_secret!r}"
            )
        if problems:
            raise ConfigError("invalid cluster target: " + "; ".join(problems))


def cluster_target(settings: Settings) -> ClusterTarget:
    """The target the settings describe: their namespace, region, workers, and GPUs or not.

    ``training_use_gpu`` true means one GPU per worker on the ``gpu`` node pool;
    unset or false, a CPU pool (the launcher cannot see the workers' nodes, so
    it never guesses GPUs from its own machine).
    """
    gpu = bool(settings.training_use_gpu)
    return ClusterTarget(
        namespace=settings.cluster_namespace,
        pool=WorkerPool(
            region=settings.region,
            workers=settings.training_workers,
            gpus_per_worker=1 if gpu else 0,
            node_pool="gpu" if gpu else None,
        ),
    )


def load_template(manifests_dir: Path) -> dict[str, Any]:
    """The RayJob of ``<manifests_dir>/training-rayjob.yaml``."""
    path = manifests_dir / TEMPLATE_FILE
    try:
        docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    except OSError as exc:
        raise ConfigError(
            f"cannot read the training RayJob template {path}: {exc.strerror}; "
            f"FALAJ_MANIFESTS_DIR must name the folder that holds {TEMPLATE_FILE}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not YAML: {exc}") from None
    kinds = [(doc.get("apiVersion"), doc.get("kind")) for doc in docs if isinstance(doc, dict)]
    if kinds != [(f"{GROUP}/{VERSION}", KIND)]:
        raise ConfigError(
            f"expected {path} to hold exactly one {GROUP}/{VERSION} {KIND}, found {kinds}"
        )
    template: dict[str, Any] = docs[0]
    return template


def rayjob_body(
    spec: JobSpec, template: Mapping[str, Any], target: ClusterTarget
) -> dict[str, Any]:
    """The RayJob that runs ``spec`` on ``target``: a copy of ``template``, nothing sent.

    Raises ``ConfigError`` listing every problem when the job id cannot name a
    RayJob or the template lacks what a run needs.
    """
    body = copy.deepcopy(dict(template))
    problems: list[str] = []
    run = body.get("spec")
    cluster = run.get("rayClusterSpec") if isinstance(run, dict) else None
    head = cluster.get("headGroupSpec") if isinstance(cluster, dict) else None
    groups = cluster.get("workerGroupSpecs") if isinstance(cluster, dict) else None
    if (
        not isinstance(run, dict)
        or not isinstance(head, dict)
        or not isinstance(groups, list)
        or len(groups) != 1
        or not isinstance(groups[0], dict)
    ):
        raise ConfigError(
            "expected the training RayJob template to have spec.rayClusterSpec with a "
            "headGroupSpec and exactly one entry in workerGroupSpecs (the launcher sizes it "
            f"from the worker pool); fix manifests/base/{TEMPLATE_FILE}"
        )
    body["metadata"] = _metadata(spec, body.get("metadata"), target, problems)
    run["entrypoint"] = _entrypoint(spec.entrypoint, run.get("entrypoint"), problems)
    run.update(
        suspend=False,
        shutdownAfterJobFinishes=True,
        ttlSecondsAfterFinished=target.ttl_seconds_after_finished,
        activeDeadlineSeconds=target.active_deadline_seconds,
        backoffLimit=target.backoff_limit,
    )
    pool = target.pool
    job_env = {str(k): str(v) for k, v in spec.runtime_env.get("env_vars", {}).items()}
    carried = {name: value for name, value in job_env.items() if name not in NOT_CARRIED}
    # The pool, not the launcher's settings, says how many workers there are
    # and whether they have GPUs: the job's driver runs on the head, which has none.
    carried[WORKERS_ENV] = str(pool.workers)
    carried[USE_GPU_ENV] = str(pool.use_gpu).lower()

    head_pod = _pod_spec(head, "headGroupSpec", problems)
    if head_pod is not None:
        ray = _ray_container(head_pod, "headGroupSpec", problems)
        if ray is not None:
            ray["env"] = _env(ray.get("env"), carried)
            if TOKEN_FILE_ENV in job_env and not _declares(ray, TOKEN_FILE_ENV):
                problems.append(
                    f"the job needs a bearer token, but the template's head container sets no "
                    f"{TOKEN_FILE_ENV}; mount the falaj-token Secret and set it from falaj-config"
                )
            if SECRETS_FILE_ENV in job_env:
                _mount_secrets(head_pod, ray, target.secrets_secret)
        head_pod["nodeSelector"] = _node_selector(head_pod, pool.region, None)
        head_pod["affinity"] = _on_demand_affinity(head_pod.get("affinity"))

    group = groups[0]
    group["groupName"] = "gpu-workers" if pool.use_gpu else "cpu-workers"
    group.update(replicas=pool.workers, minReplicas=pool.workers, maxReplicas=pool.workers)
    worker_pod = _pod_spec(group, "workerGroupSpecs[0]", problems)
    if worker_pod is not None:
        ray = _ray_container(worker_pod, "workerGroupSpecs[0]", problems)
        if ray is not None:
            ray["env"] = _env(ray.get("env"), carried)
            _set_gpus(ray, pool.gpus_per_worker)
        worker_pod["nodeSelector"] = _node_selector(worker_pod, pool.region, pool.node_pool)
        tolerations = [*SPOT_TOLERATIONS] if pool.spot else []
        if pool.use_gpu:
            tolerations.append(GPU_TOLERATION)
        worker_pod["tolerations"] = _merged(worker_pod.get("tolerations"), tolerations)
    if problems:
        raise ConfigError(
            f"cannot build the RayJob for training job {spec.job_id}: " + "; ".join(problems)
        )
    return body


def job_state(rayjob: Mapping[str, Any]) -> JobState:
    """A RayJob's status in the launcher's words (Ray's job statuses).

    KubeRay's ``jobDeploymentStatus`` says whether the RayJob is over, its
    ``jobStatus`` how the last Ray job went. Only a finished deployment ends
    the run: while KubeRay retries on a new cluster (``Retrying``) the Ray job
    of the failed try says FAILED, but the run goes on. KubeRay does not report
    the entrypoint's exit code, so it is None here.
    """
    status = rayjob.get("status")
    status = status if isinstance(status, Mapping) else {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    job = str(status.get("jobStatus") or "")
    message = _status_message(status)
    if deployment in ("Failed", "ValidationFailed"):
        return JobState(
            status="FAILED", message=message or f"KubeRay marked the RayJob {deployment}"
        )
    if deployment == "Complete":
        # Complete means SUCCEEDED or STOPPED; anything else cannot be trusted as a success.
        return JobState(
            status=job if job in ("SUCCEEDED", "STOPPED") else "FAILED", message=message
        )
    if deployment in ("Suspending", "Suspended"):
        return JobState(status="STOPPED", message=message or "the RayJob was suspended")
    if deployment == "Running":
        if job in ("", "PENDING"):
            return JobState(status="PENDING")
        # A terminal jobStatus under a Running deployment is not the end yet:
        # KubeRay still decides between Complete, Failed and a retry.
        return JobState(status="RUNNING")
    # New, Initializing, Waiting, Retrying, or a status newer than this code:
    # the run still holds the model.
    return JobState(status="PENDING", message=message)


# -- the body ------------------------------------------------------------------


def _metadata(
    spec: JobSpec, template_meta: Any, target: ClusterTarget, problems: list[str]
) -> dict[str, Any]:
    name = spec.job_id
    if len(name) > MAX_NAME_LENGTH or not _DNS_1035.fullmatch(name):
        problems.append(
            f"the job id {name!r} cannot name a RayJob; expected lowercase letters, digits and "
            f"'-', starting with a letter, at most {MAX_NAME_LENGTH} characters (KubeRay's limit)"
        )
    given = template_meta if isinstance(template_meta, Mapping) else {}
    labels = dict(given.get("labels") or {})
    labels.update({"app.kubernetes.io/part-of": "falaj", "app.kubernetes.io/component": "training"})
    annotations = dict(given.get("annotations") or {})
    for key, value in spec.metadata.items():
        if not value:
            continue
        annotations[LABEL_PREFIX + key.replace("_", "-")] = value
        if key in LABELLED_METADATA:
            if _is_label_value(value):
                labels[LABEL_PREFIX + key] = value
            else:
                problems.append(f"metadata {key}={value!r} is not a Kubernetes label value")
    return {
        "name": name,
        "namespace": target.namespace,
        "labels": labels,
        "annotations": annotations,
    }


def _entrypoint(entrypoint: str, template_entrypoint: Any, problems: list[str]) -> str:
    # The spec's first word is the launcher's own interpreter (sys.executable);
    # the job runs in the training image, whose interpreter the template names.
    argv = shlex.split(entrypoint)
    template_argv = shlex.split(template_entrypoint) if isinstance(template_entrypoint, str) else []
    if not argv or not template_argv:
        problems.append(
            f"expected an entrypoint in the job spec and in the template "
            f"(e.g. 'python -m training.job ...'), got {entrypoint!r} and {template_entrypoint!r}"
        )
        return entrypoint
    return shlex.join([template_argv[0], *argv[1:]])


def _pod_spec(group: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any] | None:
    template = group.get("template")
    pod = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(pod, dict):
        problems.append(f"the template's {where} has no template.spec (a pod spec)")
        return None
    return pod


def _ray_container(pod: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any] | None:
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        problems.append(f"the template's {where} pod has no containers; the first runs Ray")
        return None
    ray: dict[str, Any] = containers[RAY_CONTAINER]
    return ray


def _env(declared: Any, carried: Mapping[str, str]) -> list[dict[str, Any]]:
    """The template's entries (cluster wiring, e.g. from falaj-config), then the job's.

    A name the template declares keeps the template's value, except the
    pool's two, which are the truth about this run.
    """
    pool_names = {WORKERS_ENV, USE_GPU_ENV}
    entries = [
        dict(e)
        for e in declared or []
        if isinstance(e, Mapping) and e.get("name") not in pool_names
    ]
    names = {entry.get("name") for entry in entries}
    entries += [{"name": k, "value": v} for k, v in carried.items() if k not in names]
    return entries


def _declares(container: Mapping[str, Any], name: str) -> bool:
    return any(entry.get("name") == name for entry in container.get("env") or [])


def _mount_secrets(pod: dict[str, Any], container: dict[str, Any], secret: str) -> None:
    # Only the head: the driver reads the Feast stores; Ray Train's workers get
    # their rows from it. 0400: the file holds passwords (falaj.settings).
    pod["volumes"] = [
        *(pod.get("volumes") or []),
        {"name": SECRETS_VOLUME, "secret": {"secretName": secret, "defaultMode": 0o400}},
    ]
    container["volumeMounts"] = [
        *(container.get("volumeMounts") or []),
        {"name": SECRETS_VOLUME, "mountPath": SECRETS_MOUNT, "readOnly": True},
    ]
    container["env"] = [
        *(e for e in container["env"] if e.get("name") != SECRETS_FILE_ENV),
        {"name": SECRETS_FILE_ENV, "value": f"{SECRETS_MOUNT}/{SECRETS_KEY}"},
    ]


def _node_selector(pod: Mapping[str, Any], region: str, node_pool: str | None) -> dict[str, str]:
    selector = {**(pod.get("nodeSelector") or {}), REGION_LABEL: region}
    if node_pool is not None:
        selector[POOL_LABEL] = node_pool
    return selector


def _on_demand_affinity(affinity: Any) -> dict[str, Any]:
    """``affinity`` with the on-demand expressions ANDed into each of its node selector terms."""
    result = copy.deepcopy(dict(affinity)) if isinstance(affinity, Mapping) else {}
    node = result.setdefault("nodeAffinity", {})
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term["matchExpressions"] = _merged(term.get("matchExpressions"), ON_DEMAND_EXPRESSIONS)
    required["nodeSelectorTerms"] = terms
    return result


def _set_gpus(container: dict[str, Any], gpus: int) -> None:
    resources = container.setdefault("resources", {})
    for kind in ("limits", "requests"):
        resources.get(kind, {}).pop(GPU_RESOURCE, None)
    if gpus > 0:
        # An extended resource's request defaults to its limit.
        resources.setdefault("limits", {})[GPU_RESOURCE] = gpus


def _merged(existing: Any, added: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    entries = [dict(entry) for entry in existing or []]
    for entry in added:
        plain = json.loads(json.dumps(dict(entry)))  # tuples to lists, as JSON sends them
        if plain not in entries:
            entries.append(plain)
    return entries


def _is_label_value(value: str) -> bool:
    return len(value) <= _MAX_LABEL_VALUE and bool(_LABEL_VALUE.fullmatch(value))


def _status_message(status: Mapping[str, Any]) -> str | None:
    parts = [str(status[key]) for key in ("reason", "message") if status.get(key)]
    return ": ".join(parts)[:300] if parts else None
