"""Carina's TimeWindow grammar: days, day ranges, end-exclusive time ranges, periods, and overlap detection."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.timewindow import TimeWindow, TimeWindowError, overlaps

# 2026-01-05 is a Monday.
MONDAY = datetime(2026, 1, 5)


def at(day_offset: int, hhmm: str) -> datetime:
    return MONDAY + timedelta(days=day_offset, hours=int(hhmm[:2]), minutes=int(hhmm[2:]))


def test_weekday_time_range_is_end_exclusive() -> None:
    window = TimeWindow.parse("Mon-Fri 0900-1300")
    assert not window.includes(at(0, "0859"))
    assert window.includes(at(0, "0900"))
    assert window.includes(at(0, "1259"))
    assert not window.includes(at(0, "1300"))
    assert window.includes(at(4, "1000"))  # Friday
    assert not window.includes(at(5, "1000"))  # Saturday


def test_seed_night_window_and_its_last_minute() -> None:
    night = TimeWindow.parse("Mon-Fri 0000-0859 1700-2359")
    assert night.includes(at(0, "0000"))
    assert night.includes(at(0, "0858"))
    assert not night.includes(at(0, "0859"))  # end exclusive, as in Carina
    assert night.includes(at(0, "2358"))
    assert not night.includes(at(0, "2359"))  # documented: the last minute is outside; 2400 covers it
    assert TimeWindow.parse("Mon 1700-2400").includes(at(0, "2359"))


def test_reverse_day_range_wraps_over_the_weekend() -> None:
    window = TimeWindow.parse("Fri-Mon")
    included = {day for day in range(7) if window.includes(at(day, "1200"))}
    assert included == {0, 4, 5, 6}  # Mon, Fri, Sat, Sun


def test_periods_are_alternatives_and_days_without_times_cover_the_day() -> None:
    window = TimeWindow.parse("Sat-Sun; Mon Wed 0700-0900; Thu 0700-0900 1000-1200")
    assert not window.includes(at(1, "0800"))  # Tuesday
    assert window.includes(at(2, "0800"))  # Wednesday
    assert not window.includes(at(2, "1100"))
    assert window.includes(at(3, "1100"))  # Thursday second range
    assert not window.includes(at(3, "0900"))
    assert window.includes(at(5, "0000")) and window.includes(at(6, "2359"))  # whole weekend days


def test_times_without_days_apply_every_day_and_empty_spec_is_always() -> None:
    assert all(TimeWindow.parse("0800-0900").includes(at(day, "0830")) for day in range(7))
    always = TimeWindow.parse("")
    assert always.includes(at(3, "0314"))
    assert TimeWindow.parse("  ").includes(at(6, "2359"))


def test_single_time_is_one_minute_and_day_names_ignore_case() -> None:
    window = TimeWindow.parse("mon 1200")
    assert window.includes(at(0, "1200"))
    assert not window.includes(at(0, "1201"))


@pytest.mark.parametrize(
    ("spec", "position", "token", "fragment"),
    [
        ("Mon-Fry 0900-1300", 4, "Fry", "unknown day 'Fry'"),
        ("Mon 2200-0600", 4, "2200-0600", "ends before it starts"),
        ("Mon 0900-0900", 4, "0900-0900", "is empty"),
        ("Mon 2460", 4, "2460", "out of range"),
        ("Mon 0900-13000", 9, "13000", "bad time"),
        ("Mon; Tue 9-10", 9, "9", "bad time"),
        ("Monday", 0, "Monday", "unknown day"),
    ],
)
def test_bad_specs_name_the_token_and_column(spec: str, position: int, token: str, fragment: str) -> None:
    with pytest.raises(TimeWindowError) as caught:
        TimeWindow.parse(spec)
    assert caught.value.position == position
    assert caught.value.token == token
    assert fragment in str(caught.value)


def test_overlaps() -> None:
    morning = TimeWindow.parse("Mon-Fri 0900-1300")
    afternoon = TimeWindow.parse("Mon-Fri 1300-1700")
    night = TimeWindow.parse("Mon-Fri 0000-0859 1700-2359")
    assert not overlaps(morning, afternoon)
    assert not overlaps(afternoon, night)
    assert not overlaps(morning, night)
    assert overlaps(morning, TimeWindow.parse("Fri 1259"))
    assert overlaps(TimeWindow.parse("Sat-Sun"), TimeWindow.parse("Fri-Mon 0300-0400"))
    assert not overlaps(TimeWindow.parse("Sat"), TimeWindow.parse("Sun-Fri"))


DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


@given(
    first_day=st.integers(0, 6),
    last_day=st.integers(0, 6),
    start=st.integers(0, 24 * 60 - 1),
    length=st.integers(1, 24 * 60),
    probe=st.integers(0, 7 * 24 * 60 - 1),
)
def test_single_period_matches_a_direct_check(first_day: int, last_day: int, start: int, length: int,
                                              probe: int) -> None:
    end = min(start + length, 24 * 60)
    spec = f"{DAYS[first_day]}-{DAYS[last_day]} {start // 60:02d}{start % 60:02d}-{end // 60:02d}{end % 60:02d}"
    when = MONDAY - timedelta(days=1) + timedelta(minutes=probe)  # probe counts from Sunday 00:00
    day, minute = divmod(probe, 24 * 60)
    days = {(first_day + offset) % 7 for offset in range((last_day - first_day) % 7 + 1)}
    assert TimeWindow.parse(spec).includes(when) is (day in days and start <= minute < end)
