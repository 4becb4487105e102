"""`falaj events dead` and `falaj events replay` against a real broker."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable

from typer.testing import CliRunner

from falaj.auth import Role, write_token_file
from falaj.cli.main import app
from falaj.context import Context
from falaj.topology import DeliverySpec
from tests.eventing.conftest import (
    BrokerFactory,
    Subscriber,
    training_requested,
    trigger,
    wait_until,
)

runner = CliRunner()


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
    env = {"FALAJ_BROKER_URL": broker.url}
    home = str(ctx.paths.home)

    event = training_requested()
    assert broker.publish(event).status_code == 202

    def dead() -> list[dict[str, object]]:
        result = runner.invoke(app, ["events", "dead", "--home", home, "--json"], env=env)
        assert result.exit_code == 0, result.output
        letters: list[dict[str, object]] = json.loads(result.output)
        return letters

    wait_until(lambda: len(dead()) == 1, 10, "the failed delivery is dead-lettered")
    [letter] = dead()
    assert letter["event_id"] == event["id"]
    assert letter["replayable"] is True
    assert letter["status_code"] == 400

    replayed = runner.invoke(app, ["events", "replay", str(letter["id"]), "--home", home], env=env)
    assert replayed.exit_code == 0, replayed.output
    wait_until(lambda: len(subscriber.received) == 2, 10, "the replayed delivery arrives")
    assert subscriber.ids() == [event["id"], event["id"]]

    again = runner.invoke(app, ["events", "replay", str(letter["id"]), "--home", home], env=env)
    assert again.exit_code == 1
    assert "was replayed already and was delivered" in " ".join(again.output.split())
