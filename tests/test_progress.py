"""Long work made visible: windowed rates, plain progress lines for logs, waits shown, the report after the view."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import threading
import time

from rich.console import Console

from kanal.core.errors import Unreachable
from kanal.core.progress import Metrics, MigrationView, ProgressDisplay, RateWindow, eta
from kanal.core.retry import RetryPolicy, Wait, call_with_retry, duration
from tests import erp
from tests.streaming import erp as streaming
from tests.conftest import KANAL
from tests.pg import query
from tests.waiting import wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d kanal migrate erp-to-shop: (?P<phase>[a-z ]+) \d+s \| ")
ANSI = "\x1b["


def test_the_rate_is_measured_over_the_last_window_not_since_the_start() -> None:
    window = RateWindow(window_s=20)
    for t in range(31):  # 100 rows/s for 30 s ...
        window.add(float(t), 100 * t)
    assert window.rate() == 100
    for t in range(31, 41):  # ... then a 10 s stall
        window.add(float(t), 3_000)
    assert window.rate() == 50  # (3,000 - 2,000) / 20 s; the average since the start would say 75
    for t in range(41, 62):
        window.add(float(t), 3_000)
    assert window.rate() == 0
    assert eta(3_000, 4_000, window.rate()) == "…"  # stalled: no made-up ETA


def test_eta_and_durations() -> None:
    assert eta(500, 1_000, 50.0) == "10s"
    assert eta(0, 30_000, 100.0) == "5m00s"
    assert eta(1_000, 1_000, None) == "done"
    assert eta(0, 0, None) == "-"
    assert [duration(s) for s in (0, 59.6, 280, 7_500)] == ["0s", "1m00s", "4m40s", "2h05m"]
    fresh = RateWindow()
    fresh.add(0.0, 0)
    fresh.add(2.5, 1_000)
    assert fresh.rate() is None  # the first seconds of a run are noise (deliveries still starting), not a rate


def test_each_wait_is_told_with_its_budget_then_cleared() -> None:
    heard: list[Wait | None] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unreachable("postgres db1/shop", "connection refused")
        return "ok"

    policy = RetryPolicy(max_elapsed_s=280, initial_s=0.01, max_wait_s=0.02)
    assert call_with_retry(flaky, policy, on_wait=heard.append) == "ok"
    waits = [w for w in heard if w is not None]
    assert [w.retry for w in waits] == [1, 2] and heard[-1] is None
    assert waits[0].describe("shop").startswith("waiting for shop: connection refused, retry 1, gives up in 4m")


def test_plain_lines_say_something_new_each_time_and_carry_no_ansi_codes() -> None:
    metrics = Metrics(["shop"])
    metrics.entity("prices").total = 1_000
    metrics.set_phase("reading")
    plain = io.StringIO()
    not_a_terminal = Console(file=io.StringIO(), force_terminal=False)
    display = ProgressDisplay(metrics, MigrationView("kanal migrate job"), console=not_a_terminal, interval_s=0.3, plain=plain)
    with display:
        wait_for(lambda: plain.getvalue().count("\n") == 1, 5, "the first line")
        time.sleep(0.8)  # nothing moves for more than two intervals: no heartbeat lines
        assert plain.getvalue().count("\n") == 1
        metrics.add("prices", "read", 400)
        metrics.add("prices", "written", 400, "shop")
        wait_for(lambda: "prices 400/1,000" in plain.getvalue(), 5, "a line with the new counts")
        metrics.waiting("shop")(Wait(Unreachable("postgres h/shop", "connection refused"), 3, 1.0, 120))
        wait_for(lambda: "waiting for shop: connection refused, retry 3, gives up in 2m00s" in plain.getvalue(), 5, "the wait")
        metrics.waiting("shop")(None)  # the shop is back
        metrics.add("prices", "written", 600, "shop")
        metrics.set_phase("done")
    lines = plain.getvalue().splitlines()
    assert lines[-1].split(" | ")[1] == "prices 1,000/1,000 done" and "waiting" not in lines[-1]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d kanal migrate job: ", line) for line in lines)
    assert ANSI not in plain.getvalue() and not_a_terminal.file.getvalue() == ""  # type: ignore[attr-defined]


def test_migrate_logs_timestamped_progress_and_prints_the_report_after_it(cli, dbs) -> None:
    erp.seed(dbs.erp_sql, products=2_000)
    job = cli.write_job(erp.job(chunk_rows=5_000))
    # stdout and stderr into one pipe: the order in which a user sees them
    proc = subprocess.run([*KANAL, "migrate", str(job)], cwd=cli.folder, env=cli.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert ANSI not in proc.stdout
    lines = proc.stdout.splitlines()
    progress = [i for i, line in enumerate(lines) if LINE.match(line)]
    report = next(i for i, line in enumerate(lines) if line.startswith("migration erp-to-shop: done"))
    assert progress and max(progress) < report, proc.stdout
    last = lines[max(progress)]
    assert LINE.match(last)["phase"] == "done"  # type: ignore[index]
    assert f"prices {erp.price_rows() + 3:,}/{erp.price_rows() + 3:,} done" in last and "products 2,000/2,000 done" in last


def test_a_sink_that_goes_away_is_shown_as_waited_for_until_it_is_back(cli, dbs) -> None:
    erp.seed(dbs.erp_sql, products=4_000)
    job = erp.job(chunk_rows=5_000) + "  retry: {initial_s: 0.05, max_wait_s: 0.3}\n"
    proc = subprocess.Popen([*KANAL, "migrate", str(cli.write_job(job))], cwd=cli.folder, env=cli.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    shop, admin = dbs.shop_sql("select current_database()")[0][0], dbs.erp
    try:
        wait_for(lambda: dbs.shop_sql("select to_regclass('shop_prices')")[0][0], 60, "the run to prepare the shop")
        # the shop goes away: its connections are cut and new ones refused
        query(admin, f'alter database "{shop}" allow_connections false')
        query(admin, "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (shop,))
        wait_for(lambda: any("waiting for shop: " in line for line in lines), 30, "the wait to be shown")
    finally:
        query(admin, f'alter database "{shop}" allow_connections true')
    assert proc.wait(timeout=120) == 0, "".join(lines)
    reader.join(5)
    waits = [line for line in lines if "waiting for shop: " in line]
    assert re.search(r"waiting for shop: .+, retry \d+, gives up in [45]m\d\ds", waits[0]), waits[0]
    assert "waiting" not in lines[-1] and LINE.match(lines[-1])["phase"] == "done"  # type: ignore[index]


def test_run_prints_the_migration_report_when_the_migration_ends_then_streams_with_its_own_view(cli, dbs) -> None:
    streaming.seed(dbs.erp, products=300)
    job = cli.write_job(streaming.job(delta=streaming.CURSOR))
    proc = subprocess.Popen([*KANAL, "run", str(job)], cwd=cli.folder, env=cli.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, into=into: into.extend(s), daemon=True)
               for s, into in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    try:
        wait_for(lambda: any(line.startswith("migration erp-stream: done") for line in out), 60, "the migration report")
        assert proc.poll() is None  # printed while `run` goes on streaming
        dbs.erp_sql("update erp_stock set on_hand = 4242, updated_at = clock_timestamp() where sku = 'P7'")
        wait_for(lambda: dbs.shop_sql("select count(*) from shop_stock where sku = 'P7' and on_hand = 4242") == [(2,)], 60, "the change")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for r in readers:
        r.join(5)
    assert proc.returncode == 0, "".join(err)
    # the stream's view: its own lines, the change counted per entity (the last line at the latest)
    assert any(re.search(r" kanal sync erp-stream \(continuous\): [a-z :]+ \d+s \| .*stock_levels read [1-9]", line) for line in err), err
    assert sum(line.startswith("migration erp-stream: done") for line in out) == 1
    assert out[-1].startswith("  ") and any(line.startswith("sync erp-stream (continuous)") for line in out)
    assert ANSI not in "".join(out + err)
