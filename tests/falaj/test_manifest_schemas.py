"""Schema conversion, strict mode, readable errors and the schema cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from falaj.errors import ConfigError
from falaj.manifest_schemas import SchemaStore, convert_schema, validate_manifest

TINY_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "brokers.eventing.knative.dev"},
    "spec": {
        "group": "eventing.knative.dev",
        "names": {"kind": "Broker"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "retry": {"type": "integer", "nullable": True},
                                    "extra": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                        "properties": {"known": {"type": "string"}},
                                    },
                                },
                            }
                        },
                    }
                },
            },
            {"name": "v1beta1", "served": False, "schema": {"openAPIV3Schema": {}}},
        ],
    },
}


def _broker(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "default"},
        "spec": spec,
    }


@pytest.fixture
def schemas_dir(tmp_path: Path) -> Path:
    crd = tmp_path / "schemas" / "knative-eventing" / "broker.yaml"
    crd.parent.mkdir(parents=True)
    crd.write_text(yaml.safe_dump(TINY_CRD))
    return crd.parent.parent


def test_nullable_becomes_a_null_type() -> None:
    converted = convert_schema({"type": "string", "nullable": True}, strict=False)
    assert converted == {"type": ["string", "null"]}


def test_strict_closes_objects_that_list_properties_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
        },
    }
    converted = convert_schema(schema, strict=True)
    properties = converted["properties"]
    assert properties["closed"]["additionalProperties"] is False
    assert "additionalProperties" not in properties["open"]
    assert properties["map"]["additionalProperties"] == {"type": "string"}
    assert properties["list"]["items"]["additionalProperties"] is False
    assert converted["additionalProperties"] is False
    assert converted["required"] == ["apiVersion", "kind", "metadata"]
    assert set(properties) >= {"apiVersion", "kind", "metadata"}


def test_a_property_named_like_a_keyword_is_a_property() -> None:
    # "type" and "properties" here are field names, not schema keywords.
    schema = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "nullable": True},
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
        },
    }
    converted = convert_schema(schema, strict=False)
    assert converted["properties"]["type"] == {"type": ["string", "null"]}
    assert converted["properties"]["properties"]["properties"] == {"x": {"type": "integer"}}


def test_strict_mode_bites_where_the_lenient_schema_does_not(schemas_dir: Path) -> None:
    store = SchemaStore(schemas_dir)
    bad = _broker(retry=3, retyr=4)
    assert store.validate(bad, strict=False) == []
    assert store.validate(bad) == [
        "Broker/default: spec: Additional properties are not allowed ('retyr' was unexpected)"
    ]
    # Unknown fields stay allowed where the CRD preserves them.
    assert store.validate(_broker(retry=None, extra={"anything": 1})) == []


def test_errors_name_the_path_of_the_field(schemas_dir: Path) -> None:
    store = SchemaStore(schemas_dir)
    assert store.validate(_broker(retry="three")) == [
        "Broker/default: spec.retry: 'three' is not of type 'integer', 'null'"
    ]
    nameless = _broker()
    nameless["metadata"] = {}
    assert store.validate(nameless) == ["Broker: metadata: 'name' is a required property"]


def test_an_unserved_version_or_unknown_kind_is_an_error_not_a_crash(schemas_dir: Path) -> None:
    store = SchemaStore(schemas_dir)
    old = _broker() | {"apiVersion": "eventing.knative.dev/v1beta1"}
    assert store.validate(old) == [
        "Broker/default: Broker is not served at version 'v1beta1'; "
        "expected apiVersion eventing.knative.dev/v1"
    ]
    (line,) = store.validate(_broker() | {"apiVersion": "apps/v1", "kind": "Deployment"})
    assert line.startswith("Deployment/default: no schema for Deployment in 'apps/v1'")
    assert store.validate({"kind": "Broker"}) == [
        "expected a Kubernetes object with string 'apiVersion' and 'kind', "
        "got apiVersion=None, kind='Broker'"
    ]


def test_a_missing_schemas_folder_says_where_it_looked(tmp_path: Path) -> None:
    store = SchemaStore(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="shared/schemas folder beside the repository"):
        store.validate(_broker())


def test_core_kinds_get_structural_checks(schemas_dir: Path) -> None:
    store = SchemaStore(schemas_dir)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "falaj-config"},
        "data": {"FALAJ_REGION": "me-central-1", "FALAJ_DRIFT_WINDOW": 200},
    }
    assert store.validate(config_map) == [
        "ConfigMap/falaj-config: data.FALAJ_DRIFT_WINDOW: 200 is not of type 'string'"
    ]


def test_converted_schemas_are_cached_on_disk_by_source_hash(
    schemas_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert SchemaStore(schemas_dir, cache_dir=cache).validate(_broker(retyr=1)) != []
    (entry,) = cache.glob("broker-v1-strict-*.json")

    # A fresh store (a new process) reads the cache instead of the YAML: prove
    # it by planting a schema there that accepts anything.
    entry.write_text(json.dumps({"type": "object"}))
    assert SchemaStore(schemas_dir, cache_dir=cache).validate(_broker(retyr=1)) == []

    # Changing the source file changes its hash, so the planted entry is ignored.
    crd = schemas_dir / "knative-eventing" / "broker.yaml"
    crd.write_text(crd.read_text() + "\n# edited\n")
    assert SchemaStore(schemas_dir, cache_dir=cache).validate(_broker(retyr=1)) != []


def test_validate_manifest_uses_the_shared_schemas() -> None:
    # The real (lenient) Knative Broker CRD catches a type error.
    problems = validate_manifest(_broker(delivery={"retry": "three"}))
    assert problems == ["Broker/default: spec.delivery.retry: 'three' is not of type 'integer'"]
