"""`falaj events dead` and `falaj events replay` against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from falaj.auth import Role, write_token_file
from falaj.context import Context
from falaj.topology import DeliverySpec
from tests.eventing.conftest import (
    BrokerFactory,
    Subscriber,
    training_requested,
    trigger,
    wait_until,
)

FALAJ = str(Path(sys.executable).with_name("falaj"))


def falaj(*args: str, broker_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update({"FALAJ_BROKER_URL": broker_url, "COLUMNS": "200"})
    return subprocess.run(
        [FALAJ, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_dead_letter_is_listed_and_replayed(
    ctx: Context, start_broker: BrokerFactory, make_subscriber: Callable[[], Subscriber]
) -> None:
    subscriber = make_subscriber()
    subscriber.statuses = deque([400])  # not retried (Knative): dead at once
    broker = start_broker(
        (trigger("to-launcher", "launcher", delivery=DeliverySpec(retry=0)),),
        endpoints={"launcher": subscriber.url},
    )
    for role in (Role.VIEWER, Role.PLATFORM_ADMIN):
        write_token_file(ctx.paths.keys / f"{role}.token", ctx.tokens.issue(f"cli-{role}", role))
    home = str(ctx.paths.home)

    event = training_requested()
    assert broker.publish(event).status_code == 202

    def dead() -> list[dict[str, object]]:
        result = falaj("events", "dead", "--home", home, "--json", broker_url=broker.url)
        assert result.returncode == 0, result.stderr
        letters: list[dict[str, object]] = json.loads(result.stdout)
        return letters

    wait_until(lambda: len(dead()) == 1, 10, "the failed delivery is dead-lettered")
    [letter] = dead()
    assert letter["event_id"] == event["id"]
    assert letter["replayable"] is True
    assert letter["status_code"] == 400

    replayed = falaj("events", "replay", str(letter["id"]), "--home", home, broker_url=broker.url)
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: len(subscriber.received) == 2, 10, "the replayed delivery arrives")
    assert subscriber.ids() == [event["id"], event["id"]]

    again = falaj("events", "replay", str(letter["id"]), "--home", home, broker_url=broker.url)
    assert again.returncode == 1
    assert "was replayed already and was delivered" in " ".join(again.stderr.split())
