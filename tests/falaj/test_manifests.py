"""The manifests read into the local runtime's topology."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from falaj.errors import ManifestError
from falaj.events import EventType
from falaj.manifests import (
    CONTROL_DEPLOYMENT,
    Resource,
    build_topology,
    load_topology,
    parse_duration,
    render_overlay,
)
from falaj.settings import PROJECT_ROOT
from falaj.topology import BackoffPolicy, DeliverySpec, DeploymentSpec, Topology

BASE = PROJECT_ROOT / "manifests" / "base"
FUNCTION_DIRS = {
    "ingest": "ingest",
    "training-launcher": "training_launcher",
    "rollout": "rollout",
    "drift": "drift",
}


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(BASE)


def test_nine_triggers_route_each_event_type_to_its_function(topology: Topology) -> None:
    routes = {
        t.name: (t.broker, dict(t.filter_attributes), t.subscriber) for t in topology.triggers
    }
    assert routes == {
        "storage-to-ingest": ("default", {"type": EventType.OBJECT_CREATED}, "ingest"),
        # Its filter is the Subscriptions API's `filters` (either queue record type).
        "records-to-ingest": ("default", {}, "ingest"),
        "ingested-to-training": (
            "default",
            {"type": EventType.DATA_INGESTED},
            "training-launcher",
        ),
        "drift-to-training": ("default", {"type": EventType.DRIFT_DETECTED}, "training-launcher"),
        "requested-to-training": (
            "default",
            {"type": EventType.TRAINING_REQUESTED},
            "training-launcher",
        ),
        # Its filter is `filters`: the job's four own event types.
        "job-events-to-training": ("default", {}, "training-launcher"),
        "schedule-to-training": ("default", {"type": EventType.PING}, "training-launcher"),
        "registered-to-rollout": ("default", {"type": EventType.MODEL_REGISTERED}, "rollout"),
        "inference-to-drift": ("default", {"type": EventType.INFERENCE_LOGGED}, "drift"),
    }
    assert all(t.subscriber_uri is None for t in topology.triggers)
    [records] = [t for t in topology.triggers if t.name == "records-to-ingest"]
    assert records.filters == (
        {
            "any": [
                {"exact": {"type": EventType.RABBITMQ_MESSAGE}},
                {"exact": {"type": EventType.KAFKA_RECORD}},
            ]
        },
    )
    [job_events] = [t for t in topology.triggers if t.name == "job-events-to-training"]
    assert job_events.filters == (
        {
            "any": [
                {"exact": {"type": t}}
                for t in (
                    EventType.TRAINING_STARTED,
                    EventType.TRAINING_PROGRESS,
                    EventType.TRAINING_COMPLETED,
                    EventType.TRAINING_FAILED,
                )
            ]
        },
    )


def test_triggers_keep_kustomization_order(topology: Topology) -> None:
    assert topology.triggers[0].name == "storage-to-ingest"
    assert topology.triggers[-1].name == "inference-to-drift"


def test_broker_delivery_is_parsed(topology: Topology) -> None:
    assert topology.brokers["default"].delivery == DeliverySpec(
        retry=3,
        backoff_policy=BackoffPolicy.EXPONENTIAL,
        backoff_delay_s=0.2,
        dead_letter_sink="dead-letters",
    )


def test_training_triggers_override_delivery_and_others_inherit(topology: Topology) -> None:
    for trigger in topology.triggers:
        if trigger.subscriber == "training-launcher":
            assert trigger.delivery == DeliverySpec(
                retry=5,
                backoff_policy=BackoffPolicy.LINEAR,
                backoff_delay_s=2.0,
                dead_letter_sink="dead-letters",
            )
        else:
            assert trigger.delivery is None, trigger.name


def test_four_functions_run_under_functions_framework(topology: Topology) -> None:
    assert set(topology.services) == set(FUNCTION_DIRS)
    for name, folder in FUNCTION_DIRS.items():
        service = topology.services[name]
        assert service.command == (
            "functions-framework",
            f"--source=functions/{folder}/main.py",
            "--target=handle",
            "--signature-type=cloudevent",
        )
        assert service.min_scale == 0
        assert service.max_scale >= 1
        assert service.container_concurrency >= 1
        # Only literal values: ConfigMap-fed wiring comes from local Settings instead.
        assert service.env == {"FALAJ_LOG_LEVEL": "info"}


def test_storage_source_sends_to_the_broker(topology: Topology) -> None:
    source = topology.sources["storage-source"]
    assert source.kind == "ContainerSource"
    assert source.command[:3] == ("python", "-m", "eventing.storage_source")
    assert source.sink_broker == "default"
    assert source.requires_setting is None


def test_every_source_lands_in_the_kustomizations_namespace(topology: Topology) -> None:
    assert list(topology.sources) == ["storage-source", "records", "fraud-retraining"]
    assert {s.namespace for s in topology.sources.values()} == {"falaj"}
    assert {s.sink_broker for s in topology.sources.values()} == {"default"}


def test_the_rabbitmq_source_runs_the_local_consumer_with_its_fields(topology: Topology) -> None:
    source = topology.sources["records"]
    assert source.kind == "RabbitmqSource"
    assert source.command == (
        "python",
        "-m",
        "eventing.rabbitmq_source",
        "--name=records",
        "--namespace=falaj",
        "--queue=falaj-records",
        "--parallelism=50",
        "--backoff-policy=exponential",
        "--backoff-delay=0.5",
        "--exchange=falaj-records",
    )
    # Only with FALAJ_RABBITMQ_URL: the embedded default needs no RabbitMQ.
    assert source.requires_setting == "rabbitmq_url"


def test_the_ping_source_runs_the_local_scheduler_with_its_fields(topology: Topology) -> None:
    source = topology.sources["fraud-retraining"]
    assert source.kind == "PingSource"
    assert source.command == (
        "python",
        "-m",
        "eventing.ping_source",
        "--name=fraud-retraining",
        "--namespace=falaj",
        "--schedule=0 2 * * *",
        "--timezone=Asia/Dubai",
        "--content-type=application/json",
        '--data={"model": "fraud"}',
        "--extension=dataregion=me-central-1",
    )
    assert source.requires_setting is None


def test_inference_service_canaries_and_scales_to_zero(topology: Topology) -> None:
    fraud = topology.inference_services["fraud"]
    assert fraud.model == "fraud"
    assert fraud.canary_traffic_percent == 10
    assert fraud.min_replicas == 0
    assert fraud.max_replicas >= 1
    assert fraud.runtime == "falaj-onnx"
    assert fraud.storage_uri == "pvc://falaj-registry/state"


def test_ray_job_trains_the_fraud_model_on_cpu_workers(topology: Topology) -> None:
    job = topology.ray_jobs["fraud-training"]
    assert (
        job.entrypoint
        == "python -m training.job --model fraud --reason manual --job-id fraud-training"
    )
    assert job.num_workers == 2
    assert job.use_gpu is False


def test_the_control_api_runs_the_command_its_deployment_declares(topology: Topology) -> None:
    """One spec, two runtimes: `falaj up` runs the container's command, waits on its probe."""
    docs = list(yaml.safe_load_all((BASE / "control.yaml").read_text()))
    [deployment] = [doc for doc in docs if doc["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]

    assert topology.deployments == {
        CONTROL_DEPLOYMENT: DeploymentSpec(
            name=CONTROL_DEPLOYMENT,
            command=tuple(container["command"]),
            # Only literal values; the FALAJ_* ones are the cluster's, replaced by Settings.
            env={
                "FALAJ_HOME": "/data/registry/state",
                "FALAJ_HOST": "0.0.0.0",
                "FALAJ_CONTROL_PORT": "8090",
                "FALAJ_LOG_LEVEL": "info",
            },
            ready_path=container["readinessProbe"]["httpGet"]["path"],
        )
    }
    assert topology.deployments[CONTROL_DEPLOYMENT].command == ("python", "-m", "falaj.control")
    # The core Service in front of it is cluster wiring, and it is no function.
    assert CONTROL_DEPLOYMENT not in topology.services


def test_rendered_local_overlay_yields_the_same_topology(topology: Topology) -> None:
    overlay = PROJECT_ROOT / "manifests" / "overlays" / "local"
    rendered = build_topology(Resource(origin=str(overlay), doc=d) for d in render_overlay(overlay))
    assert rendered.brokers == topology.brokers
    assert rendered.services == topology.services
    assert rendered.sources == topology.sources
    assert rendered.inference_services == topology.inference_services
    assert rendered.ray_jobs == topology.ray_jobs
    assert rendered.deployments == topology.deployments
    by_name = {t.name: t for t in topology.triggers}
    assert {t.name: t for t in rendered.triggers} == by_name


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT0.2S", 0.2), ("PT2S", 2.0), ("PT1M", 60.0), ("PT1H30M", 5400.0), ("P1DT1S", 86401.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2s", "PT", "P1DT", "", "PT-1S", "P1M"])
def test_parse_duration_refuses_what_is_not_a_knative_duration(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601 duration"):
        parse_duration(text)


# --- broken manifests ----------------------------------------------------------------------

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""

SERVICE = """
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: ingest}
spec:
  template:
    spec:
      containers:
        - image: falaj-functions
          command: [functions-framework]
          args: [--target=handle]
"""


def _trigger(name: str, event_type: str, subscriber: str = "ingest", extra: str = "") -> str:
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {name}}}
spec:
  broker: default
  filter:
    attributes: {{type: {event_type}}}
  subscriber:
    ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: {subscriber}}}
{textwrap.indent(textwrap.dedent(extra), "  ")}"""


def _write(folder: Path, files: dict[str, str], kustomization: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    listing = "".join(f"  - {name}\n" for name in files)
    (folder / "kustomization.yaml").write_text(
        kustomization or f"apiVersion: kustomize.config.k8s.io/v1beta1\nresources:\n{listing}"
    )
    return folder


def test_minimal_manifests_load(tmp_path: Path) -> None:
    folder = _write(
        tmp_path,
        {
            "broker.yaml": BROKER,
            "wiring.yaml": SERVICE + "---\n" + _trigger("t", EventType.OBJECT_CREATED),
        },
    )
    topology = load_topology(folder)
    assert [t.subscriber for t in topology.triggers] == ["ingest"]
    assert topology.services["ingest"].command == ("functions-framework", "--target=handle")
    assert topology.brokers["default"].delivery == DeliverySpec()


def test_every_problem_is_reported_at_once_with_file_and_resource(tmp_path: Path) -> None:
    folder = _write(
        tmp_path,
        {
            "broker.yaml": BROKER,
            "service.yaml": SERVICE,
            "triggers.yaml": _trigger("unknown-type", "dev.falaj.nope")
            + "---\n"
            + _trigger("typo-subscriber", EventType.DATA_INGESTED, subscriber="ingset"),
        },
    )
    with pytest.raises(ManifestError) as caught:
        load_topology(folder)
    message = str(caught.value)
    assert message.startswith("2 problem(s) in the manifests")
    triggers_file = str(folder / "triggers.yaml")
    assert f"{triggers_file}: Trigger 'unknown-type': spec.filter.attributes.type" in message
    assert "'dev.falaj.nope' is not in the event catalog" in message
    assert f"{triggers_file}: Trigger 'typo-subscriber': subscriber Service 'ingset'" in message
    assert "expected one of ingest" in message


def test_a_misspelt_delivery_field_is_refused(tmp_path: Path) -> None:
    # Knative Eventing's schema keeps unknown fields, so only the loader can catch this.
    trigger = _trigger(
        "t", EventType.DATA_INGESTED, extra="delivery:\n  retry: 2\n  backofDelay: PT1S\n"
    )
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    with pytest.raises(ManifestError, match=r"spec.delivery has unknown field\(s\) backofDelay"):
        load_topology(folder)


def test_a_bad_backoff_delay_names_the_field(tmp_path: Path) -> None:
    trigger = _trigger("t", EventType.DATA_INGESTED, extra="delivery:\n  backoffDelay: 2s\n")
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    with pytest.raises(ManifestError, match=r"Trigger 't': spec.delivery.backoffDelay: expected"):
        load_topology(folder)


def test_timeout_and_retry_after_max_are_read_and_backoff_needs_both_fields(
    tmp_path: Path,
) -> None:
    delivery = "delivery:\n  retry: 2\n  backoffDelay: PT0.5S\n  timeout: PT3S\n"
    delivery += "  retryAfterMax: PT1M\n"
    trigger = _trigger("t", EventType.DATA_INGESTED, extra=delivery)
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    [loaded] = load_topology(folder).triggers
    assert loaded.delivery == DeliverySpec(
        retry=2, backoff_delay_s=0.5, timeout_s=3.0, retry_after_max_s=60.0
    )
    # No policy given: Knative backs off only when both fields are set, and so do we.
    assert loaded.delivery.backoff_policy is None


def test_a_bad_timeout_names_the_field(tmp_path: Path) -> None:
    trigger = _trigger("t", EventType.DATA_INGESTED, extra="delivery:\n  timeout: 3s\n")
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    with pytest.raises(ManifestError, match=r"Trigger 't': spec.delivery.timeout: expected"):
        load_topology(folder)


def test_a_uri_subscriber_is_kept_as_the_uri(tmp_path: Path) -> None:
    trigger = """
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-uri}
spec:
  broker: default
  subscriber: {uri: "http://127.0.0.1:9999/events"}
"""
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + trigger})
    (loaded,) = load_topology(folder).triggers
    assert loaded.subscriber_uri == "http://127.0.0.1:9999/events"
    assert loaded.filter_attributes == {}


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    stateful = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web}\n"
    folder = _write(tmp_path, {"set.yaml": stateful})
    with pytest.raises(ManifestError, match=r"set.yaml: StatefulSet 'web': apps/v1 StatefulSet"):
        load_topology(folder)


CONTROL = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: control}
spec:
  replicas: 1
  template:
    spec:
      containers:
        - name: control
          image: falaj-functions
          command: [python, -m, falaj.control]
          readinessProbe:
            httpGet: {path: /healthz, port: http}
---
apiVersion: v1
kind: Service
metadata: {name: control}
spec:
  ports: [{port: 8090}]
"""


def test_the_control_apis_deployment_is_read_and_its_service_read_past(tmp_path: Path) -> None:
    topology = load_topology(_write(tmp_path, {"control.yaml": CONTROL}))

    assert topology.deployments == {
        "control": DeploymentSpec(
            name="control", command=("python", "-m", "falaj.control"), ready_path="/healthz"
        )
    }
    assert topology.services == {}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "name: control}",
            "name: web}",
            r"Deployment 'web': the local runtime runs one Deployment",
        ),
        ("replicas: 1", "replicas: 2", r"expected spec.replicas 1 .*got 2"),
        ("path: /healthz", "path: healthz", r"httpGet.path to be a path .*got 'healthz'"),
        ("          command: [python, -m, falaj.control]\n", "", "needs a command"),
    ],
)
def test_a_deployment_the_local_runtime_cannot_run_as_declared_is_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in CONTROL
    folder = _write(tmp_path, {"control.yaml": CONTROL.replace(old, new, 1)})
    with pytest.raises(ManifestError, match=message):
        load_topology(folder)


def test_an_unquoted_scale_annotation_is_refused(tmp_path: Path) -> None:
    service = SERVICE.replace(
        "  template:\n",
        "  template:\n    metadata:\n      annotations:\n"
        "        autoscaling.knative.dev/max-scale: three\n",
    )
    folder = _write(tmp_path, {"service.yaml": service})
    with pytest.raises(ManifestError, match=r"autoscaling\.knative\.dev/max-scale.*'three'"):
        load_topology(folder)


def test_a_service_without_a_command_is_refused(tmp_path: Path) -> None:
    service = SERVICE.replace("          command: [functions-framework]\n", "").replace(
        "          args: [--target=handle]\n", ""
    )
    folder = _write(tmp_path, {"service.yaml": service})
    with pytest.raises(ManifestError, match="needs a command"):
        load_topology(folder)


def test_a_gpu_worker_group_asks_for_gpus(tmp_path: Path) -> None:
    job = """
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: gpu-training}
spec:
  entrypoint: python -m training.job --model fraud
  rayClusterSpec:
    headGroupSpec:
      template: {spec: {containers: [{name: head, image: falaj-training}]}}
    workerGroupSpecs:
      - groupName: gpus
        minReplicas: 1
        maxReplicas: 4
        template:
          spec:
            containers:
              - name: worker
                image: falaj-training
                resources: {limits: {nvidia.com/gpu: 1}}
      - groupName: cpus
        replicas: 2
        minReplicas: 0
        maxReplicas: 2
        template: {spec: {containers: [{name: worker, image: falaj-training}]}}
"""
    folder = _write(tmp_path, {"job.yaml": job})
    loaded = load_topology(folder).ray_jobs["gpu-training"]
    assert loaded.num_workers == 3
    assert loaded.use_gpu is True


def test_an_inference_service_needs_a_declared_runtime(tmp_path: Path) -> None:
    isvc = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: fraud}
spec:
  predictor:
    model:
      modelFormat: {name: onnx}
      runtime: falaj-onnx
      storageUri: pvc://falaj-registry/fraud
"""
    folder = _write(tmp_path, {"isvc.yaml": isvc})
    with pytest.raises(ManifestError, match="runtime 'falaj-onnx' is not a ServingRuntime"):
        load_topology(folder)


def test_a_kustomization_with_patches_is_not_read_as_plain_resources(tmp_path: Path) -> None:
    folder = _write(
        tmp_path,
        {"broker.yaml": BROKER},
        kustomization="resources: [broker.yaml]\npatches:\n  - path: more.yaml\n",
    )
    with pytest.raises(ManifestError, match=r"uses patches.*render_overlay"):
        load_topology(folder)


def test_nested_kustomizations_are_followed_in_order(tmp_path: Path) -> None:
    _write(tmp_path / "eventing", {"broker.yaml": BROKER})
    _write(tmp_path / "functions", {"service.yaml": SERVICE})
    trigger = _trigger("t", EventType.OBJECT_CREATED)
    folder = _write(
        tmp_path,
        {"trigger.yaml": trigger},
        kustomization="resources: [eventing, functions, trigger.yaml]\n",
    )
    topology = load_topology(folder)
    assert list(topology.brokers) == ["default"]
    assert list(topology.services) == ["ingest"]


def test_a_missing_folder_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no kustomization\.yaml in"):
        load_topology(tmp_path)


# --- Trigger spec.filters ------------------------------------------------------------------


def test_inference_to_drift_routes_by_the_subscriptions_api_filters(topology: Topology) -> None:
    (trigger,) = [t for t in topology.triggers if t.name == "inference-to-drift"]
    assert trigger.filters == (
        {"exact": {"type": EventType.INFERENCE_LOGGED}},
        {"prefix": {"source": "/falaj/inference"}},
    )
    others = [t.name for t in topology.triggers if t.filters and t is not trigger]
    assert others == ["records-to-ingest", "job-events-to-training"]


def test_nested_filters_are_kept_as_written(tmp_path: Path) -> None:
    filters = """
filters:
  - any:
      - exact: {type: dev.falaj.drift.detected}
      - suffix: {type: .requested}
  - not:
      prefix: {subject: canary/}
"""
    trigger = _trigger("t", EventType.DATA_INGESTED, extra=filters)
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    (loaded,) = load_topology(folder).triggers
    assert loaded.filters == (
        {
            "any": [
                {"exact": {"type": EventType.DRIFT_DETECTED}},
                {"suffix": {"type": ".requested"}},
            ]
        },
        {"not": {"prefix": {"subject": "canary/"}}},
    )
    # The attributes filter is still read; the broker uses it only without filters.
    assert loaded.filter_attributes == {"type": EventType.DATA_INGESTED}


def test_every_malformed_filter_is_named_with_its_path(tmp_path: Path) -> None:
    filters = """
filters:
  - exact: {type: dev.falaj.data.ingested}
    prefix: {source: /falaj}
  - regex: {type: dev}
  - cesql: "type = 'x'"
  - all: []
  - not:
      any:
        - suffix: {type: ""}
        - exact: {Source: /falaj, type: dev.falaj.data.ingested}
  - prefix: {type: dev.falaj.nope}
"""
    trigger = _trigger("t", EventType.DATA_INGESTED, extra=filters)
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    with pytest.raises(ManifestError) as caught:
        load_topology(folder)
    message = str(caught.value)
    assert message.startswith("1 problem(s) in the manifests")
    assert "Trigger 't': expected spec.filters[0] to be an object with exactly one" in message
    assert "got 2 dialects (exact, prefix)" in message
    known = "expected one of exact, prefix, suffix, all, any, not"
    assert f"spec.filters[1] has the unknown dialect 'regex'; {known}" in message
    assert f"spec.filters[2].cesql: CESQL has no local equivalent; {known}" in message
    assert "expected spec.filters[3].all to be a non-empty list" in message
    assert "spec.filters[4].not.any[0].suffix.type to be a non-empty string" in message
    assert "spec.filters[4].not.any[1].exact: attribute name 'Source' is not a" in message
    assert "spec.filters[5].prefix.type 'dev.falaj.nope' matches no event type" in message


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("filters: {exact: {type: x}}", r"expected spec.filters to be a list"),
        ("filters:\n  - exact: {source: 7}", r"spec.filters\[0\].exact.source to be a non-empty"),
        ("filters:\n  - suffix: {my-ext: x}", r"attribute name 'my-ext' is not a CloudEvents"),
        ("filters:\n  - not: [exact: {id: x}]", r"expected spec.filters\[0\].not to be an object"),
    ],
)
def test_a_malformed_filter_is_refused(tmp_path: Path, filters: str, message: str) -> None:
    trigger = _trigger("t", EventType.DATA_INGESTED, extra=filters + "\n")
    folder = _write(tmp_path, {"all.yaml": BROKER + "---\n" + SERVICE + "---\n" + trigger})
    with pytest.raises(ManifestError, match=message):
        load_topology(folder)


# --- RabbitmqSource and PingSource ------------------------------------------------------------


def _rabbitmq_source(resources: str = "queueName: q\n    exchangeName: x", extra: str = "") -> str:
    return f"""
apiVersion: sources.knative.dev/v1alpha1
kind: RabbitmqSource
metadata: {{name: records}}
spec:
  rabbitmqClusterReference: {{connectionSecret: {{name: rabbit}}}}
  rabbitmqResourcesConfig:
    {resources}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
{textwrap.indent(textwrap.dedent(extra), "  ")}"""


def _ping_source(fields: str) -> str:
    return f"""
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {{name: nightly}}
spec:
{textwrap.indent(textwrap.dedent(fields), "  ")}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""


PING_FIELDS = """
schedule: "0 2 * * *"
timezone: Asia/Dubai
contentType: application/json
data: '{"model": "fraud"}'
ceOverrides: {extensions: {dataregion: me-central-1}}
"""


def _load_one(tmp_path: Path, text: str) -> Topology:
    return load_topology(_write(tmp_path, {"broker.yaml": BROKER, "source.yaml": text}))


def test_a_predeclared_queue_needs_no_exchange_and_keeps_its_vhost(tmp_path: Path) -> None:
    source = _load_one(
        tmp_path,
        _rabbitmq_source(
            "queueName: q\n    predeclared: true\n    vhost: bank\n    parallelism: 5",
            extra="delivery: {backoffPolicy: linear, backoffDelay: PT2S, retry: 3}",
        ),
    ).sources["records"]
    assert source.command[3:] == (
        "--name=records",
        "--namespace=default",
        "--queue=q",
        "--parallelism=5",
        "--backoff-policy=linear",
        "--backoff-delay=2.0",
        "--vhost=bank",
        "--predeclared",
    )


@pytest.mark.parametrize(
    ("resources", "extra", "problem"),
    [
        (
            "queueNmae: q\n    exchangeName: x",
            "",
            "spec.rabbitmqResourcesConfig has unknown field(s) queueNmae; expected only "
            "exchangeName, parallelism, predeclared, queueName, vhost",
        ),
        ("queueName: q", "", "spec.rabbitmqResourcesConfig.exchangeName is missing"),
        (
            "queueName: q\n    exchangeName: x\n    parallelism: 0",
            "",
            "expected spec.rabbitmqResourcesConfig.parallelism to be 1 to 1000, got 0",
        ),
        (
            "queueName: q\n    exchangeName: x",
            "delivery: {backoffDelay: 2s}",
            "spec.delivery.backoffDelay: expected an ISO-8601 duration",
        ),
        (
            "queueName: q\n    exchangeName: x",
            "delivery: {deadLetterSink: {uri: http://x}}",
            "spec.delivery has unknown field(s) deadLetterSink",
        ),
    ],
)
def test_a_rabbitmq_source_the_local_consumer_cannot_run_is_refused(
    tmp_path: Path, resources: str, extra: str, problem: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        _load_one(tmp_path, _rabbitmq_source(resources, extra))
    assert f"{tmp_path / 'source.yaml'}: RabbitmqSource 'records': {problem}" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("schedule:", "schedul:"), "spec has unknown field(s) schedul"),
        (('"0 2 * * *"', '"@every 24h"'), "@every is not supported by Knative's PingSource"),
        (("Asia/Dubai", "Asia/Dubay"), "timezone 'Asia/Dubay' is not an IANA time zone"),
        (('{"model": "fraud"}', '{"modle": "fraud"}'), "spec.data does not fit the catalog's Ping"),
        (('\'{"model": "fraud"}\'', "'model=fraud'"), "spec.data is not JSON"),
        (("application/json", "text/plain"), "expected spec.contentType application/json"),
        (("dataregion: me-central-1", "region: me-central-1"), "extensions.dataregion is missing"),
        (
            ("data: ", "dataBase64: e30=\ndata: "),
            "spec.data and spec.dataBase64 are exclusive",
        ),
    ],
)
def test_a_ping_source_the_broker_would_refuse_is_refused(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        _load_one(tmp_path, _ping_source(PING_FIELDS.replace(*change)))
    assert f"{tmp_path / 'source.yaml'}: PingSource 'nightly': " in str(caught.value)
    assert problem in str(caught.value)


def test_ping_data_may_be_given_in_base64(tmp_path: Path) -> None:
    fields = PING_FIELDS.replace(
        'data: \'{"model": "fraud"}\'', "dataBase64: eyJtb2RlbCI6ICJmcmF1ZCJ9"
    )
    source = _load_one(tmp_path, _ping_source(fields)).sources["nightly"]
    assert "--data-base64=eyJtb2RlbCI6ICJmcmF1ZCJ9" in source.command


def test_the_outermost_kustomization_sets_the_namespace(tmp_path: Path) -> None:
    inner = _write(
        tmp_path / "eventing",
        {"broker.yaml": BROKER, "source.yaml": _ping_source(PING_FIELDS)},
        kustomization="namespace: inner\nresources: [broker.yaml, source.yaml]\n",
    )
    assert load_topology(inner).sources["nightly"].namespace == "inner"
    outer = _write(tmp_path, {}, kustomization="namespace: bank\nresources: [eventing]\n")
    assert load_topology(outer).sources["nightly"].namespace == "bank"
    own = _ping_source(PING_FIELDS).replace("{name: nightly}", "{name: nightly, namespace: ops}")
    assert _load_one(tmp_path / "own", own).sources["nightly"].namespace == "ops"
