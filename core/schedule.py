"""When scheduled syncs fire: fixed intervals, cron expressions, or continuously.

Time comes from a `Clock`, so tests use a fake clock that jumps instead of
waiting, and a stop request wakes a sleeping scheduler at once. Clocks and
fire times are UTC; a cron expression reads the wall clock of its time zone
(UTC unless given), with daylight saving handled the way cron users expect:

* a wall time the spring-forward skips (02:30 in Europe/Berlin on the last
  Sunday of March) fires once, at the first valid moment after the gap
  (03:00), and several skipped times collapse into that one run;
* a wall time the fall-back repeats fires once, at its first occurrence;
  only a schedule that fires in every hour ("*/5 * * * *", "0 * * * *") keeps
  firing through the repeated hour, so it never pauses for an hour.

An expression that can never fire (30 February) is refused when parsed, with
the reason, instead of failing later in a running scheduler.
"""

from __future__ import annotations

import difflib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_MAX_NAP_S = 60.0  # re-read the wall clock at least this often, so a clock step or suspend is noticed
# Every date, 29 February on each weekday included, recurs within one 400-year Gregorian cycle, so an
# expression `parse_cron` accepted fires within it; the limit only guards against a bug looping forever.
_HORIZON_YEARS = 401
# More than any UTC offset change (daylight saving moves 1 hour, historically 2): wall times this far
# apart cannot swap order as instants, which bounds the search around a transition.
_MAX_SHIFT = timedelta(hours=3)
_MINUTE = timedelta(minutes=1)
_LAST_DAY = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # per month; 29 February counts
_MONTH_NAMES = ("", *"January February March April May June July August September October November December".split())
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_MONTHS = {n: i for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_WEEKDAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
# (name used in errors, lowest value, highest value, accepted names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    def sleep_until(self, when: datetime, stop: threading.Event) -> bool:
        """Wait until `when`; False if `stop` was set first (the caller should then quit)."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_until(self, when: datetime, stop: threading.Event) -> bool:
        """Wait on `stop` rather than sleeping, so setting it wakes us at once.

        Naps are capped and the deadline re-checked against the wall clock,
        because a monotonic wait does not notice the wall clock being stepped
        or the machine being suspended.
        """
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return not stop.is_set()
            if stop.wait(min(remaining, _MAX_NAP_S)):
                return False


class Schedule(ABC):
    @abstractmethod
    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`."""

    @abstractmethod
    def describe(self) -> str:
        """A short human-readable form for logs and status output."""


@dataclass(frozen=True)
class Every(Schedule):
    """Fire at the start, then every `interval` after each scheduled time.

    Counting from scheduled times rather than from when runs end keeps the
    fire times from drifting by each run's duration.
    """

    interval: timedelta

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise ValueError(f"an interval must be positive, got {self.interval}")

    def next_after(self, moment: datetime) -> datetime:
        return moment + self.interval

    def describe(self) -> str:
        rest = self.interval.total_seconds()
        text = ""
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            count, rest = divmod(rest, size)
            text += f"{int(count)}{unit}" if count else ""
        return f"every {text}{rest:g}s" if rest or not text else f"every {text}"


@dataclass(frozen=True)
class Cron(Schedule):
    """A 5-field cron expression on the wall clock of `zone`, built by `parse_cron`.

    Each field holds its allowed values, ascending (Sunday is 0).
    """

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    # Vixie cron: when both day fields are restricted, a day matching either one fires.
    either_day: bool
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time (UTC) strictly after `moment`.

        Wall times are walked from a little before `moment`'s own (a repeated
        hour may still hold later instants) until no later wall time can be an
        earlier instant; each becomes one instant, or none (see `_instants`).
        """
        if moment.tzinfo is None:
            raise ValueError(f"cron needs a timezone-aware time, got {moment.isoformat()}")
        after = moment.astimezone(UTC)
        wall: datetime | None = after.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0) - _MAX_SHIFT
        best: datetime | None = None
        until: datetime | None = None
        while wall := self._next_wall(wall, until):
            for instant in self._instants(wall):
                if instant > after and (best is None or instant < best):
                    best, until = instant, until or wall + _MAX_SHIFT
        assert best is not None  # `_next_wall` raises rather than run out without a limit
        return best

    def describe(self) -> str:
        return f"cron {self.expression}" + ("" if self.zone.key == "UTC" else f" ({self.zone.key})")

    def _next_wall(self, after: datetime, until: datetime | None = None) -> datetime | None:
        """The first matching wall time (naive) strictly after `after`; None if it would come after `until`.

        Jumps straight past months, days and hours that cannot match, so a rare
        expression costs little.
        """
        t = after.replace(second=0, microsecond=0) + _MINUTE
        limit = until or _years_later(t, _HORIZON_YEARS)
        while t <= limit:
            if t.month not in self.months:
                t = t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1, day=1, hour=0, minute=0)
            elif not self._day_matches(t) or t.hour > self.hours[-1]:
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(hour=_next_value(self.hours, t.hour), minute=0)
            elif t.minute > self.minutes[-1]:
                t = t.replace(minute=0) + timedelta(hours=1)
            else:
                t = t.replace(minute=_next_value(self.minutes, t.minute))
                if t <= limit:
                    return t
                break
        if until is not None:
            return None
        raise ValueError(f"cron {self.expression!r} found no fire time within {_HORIZON_YEARS} years after {after}")

    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants at which wall time `wall` fires in `zone`.

        An ordinary wall time is one instant. One the spring-forward skips
        fires at the end of the gap. One the fall-back repeats fires at its
        first occurrence, and at the second too when the schedule fires in
        every hour (cron's rule for its wildcard jobs).
        """
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if second > first:  # repeated: fold 0 is the earlier offset's, the first occurrence
            return [first, second] if len(self.hours) == 24 else [first]
        return [self._gap_end(second, first)]

    def _gap_end(self, before: datetime, after: datetime) -> datetime:
        """The first minute with the new UTC offset, between an instant `before` the transition and one `after` it."""
        new_offset = after.astimezone(self.zone).utcoffset()
        while after - before > _MINUTE:
            middle = before + (after - before) // _MINUTE // 2 * _MINUTE
            if middle.astimezone(self.zone).utcoffset() == new_offset:
                after = middle
            else:
                before = middle
        return after

    def _day_matches(self, t: datetime) -> bool:
        in_month, in_week = t.day in self.days, t.isoweekday() % 7 in self.weekdays
        return (in_month or in_week) if self.either_day else (in_month and in_week)


class Continuous(Schedule):
    """Fire again as soon as the previous run ends (streaming), so `next_after` is not strictly after."""

    def next_after(self, moment: datetime) -> datetime:
        return moment

    def describe(self) -> str:
        return "continuous"


def parse_every(text: str) -> Every:
    """Parse "30s", "5m", "2h", "1d", "1h30m" or bare seconds ("90")."""
    spec = text.strip().lower()
    if spec.isascii() and spec.isdigit():
        spec += "s"
    match = _DURATION.fullmatch(spec) if spec else None
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 5m, 1h")
    d, h, m, s = (int(group or 0) for group in match.groups())
    try:
        interval = timedelta(days=d, hours=h, minutes=m, seconds=s)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if interval <= timedelta(0):
        raise ValueError(f"{text!r} is not a positive duration; use e.g. 30s, 5m, 1h")
    return Every(interval)


def parse_cron(text: str, timezone: str = "UTC") -> Cron:
    """Parse "minute hour day-of-month month day-of-week" on the wall clock of `timezone`.

    Errors name the offending field, or say why the expression never fires.
    """
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"cron {text!r} needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    minutes, hours, days, months, weekdays = (_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS))
    # Vixie cron treats a day field starting with "*" (including "*/2") as unrestricted.
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    weekdays = tuple(sorted({day % 7 for day in weekdays}))
    expression = " ".join(parts)
    if not either_day and not any(day <= _LAST_DAY[month] for month in months for day in days):
        # With days of the week too, both must match; every date falls on every weekday some year.
        have = f"{_words([_MONTH_NAMES[m] for m in months], 'and')} {'has' if len(months) == 1 else 'have'}"
        raise ValueError(f"cron {expression!r} never fires: {have} no day {_words([str(d) for d in days], 'or')}")
    return Cron(expression, minutes, hours, days, months, weekdays, either_day, parse_timezone(timezone))


def parse_timezone(name: str) -> ZoneInfo:
    """A time zone of the IANA database ("Europe/Berlin", "UTC"); the error suggests the closest names."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        pass
    close = _similar_zones(name.strip())
    hint = f"; did you mean {_words([repr(z) for z in close], 'or')}?" if close else " (an IANA name such as 'Europe/Berlin' or 'UTC')"
    raise ValueError(f"unknown time zone {name!r}{hint}")


@cache
def _zone_names() -> dict[str, str]:
    """Lower-cased name -> IANA name, for suggestions (read once, only after a miss)."""
    return {zone.lower(): zone for zone in available_timezones()}


def _similar_zones(name: str) -> list[str]:
    """Zones spelled the same but for case, named by their city ("berlin"), or closest in spelling."""
    names = _zone_names()
    wanted = name.lower().replace(" ", "_")
    if wanted in names:
        return [names[wanted]]
    by_city = sorted(zone for low, zone in names.items() if low.rsplit("/", 1)[-1] == wanted)
    if by_city:
        return by_city[:3]
    return [names[low] for low in difflib.get_close_matches(wanted, names, n=1, cutoff=0.75)]


def _years_later(t: datetime, years: int) -> datetime:
    try:
        return t + timedelta(days=366 * years)
    except OverflowError:
        return datetime.max


def _words(items: list[str], joint: str) -> str:
    """ "a", "a and b", "a, b and c" """
    return f"{', '.join(items[:-1])} {joint} {items[-1]}" if len(items) > 1 else items[0]


def fire_times(schedule: Schedule, clock: Clock, stop: threading.Event) -> Iterator[datetime]:
    """Yield each scheduled fire time once it has come; return as soon as `stop` is set.

    Intervals and continuous schedules fire immediately, cron at its next
    matching minute. When a run overruns later fire times, those are dropped
    rather than fired back to back (a burst of syncs would only repeat the
    same work), and the schedule restarts from the present: the next cron
    minute, or one interval from now.
    """
    when = schedule.next_after(clock.now()) if isinstance(schedule, Cron) else clock.now()
    while clock.sleep_until(when, stop):
        yield when
        now, when = clock.now(), schedule.next_after(when)
        if when < now:
            when = schedule.next_after(now)


def _next_value(values: tuple[int, ...], current: int) -> int:
    """The first allowed value at or after `current`; callers check one exists."""
    return next(value for value in values if value >= current)


def _parse_field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> tuple[int, ...]:
    """Expand one field ("*", "5", "1-5", "MON-FRI", "*/15", "0-30/10", lists of these) into its values."""
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        if slash and not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"cron field {name!r} step {step_text!r} must be a positive whole number")
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            first_text, _, last_text = base.partition("-")
            first, last = _parse_value(first_text, name, lo, hi, names), _parse_value(last_text, name, lo, hi, names)
            if first > last:
                raise ValueError(f"cron field {name!r} range {base!r} runs backwards")
        elif slash:
            raise ValueError(f"cron field {name!r} step {part!r} needs a range or *, e.g. */{step_text}")
        else:
            first = last = _parse_value(base, name, lo, hi, names)
        values.update(range(first, last + 1, int(step_text) if slash else 1))
    return tuple(sorted(values))


def _parse_value(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not (text.isascii() and text.isdigit()):
        kind = "a number or name" if names else "a number"
        raise ValueError(f"cron field {name!r} value {text!r} is not {kind}")
    if not lo <= int(text) <= hi:
        raise ValueError(f"cron field {name!r} value {text!r} is out of range {lo}-{hi}")
    return int(text)
