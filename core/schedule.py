"""When scheduled syncs fire: fixed intervals, cron expressions, or continuously.

Time comes from a `Clock`, so tests use a fake clock that jumps instead of
waiting, and a stop request wakes a sleeping scheduler at once. All times are
UTC, cron included: local time has daylight-saving gaps and repeats, where
"30 2 * * *" would silently fire zero or two times a day.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

_MAX_NAP_S = 60.0  # re-read the wall clock at least this often, so a clock step or suspend is noticed
_HORIZON = timedelta(days=5 * 366)  # a cron with no fire time this far ahead is treated as impossible
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
    """A 5-field cron expression in UTC, built by `parse_cron`: each field's allowed values, ascending (Sunday is 0)."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    # Vixie cron: when both day fields are restricted, a day matching either one fires.
    either_day: bool

    def next_after(self, moment: datetime) -> datetime:
        """Jump straight past months, days and hours that cannot match, so a rare expression costs little.

        Raises ValueError when nothing matches within about 5 years (e.g. 30 February).
        """
        if moment.tzinfo is None:
            raise ValueError(f"cron needs a timezone-aware time, got {moment.isoformat()}")
        t = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + _HORIZON
        while t < limit:
            if t.month not in self.months:
                t = t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1, day=1, hour=0, minute=0)
            elif not self._day_matches(t) or t.hour > self.hours[-1]:
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(hour=_next_value(self.hours, t.hour), minute=0)
            elif t.minute > self.minutes[-1]:
                t = t.replace(minute=0) + timedelta(hours=1)
            else:
                return t.replace(minute=_next_value(self.minutes, t.minute))
        raise ValueError(f"cron {self.expression!r} never fires within 5 years after {moment.isoformat()}")

    def describe(self) -> str:
        return f"cron {self.expression}"

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


def parse_cron(text: str) -> Cron:
    """Parse "minute hour day-of-month month day-of-week"; errors name the offending field."""
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"cron {text!r} needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    minutes, hours, days, months, weekdays = (_parse_field(part, *field) for part, field in zip(parts, _FIELDS))
    # Vixie cron treats a day field starting with "*" (including "*/2") as unrestricted.
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    weekdays = tuple(sorted({day % 7 for day in weekdays}))
    return Cron(" ".join(parts), minutes, hours, days, months, weekdays, either_day)


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
