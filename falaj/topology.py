"""What the manifests declare, as the local runtime needs it ("one spec, two runtimes").

``falaj.manifests.load_topology`` reads ``manifests/base`` (Knative Services,
Broker, Triggers, sources, InferenceServices, RayJob, the control API's
Deployment) into these frozen types;
the local broker, the router and ``falaj up`` run from them, so the wiring is
declared once, in the same YAML a cluster applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class BackoffPolicy(StrEnum):
    EXPONENTIAL = "exponential"
    LINEAR = "linear"


@dataclass(frozen=True, kw_only=True)
class DeliverySpec:
    """Knative's ``delivery``: retries, backoff, timeouts and where failures go."""

    retry: int = 0
    #: Knative backs off only when both the policy and the delay are given.
    backoff_policy: BackoffPolicy | None = None
    backoff_delay_s: float | None = None
    #: ``timeout``: how long one attempt may take; None waits for the broker's default.
    timeout_s: float | None = None
    #: ``retryAfterMax``: honour a 429/503's Retry-After up to this long; None ignores it.
    retry_after_max_s: float | None = None
    #: A Knative Service name (``ref``) or an absolute URI; None keeps failures in the broker only.
    dead_letter_sink: str | None = None


@dataclass(frozen=True, kw_only=True)
class BrokerSpec:
    name: str
    delivery: DeliverySpec = field(default_factory=DeliverySpec)


@dataclass(frozen=True, kw_only=True)
class TriggerSpec:
    name: str
    broker: str
    #: ``spec.filter.attributes``: exact match on every listed attribute.
    filter_attributes: Mapping[str, str] = field(default_factory=dict)
    #: ``spec.filters``: Subscriptions API expressions, as written; when any are
    #: given they replace ``filter_attributes`` (Knative's precedence).
    filters: tuple[Mapping[str, Any], ...] = ()
    #: The subscriber: a Knative Service name, resolved to a URL at run time.
    subscriber: str
    #: An absolute ``subscriber.uri``, when the subscriber is not a Service ref.
    subscriber_uri: str | None = None
    #: None means the Broker's delivery applies.
    delivery: DeliverySpec | None = None


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """A Knative Service: one function (or other HTTP component)."""

    name: str
    #: The container's command + args, run as-is locally with the project's Python.
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    container_concurrency: int = 0
    min_scale: int = 0
    max_scale: int = 1


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """A source (ContainerSource, RabbitmqSource, PingSource) that sends to a broker.

    ``command`` is what runs locally: a ContainerSource's own container
    command, or the local counterpart of a Knative source with the resource's
    fields as its arguments.
    """

    name: str
    kind: str
    command: tuple[str, ...] = ()
    sink_broker: str = "default"
    #: The resource's namespace; Knative's sources name it in the events' ``source``.
    namespace: str = "default"
    #: The ``Settings`` field the local process cannot run without (a RabbitmqSource
    #: needs ``rabbitmq_url``); while it is unset, ``falaj up`` does not start it.
    requires_setting: str | None = None
    #: What the local process does, for ``falaj up``'s progress lines.
    summary: str = ""


@dataclass(frozen=True, kw_only=True)
class InferenceServiceSpec:
    name: str
    #: The registry model the predictor serves.
    model: str
    canary_traffic_percent: int = 10
    min_replicas: int = 0
    max_replicas: int = 1
    runtime: str = "falaj-onnx"
    storage_uri: str = ""


@dataclass(frozen=True, kw_only=True)
class RayJobSpec:
    name: str
    entrypoint: str
    num_workers: int = 2
    use_gpu: bool = False


@dataclass(frozen=True, kw_only=True)
class DeploymentSpec:
    """A Deployment: one process that is always on, never woken by an event.

    The one the local runtime knows is the control API (``control.yaml``):
    ``falaj up`` runs its command on ``settings.control_port``.
    """

    name: str
    #: The container's command + args, run as-is locally with the project's Python.
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: The readiness probe's ``httpGet.path``; None: ready once the port accepts.
    ready_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class Topology:
    brokers: Mapping[str, BrokerSpec]
    triggers: tuple[TriggerSpec, ...]
    services: Mapping[str, ServiceSpec]
    sources: Mapping[str, SourceSpec]
    inference_services: Mapping[str, InferenceServiceSpec]
    ray_jobs: Mapping[str, RayJobSpec]
    deployments: Mapping[str, DeploymentSpec] = field(default_factory=dict)
