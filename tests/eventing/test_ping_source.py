"""The PingSource: cron ticks in the UAE's time zone, Knative's ping event, one event per tick.

The schedule arithmetic and the scheduler take their clock as an argument:
nothing here waits for a tick but the one test that runs the real process on
a schedule of every second.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from eventing.ping_source import (
    PingScheduler,
    PingSpec,
    TickLedger,
    next_tick,
    parse_args,
    ping_event,
    spec_from_args,
    tick_id,
)
from falaj.context import Context
from falaj.cron import CronSchedule
from falaj.errors import ConfigError
from falaj.events import EventType, Ping, parse_event
from falaj.publisher import EventPublisher
from falaj.runtime.processes import ManagedProcess, free_port
from falaj.settings import PROJECT_ROOT
from tests.eventing.conftest import BrokerFactory, wait_until

DUBAI = ZoneInfo("Asia/Dubai")
NIGHTLY = CronSchedule("0 2 * * *", "Asia/Dubai")
SPEC = PingSpec(
    name="fraud-retraining",
    namespace="falaj",
    schedule=NIGHTLY,
    content_type="application/json",
    data=b'{"model": "fraud"}',
    extensions={"dataregion": "uaenorth"},
)
PING = "dev.knative.sources.ping"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# -- ticks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 01:30 in Dubai is 21:30 UTC the day before; 02:00 Dubai is 22:00 UTC.
        (utc(2026, 3, 1, 21, 30), utc(2026, 3, 1, 22, 0)),
        # Exactly on a tick: the next one, a day later.
        (utc(2026, 3, 1, 22, 0), utc(2026, 3, 2, 22, 0)),
        # 02:00 UTC is already 06:00 in Dubai: tonight's tick is still ahead.
        (utc(2026, 3, 2, 2, 0), utc(2026, 3, 2, 22, 0)),
        # Across a month and a year end.
        (utc(2026, 12, 31, 23, 0), utc(2027, 1, 1, 22, 0)),
    ],
)
def test_ticks_are_computed_in_the_uae_time_zone(now: datetime, expected: datetime) -> None:
    tick = NIGHTLY.next_after(now)
    assert tick == expected
    assert (tick.astimezone(DUBAI).hour, tick.astimezone(DUBAI).minute) == (2, 0)


def test_without_a_zone_the_schedule_is_read_in_utc() -> None:
    assert CronSchedule("0 2 * * *").next_after(utc(2026, 3, 1, 21, 30)) == utc(2026, 3, 2, 2)


def test_six_fields_put_seconds_first_as_knative_does() -> None:
    every_15s = CronSchedule("*/15 * * * * *")
    assert every_15s.next_after(utc(2026, 3, 1, 12, 0, 7)) == utc(2026, 3, 1, 12, 0, 15)
    assert CronSchedule("@daily", "Asia/Dubai").next_after(utc(2026, 3, 1, 21)) == utc(
        2026, 3, 1, 20
    ) + timedelta(days=1)


@pytest.mark.parametrize(
    ("expression", "timezone", "problem"),
    [
        ("@every 1h", None, "@every is not supported"),
        ("CRON_TZ=Asia/Dubai 0 2 * * *", None, "give the zone in spec.timezone"),
        ("0 2 * *", None, "expected five fields"),
        ("61 2 * * *", None, "is not a cron expression"),
        ("@nightly", None, "unknown descriptor"),
        ("0 2 * * *", "Asia/Dubaii", "'Asia/Dubaii' is not an IANA time zone"),
    ],
)
def test_a_schedule_knative_would_refuse_is_refused(
    expression: str, timezone: str | None, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        CronSchedule(expression, timezone)


def test_a_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        NIGHTLY.next_after(datetime(2026, 3, 1, 12))


# -- the event ----------------------------------------------------------------------------


def test_each_tick_is_knatives_ping_event_with_an_id_of_its_own(ctx: Context) -> None:
    tick = utc(2026, 3, 1, 22)
    event = ping_event(SPEC, tick, region="me-central-1")

    assert event.get_attributes() == {
        "specversion": "1.0",
        "id": tick_id("/apis/v1/namespaces/falaj/pingsources/fraud-retraining", tick),
        "type": PING,
        "source": "/apis/v1/namespaces/falaj/pingsources/fraud-retraining",
        "time": "2026-03-01T22:00:00+00:00",
        "datacontenttype": "application/json",
        "dataregion": "uaenorth",  # ceOverrides win over the process's region
    }
    assert event.get_data() == b'{"model": "fraud"}'  # as written, as Knative sends it
    # The same tick written in Dubai time is the same event; the next tick is not.
    assert ping_event(SPEC, tick.astimezone(DUBAI), region="x")["id"] == event["id"]
    assert ping_event(SPEC, tick + timedelta(days=1), region="x")["id"] != event["id"]
    parsed = parse_event(event, ctx.policy)
    assert (parsed.type, parsed.data) == (EventType.PING, Ping(model="fraud"))


def test_without_a_region_override_the_event_is_stamped_with_this_region() -> None:
    bare = PingSpec(name="p", schedule=NIGHTLY, data=b'{"model": "fraud"}')
    assert ping_event(bare, utc(2026, 3, 1, 22), region="uaecentral")["dataregion"] == "uaecentral"


# -- firing once ------------------------------------------------------------------------------


def scheduler(
    ctx: Context, url: str, token: str | None, clock: datetime, ledger: Path
) -> PingScheduler:
    return PingScheduler(
        SPEC,
        EventPublisher(url, token),
        TickLedger(ledger),
        region="me-central-1",
        clock=lambda: clock,
    )


def never(seconds: float) -> bool:
    raise AssertionError(f"no retry expected, asked to wait {seconds} s")


def test_a_restart_does_not_fire_the_same_tick_twice(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    ledger = tmp_path / "ledger.json"
    # Woken a hair early for 02:00 in Dubai, as a timer may be.
    early = utc(2026, 3, 1, 21, 59, 59) + timedelta(microseconds=999_000)
    first = scheduler(ctx, running.url, service_token, early, ledger)
    tick = first.due()
    assert tick == utc(2026, 3, 1, 22)
    assert first.fire(tick, never)

    # Restarted at once, its clock still before the tick: the ledger moves it on.
    restarted = scheduler(ctx, running.url, service_token, early, ledger)
    assert restarted.due() == utc(2026, 3, 2, 22)

    # A crash between the broker's 202 and the ledger fires the tick again: the
    # id makes it the same event, which the broker keeps once.
    forgetful = scheduler(ctx, running.url, service_token, early, tmp_path / "lost.json")
    assert forgetful.due() == tick
    assert forgetful.fire(tick, never)
    [stored] = running.events(PING)
    assert stored["id"] == tick_id(SPEC.source, tick)
    assert stored["data"] == {"model": "fraud"}


def test_a_tick_the_broker_does_not_take_is_sent_until_it_is(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.json"
    tick = utc(2026, 3, 1, 22)
    down = scheduler(ctx, f"http://127.0.0.1:{free_port()}/", service_token, tick, ledger)
    waits: list[float] = []

    # Told to stop while the broker is away: the tick is not recorded as fired.
    assert down.fire(tick, lambda seconds: False) is False
    assert TickLedger(ledger).last() is None

    running = start_broker()

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 2:
            down.publisher.broker_url = running.url  # the broker is back
        return True

    assert down.fire(tick, wait)
    assert waits == [1.0, 2.0]
    assert TickLedger(ledger).last() == tick
    assert len(running.events(PING)) == 1


def test_a_tick_the_broker_refuses_is_not_retried(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    wrong = PingSpec(name="typo", schedule=NIGHTLY, data=b'{"modle": "fraud"}')
    sender = PingScheduler(
        wrong,
        EventPublisher(running.url, service_token),
        TickLedger(tmp_path / "ledger.json"),
        region="me-central-1",
        clock=lambda: utc(2026, 3, 1),
    )
    assert sender.fire(utc(2026, 3, 1, 22), never)  # a 400: kept as a dead letter, not retried
    assert running.events(PING) == []
    assert len(running.client.get("/dead-letters").json()) == 1


def test_next_tick_is_after_both_now_and_the_last_one_fired() -> None:
    now = utc(2026, 3, 1, 12)
    assert next_tick(NIGHTLY, now, None) == utc(2026, 3, 1, 22)
    assert next_tick(NIGHTLY, now, utc(2026, 3, 1, 22)) == utc(2026, 3, 2, 22)
    # A last tick long ago (the process was down): missed ticks are not made up.
    assert next_tick(NIGHTLY, now, utc(2026, 2, 1, 22)) == utc(2026, 3, 1, 22)


def test_a_corrupt_ledger_says_how_to_recover(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(ConfigError, match="Delete it to start from the next tick"):
        TickLedger(tmp_path / "ledger.json").last()


# -- arguments and the real process ---------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    return parse_args(["--name", "p", *argv])


def test_arguments_become_the_spec() -> None:
    spec = spec_from_args(
        args(
            "--namespace=falaj",
            "--schedule=0 2 * * *",
            "--timezone=Asia/Dubai",
            "--content-type=application/json",
            "--data-base64=eyJtb2RlbCI6ICJmcmF1ZCJ9",
            "--extension=dataregion=me-central-1",
        )
    )
    assert spec == PingSpec(
        name="p",
        namespace="falaj",
        schedule=NIGHTLY,
        content_type="application/json",
        data=b'{"model": "fraud"}',
        extensions={"dataregion": "me-central-1"},
    )


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("--schedule=@every 5m",), "@every is not supported"),
        (("--timezone=Mars/Olympus",), "not an IANA time zone"),
        (("--data-base64=not base64!",), "--data-base64 is not base64"),
        (("--extension=dataregion",), "expected NAME=VALUE"),
    ],
)
def test_bad_arguments_say_what_was_expected(argv: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        spec_from_args(args(*argv))


def test_the_process_fires_on_its_schedule(
    start_broker: BrokerFactory, ctx: Context, service_token: str, tmp_path: Path
) -> None:
    running = start_broker()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALAJ_")}
    env.update(
        {
            "FALAJ_HOME": str(ctx.paths.home),
            "FALAJ_BROKER_URL": running.url,
            "FALAJ_TOKEN": service_token,
        }
    )
    process = ManagedProcess(
        name="ping-source",
        argv=[
            sys.executable,
            "-m",
            "eventing.ping_source",
            "--name=every-second",
            "--namespace=falaj",
            "--schedule=* * * * * *",
            "--content-type=application/json",
            '--data={"model": "fraud"}',
            "--extension=dataregion=uaenorth",
        ],
        env=env,
        log_path=tmp_path / "ping-source.log",
        cwd=PROJECT_ROOT,
    ).start()
    try:
        wait_until(
            lambda: len(running.events(PING)) >= 2,
            timeout_s=60,
            what=f"two ticks at the broker; its log:\n{process.tail()}",
        )
    finally:
        process.stop()
    events = running.events(PING)
    times = sorted(datetime.fromisoformat(e["time"]) for e in events)
    assert all(t.microsecond == 0 for t in times)  # the scheduled second, not the sending time
    assert len({e["id"] for e in events}) == len(events)
    assert {e["dataregion"] for e in events} == {"uaenorth"}
