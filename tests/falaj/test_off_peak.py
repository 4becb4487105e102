"""The off-peak window: parsing, crossing midnight, and when it next opens."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from falaj.errors import ConfigError
from falaj.off_peak import OffPeakWindow
from falaj.settings import Settings

DUBAI = ZoneInfo("Asia/Dubai")  # UTC+4, no daylight saving


def at_dubai(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, 2, hour, minute, tzinfo=DUBAI)


@pytest.mark.parametrize(
    ("hour", "minute", "inside"),
    [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (5, 59, True), (6, 0, False)],
)
def test_a_window_across_midnight_holds_its_start_and_not_its_end(
    hour: int, minute: int, inside: bool
) -> None:
    window = OffPeakWindow.parse("22:00-06:00")
    assert window.contains(at_dubai(hour, minute), DUBAI) is inside


def test_a_window_is_read_in_its_zone_not_in_utc() -> None:
    window = OffPeakWindow.parse("01:00-05:00")
    # 22:00 UTC is 02:00 in Dubai.
    assert window.contains(datetime(2026, 3, 2, 22, 0, tzinfo=UTC), DUBAI)
    assert not window.contains(datetime(2026, 3, 2, 22, 0, tzinfo=UTC), UTC)


def test_the_next_opening_is_now_inside_and_the_next_start_outside() -> None:
    window = OffPeakWindow.parse("22:00-06:00")
    assert window.next_opening(at_dubai(23), DUBAI) == at_dubai(23)
    assert window.next_opening(at_dubai(12), DUBAI) == at_dubai(22)
    day = OffPeakWindow.parse("09:00-10:00")
    assert day.next_opening(at_dubai(12), DUBAI) == datetime(2026, 3, 3, 9, 0, tzinfo=DUBAI)


@pytest.mark.parametrize("text", ["22-06", "24:00-06:00", "22:00-22:00", "22:00 - 06:00x"])
def test_a_malformed_window_says_what_was_expected(text: str) -> None:
    with pytest.raises(ConfigError, match="FALAJ_TRAINING_OFF_PEAK"):
        Settings.from_env({"FALAJ_TRAINING_OFF_PEAK": text})


def test_settings_round_trip_the_window_and_refuse_an_unknown_zone() -> None:
    settings = Settings.from_env({"FALAJ_TRAINING_OFF_PEAK": "22:00-06:00"})
    assert Settings.from_env(settings.to_env()).training_off_peak == settings.training_off_peak
    with pytest.raises(ConfigError, match="IANA time zone"):
        Settings.from_env({"FALAJ_TRAINING_TIMEZONE": "Mars/Olympus"})
