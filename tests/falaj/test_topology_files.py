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
        filter_attributes={"type": "dev.falaj.storage.object.created"},
        subscriber="ingest",
        delivery=DeliverySpec(
            retry=5, timeout_s=2.5, retry_after_max_s=30.0, dead_letter_sink="dead-letters"
        ),
    ),
    TriggerSpec(name="all", broker="default", subscriber="recorder"),
    TriggerSpec(
        name="on-inference",
        broker="default",
        filters=(
            {"exact": {"type": "dev.falaj.inference.logged"}},
            {"not": {"any": [{"prefix": {"subject": "canary/"}}, {"suffix": {"source": "/x"}}]}},
        ),
        subscriber="drift",
    ),
)


def test_topology_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "topology.json"
    dump_topology([BROKER], TRIGGERS, path, container_concurrency={"ingest": 4, "recorder": 0})
    loaded = load_topology_file(path)
    assert loaded.brokers == {"default": BROKER}
    assert loaded.triggers == TRIGGERS
    assert loaded.container_concurrency == {"ingest": 4, "recorder": 0}
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


def test_malformed_filters_are_refused_with_their_place(tmp_path: Path) -> None:
    # Refused on load, so the broker stops at start with this message, not a traceback.
    path = tmp_path / "topology.json"
    trigger = {"name": "x", "broker": "b", "subscriber": "s", "filters": [{"regex": {}}]}
    path.write_text(json.dumps({"brokers": [], "triggers": [trigger]}))
    with pytest.raises(ManifestError, match=r"triggers\[0\]: filters\[0\] has the unknown dialect"):
        load_topology_file(path)


@pytest.mark.parametrize("concurrency", [{"ingest": -1}, {"ingest": "4"}, ["ingest"]])
def test_a_bad_container_concurrency_names_what_was_expected(
    tmp_path: Path, concurrency: object
) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"brokers": [], "container_concurrency": concurrency}))
    with pytest.raises(ManifestError, match=r"container_concurrency: expected \{service_name"):
        load_topology_file(path)
