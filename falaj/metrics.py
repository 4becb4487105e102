"""Falaj's Prometheus metrics: the one catalog, and what every process's ``/metrics`` serves.

Every metric of the platform is declared here, once, with its labels; the
alert rules and the dashboard in ``manifests/`` are written against these
names (``METRIC_NAMES`` lists the samples a scrape shows). A process builds one
``Metrics`` in its ``main()`` (``Metrics.for_process``, which adds the
standard ``process_*`` and ``python_*`` collectors) and hands it down; each
instance has its own registry, so two brokers in one test never share a count.
A labelled metric nobody has used yet shows its ``# HELP``/``# TYPE`` lines
and no sample, so every process can carry the whole catalog.

Labels are bounded: broker and Trigger names come from the topology, event
types from the catalog, model, dataset and feature names from what the
platform already validated; never an event id, a request id or free text.

Who counts what:

- broker: events accepted (``eventing.broker``), delivered, retried,
  dead-lettered and the time each attempt took (counted by the dispatcher
  process, sent to the broker with its acks: ``eventing.dispatcher``);
- ingest: rows and files, by outcome;
- router: every inference request that names a served model, by version,
  variant and HTTP status code, with its end-to-end time; canary verdicts the
  guard carried out; the payload log's own counts;
- drift: the last closed window's scores, and each ``drift.detected``;
- training launcher: each run's end and how long it took (submission to end);
- control API: what people did through the dashboard or its JSON (log in,
  promote, roll back, replay, issue and revoke tokens), by outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: The ``Content-Type`` of a ``/metrics`` answer: the text format 0.0.4, which every
#: Prometheus reads (prometheus_client's "latest", 1.0.0, is for UTF-8 names; ours are not).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Request and delivery times: a millisecond to half a minute (the delivery timeout).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Training runs: a demo's seconds to a day on GPUs.
TRAINING_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0)


class RowOutcome(StrEnum):
    INGESTED = "ingested"
    QUARANTINED = "quarantined"


class ActionOutcome(StrEnum):
    SUCCESS = "success"
    #: The caller may not (401, 403), as audited by ``auth.refused``.
    REFUSED = "refused"
    #: Allowed, but it could not be done (a split with no canary, a broker that is down).
    FAILED = "failed"


class FileOutcome(StrEnum):
    INGESTED = "ingested"
    REJECTED = "rejected"


class TrainingOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: Every sample name a scrape can show with the ``falaj_`` prefix (``_created`` is left out).
METRIC_NAMES: frozenset[str] = frozenset(
    {
        "falaj_broker_events_accepted_total",
        "falaj_broker_events_delivered_total",
        "falaj_broker_delivery_retries_total",
        "falaj_broker_dead_letters_total",
        "falaj_broker_delivery_seconds_bucket",
        "falaj_broker_delivery_seconds_count",
        "falaj_broker_delivery_seconds_sum",
        "falaj_ingest_rows_total",
        "falaj_ingest_files_total",
        "falaj_inference_requests_total",
        "falaj_inference_request_seconds_bucket",
        "falaj_inference_request_seconds_count",
        "falaj_inference_request_seconds_sum",
        "falaj_drift_score",
        "falaj_drift_detected_total",
        "falaj_training_runs_total",
        "falaj_training_duration_seconds_bucket",
        "falaj_training_duration_seconds_count",
        "falaj_training_duration_seconds_sum",
        "falaj_canary_verdicts_total",
        "falaj_payload_log_events_total",
        "falaj_control_actions_total",
    }
)

#: Reads the payload log's counts, by outcome (sent, failed, dropped, skipped).
PayloadCounts = Callable[[], Mapping[str, int]]


class _PayloadLog(Collector):
    """``falaj_payload_log_events_total``: the payload log keeps the counts, read at each scrape."""

    def __init__(self) -> None:
        self.counts: PayloadCounts | None = None

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "falaj_payload_log_events",
            "Predictions the router's payload log handled, by outcome "
            "(sent, failed, dropped, skipped).",
            labels=("outcome",),
        )
        if self.counts is not None:
            for outcome, count in self.counts().items():
                family.add_metric((outcome,), count)
        yield family


class _Scraped(Collector):
    """A registry as ``/metrics`` shows it: without the ``_created`` samples.

    prometheus_client adds a ``_created`` timestamp per child by default, a
    second series for every counter and histogram that no rule or panel reads;
    the switch that turns them off is process-wide, this is per registry.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """The catalog, registered on a registry of this instance's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        on = self.registry
        # -- broker
        self.broker_events_accepted = Counter(
            "falaj_broker_events_accepted",
            "Events the broker stored (duplicates of a stored event not counted), by type.",
            ("broker", "type"),
            registry=on,
        )
        self.broker_events_delivered = Counter(
            "falaj_broker_events_delivered",
            "Deliveries a Trigger's subscriber acknowledged with a 2xx.",
            ("broker", "trigger"),
            registry=on,
        )
        self.broker_delivery_retries = Counter(
            "falaj_broker_delivery_retries",
            "Failed delivery attempts that will be tried again (the Trigger's DeliverySpec).",
            ("broker", "trigger"),
            registry=on,
        )
        self.broker_dead_letters = Counter(
            "falaj_broker_dead_letters",
            "Dead letters: deliveries given up, replies that were no event, and requests "
            'rejected at ingress (trigger="").',
            ("broker", "trigger"),
            registry=on,
        )
        self.broker_delivery_seconds = Histogram(
            "falaj_broker_delivery_seconds",
            "One delivery attempt, from sending the event to the subscriber's answer "
            "(or the timeout).",
            ("broker", "trigger"),
            buckets=LATENCY_BUCKETS,
            registry=on,
        )
        # -- ingest
        self.ingest_rows = Counter(
            "falaj_ingest_rows",
            "Rows the ingest function read, by outcome (ingested, quarantined).",
            ("dataset", "outcome"),
            registry=on,
        )
        self.ingest_files = Counter(
            "falaj_ingest_files",
            "Landed files the ingest function took in or rejected whole, by outcome.",
            ("dataset", "outcome"),
            registry=on,
        )
        # -- inference (the router)
        self.inference_requests = Counter(
            "falaj_inference_requests",
            "Inference requests to a served model, by the version and variant that answered "
            '(empty when none was chosen) and the HTTP status code (errors: code=~"5..").',
            ("model", "version", "variant", "code"),
            registry=on,
        )
        self.inference_request_seconds = Histogram(
            "falaj_inference_request_seconds",
            "The router's end-to-end time per inference request, by version and variant.",
            ("model", "version", "variant"),
            buckets=LATENCY_BUCKETS,
            registry=on,
        )
        self.canary_verdicts = Counter(
            "falaj_canary_verdicts",
            "Canaries the router's guard promoted or rolled back.",
            ("model", "action"),
            registry=on,
        )
        self._payload_log = _PayloadLog()
        on.register(self._payload_log)
        # -- drift
        self.drift_score = Gauge(
            "falaj_drift_score",
            "A statistic of a feature (or the prediction) in the last closed window of a "
            "model version, against its training-time profile.",
            ("model", "version", "feature", "statistic"),
            registry=on,
        )
        self.drift_detected = Counter(
            "falaj_drift_detected",
            "drift.detected events the drift function raised.",
            ("model",),
            registry=on,
        )
        # -- training
        self.training_runs = Counter(
            "falaj_training_runs",
            "Training runs that ended, by outcome (succeeded, failed).",
            ("model", "outcome"),
            registry=on,
        )
        self.training_duration_seconds = Histogram(
            "falaj_training_duration_seconds",
            "How long a training run took, from its submission to its end.",
            ("model",),
            buckets=TRAINING_BUCKETS,
            registry=on,
        )

        # -- control API
        self.control_actions = Counter(
            "falaj_control_actions",
            "What people did through the control API, by action (login, promote, rollback, "
            "replay, token-issue, token-revoke) and outcome (success, refused, failed).",
            ("action", "outcome"),
            registry=on,
        )

    @classmethod
    def for_process(cls) -> Metrics:
        """The catalog with the process's own CPU, memory, GC and Python version beside it."""
        registry = CollectorRegistry()
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(standard)
        return cls(registry)

    def read_payload_log(self, counts: PayloadCounts) -> None:
        """Show the payload log's counts (kept by the payload log) at every scrape."""
        self._payload_log.counts = counts

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as ``GET /metrics`` answers."""
        return generate_latest(_Scraped(self.registry))


__all__ = [
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "ActionOutcome",
    "FileOutcome",
    "Metrics",
    "PayloadCounts",
    "RowOutcome",
    "TrainingOutcome",
]
