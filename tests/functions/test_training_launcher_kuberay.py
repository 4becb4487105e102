"""The training launcher's cluster path: a RayJob per training run, through the Kubernetes API.

No API server can run here. The bodies are checked against KubeRay's CRD
(strict, as ``kubectl --validate=strict`` would), and ``KubeRayJobs`` talks
to a small HTTP server in this process that speaks just enough of the
Kubernetes API: it records what is POSTed and answers GETs as it is told.
"""

from __future__ import annotations

import copy
import json
import shlex
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes.client import ApiClient, Configuration
from pydantic import SecretStr

from falaj.audit import AuditLog
from falaj.context import Context
from falaj.errors import ConfigError, ResidencyViolation
from falaj.events import TrainingReason
from falaj.manifest_schemas import SchemaStore
from falaj.settings import UAE_REGIONS, Settings
from falaj.training_runs import TrainingRequest
from functions.training_launcher import TrainingLauncherFunction
from functions.training_launcher.errors import JobSubmissionFailed
from functions.training_launcher.kuberay import KubeRayJobs
from functions.training_launcher.ray_jobs import LOST, JobSpec, job_spec
from functions.training_launcher.rayjob import (
    GPU_TOLERATION,
    ON_DEMAND_EXPRESSIONS,
    SPOT_TOLERATIONS,
    ClusterTarget,
    WorkerPool,
    cluster_target,
    load_template,
    rayjob_body,
)
from tests.support.fake_kubernetes import Answer, FakeKubernetes, serving

JOB_ID = "train-fraud-0123456789ab"
NAMESPACE = "falaj"
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"
TOKEN = "tok-7f3a9c-never-in-a-body"
PASSWORD = "redis-pw-51d2-never-in-a-body"
GPU_POOL = WorkerPool(region="uaenorth", workers=3, gpus_per_worker=2, node_pool="gpu", spot=True)
CPU_POOL = WorkerPool(region="uaecentral", workers=4)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(Settings().manifests_dir)


@pytest.fixture
def secret_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / ".falaj",
        token=SecretStr(TOKEN),
        online_store=SecretStr(f"redis://:{PASSWORD}@localhost:6379/0"),
    )


@pytest.fixture
def spec(secret_settings: Settings, tmp_path: Path) -> JobSpec:
    """A run as the launcher describes it, with a token file and a secrets file of its own."""
    return job_spec(
        JOB_ID,
        TrainingRequest(
            model="fraud", reason=TrainingReason.DRIFT, urgent=True, cause_event_id="evt-42"
        ),
        secret_settings,
        token_file=tmp_path / "keys" / "launcher.token",
        secrets_file=tmp_path / "keys" / "launcher.secrets",
    )


def head_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = body["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    return pod


def worker_group(body: Mapping[str, Any]) -> dict[str, Any]:
    (group,) = body["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert isinstance(group, dict)
    return group


def worker_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = worker_group(body)["template"]["spec"]
    return pod


def literal_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The Ray container's env entries that have a value (not the ConfigMap references)."""
    return {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}


def plain(entries: Any) -> list[Any]:
    return json.loads(json.dumps([dict(e) for e in entries]))


# -- the body --------------------------------------------------------------------


def test_a_cpu_pool_body_validates_strictly_against_the_kuberay_crd(
    schema_store: SchemaStore, template: dict[str, Any], spec: JobSpec
) -> None:
    body = rayjob_body(spec, template, ClusterTarget(pool=CPU_POOL))

    assert schema_store.validate(body, strict=True) == []
    group = worker_group(body)
    assert group["groupName"] == "cpu-workers"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 4, 4)
    assert "nvidia.com/gpu" not in json.dumps(body)
    assert worker_pod(body)["nodeSelector"] == {"topology.kubernetes.io/region": "uaecentral"}
    env = literal_env(head_pod(body))
    assert (env["FALAJ_TRAINING_WORKERS"], env["FALAJ_TRAINING_USE_GPU"]) == ("4", "false")


def test_a_gpu_pool_body_asks_for_gpus_on_the_in_region_pool_and_tolerates_spot_workers(
    schema_store: SchemaStore, template: dict[str, Any], spec: JobSpec
) -> None:
    target = ClusterTarget(
        pool=GPU_POOL, ttl_seconds_after_finished=120, active_deadline_seconds=5400, backoff_limit=3
    )
    body = rayjob_body(spec, template, target)

    assert schema_store.validate(body, strict=True) == []
    assert {key: body["spec"][key] for key in ("suspend", "shutdownAfterJobFinishes")} == {
        "suspend": False,
        "shutdownAfterJobFinishes": True,
    }
    assert body["spec"]["ttlSecondsAfterFinished"] == 120
    assert body["spec"]["activeDeadlineSeconds"] == 5400
    assert body["spec"]["backoffLimit"] == 3
    group, workers, head = worker_group(body), worker_pod(body), head_pod(body)
    assert group["groupName"] == "gpu-workers"
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    assert workers["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert workers["nodeSelector"] == {
        "topology.kubernetes.io/region": "uaenorth",
        "falaj.dev/pool": "gpu",
    }
    assert workers["tolerations"] == plain([*SPOT_TOLERATIONS, GPU_TOLERATION])
    # The head (the driver, Ray's control plane) stays in-region, on on-demand CPU nodes.
    assert head["nodeSelector"] == {"topology.kubernetes.io/region": "uaenorth"}
    assert "tolerations" not in head
    assert "nvidia.com/gpu" not in json.dumps(head)
    (term,) = head["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    # The template's region fence (manifests/base), then the launcher's on-demand expressions.
    region = {"key": "topology.kubernetes.io/region", "operator": "In", "values": list(UAE_REGIONS)}
    assert term["matchExpressions"] == [region, *plain(ON_DEMAND_EXPRESSIONS)]
    # The job learns its pool from its env: the launcher's machine has no say.
    for pod in (head, workers):
        env = literal_env(pod)
        assert (env["FALAJ_TRAINING_WORKERS"], env["FALAJ_TRAINING_USE_GPU"]) == ("3", "true")


def test_workers_of_an_on_demand_pool_tolerate_no_spot_node(
    template: dict[str, Any], spec: JobSpec
) -> None:
    pool = WorkerPool(region="uaenorth", workers=1, gpus_per_worker=1, spot=False)
    body = rayjob_body(spec, template, ClusterTarget(pool=pool))

    assert worker_pod(body)["tolerations"] == plain([GPU_TOLERATION])
    assert worker_pod(body)["nodeSelector"] == {"topology.kubernetes.io/region": "uaenorth"}


def test_the_body_names_the_run_and_runs_its_entrypoint_in_the_training_image(
    template: dict[str, Any], spec: JobSpec
) -> None:
    body = rayjob_body(spec, template, ClusterTarget(pool=CPU_POOL, namespace="training"))

    metadata = body["metadata"]
    assert (metadata["name"], metadata["namespace"]) == (JOB_ID, "training")
    assert {k: v for k, v in metadata["labels"].items() if k.startswith("falaj.dev/")} == {
        "falaj.dev/model": "fraud",
        "falaj.dev/reason": "drift",
        "falaj.dev/urgent": "true",
    }
    assert metadata["annotations"]["falaj.dev/cause-event-id"] == "evt-42"
    # The launcher's interpreter path means nothing in the training image: its own runs the job.
    argv = shlex.split(body["spec"]["entrypoint"])
    assert argv[0] == shlex.split(template["spec"]["entrypoint"])[0] == "python"
    assert argv[1:] == shlex.split(spec.entrypoint)[1:]
    assert argv[1:5] == ["-m", "training.job", "--model", "fraud"]
    # The template itself is left as it was (applied suspended).
    assert template["spec"]["suspend"] is True
    assert template["metadata"]["name"] == "fraud-training"


def test_the_job_rebuilds_its_settings_from_the_body(
    template: dict[str, Any], spec: JobSpec, tmp_path: Path
) -> None:
    body = rayjob_body(spec, template, ClusterTarget(pool=GPU_POOL))
    env = literal_env(head_pod(body))
    # That file is a mounted Secret on the cluster (test_no_secret_value_is_in_the_body).
    assert env.pop("FALAJ_SECRETS_FILE").startswith("/var/run/secrets/")

    settings = Settings.from_env(env)

    assert (settings.training_workers, settings.training_use_gpu) == (3, True)
    assert settings.home == Path("/data/registry/state")  # the template's, on the registry volume
    # No path of the launcher's machine travels: its home, its token and secrets files.
    assert str(tmp_path) not in json.dumps(body)
    assert "PYTHONPATH" not in env


def test_no_secret_value_is_in_the_body(
    template: dict[str, Any], spec: JobSpec, secret_settings: Settings
) -> None:
    target = ClusterTarget(pool=GPU_POOL, secrets_secret="feast-stores")
    body = rayjob_body(spec, template, target)
    text = json.dumps(body)

    assert TOKEN not in text
    assert PASSWORD not in text
    assert "redis://" not in text
    # The secrets come from Secrets mounted as files on the head, where the driver runs.
    head = head_pod(body)
    assert literal_env(head)["FALAJ_SECRETS_FILE"] == "/var/run/secrets/falaj-training/secrets"
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes["falaj-training-secrets"]["secret"]["secretName"] == "feast-stores"
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["falaj-training-secrets"] == "/var/run/secrets/falaj-training"
    assert mounts["falaj-token"] == "/var/run/secrets/falaj"
    token_file = [e for e in head["containers"][0]["env"] if e["name"] == "FALAJ_TOKEN_FILE"]
    assert token_file == [
        {
            "name": "FALAJ_TOKEN_FILE",
            "valueFrom": {"configMapKeyRef": {"name": "falaj-config", "key": "FALAJ_TOKEN_FILE"}},
        }
    ]
    assert "FALAJ_SECRETS_FILE" not in literal_env(worker_pod(body))


def test_a_run_without_secrets_mounts_no_secrets_secret(
    template: dict[str, Any], tmp_path: Path
) -> None:
    plain_spec = job_spec(
        JOB_ID,
        TrainingRequest(model="fraud", reason=TrainingReason.MANUAL),
        Settings(home=tmp_path),
        token_file=None,
    )
    body = rayjob_body(plain_spec, template, ClusterTarget(pool=CPU_POOL))

    assert "falaj-training-secrets" not in json.dumps(body)
    assert "FALAJ_SECRETS_FILE" not in literal_env(head_pod(body))


def test_a_job_id_that_cannot_name_a_rayjob_is_refused_with_every_problem(
    template: dict[str, Any], spec: JobSpec
) -> None:
    bad = JobSpec(
        job_id="Train_Fraud",
        entrypoint=spec.entrypoint,
        runtime_env=spec.runtime_env,
        metadata={**spec.metadata, "model": "Fraud model"},
    )
    with pytest.raises(ConfigError) as caught:
        rayjob_body(bad, template, ClusterTarget(pool=CPU_POOL))

    assert "'Train_Fraud' cannot name a RayJob" in str(caught.value)
    assert "model='Fraud model' is not a Kubernetes label value" in str(caught.value)


def test_a_worker_pool_refuses_impossible_values_all_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        WorkerPool(region="", workers=0, gpus_per_worker=-1, node_pool="gpu pool")

    message = str(caught.value)
    for field_name in ("region", "workers", "gpus_per_worker", "node_pool"):
        assert f"{field_name}: expected" in message


def test_the_cluster_target_follows_the_settings() -> None:
    gpu = cluster_target(Settings(region="uaecentral", training_workers=4, training_use_gpu=True))
    cpu = cluster_target(Settings(region="uaecentral"))

    assert gpu.pool == WorkerPool(
        region="uaecentral", workers=4, gpus_per_worker=1, node_pool="gpu"
    )
    assert cpu.pool == WorkerPool(region="uaecentral", workers=2)


# -- the Kubernetes API ----------------------------------------------------------


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeKubernetes, str]]:
    with serving(FakeKubernetes(collection=RAYJOBS)) as served:
        yield served


class MakeJobs(Protocol):
    def __call__(
        self, host: str, *, pool: WorkerPool, template: Mapping[str, Any]
    ) -> KubeRayJobs: ...


@pytest.fixture
def make_jobs(ctx: Context, schema_store: SchemaStore) -> Iterator[MakeJobs]:
    """``KubeRayJobs`` against ``host``, with a bearer token as in a pod; closed at the end."""
    made: list[KubeRayJobs] = []

    def make(host: str, *, pool: WorkerPool, template: Mapping[str, Any]) -> KubeRayJobs:
        configuration = Configuration(host=host, api_key={"authorization": f"Bearer {TOKEN}"})
        jobs = KubeRayJobs(
            ApiClient(configuration),
            target=ClusterTarget(pool=pool, namespace=NAMESPACE),
            template=template,
            policy=ctx.policy,
            schemas=schema_store,
            timeout_s=5.0,
        )
        made.append(jobs)
        return jobs

    yield make
    for jobs in made:
        jobs.close()


def test_submit_sends_the_validated_body(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
    schema_store: SchemaStore,
    spec: JobSpec,
) -> None:
    fake, host = fake_api
    jobs = make_jobs(host, pool=GPU_POOL, template=template)

    assert jobs.submit(spec) == JOB_ID

    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query) == ("POST", RAYJOBS, "fieldValidation=Strict")
    expected = rayjob_body(spec, template, ClusterTarget(pool=GPU_POOL, namespace=NAMESPACE))
    assert seen.body == expected
    assert schema_store.validate(seen.body, strict=True) == []
    # The server holds it now; with no status yet, the run is pending.
    assert jobs.state(JOB_ID).status == "PENDING"


def test_a_region_outside_the_policy_is_refused_before_anything_is_sent(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    ctx: Context,
    template: dict[str, Any],
    spec: JobSpec,
) -> None:
    fake, host = fake_api
    jobs = make_jobs(host, pool=WorkerPool(region="eu-west-1"), template=template)

    with pytest.raises(ResidencyViolation, match="'eu-west-1', outside the allowed regions"):
        jobs.submit(spec)

    assert fake.seen == []
    refused = [e for e in AuditLog(ctx.paths.audit).entries() if e["action"] == "policy.refused"]
    assert [(e["resource"], e["region"]) for e in refused] == [
        (f"RayJob {NAMESPACE}/{JOB_ID}", "eu-west-1")
    ]


def test_a_body_that_does_not_fit_the_crd_is_never_sent(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
    spec: JobSpec,
) -> None:
    fake, host = fake_api
    typo = copy.deepcopy(template)
    typo["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    jobs = make_jobs(host, pool=CPU_POOL, template=typo)

    with pytest.raises(ConfigError, match="'rayStartParam' was unexpected"):
        jobs.submit(spec)

    assert fake.seen == []


@pytest.mark.parametrize(
    ("deployment", "job", "expected"),
    [
        (None, None, "PENDING"),  # just created: KubeRay has not looked at it yet
        ("Initializing", "", "PENDING"),
        ("Running", "PENDING", "PENDING"),
        ("Running", "RUNNING", "RUNNING"),
        ("Running", "FAILED", "RUNNING"),  # not over until KubeRay says so
        ("Retrying", "FAILED", "PENDING"),  # a spot eviction: a new cluster is coming
        ("Complete", "SUCCEEDED", "SUCCEEDED"),
        ("Complete", "STOPPED", "STOPPED"),
        ("Failed", "FAILED", "FAILED"),
        ("Failed", "RUNNING", "FAILED"),  # activeDeadlineSeconds passed
        ("ValidationFailed", "", "FAILED"),
        ("Suspended", "", "STOPPED"),
    ],
)
def test_status_maps_kuberay_to_ray_statuses(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
    deployment: str | None,
    job: str | None,
    expected: str,
) -> None:
    fake, host = fake_api
    status = {"jobDeploymentStatus": deployment, "jobStatus": job}
    fake.objects[JOB_ID] = {
        "metadata": {"name": JOB_ID},
        "status": {k: v for k, v in status.items() if v is not None},
    }
    jobs = make_jobs(host, pool=CPU_POOL, template=template)

    assert jobs.state(JOB_ID).status == expected
    assert [(s.method, s.path) for s in fake.seen] == [("GET", f"{RAYJOBS}/{JOB_ID}")]


def test_a_failed_rayjob_says_why(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
) -> None:
    fake, host = fake_api
    fake.objects[JOB_ID] = {
        "status": {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "RUNNING",
            "reason": "DeadlineExceeded",
            "message": "The RayJob has passed the activeDeadlineSeconds.",
        }
    }
    jobs = make_jobs(host, pool=CPU_POOL, template=template)

    state = jobs.state(JOB_ID)

    assert (state.status, state.exit_code) == ("FAILED", None)
    assert state.message == "DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds."


def test_a_deleted_rayjob_is_lost(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
) -> None:
    _, host = fake_api
    jobs = make_jobs(host, pool=CPU_POOL, template=template)

    assert jobs.state(JOB_ID).status == LOST


def test_a_404_without_a_not_found_status_means_no_kuberay(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
) -> None:
    fake, host = fake_api
    fake.answer = Answer(404, b"404 page not found")
    jobs = make_jobs(host, pool=CPU_POOL, template=template)

    with pytest.raises(JobSubmissionFailed, match="install the KubeRay operator"):
        jobs.state(JOB_ID)


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (500, "try again when the API server is healthy"),
        (403, "apply its Role and RoleBinding"),
        (409, "a RayJob named train-fraud-0123456789ab already exists"),
        (422, "is the cluster's KubeRay older?"),
    ],
)
def test_api_errors_become_job_submission_failed_without_secrets(
    fake_api: tuple[FakeKubernetes, str],
    make_jobs: MakeJobs,
    template: dict[str, Any],
    spec: JobSpec,
    code: int,
    fix: str,
) -> None:
    fake, host = fake_api
    status = {"kind": "Status", "status": "Failure", "message": "refused here", "code": code}
    fake.answer = Answer(code, status, echo_authorization=True)
    jobs = make_jobs(host, pool=CPU_POOL, template=template)

    with pytest.raises(JobSubmissionFailed) as submitting:
        jobs.submit(spec)
    with pytest.raises(JobSubmissionFailed) as reading:
        jobs.state(JOB_ID)

    assert f"HTTP {code} (refused here)" in str(submitting.value)
    assert fix in str(submitting.value)
    assert [s.method for s in fake.seen] == ["POST", "GET"]
    for caught in (submitting, reading):
        assert TOKEN not in str(caught.value)
        assert caught.value.status == 503


@pytest.fixture
def refusing_host() -> Iterator[str]:
    """A port that is bound but not listening: every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_an_unreachable_api_server_is_job_submission_failed(
    refusing_host: str,
    make_jobs: MakeJobs,
    template: dict[str, Any],
    spec: JobSpec,
) -> None:
    jobs = make_jobs(refusing_host, pool=CPU_POOL, template=template)

    with pytest.raises(JobSubmissionFailed, match="cannot reach the Kubernetes API"):
        jobs.submit(spec)
    with pytest.raises(JobSubmissionFailed, match="cannot reach the Kubernetes API"):
        jobs.state(JOB_ID)


def test_the_launcher_on_the_kuberay_backend_needs_a_pod_and_says_so(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".falaj", training_backend="kuberay")
    launcher = TrainingLauncherFunction(watch=False)
    with pytest.raises(ConfigError, match="runs in a pod with a service account token mounted"):
        launcher.start(Context.create(settings, actor="training-launcher"))
    launcher.stop()
