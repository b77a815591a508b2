import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from itertools import islice

import pytest

from kanal.core.schedule import Continuous, Every, SystemClock, fire_times, parse_cron, parse_every, parse_timezone


class FakeClock:
    """A clock whose sleeps jump time forward instantly and are recorded, so no test waits."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.sleeps: list[datetime] = []

    def now(self) -> datetime:
        return self.current

    def sleep_until(self, when: datetime, stop: threading.Event) -> bool:
        self.sleeps.append(when)
        if stop.is_set():
            return False
        self.current = max(self.current, when)
        return True


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def next_fires(expression: str, start: str, count: int = 1) -> list[datetime]:
    cron, moment, fires = parse_cron(expression), at(start), []
    for _ in range(count):
        moment = cron.next_after(moment)
        fires.append(moment)
    return fires


START = at("2026-01-01 00:02:30")


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90", timedelta(seconds=90)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_parse_every_accepts_durations(text: str, interval: timedelta) -> None:
    assert parse_every(text) == Every(interval)


@pytest.mark.parametrize("text", ["5x", "", "m", "5m1h", "1.5h", "-5m", "1h 30m"])
def test_parse_every_rejects_non_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration; use e.g. 30s, 5m, 1h"):
        parse_every(text)


def test_parse_every_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_every("999999999999d")


@pytest.mark.parametrize("text", ["0", "0s", "0h0m"])
def test_parse_every_rejects_zero(text: str) -> None:
    with pytest.raises(ValueError, match="is not a positive duration"):
        parse_every(text)


def test_descriptions() -> None:
    assert parse_every("5m").describe() == "every 5m"
    assert parse_every("90").describe() == "every 1m30s"
    assert parse_every("1d2h").describe() == "every 1d2h"
    assert Every(timedelta(milliseconds=500)).describe() == "every 0.5s"
    assert parse_cron(" */5  *  * * * ").describe() == "cron */5 * * * *"
    assert Continuous().describe() == "continuous"


def test_every_and_continuous_next_after() -> None:
    assert parse_every("5m").next_after(START) == START + timedelta(minutes=5)
    assert Continuous().next_after(START) == START


def test_cron_every_five_minutes_is_strictly_after() -> None:
    assert next_fires("*/5 * * * *", "2026-01-01 00:02:30", 3) == [
        at("2026-01-01 00:05"),
        at("2026-01-01 00:10"),
        at("2026-01-01 00:15"),
    ]
    assert next_fires("*/5 * * * *", "2026-01-01 00:05:00") == [at("2026-01-01 00:10")]
    assert next_fires("*/5 * * * *", "2026-01-01 23:58:59") == [at("2026-01-02 00:00")]


def test_cron_specific_time_of_day() -> None:
    assert next_fires("30 14 * * *", "2026-03-10 14:30", 2) == [at("2026-03-11 14:30"), at("2026-03-12 14:30")]
    assert next_fires("30 14 * * *", "2026-03-10 09:00") == [at("2026-03-10 14:30")]


def test_cron_ranges_lists_and_steps() -> None:
    assert next_fires("0,30 9-10 * * *", "2026-01-01 08:00", 5) == [
        at("2026-01-01 09:00"),
        at("2026-01-01 09:30"),
        at("2026-01-01 10:00"),
        at("2026-01-01 10:30"),
        at("2026-01-02 09:00"),
    ]
    assert parse_cron("10-30/10 0-12/6 * * *").minutes == (10, 20, 30)
    assert parse_cron("10-30/10 0-12/6 * * *").hours == (0, 6, 12)
    assert parse_cron("1,5-7,*/20 * * * *").minutes == (0, 1, 5, 6, 7, 20, 40)


def test_cron_month_and_weekday_names_are_case_insensitive() -> None:
    # 2026-01-01 is a Thursday.
    assert next_fires("0 9 * * mon-FRI", "2026-01-01 10:00", 2) == [at("2026-01-02 09:00"), at("2026-01-05 09:00")]
    assert next_fires("0 0 1 Mar,sep *", "2026-01-01 00:00", 2) == [at("2026-03-01 00:00"), at("2026-09-01 00:00")]


@pytest.mark.parametrize("sunday", ["0", "7", "SUN", "6-7"])
def test_cron_sunday_is_0_and_7(sunday: str) -> None:
    # 2026-01-04 is the first Sunday of 2026.
    assert at("2026-01-04 12:00") in next_fires(f"0 12 * * {sunday}", "2026-01-01 00:00", 2)
    assert 7 not in parse_cron(f"0 12 * * {sunday}").weekdays


def test_cron_restricted_day_fields_match_either() -> None:
    # The 13th or any Friday: Fri 2 Jan, Fri 9 Jan, Tue 13 Jan, Fri 16 Jan.
    assert next_fires("0 0 13 * 5", "2026-01-01 00:00", 4) == [
        at("2026-01-02 00:00"),
        at("2026-01-09 00:00"),
        at("2026-01-13 00:00"),
        at("2026-01-16 00:00"),
    ]


def test_cron_one_unrestricted_day_field_means_both_must_match() -> None:
    assert next_fires("0 0 13 * *", "2026-01-01 00:00") == [at("2026-01-13 00:00")]
    assert next_fires("0 0 * * 5", "2026-01-01 00:00") == [at("2026-01-02 00:00")]
    # A starred step still counts as unrestricted (Vixie): odd days that are Fridays, not odd days or Fridays.
    assert next_fires("0 0 */2 * 5", "2026-01-01 00:00", 2) == [at("2026-01-09 00:00"), at("2026-01-23 00:00")]


def test_cron_month_and_year_rollover() -> None:
    assert next_fires("0 0 31 * *", "2026-01-31 00:00", 2) == [at("2026-03-31 00:00"), at("2026-05-31 00:00")]
    assert next_fires("15 6 1 1 *", "2026-12-31 23:59") == [at("2027-01-01 06:15")]
    assert next_fires("* * * * *", "2026-12-31 23:59:59.999") == [at("2027-01-01 00:00")]


def test_cron_leap_day() -> None:
    assert next_fires("0 0 29 2 *", "2026-01-01 00:00", 2) == [at("2028-02-29 00:00"), at("2032-02-29 00:00")]


def test_cron_converts_other_timezones_to_utc() -> None:
    moment = datetime(2026, 1, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))  # 09:00 UTC
    assert parse_cron("0 10 * * *").next_after(moment) == at("2026-01-01 10:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_cron("0 10 * * *").next_after(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 0 31 2 *", "cron '0 0 31 2 \\*' never fires: February has no day 31"),
        ("0 0 30,31 2 *", "February has no day 30 or 31"),
        ("0 0 31 4,6,9,11 *", "April, June, September and November have no day 31"),
        ("0 0 31 2 */2", "February has no day 31"),  # a starred weekday must match as well
    ],
)
def test_cron_that_never_fires_is_refused_when_parsed(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(expression)


def test_cron_rare_but_possible_expressions_are_found() -> None:
    # 31 February or any Friday in February (either day field); 29 February only on a Sunday: 2032, then 2060.
    assert next_fires("0 0 31 2 5", "2026-01-01 00:00") == [at("2026-02-06 00:00")]
    assert next_fires("0 0 29 2 */7", "2026-01-01 00:00", 2) == [at("2032-02-29 00:00"), at("2060-02-29 00:00")]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "cron field 'minute' value '61' is out of range 0-59"),
        ("* 24 * * *", "cron field 'hour' value '24' is out of range 0-23"),
        ("* * 0 * *", "cron field 'day-of-month' value '0' is out of range 1-31"),
        ("* * * 13 *", "cron field 'month' value '13' is out of range 1-12"),
        ("* * * * 8", "cron field 'day-of-week' value '8' is out of range 0-7"),
        ("* * * FOO *", "cron field 'month' value 'FOO' is not a number or name"),
        ("x * * * *", "cron field 'minute' value 'x' is not a number"),
        ("1,,2 * * * *", "cron field 'minute' value '' is not a number"),
        ("* 5-2 * * *", "cron field 'hour' range '5-2' runs backwards"),
        ("*/0 * * * *", "cron field 'minute' step '0' must be a positive whole number"),
        ("5/10 * * * *", r"cron field 'minute' step '5/10' needs a range or \*"),
        ("* * * *", "needs 5 fields"),
        ("@daily", "needs 5 fields"),
    ],
)
def test_cron_errors_name_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(expression)


def test_fire_times_every_starts_immediately_and_keeps_the_start_aligned() -> None:
    clock = FakeClock(START)
    fires = list(islice(fire_times(parse_every("5m"), clock, threading.Event()), 4))
    assert fires == [START + timedelta(minutes=5 * n) for n in range(4)]
    assert clock.sleeps == fires


def test_fire_times_cron_waits_for_the_first_matching_minute() -> None:
    clock = FakeClock(START)
    fires = list(islice(fire_times(parse_cron("*/5 * * * *"), clock, threading.Event()), 4))
    assert fires == [at("2026-01-01 00:05"), at("2026-01-01 00:10"), at("2026-01-01 00:15"), at("2026-01-01 00:20")]
    assert clock.sleeps == fires


def test_fire_times_continuous_fires_at_each_present() -> None:
    clock = FakeClock(START)
    fires = fire_times(Continuous(), clock, threading.Event())
    assert next(fires) == START
    clock.current += timedelta(seconds=7)  # the run took 7 seconds
    assert next(fires) == START + timedelta(seconds=7)


def test_fire_times_drops_fire_times_missed_by_an_overrun() -> None:
    clock = FakeClock(START)
    fires = fire_times(parse_cron("*/5 * * * *"), clock, threading.Event())
    assert next(fires) == at("2026-01-01 00:05")
    clock.current = at("2026-01-01 00:17:10")  # the run overran 00:10 and 00:15
    assert next(fires) == at("2026-01-01 00:20")


def test_fire_times_every_restarts_from_the_present_after_an_overrun() -> None:
    clock = FakeClock(START)
    fires = fire_times(parse_every("5m"), clock, threading.Event())
    assert next(fires) == START
    clock.current = START + timedelta(minutes=12)
    assert next(fires) == START + timedelta(minutes=17)
    assert next(fires) == START + timedelta(minutes=22)


def test_fire_times_returns_when_stopped() -> None:
    stop, clock = threading.Event(), FakeClock(START)
    fires = fire_times(parse_every("5m"), clock, stop)
    assert next(fires) == START
    stop.set()
    assert list(fires) == []
    assert clock.sleeps == [START, START + timedelta(minutes=5)]


def test_fire_times_yields_nothing_when_already_stopped() -> None:
    stop = threading.Event()
    stop.set()
    assert list(fire_times(parse_cron("*/5 * * * *"), FakeClock(START), stop)) == []


def test_system_clock_is_utc_and_returns_at_once_when_stopped() -> None:
    clock, stop = SystemClock(), threading.Event()
    assert clock.now().tzinfo is UTC
    stop.set()
    began = time.monotonic()
    assert clock.sleep_until(clock.now() + timedelta(hours=1), stop) is False
    assert clock.sleep_until(clock.now() - timedelta(seconds=1), stop) is False
    assert time.monotonic() - began < 1


def test_system_clock_returns_true_for_a_past_deadline() -> None:
    clock = SystemClock()
    assert clock.sleep_until(clock.now() - timedelta(seconds=1), threading.Event()) is True



BERLIN = "Europe/Berlin"  # 2026: clocks spring forward 29 March 02:00 -> 03:00, fall back 25 October 03:00 -> 02:00


def wall_fires(expression: str, zone: str, start: str, count: int) -> list[str]:
    """Fire times as the zone's wall clock, with the offset, so a test reads as its user sees it."""
    cron, moment, fires = parse_cron(expression, zone), at(start), []
    for _ in range(count):
        moment = cron.next_after(moment)
        fires.append(moment.astimezone(cron.zone).strftime("%m-%d %H:%M%z"))
    return fires


def test_cron_reads_the_wall_clock_of_its_time_zone() -> None:
    assert wall_fires("0 2 * * *", BERLIN, "2026-01-10 00:00", 2) == ["01-10 02:00+0100", "01-11 02:00+0100"]
    assert wall_fires("0 2 * * *", BERLIN, "2026-07-10 00:00", 1) == ["07-11 02:00+0200"]
    assert parse_cron("0 2 * * *", BERLIN).next_after(at("2026-07-10 00:00")) == at("2026-07-11 00:00")
    assert parse_cron("0 2 * * *", BERLIN).describe() == "cron 0 2 * * * (Europe/Berlin)"


def test_cron_time_skipped_by_spring_forward_fires_once_at_the_next_valid_time() -> None:
    assert wall_fires("30 2 * * *", BERLIN, "2026-03-28 00:00", 3) == [
        "03-28 02:30+0100",
        "03-29 03:00+0200",
        "03-30 02:30+0200",
    ]
    # Every skipped time collapses into one run when the gap ends.
    assert wall_fires("*/20 * * * *", BERLIN, "2026-03-29 00:30", 3) == ["03-29 01:40+0100", "03-29 03:00+0200", "03-29 03:20+0200"]


def test_cron_time_repeated_by_fall_back_fires_once() -> None:
    assert wall_fires("30 2 * * *", BERLIN, "2026-10-24 00:00", 3) == [
        "10-24 02:30+0200",
        "10-25 02:30+0200",
        "10-26 02:30+0100",
    ]
    assert wall_fires("*/30 2 * * *", BERLIN, "2026-10-24 23:00", 3) == ["10-25 02:00+0200", "10-25 02:30+0200", "10-26 02:00+0100"]


def test_cron_firing_every_hour_keeps_firing_through_the_repeated_hour() -> None:
    assert wall_fires("*/30 * * * *", BERLIN, "2026-10-24 23:00", 5) == [
        "10-25 01:30+0200",
        "10-25 02:00+0200",
        "10-25 02:30+0200",
        "10-25 02:00+0100",
        "10-25 02:30+0100",
    ]


def test_cron_next_after_from_inside_the_repeated_hour() -> None:
    second_0215 = at("2026-10-25 01:15")  # 02:15 CET, the second time the wall clock shows it
    assert parse_cron("*/30 * * * *", BERLIN).next_after(second_0215) == at("2026-10-25 01:30")
    assert parse_cron("30 2 * * *", BERLIN).next_after(second_0215) == at("2026-10-26 01:30")


def test_timezone_names_are_checked_with_a_suggestion() -> None:
    assert parse_timezone("Europe/Berlin").key == BERLIN
    for typo, suggestion in (("Europe/Berln", BERLIN), ("europe/berlin", BERLIN), ("Berlin", BERLIN), ("New York", "America/New_York")):
        with pytest.raises(ValueError, match=f"unknown time zone '{typo}'; did you mean '{suggestion}'"):
            parse_timezone(typo)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus' \\(an IANA name such as"):
        parse_cron("0 2 * * *", "Mars/Olympus")
