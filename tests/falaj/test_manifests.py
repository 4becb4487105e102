"""The manifests read into the local runtime's topology."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from falaj.errors import ManifestError
from falaj.events import EventType
from falaj.manifests import (
    Resource,
    build_topology,
    load_topology,
    parse_duration,
    render_overlay,
)
from falaj.settings import PROJECT_ROOT
from falaj.topology import BackoffPolicy, DeliverySpec, Topology

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


def test_six_triggers_route_each_event_type_to_its_function(topology: Topology) -> None:
    routes = {
        t.name: (t.broker, dict(t.filter_attributes), t.subscriber) for t in topology.triggers
    }
    assert routes == {
        "storage-to-ingest": ("default", {"type": EventType.OBJECT_FINALIZED}, "ingest"),
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
        "registered-to-rollout": ("default", {"type": EventType.MODEL_REGISTERED}, "rollout"),
        "inference-to-drift": ("default", {"type": EventType.INFERENCE_LOGGED}, "drift"),
    }
    assert all(t.subscriber_uri is None for t in topology.triggers)


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
    (source,) = topology.sources.values()
    assert source.name == "storage-source"
    assert source.kind == "ContainerSource"
    assert source.command[:3] == ("python", "-m", "eventing.storage_source")
    assert source.sink_broker == "default"


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


def test_rendered_local_overlay_yields_the_same_topology(topology: Topology) -> None:
    overlay = PROJECT_ROOT / "manifests" / "overlays" / "local"
    rendered = build_topology(Resource(origin=str(overlay), doc=d) for d in render_overlay(overlay))
    assert rendered.brokers == topology.brokers
    assert rendered.services == topology.services
    assert rendered.sources == topology.sources
    assert rendered.inference_services == topology.inference_services
    assert rendered.ray_jobs == topology.ray_jobs
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
            "wiring.yaml": SERVICE + "---\n" + _trigger("t", EventType.OBJECT_FINALIZED),
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
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    folder = _write(tmp_path, {"deploy.yaml": deployment})
    with pytest.raises(ManifestError, match=r"deploy.yaml: Deployment 'web': apps/v1 Deployment"):
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
    trigger = _trigger("t", EventType.OBJECT_FINALIZED)
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
