"""The files through which ``falaj up`` hands the local broker its wiring.

``falaj up`` reads the manifests, then writes two files the broker reads:

* the topology, ``{"brokers": [...], "triggers": [...], "container_concurrency":
  {...}}``: each broker and trigger is ``dataclasses.asdict`` of a
  ``falaj.topology.BrokerSpec`` / ``TriggerSpec``; ``container_concurrency``
  is each Knative Service's ``containerConcurrency`` (how many deliveries it
  takes at once; 0 for no limit);
* the endpoints, ``{service_name: url}``: where each Knative Service runs now.

Both sides use these functions, so the runtime writes exactly what the broker reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from falaj.errors import ManifestError
from falaj.manifests import filter_problems
from falaj.topology import BackoffPolicy, BrokerSpec, DeliverySpec, TriggerSpec


@dataclass(frozen=True)
class EventingTopology:
    brokers: Mapping[str, BrokerSpec]
    triggers: tuple[TriggerSpec, ...]
    #: Knative Service name -> its containerConcurrency (0: no limit).
    container_concurrency: Mapping[str, int] = field(default_factory=dict)

    def triggers_of(self, broker: str) -> tuple[TriggerSpec, ...]:
        return tuple(t for t in self.triggers if t.broker == broker)

    def delivery_for(self, trigger: TriggerSpec) -> DeliverySpec:
        """The Trigger's own delivery, else its Broker's (Knative's precedence)."""
        if trigger.delivery is not None:
            return trigger.delivery
        broker = self.brokers.get(trigger.broker)
        return broker.delivery if broker is not None else DeliverySpec()


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``, but also for mapping fields that are not plain dicts."""
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _write_json(path: Path, payload: Any) -> None:
    # Write then rename: the broker may re-read the file at any moment.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def topology_json(
    brokers: Iterable[BrokerSpec],
    triggers: Iterable[TriggerSpec],
    container_concurrency: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The topology as the JSON object the file holds."""
    return {
        "brokers": [_plain(b) for b in brokers],
        "triggers": [_plain(t) for t in triggers],
        "container_concurrency": dict(container_concurrency or {}),
    }


def dump_topology(
    brokers: Iterable[BrokerSpec],
    triggers: Iterable[TriggerSpec],
    path: Path,
    *,
    container_concurrency: Mapping[str, int] | None = None,
) -> None:
    _write_json(path, topology_json(brokers, triggers, container_concurrency))


def _delivery(raw: Any, where: str) -> DeliverySpec:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}.delivery: expected an object, got {type(raw).__name__}")
    values = dict(raw)
    if values.get("backoff_policy") is not None:
        try:
            values["backoff_policy"] = BackoffPolicy(values["backoff_policy"])
        except ValueError:
            raise ManifestError(
                f"{where}.delivery.backoff_policy: expected one of "
                f"{', '.join(BackoffPolicy)}, got {values['backoff_policy']!r}"
            ) from None
    return DeliverySpec(**values)


def _filters(raw: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    # Checked here, not first when the broker compiles them: a bad file then
    # stops the broker at start with this message rather than a traceback.
    if not isinstance(raw, list):
        raise ManifestError(f"{where}.filters: expected a list, got {type(raw).__name__}")
    problems = [
        problem
        for index, expression in enumerate(raw)
        for problem in filter_problems(expression, f"filters[{index}]")
    ]
    if problems:
        raise ManifestError(f"{where}: {'; '.join(problems)}")
    return tuple(raw)


def _build(kind: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected an object, got {type(raw).__name__}")
    values = dict(raw)
    if values.get("delivery") is not None:
        values["delivery"] = _delivery(values["delivery"], where)
    if kind is TriggerSpec and "filters" in values:
        values["filters"] = _filters(values["filters"], where)
    try:
        return kind(**values)
    except TypeError as exc:
        raise ManifestError(
            f"{where}: does not fit {kind.__name__} ({exc}); regenerate the file with "
            "falaj.topology_files.dump_topology"
        ) from None


def load_topology_file(path: Path) -> EventingTopology:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"cannot read the topology file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ManifestError(f"the topology file {path} is not JSON: {exc}") from None
    return topology_from_json(raw, str(path))


def topology_from_json(raw: Any, where: str) -> EventingTopology:
    """Read what ``topology_json`` wrote; ``ManifestError`` names ``where`` and the field."""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected {{'brokers': [...], 'triggers': [...]}}")
    brokers = [
        _build(BrokerSpec, b, f"{where}: brokers[{i}]")
        for i, b in enumerate(raw.get("brokers", []))
    ]
    triggers = [
        _build(TriggerSpec, t, f"{where}: triggers[{i}]")
        for i, t in enumerate(raw.get("triggers", []))
    ]
    concurrency = raw.get("container_concurrency", {})
    if not isinstance(concurrency, Mapping) or not all(
        isinstance(v, int) and v >= 0 for v in concurrency.values()
    ):
        raise ManifestError(
            f"{where}: container_concurrency: expected {{service_name: whole number >= 0}}, "
            f"got {concurrency!r}"
        )
    return EventingTopology(
        brokers={b.name: b for b in brokers},
        triggers=tuple(triggers),
        container_concurrency={str(k): int(v) for k, v in concurrency.items()},
    )


def dump_endpoints(endpoints: Mapping[str, str], path: Path) -> None:
    _write_json(path, dict(endpoints))


def load_endpoints(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ManifestError(f"cannot read the endpoints file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ManifestError(f"the endpoints file {path} is not JSON: {exc}") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
        raise ManifestError(f"{path}: expected {{service_name: url}}, got {type(raw).__name__}")
    return {str(k): v for k, v in raw.items()}
