"""`sync --every` / `--cron` fire at their times (an injected clock: no test waits for minutes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kanal.core.schedule import Schedule, parse_cron, parse_every
from kanal.jobs.load import load_job
from kanal.jobs.stream import sync
from tests.conftest import Cli, Databases
from tests.streaming import erp


class ScriptedClock:
    """Jumps to each wake-up time at once; before each wake-up the ERP changes; stops after `fires`."""

    def __init__(self, start: datetime, fires: int, before_wake: Callable[[int], None]) -> None:
        self.current, self.fires, self.before_wake = start, fires, before_wake
        self.wakes: list[datetime] = []

    def now(self) -> datetime:
        return self.current

    def sleep_until(self, when: datetime, stop: threading.Event) -> bool:
        if len(self.wakes) + 1 >= self.fires:
            stop.set()
            return False
        self.wakes.append(when)
        self.current = when
        self.before_wake(len(self.wakes))
        return True


def _run(cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch, schedule: Schedule, start: datetime, fires: int) -> tuple[ScriptedClock, int]:
    erp.seed(dbs.erp, products=20)
    path: Path = cli.write_job(erp.job())
    cli.run("sync", "job.yaml", "--once", "--quiet", check=True)

    def change(n: int) -> None:
        dbs.erp_sql(f"update erp_stock set on_hand = {n} where sku = 'P1'")

    clock = ScriptedClock(start, fires, change)
    monkeypatch.setenv("ERP_DSN", dbs.erp)
    monkeypatch.setenv("SHOP_DSN", dbs.shop)
    loaded = load_job(path)
    report = sync(loaded, schedule=schedule, clock=clock, stop=threading.Event(), quiet=True)
    cli.run("cleanup", "job.yaml", check=True)
    return clock, report.changes


def test_every_fires_at_its_interval(cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, changes = _run(cli, dbs, monkeypatch, parse_every("5m"), datetime(2026, 3, 1, 9, 2, 30, tzinfo=UTC), fires=4)
    assert clock.wakes == [datetime(2026, 3, 1, 9, m, 30, tzinfo=UTC) for m in (2, 7, 12)]  # the first at once
    assert changes == 2 * 3  # each wake-up read the two stock rows changed just before it
    assert dbs.shop_sql("select on_hand::int from shop_stock where sku = 'P1'") == [(3,), (3,)]


def test_cron_fires_on_its_minutes(cli: Cli, dbs: Databases, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, changes = _run(cli, dbs, monkeypatch, parse_cron("*/15 * * * *"), datetime(2026, 3, 1, 9, 2, 30, tzinfo=UTC), fires=4)
    assert clock.wakes == [datetime(2026, 3, 1, h, m, tzinfo=UTC) for h, m in ((9, 15), (9, 30), (9, 45))]
    assert changes == 2 * 3
