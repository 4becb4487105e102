"""``falaj policy check``: everywhere data could go, and whether the residency policy allows it.

The boundaries refuse at run time (``falaj.residency``); this answers before
anything runs. It lists every outbound destination a deployment names: in the
manifests, every ``uri`` (a sink, a subscriber, a dead-letter sink), ``url`` (a
payload logger) and ``storageUri`` (a model's storage); in the settings, the
broker, the Ray cluster, the identity provider, RabbitMQ, Feast's online store
and registry. Each gets its region from the same policy the boundaries use; an
in-cluster address (a ``ref``, a ``*.svc`` host, a bare service name) is in the
cluster's own region. Credentials in a URL are never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from falaj.residency import ResidencyPolicy, without_credentials
from falaj.settings import Settings

#: Manifest keys whose value is somewhere data is sent or read from.
DESTINATION_KEYS = frozenset({"uri", "url", "storageUri"})


@dataclass(frozen=True)
class Destination:
    """One place data could go, where it was named, and the policy's verdict."""

    source: str
    location: str
    region: str | None
    allowed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "location": self.location,
            "region": self.region,
            "allowed": self.allowed,
        }


def check(policy: ResidencyPolicy, named: Iterable[tuple[str, str]]) -> list[Destination]:
    """The verdict on each (source, location)."""
    verdicts = []
    for source, location in named:
        region = (
            policy.destination_region(location) if "://" in location else policy.region_of(location)
        )
        verdicts.append(
            Destination(
                source=source,
                location=without_credentials(location),
                region=region,
                allowed=region in policy.allowed_regions,
            )
        )
    return verdicts


def manifest_destinations(directory: Path) -> list[tuple[str, str]]:
    """Every destination the YAML manifests under ``directory`` name."""
    found = []
    for path in sorted(directory.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, Mapping):
                continue
            kind = document.get("kind", "?")
            name = (document.get("metadata") or {}).get("name", "?")
            for where, value in _walk(document, ""):
                found.append((f"{path.relative_to(directory)}: {kind}/{name} {where}", value))
    return found


def configured_destinations(settings: Settings) -> list[tuple[str, str]]:
    """Every remote endpoint the settings name (secrets read, never shown)."""
    named = {
        "FALAJ_BROKER_URL": settings.broker_url,
        "FALAJ_RAY_ADDRESS": settings.ray_address,
        "FALAJ_OIDC_ISSUER": settings.oidc_issuer,
        "FALAJ_OIDC_JWKS_URL": settings.oidc_jwks_url,
    }
    secret = {
        "FALAJ_RABBITMQ_URL": settings.rabbitmq_url,
        "FALAJ_ONLINE_STORE": settings.online_store,
        "FALAJ_FEATURE_REGISTRY": settings.feature_registry,
    }
    found = [(name, value) for name, value in named.items() if value]
    found += [(name, value.get_secret_value()) for name, value in secret.items() if value]
    return found


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if key in DESTINATION_KEYS and isinstance(value, str) and _absolute(value):
                yield here, value
            else:
                yield from _walk(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


def _absolute(value: str) -> bool:
    # A relative uri ("/v2/...") is a path on a ref'd in-cluster service.
    return "://" in value
