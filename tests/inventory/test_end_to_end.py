"""Real-time inventory end to end, every part a real process: `kanal edge` agents for a warehouse and two
stores, `kanal inventory`, `kanal sync` into Redis and PostgreSQL, a broker between them.

Tills sell concurrently at both stores, faster than the stock lasts, and the
web and marketplace channels take orders through Redis reservations; some
requests are delivered twice; one store goes offline and comes back; the
aggregator is killed with -9 mid-stream and restarted. In the end every
figure must equal what a ledger recomputed from all posted movements says,
and no unit may have been sold that was not there.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psutil

from kanal.jobs.inventory_demo import Shopfloor
from kanal.jobs.inventory_landscape import EXAMPLE, KANAL, Landscape, reconcile, wait_until
from tests.conftest import Databases

SKUS = ["A", "B", "C", "D"]


def sell(floor: Shopfloor, seconds: float) -> None:
    stop = threading.Event()
    threads = floor.run({"S1": 25.0, "S2": 25.0, "web": 8.0, "marketplace": 4.0}, stop)
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()


def test_offline_store_duplicates_and_a_killed_aggregator_converge_without_overselling(tmp_path: Path, dbs: Databases) -> None:
    job = tmp_path / "inventory.yaml"  # the demo's job; the group drops the killed aggregator after 1.5 s, not 45 s
    job.write_text(EXAMPLE.read_text().replace("partitions: 4", "partitions: 4, session_timeout_ms: 1500"))
    with Landscape(tmp_path / "site", dbs.shop, job=job) as landscape:
        landscape.start()
        floor = Shopfloor(landscape, SKUS, duplicate_every=3)
        floor.receive({"WH1": 12, "S1": 6, "S2": 20})  # S1 sells out, S2 has enough to sell while offline
        wait_until(lambda: landscape.redis_availability().height == len(SKUS) * 2, 60, "availability in Redis")
        sell(floor, 1.5)

        landscape.offline("S2")
        sell(floor, 1.5)
        assert landscape.backlog("S2") > 0  # S2 took sales it could not forward

        landscape.kill_aggregator()
        sell(floor, 1.0)
        landscape.start_aggregator()
        landscape.back_online("S2")
        sell(floor, 1.0)

        wait_until(lambda: all(landscape.backlog(code) == 0 for code in landscape.sites), 60, "every backlog forwarded")
        result = wait_until(lambda: (r := reconcile(landscape, floor.frame())).ok and r, 60, "the landscape to settle")

    assert result.level_drift.is_empty() and result.redis_drift == result.shop_drift == 0
    assert result.oversold == {"web": 0, "marketplace": 0}
    assert floor.counts["duplicates sent"] > 0 and floor.counts["duplicates ignored"] == floor.counts["duplicates sent"]
    assert floor.counts["sale"] > 0 and result.movements == len({r["event_id"] for r in floor.posted})
    assert floor.counts["customers turned away (shelf empty)"] > 0  # demand outran the stock, and nothing was oversold


def started_in(folder: Path) -> list[str]:
    """Processes running in `folder` or naming it (agents' journals, Valkey's socket)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        line = " ".join(proc.info["cmdline"] or [])
        if proc.info["cwd"] == str(folder) or str(folder) in line:
            found.append(line)
    return found


def test_the_inventory_demo_runs_and_leaves_no_process(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = subprocess.run([*KANAL, "demo", "--inventory", "--seconds", "6", "--folder", str(folder)],
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert started_in(folder) == []
    assert "central stock levels = a ledger recomputed from every movement: yes" in done.stdout
    assert "oversold units per channel: web 0, marketplace 0" in done.stdout
    assert " ms  shop table " in done.stdout  # sales were shown as they reached Redis and the shop table
