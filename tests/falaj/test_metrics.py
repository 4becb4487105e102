"""The metrics catalog: the names the alert rules and dashboard use, and what a scrape shows."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from falaj.metrics import METRIC_NAMES, Metrics


def every_metric_once(metrics: Metrics) -> None:
    metrics.broker_events_accepted.labels("default", "data.ingested").inc()
    metrics.broker_events_delivered.labels("default", "ingest").inc()
    metrics.broker_delivery_retries.labels("default", "ingest").inc()
    metrics.broker_dead_letters.labels("default", "").inc()
    metrics.broker_delivery_seconds.labels("default", "ingest").observe(0.01)
    metrics.ingest_rows.labels("transactions", "ingested").inc(10)
    metrics.ingest_files.labels("transactions", "rejected").inc()
    metrics.inference_requests.labels("fraud", "1", "stable", "200").inc()
    metrics.inference_request_seconds.labels("fraud", "1", "stable").observe(0.004)
    metrics.canary_verdicts.labels("fraud", "rollback").inc()
    metrics.read_payload_log(lambda: {"sent": 3, "dropped": 0})
    metrics.drift_score.labels("fraud", "1", "amount", "psi").set(0.4)
    metrics.drift_detected.labels("fraud").inc()
    metrics.training_runs.labels("fraud", "succeeded").inc()
    metrics.training_duration_seconds.labels("fraud").observe(95.0)
    metrics.control_actions.labels("promote", "success").inc()


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_metric_names_are_exactly_the_samples_the_catalog_can_show() -> None:
    metrics = Metrics()
    every_metric_once(metrics)
    shown = sample_names(metrics.exposition().decode())
    assert {n for n in shown if n.startswith("falaj_")} == METRIC_NAMES
    # Timestamps of creation are a second series per child that nothing reads.
    assert not any(name.endswith("_created") for name in shown)


def test_an_unused_metric_shows_its_type_and_no_sample() -> None:
    text = Metrics().exposition().decode()
    assert "# TYPE falaj_inference_request_seconds histogram" in text
    assert "# TYPE falaj_payload_log_events_total counter" in text
    assert sample_names(text) == set()


def test_each_catalog_counts_on_its_own_and_a_process_adds_its_own_collectors() -> None:
    first, second = Metrics(), Metrics.for_process()
    first.ingest_rows.labels("transactions", "quarantined").inc(2)
    assert 'falaj_ingest_rows_total{dataset="transactions",outcome="quarantined"} 2.0' in (
        first.exposition().decode()
    )
    shown = sample_names(second.exposition().decode())
    assert not {n for n in shown if n.startswith("falaj_")}
    assert {"process_cpu_seconds_total", "python_info"} <= shown


def test_the_payload_log_is_read_at_each_scrape() -> None:
    counts = {"sent": 1, "failed": 0}
    metrics = Metrics()
    metrics.read_payload_log(lambda: counts)
    counts["sent"] = 5
    assert 'falaj_payload_log_events_total{outcome="sent"} 5.0' in metrics.exposition().decode()
