from __future__ import annotations

import json
from pathlib import Path

import pytest

from falaj.errors import ManifestError
from falaj.topology import BackoffPolicy, BrokerSpec, DeliverySpec, TriggerSpec
from falaj.topology_files import dump_topology, load_topology_file

BROKER = BrokerSpec(
    name="default",
    delivery=DeliverySpec(retry=3, backoff_policy=BackoffPolicy.LINEAR, backoff_delay_s=0.5),
)
TRIGGERS = (
    TriggerSpec(
        name="on-object",
        broker="default",
        filter_attributes={"type": "dev.falaj.storage.object.finalized"},
        subscriber="ingest",
        delivery=DeliverySpec(retry=5, dead_letter_sink="dead-letters"),
    ),
    TriggerSpec(name="all", broker="default", subscriber="recorder"),
)


def test_topology_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    dump_topology([BROKER], TRIGGERS, path)
    loaded = load_topology_file(path)
    assert loaded.brokers == {"default": BROKER}
    assert loaded.triggers == TRIGGERS
    # Trigger delivery wins; otherwise the Broker's applies.
    assert loaded.delivery_for(TRIGGERS[0]).retry == 5
    assert loaded.delivery_for(TRIGGERS[1]) == BROKER.delivery


def test_a_field_the_types_do_not_know_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"brokers": [], "triggers": [{"name": "x", "color": "red"}]}))
    with pytest.raises(ManifestError, match=r"triggers\[0\].*TriggerSpec"):
        load_topology_file(path)


def test_bad_backoff_policy_names_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    raw = {"brokers": [{"name": "b", "delivery": {"backoff_policy": "random"}}]}
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="exponential, linear"):
        load_topology_file(path)
