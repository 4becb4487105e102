"""The PingSource: Knative's cron source on one machine (``python -m eventing.ping_source``).

``falaj up`` starts one per PingSource in the manifests, with the resource's
fields as arguments. At each tick of ``--schedule`` (read in ``--timezone``)
it sends the broker the event Knative's PingSource sends:

| attribute         | value                                                           |
|-------------------|-----------------------------------------------------------------|
| type              | ``dev.knative.sources.ping``                                    |
| source            | ``/apis/v1/namespaces/<namespace>/pingsources/<name>``          |
| datacontenttype   | ``spec.contentType``                                            |
| data              | ``spec.data`` as written, or ``spec.dataBase64`` decoded        |
| extensions        | ``spec.ceOverrides.extensions`` (the manifests set dataregion)  |

Where it differs from Knative's adapter, it is so that one tick is one event:

- the id is derived from the source and the scheduled tick (Knative draws a
  random one), and ``time`` is the tick, not the moment of sending: a tick
  published twice -- a crash between the broker's 202 and the record below --
  is a duplicate the broker recognises;
- the last tick published is recorded under ``<home>/state/ping-source``; the
  next tick is the first after both now and that one, so a restart never fires
  a tick again. Ticks missed while the process was down are not made up
  (nor does Knative's adapter make them up);
- a tick the broker does not take (no answer, 5xx) is sent again with backoff
  until it is taken, where Knative's adapter gives up after five quick tries.
  A 400 (the broker keeps it as a dead letter) or 413 is final.

Nothing sleeps on the wall clock inside the logic: the clock and the wait are
passed in, so ticks, ids and restarts are tested without waiting for them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cloudevents.http import CloudEvent

from falaj.context import Context
from falaj.cron import CronSchedule
from falaj.errors import ConfigError, FalajError, PublishError
from falaj.events import REGION_EXTENSION, SPECVERSION, EventType
from falaj.logs import configure_logging, get_logger
from falaj.publisher import EventPublisher
from falaj.runtime.processes import stop_on_signals
from falaj.settings import Settings

#: Between tries of a tick the broker did not take; capped, so a long outage ends promptly.
RETRY_DELAY_S = 1.0
MAX_RETRY_DELAY_S = 60.0

#: Waits so many seconds; False when the scheduler was told to stop meanwhile.
Wait = Callable[[float], bool]
Clock = Callable[[], datetime]


def ping_source_uri(namespace: str, name: str) -> str:
    """Knative's ``PingSourceSource``: the ``source`` of every event a PingSource sends."""
    return f"/apis/v1/namespaces/{namespace}/pingsources/{name}"


def tick_id(source: str, tick: datetime) -> str:
    """One id per (source, scheduled tick), whatever zone the tick is written in."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}@{tick.astimezone(UTC).isoformat()}"))


@dataclass(frozen=True, kw_only=True)
class PingSpec:
    """A PingSource, as the scheduler needs it."""

    name: str
    namespace: str = "default"
    schedule: CronSchedule
    content_type: str | None = None
    data: bytes | None = None
    #: ``ceOverrides.extensions``: set on every event, over anything else.
    extensions: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return ping_source_uri(self.namespace, self.name)


def ping_event(spec: PingSpec, tick: datetime, *, region: str) -> CloudEvent:
    """The event for one tick; ``dataregion`` is this region unless the overrides name one."""
    attributes: dict[str, str] = {
        "specversion": SPECVERSION,
        "id": tick_id(spec.source, tick),
        "type": str(EventType.PING),
        "source": spec.source,
        "time": tick.astimezone(UTC).isoformat(),
        REGION_EXTENSION: region,
        **spec.extensions,
    }
    if spec.content_type:
        attributes["datacontenttype"] = spec.content_type
    # The bytes as written, as Knative sends them; the broker reads JSON data from them.
    return CloudEvent(attributes, spec.data)


def next_tick(schedule: CronSchedule, now: datetime, last_fired: datetime | None) -> datetime:
    """The tick to fire next: the first after ``now`` and after the last one fired."""
    after = now if last_fired is None or last_fired < now else last_fired
    return schedule.next_after(after)


class TickLedger:
    """The last tick a PingSource published, in one small JSON file (written then renamed)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> datetime | None:
        try:
            recorded = json.loads(self.path.read_text("utf-8"))
            return datetime.fromisoformat(recorded["last_tick"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.path} is not a tick record ({type(exc).__name__}: {exc}); expected "
                f'{{"last_tick": "<ISO time>"}}. Delete it to start from the next tick'
            ) from None

    def record(self, tick: datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps({"last_tick": tick.astimezone(UTC).isoformat()}))
        partial.replace(self.path)


class PingScheduler:
    """Fires one PingSource's ticks at the broker, each once."""

    def __init__(
        self,
        spec: PingSpec,
        publisher: EventPublisher,
        ledger: TickLedger,
        *,
        region: str,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.spec = spec
        self.publisher = publisher
        self.ledger = ledger
        self.region = region
        self.clock = clock
        self.log = get_logger(component="ping-source", source=spec.source)

    def due(self) -> datetime:
        """The next tick to fire."""
        return next_tick(self.spec.schedule, self.clock(), self.ledger.last())

    def fire(self, tick: datetime, wait: Wait) -> bool:
        """Publish the tick's event, trying again until the broker answers; False if stopped."""
        event = ping_event(self.spec, tick, region=self.region)
        delay = RETRY_DELAY_S
        while True:
            try:
                self.publisher.publish(event)
                self.log.info("tick", tick=tick.isoformat(), event_id=event["id"])
                break
            except PublishError as exc:
                if exc.status_code in (400, 413):
                    # Final: the broker keeps a 400 as a dead letter; a retry cannot change it.
                    self.log.error("tick refused", tick=tick.isoformat(), error=str(exc))
                    break
                self.log.warning(
                    "broker did not take the tick; trying again",
                    tick=tick.isoformat(),
                    error=str(exc),
                    retry_in_s=delay,
                )
                if not wait(delay):
                    return False
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
        self.ledger.record(tick)
        return True

    def run(self, stop: threading.Event) -> None:
        def wait(seconds: float) -> bool:
            return not stop.wait(max(0.0, seconds))

        self.log.info(
            "scheduled",
            schedule=self.spec.schedule.expression,
            timezone=self.spec.schedule.timezone or "UTC",
        )
        while not stop.is_set():
            tick = self.due()
            self.log.info("next tick", tick=tick.isoformat())
            # Waits in steps, so a clock that jumps (suspend, NTP) is caught up with.
            while not stop.is_set() and (left := (tick - self.clock()).total_seconds()) > 0:
                stop.wait(min(left, 60.0))
            if stop.is_set() or not self.fire(tick, wait):
                break


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m eventing.ping_source",
        description="Send a PingSource's event to the broker at each tick of its schedule.",
    )
    parser.add_argument("--name", required=True, help="the PingSource's name")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--schedule", default="* * * * *", help="cron, as spec.schedule")
    parser.add_argument("--timezone", help="IANA zone, as spec.timezone (default UTC)")
    parser.add_argument("--content-type", help="spec.contentType")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", help="spec.data")
    data.add_argument("--data-base64", help="spec.dataBase64")
    parser.add_argument(
        "--extension",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="spec.ceOverrides.extensions (repeatable)",
    )
    return parser.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> PingSpec:
    try:
        schedule = CronSchedule(args.schedule, args.timezone or None)
    except ValueError as exc:
        raise ConfigError(f"--schedule/--timezone: {exc}") from None
    data: bytes | None = None
    if args.data_base64 is not None:
        try:
            data = base64.b64decode(args.data_base64, validate=True)
        except binascii.Error as exc:
            raise ConfigError(f"--data-base64 is not base64: {exc}") from None
    elif args.data is not None:
        data = args.data.encode()
    extensions = {}
    for item in args.extension:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--extension: expected NAME=VALUE, got {item!r}")
        extensions[name] = value
    return PingSpec(
        name=args.name,
        namespace=args.namespace,
        schedule=schedule,
        content_type=args.content_type,
        data=data,
        extensions=extensions,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        configure_logging("ping-source", settings.log_level)
        spec = spec_from_args(args)
        ctx = Context.create(settings, actor="ping-source")
        ledger = TickLedger(ctx.paths.state / "ping-source" / f"{spec.namespace}.{spec.name}.json")
        ledger.last()  # a corrupt record is a config error now, not at the first tick
        publisher = EventPublisher.from_context(ctx)
    except FalajError as exc:
        print(f"ping-source: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    try:
        PingScheduler(spec, publisher, ledger, region=settings.region).run(stop)
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
