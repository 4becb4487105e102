"""`falaj policy check`: every destination the manifests and settings name, and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from falaj.cli.main import app
from falaj.policy_check import check, manifest_destinations
from falaj.residency import ResidencyPolicy, without_credentials
from falaj.settings import PROJECT_ROOT

runner = CliRunner()

POLICY = ResidencyPolicy(
    allowed_regions=frozenset({"me-central-1"}),
    local_region="me-central-1",
    storage_regions={"https://logs.example.eu": "eu-west-1", "s3://bank-raw": "me-central-1"},
)

FOREIGN = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-eu}
spec:
  subscriber: {uri: "https://logs.example.eu/collect"}
  delivery:
    deadLetterSink: {ref: {apiVersion: v1, kind: Service, name: dead-letters}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: fraud}
spec:
  predictor:
    logger: {url: "http://broker-ingress.knative-eventing.svc.cluster.local/falaj/default"}
    model: {storageUri: "s3://bank-raw/models/fraud"}
"""


def test_the_shipped_manifests_keep_everything_in_region() -> None:
    found = check(POLICY, manifest_destinations(PROJECT_ROOT / "manifests"))
    assert found, "the manifests name at least the models' storage"
    assert [d for d in found if not d.allowed] == []


def test_a_foreign_sink_is_named_and_in_cluster_addresses_are_in_region(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(FOREIGN)
    verdicts = {d.location: d for d in check(POLICY, manifest_destinations(tmp_path))}
    foreign = verdicts["https://logs.example.eu/collect"]
    assert (foreign.region, foreign.allowed) == ("eu-west-1", False)
    assert foreign.source == "extra.yaml: Trigger/to-eu spec.subscriber.uri"
    logger = verdicts["http://broker-ingress.knative-eventing.svc.cluster.local/falaj/default"]
    assert logger.allowed and logger.region == "me-central-1"
    assert verdicts["s3://bank-raw/models/fraud"].allowed
    assert len(verdicts) == 3  # the dead-letter ref is in-cluster: no address to judge


def test_the_cli_exits_1_on_a_leak_and_never_shows_a_password(tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(FOREIGN)
    env = {
        "FALAJ_STORAGE_REGIONS": "https://logs.example.eu=eu-west-1",
        "FALAJ_RABBITMQ_URL": "amqp://falaj:hunter2@mq.example.eu:5672/",
        "COLUMNS": "250",
    }
    result = runner.invoke(
        app,
        ["policy", "check", "--manifests", str(tmp_path), "--home", str(tmp_path / ".f"), "--json"],
        env=env,
    )
    assert result.exit_code == 1, result.output
    verdicts = json.loads(result.output)
    assert "hunter2" not in result.output
    rabbit = next(v for v in verdicts if v["source"] == "FALAJ_RABBITMQ_URL")
    assert rabbit == {
        "source": "FALAJ_RABBITMQ_URL",
        "location": "amqp://***@mq.example.eu:5672/",
        "region": None,
        "allowed": False,
    }
    result = runner.invoke(
        app, ["policy", "check", "--home", str(tmp_path / ".f")], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0 and "destinations outside the allowed regions" in result.output


def test_masking_keeps_everything_but_the_credentials() -> None:
    assert (
        without_credentials("redis://:s3cret@cache.local:6379/0")
        == "redis://***@cache.local:6379/0"
    )
    assert without_credentials("https://example.ae/x") == "https://example.ae/x"
