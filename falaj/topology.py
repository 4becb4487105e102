"""What the manifests declare, as the local runtime needs it ("one spec, two runtimes").

``falaj.manifests.load_topology`` reads ``manifests/base`` (Knative Services,
Broker, Triggers, sources, InferenceServices, RayJob) into these frozen types;
the local broker, the router and ``falaj up`` run from them, so the wiring is
declared once, in the same YAML a cluster applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class BackoffPolicy(StrEnum):
    EXPONENTIAL = "exponential"
    LINEAR = "linear"


@dataclass(frozen=True, kw_only=True)
class DeliverySpec:
    """Knative's ``delivery``: retries, backoff and where failures go."""

    retry: int = 0
    backoff_policy: BackoffPolicy = BackoffPolicy.EXPONENTIAL
    backoff_delay_s: float = 0.2
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
    """A source (ContainerSource, PingSource, ...) that sends to a broker."""

    name: str
    kind: str
    command: tuple[str, ...] = ()
    sink_broker: str = "default"


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
class Topology:
    brokers: Mapping[str, BrokerSpec]
    triggers: tuple[TriggerSpec, ...]
    services: Mapping[str, ServiceSpec]
    sources: Mapping[str, SourceSpec]
    inference_services: Mapping[str, InferenceServiceSpec]
    ray_jobs: Mapping[str, RayJobSpec]
