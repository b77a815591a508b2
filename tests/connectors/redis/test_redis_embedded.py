"""The embedded server: one per data folder, shared, durable, and never left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import psutil
import pytest
import redis

from kanal.connectors.redis import RedisConfig, RedisInventory, RedisSink, embedded
from kanal.core.errors import Unreachable
from kanal.core.model import AVAILABILITY
from tests.waiting import wait_for


def servers(data_dir: Path) -> list[psutil.Process]:
    """Running server processes of `data_dir` (found by their socket in the process title)."""
    sock = str(embedded.socket_path(data_dir.resolve()))
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if sock in " ".join(proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:  # ended while we looked
            continue
    return found


def test_leases_share_one_server_the_last_stops_it_and_the_data_stays(tmp_path: Path) -> None:
    first, second = embedded.lease(tmp_path / "r"), embedded.lease(tmp_path / "r")
    assert len(servers(tmp_path / "r")) == 1
    with redis.Redis(unix_socket_path=str(first.sock)) as client:
        client.set("kept", "yes")
    first.release()
    assert len(servers(tmp_path / "r")) == 1  # the second still holds it
    second.release()
    assert servers(tmp_path / "r") == [] and not first.sock.exists()
    again = embedded.lease(tmp_path / "r")
    with redis.Redis(unix_socket_path=str(again.sock)) as client:
        assert client.get("kept") == b"yes"  # appendfsync always: written means on disk
    again.release()
    assert servers(tmp_path / "r") == []


def run_python(code: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, **kwargs)  # type: ignore[call-overload]


def test_another_process_uses_a_running_server_and_leaves_it_running(tmp_path: Path) -> None:
    mine = embedded.lease(tmp_path / "r")
    other = run_python(f"""
        import redis
        from kanal.connectors.redis import embedded
        lease = embedded.lease(__import__("pathlib").Path({str(tmp_path / "r")!r}))
        redis.Redis(unix_socket_path=str(lease.sock)).set("from", "other")
        lease.release()
    """)
    assert other.wait(timeout=60) == 0
    with redis.Redis(unix_socket_path=str(mine.sock)) as client:
        assert client.get("from") == b"other"
    assert len(servers(tmp_path / "r")) == 1
    mine.release()


def test_kill_9_of_the_owner_takes_its_server_along(tmp_path: Path) -> None:
    owner = run_python(f"""
        import threading, time
        from kanal.connectors.redis import embedded
        def hold():  # leased from a thread that ends: the server must outlive it
            embedded.lease(__import__("pathlib").Path({str(tmp_path / "r")!r}))
        t = threading.Thread(target=hold); t.start(); t.join()
        print("ready", flush=True)
        time.sleep(120)
    """)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    assert len(servers(tmp_path / "r")) == 1  # still there after the thread that leased it ended
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=30)
    wait_for(lambda: servers(tmp_path / "r") == [], timeout=30, what="the orphaned server to die")


def test_a_deep_data_folder_gets_its_socket_in_the_temp_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    lease = embedded.lease(deep)
    try:
        assert lease.sock.parent != deep and len(str(lease.sock)) < 100
        with redis.Redis(unix_socket_path=str(lease.sock)) as client:
            assert client.ping()
    finally:
        lease.release()
    assert servers(deep) == []


def test_a_user_whose_servers_owner_stopped_it_starts_it_again_with_the_data(tmp_path: Path) -> None:
    owner = run_python(f"""
        import sys
        from kanal.connectors.redis import embedded
        lease = embedded.lease(__import__("pathlib").Path({str(tmp_path / "r")!r}))
        print("ready", flush=True)
        sys.stdin.readline()
        lease.release()
    """, stdin=subprocess.PIPE)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    sink = RedisSink(RedisConfig(data_dir=str(tmp_path / "r")))
    frame = pl.DataFrame([{"sku": "A", "channel": "web", "quantity": "1"}], schema=AVAILABILITY.schema)
    frame = frame.with_columns(AVAILABILITY.key_expr())
    assert sink.write("availability", sink.entity_options(), frame, "1").written == 1  # on the other process's server
    owner.communicate("stop\n", timeout=60)
    assert servers(tmp_path / "r") == []
    with pytest.raises(Unreachable):  # the engine retries this write ...
        sink.write("availability", sink.entity_options(), frame, "2")
    assert len(servers(tmp_path / "r")) == 1  # ... against a server this process started again
    assert sink.write("availability", sink.entity_options(), frame, "2").written == 1
    with RedisInventory(data_dir=str(tmp_path / "r")) as inventory:
        assert inventory.availability("A", "web") == {"sku": "A", "channel": "web", "quantity": "1"}
    sink.close()
    assert servers(tmp_path / "r") == []


def test_a_started_server_serves_at_once_even_with_much_data_to_load(tmp_path: Path) -> None:
    lease = embedded.lease(tmp_path / "r")
    with redis.Redis(unix_socket_path=str(lease.sock)) as client:
        client.eval("for i = 1, 300000 do redis.call('SET', 'k' .. i, i) end", 0)
    lease.release()
    lease = embedded.lease(tmp_path / "r")  # loads 300,000 commands from the append-only file
    try:
        with redis.Redis(unix_socket_path=str(lease.sock), retry=None) as client:
            assert client.get("k300000") == b"300000"  # not "loading the dataset in memory"
    finally:
        lease.release()
