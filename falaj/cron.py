"""Cron schedules in a time zone, read as Knative's PingSource reads them.

Knative parses ``spec.schedule`` with robfig/cron: five fields, or six with
the *seconds first*, or a descriptor (``@daily``, ``@hourly``, ...); it refuses
``@every``; ``spec.timezone`` is an IANA name (``Asia/Dubai``). croniter does
the arithmetic here (it takes seconds first when told, and ORs day-of-month
with day-of-week as robfig does). The manifests loader and the local
scheduler share this one reading, so a schedule that loads is one that runs.

Ticks are computed in the schedule's zone, so ``0 2 * * *`` in Asia/Dubai is
02:00 in Dubai (22:00 UTC the day before), whatever zone the machine is in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: robfig/cron's descriptors, which croniter knows as well. ``@every`` is not
#: among them: Knative's webhook refuses it.
DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
#: Knative's default ``spec.schedule``: every minute.
DEFAULT_SCHEDULE = "* * * * *"


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression and the zone its fields are read in (UTC when none is named)."""

    expression: str
    timezone: str | None = None

    def __post_init__(self) -> None:
        problems = schedule_problems(self.expression, self.timezone)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def zone(self) -> tzinfo:
        return ZoneInfo(self.timezone) if self.timezone else UTC

    @property
    def _seconds_first(self) -> bool:
        return len(self.expression.split()) == 6

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (timezone-aware), in the schedule's zone."""
        if moment.tzinfo is None:
            raise ValueError(
                f"expected a timezone-aware moment such as datetime.now(UTC), got {moment!r}"
            )
        ticks = croniter(
            self.expression,
            start_time=moment.astimezone(self.zone),
            second_at_beginning=self._seconds_first,
        )
        tick: datetime = ticks.get_next(datetime)
        return tick


def schedule_problems(expression: str, timezone: str | None) -> list[str]:
    """What is wrong with a schedule and its zone, each with what was expected; empty if fine."""
    problems = []
    text = expression.strip() if isinstance(expression, str) else ""
    fields = text.split()
    if not text:
        problems.append(f"expected a cron expression such as '0 2 * * *', got {expression!r}")
    elif text.startswith("@every"):
        problems.append(
            f"schedule {expression!r}: @every is not supported by Knative's PingSource; "
            f"write the interval as cron fields (e.g. '*/15 * * * *')"
        )
    elif text.startswith(("CRON_TZ=", "TZ=")):
        problems.append(
            f"schedule {expression!r}: give the zone in spec.timezone, not in the schedule"
        )
    elif text.startswith("@"):
        if text not in DESCRIPTORS:
            problems.append(
                f"schedule {expression!r}: unknown descriptor; expected one of "
                f"{', '.join(sorted(DESCRIPTORS))}"
            )
    elif len(fields) not in (5, 6) or not croniter.is_valid(
        text, second_at_beginning=len(fields) == 6
    ):
        problems.append(
            f"schedule {expression!r} is not a cron expression; expected five fields "
            f"(minute hour day-of-month month day-of-week, e.g. '0 2 * * *') or six with "
            f"seconds first"
        )
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(
                f"timezone {timezone!r} is not an IANA time zone; expected a name such as "
                f"Asia/Dubai or UTC"
            )
    return problems
