"""The off-peak window: when retraining that can wait is allowed to start.

GPU nodes cost least when the business sleeps, so a retraining that is not
urgent (a schedule, mild drift) waits for the window; urgent drift does not.
A window is ``HH:MM-HH:MM`` in a time zone and may cross midnight
(``22:00-06:00``); the start is inside it, the end is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class OffPeakWindow:
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> OffPeakWindow:
        match = _WINDOW.match(text.strip())
        if match is None:
            raise ValueError(
                f"expected an off-peak window HH:MM-HH:MM such as 22:00-06:00, got {text!r}"
            )
        start = time(int(match[1]), int(match[2]))
        end = time(int(match[3]), int(match[4]))
        if start == end:
            raise ValueError(
                f"the off-peak window {text!r} is empty; leave it unset to allow any time"
            )
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, moment: datetime, zone: tzinfo) -> bool:
        clock = moment.astimezone(zone).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end  # crosses midnight

    def next_opening(self, moment: datetime, zone: tzinfo) -> datetime:
        """When the window is next open at or after ``moment`` (``moment`` if it is now)."""
        if self.contains(moment, zone):
            return moment
        local = moment.astimezone(zone)
        opening = datetime.combine(local.date(), self.start, tzinfo=zone)
        if opening <= local:
            opening += timedelta(days=1)
        return opening
