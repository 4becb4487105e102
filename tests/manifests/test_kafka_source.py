"""The KafkaSource component, rendered into an overlay as a cluster user adds it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from falaj.manifest_schemas import SchemaStore
from falaj.manifests import render_overlay
from tests.manifests.conftest import BASE, MANIFESTS
from tests.manifests.validation import CoreSchemas, doc_problems

COMPONENT = MANIFESTS / "components" / "kafka-source"


def _overlay(folder: Path) -> Path:
    """An overlay of the base plus the component (kustomize wants paths relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{os.path.relpath(BASE, folder)}]\n"
        f"components: [{os.path.relpath(COMPONENT, folder)}]\n"
    )
    return folder


def test_the_component_renders_a_strictly_valid_kafka_source_sinking_to_the_broker(
    schema_store: SchemaStore, core_schemas: CoreSchemas, tmp_path: Path
) -> None:
    docs = render_overlay(_overlay(tmp_path / "overlay"))

    problems = [line for doc in docs for line in doc_problems(doc, schema_store, core_schemas)]
    assert problems == []
    [source] = [doc for doc in docs if doc["kind"] == "KafkaSource"]
    assert source["apiVersion"] == "sources.knative.dev/v1beta1"
    assert source["metadata"]["namespace"] == "falaj"
    spec: dict[str, Any] = source["spec"]
    assert spec["topics"] and spec["bootstrapServers"]
    # Every Falaj event names its region; Knative's KafkaSource adds it only from here.
    assert spec["ceOverrides"]["extensions"]["dataregion"] == "me-central-1"
    sink = spec["sink"]["ref"]
    brokers = {
        (doc["metadata"]["name"], doc["metadata"]["namespace"])
        for doc in docs
        if doc["kind"] == "Broker"
    }
    assert (sink["kind"], (sink["name"], "falaj") in brokers) == ("Broker", True)


def test_a_misspelt_kafka_source_field_fails_strict_validation(
    schema_store: SchemaStore, tmp_path: Path
) -> None:
    [source] = [
        doc
        for doc in render_overlay(_overlay(tmp_path / "overlay"))
        if doc["kind"] == "KafkaSource"
    ]
    source["spec"]["topic"] = source["spec"].pop("topics")

    problems = schema_store.validate(source, strict=True)

    assert any("'topic' was unexpected" in line for line in problems), problems


def test_the_kafka_source_is_not_in_the_base_the_local_runtime_reads() -> None:
    assert "kafka" not in (BASE / "kustomization.yaml").read_text().lower()
