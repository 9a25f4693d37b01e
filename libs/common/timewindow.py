"""Carina's TimeWindow grammar: weekly day/time windows for time-based elasticity.

Where it sits: `libs.common.policy_model` parses every window of a `time-based` elasticity policy at upload (and
refuses overlapping windows); `services.policy.engine` asks `includes(now)` on each tick to find the window whose
`min` applies. Pure: no clock of its own, the caller passes the instant.

Grammar (as in Carina's `time_window.rb`):

    spec    := period (";" period)*          an empty spec matches always
    period  := token*                        tokens separated by blanks
    token   := DAY | DAY "-" DAY | HHMM | HHMM "-" HHMM
    DAY     := Sun | Mon | Tue | Wed | Thu | Fri | Sat      (case-insensitive)

* A day range includes its end and may wrap around the week: `Fri-Mon` is Fri, Sat, Sun, Mon.
* A time range includes its start and excludes its end (`0900-1300` is 09:00..12:59) and may not wrap past
  midnight: write `2200-2400 0000-0600` instead of `2200-0600`. `2400` is accepted as an end meaning midnight.
* A lone `HHMM` is the single minute HH:MM.
* A period matches when (it names no day, or one of its days is today) and (it names no time, or one of its time
  ranges contains the current minute). The spec matches when any period matches.

The last minute of the day: Carina's end-exclusive rule means `0000-2359` does not contain 23:59, and we keep that
rule exactly (so `Mon-Fri 1300-1700` and `Mon-Fri 1700-2359` never overlap and seed specs mean what they meant).
In time-based elasticity a minute that no window covers simply changes nothing, so the gap is harmless; to cover
the whole day write `0000-2400`.

Matching uses the wall-clock fields (weekday, hour, minute) of the datetime it is given; convert it to the
policy's time zone first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from libs.common.errors import PermanentError

__all__ = ["MINUTES_PER_WEEK", "TimeWindow", "TimeWindowError", "overlaps"]

MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
DAY_NAMES = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_DAY_INDEX = {name.lower(): index for index, name in enumerate(DAY_NAMES)}

_TOKEN = re.compile(r"[^\s;]+|;")


class TimeWindowError(PermanentError, ValueError):
    """A window spec that cannot be parsed.

    Attributes:
        spec: the whole spec.
        position: 0-based column of the offending token.
        token: the offending token.
        reason: the message without the caret picture.
    """

    def __init__(self, reason: str, spec: str, position: int, token: str) -> None:
        self.spec = spec
        self.position = position
        self.token = token
        self.reason = reason
        super().__init__(f"{reason}\n  {spec}\n  {' ' * position}^")


@dataclass(frozen=True)
class _Period:
    days: frozenset[int]  # 0 = Sunday; empty = every day
    times: tuple[tuple[int, int], ...]  # [start, end) in minutes of the day; empty = all day

    def minutes_of_week(self) -> set[int]:
        days = self.days or frozenset(range(7))
        times = self.times or ((0, MINUTES_PER_DAY),)
        covered: set[int] = set()
        for day in days:
            base = day * MINUTES_PER_DAY
            for start, end in times:
                covered.update(range(base + start, base + end))
        return covered


class TimeWindow:
    """A parsed window spec. Build it with `TimeWindow.parse`."""

    def __init__(self, spec: str, periods: tuple[_Period, ...]) -> None:
        self._spec = spec
        self._periods = periods
        minutes: set[int] = set()
        for period in periods:
            minutes |= period.minutes_of_week()
        # An empty spec (no periods) means "always".
        self._minutes = frozenset(minutes) if periods else frozenset(range(MINUTES_PER_WEEK))

    @property
    def spec(self) -> str:
        """The spec as written."""
        return self._spec

    @property
    def minutes(self) -> frozenset[int]:
        """Every minute of the week (0 = Sunday 00:00) the window covers."""
        return self._minutes

    def __repr__(self) -> str:
        return f"TimeWindow({self._spec!r})"

    @classmethod
    def parse(cls, spec: str) -> TimeWindow:
        """Parses a window spec such as `'Mon-Fri 0000-0859 1700-2359'` or `'Sat-Sun; Mon Wed 0700-0900'`.

        Raises:
            TimeWindowError: naming the bad token and its column.
        """
        if not isinstance(spec, str):
            raise TimeWindowError(f"a window spec must be text, got {type(spec).__name__}", "", 0, "")
        periods: list[_Period] = []
        days: set[int] = set()
        times: list[tuple[int, int]] = []
        seen_token = False
        for match in _TOKEN.finditer(spec):
            token = match.group()
            if token == ";":
                if seen_token:
                    periods.append(_Period(frozenset(days), tuple(times)))
                days, times, seen_token = set(), [], False
                continue
            seen_token = True
            position = match.start()
            if token[:1].isdigit():
                times.append(_parse_time_token(token, spec, position))
            else:
                days.update(_parse_day_token(token, spec, position))
        if seen_token:
            periods.append(_Period(frozenset(days), tuple(times)))
        return cls(spec, tuple(periods))

    def includes(self, when: datetime) -> bool:
        """Whether the minute of `when` (by its own wall clock) is inside the window."""
        return minute_of_week(when) in self._minutes


def minute_of_week(when: datetime) -> int:
    """Minutes since Sunday 00:00 of the wall-clock time `when`."""
    sunday_based_day = (when.weekday() + 1) % 7  # Python: Monday = 0
    return sunday_based_day * MINUTES_PER_DAY + when.hour * 60 + when.minute


def overlaps(a: TimeWindow, b: TimeWindow) -> bool:
    """Whether two windows share at least one minute of the week."""
    return not a.minutes.isdisjoint(b.minutes)


def _parse_day(text: str, spec: str, position: int) -> int:
    index = _DAY_INDEX.get(text.lower())
    if index is None:
        raise TimeWindowError(
            f"unknown day {text!r} at column {position + 1} (use {', '.join(DAY_NAMES)})", spec, position, text
        )
    return index


def _parse_day_token(token: str, spec: str, position: int) -> set[int]:
    if "-" not in token:
        return {_parse_day(token, spec, position)}
    first, _, last = token.partition("-")
    start = _parse_day(first, spec, position)
    end = _parse_day(last, spec, position + len(first) + 1)
    span = (end - start) % 7  # wraps around the week: Fri-Mon
    return {(start + offset) % 7 for offset in range(span + 1)}


def _parse_clock(text: str, spec: str, position: int, *, allow_2400: bool) -> int:
    if not re.fullmatch(r"\d{4}", text):
        raise TimeWindowError(
            f"bad time {text!r} at column {position + 1} (write HHMM, e.g. 0900)", spec, position, text
        )
    hours, minutes = int(text[:2]), int(text[2:])
    if allow_2400 and hours == 24 and minutes == 0:
        return MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        raise TimeWindowError(
            f"time {text!r} out of range at column {position + 1} (0000..2359)", spec, position, text
        )
    return hours * 60 + minutes


def _parse_time_token(token: str, spec: str, position: int) -> tuple[int, int]:
    if "-" not in token:
        start = _parse_clock(token, spec, position, allow_2400=False)
        return (start, start + 1)
    first, _, last = token.partition("-")
    start = _parse_clock(first, spec, position, allow_2400=False)
    end = _parse_clock(last, spec, position + len(first) + 1, allow_2400=True)
    if end == start:
        raise TimeWindowError(
            f"time range {token!r} at column {position + 1} is empty (the end is exclusive)", spec, position, token
        )
    if end < start:
        raise TimeWindowError(
            f"time range {token!r} at column {position + 1} ends before it starts (the end is exclusive and "
            f"ranges cannot wrap past midnight: write {first}-2400 0000-{last})",
            spec,
            position,
            token,
        )
    return (start, end)
