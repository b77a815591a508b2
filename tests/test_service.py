"""Service mode: /metrics, /healthz, /readyz of a running `kanal sync`, JSON logs, deployment manifests."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kanal.core import logs
from kanal.core.embedded import free_port
from kanal.core.errors import Unreachable, register_secret
from kanal.core.http.budget import BudgetSpec, budget_for, fingerprint
from kanal.core.http.lanes import Lane
from kanal.core.progress import Metrics
from kanal.core.retry import RetryPolicy, call_with_retry
from kanal.core.telemetry.live import TELEMETRY, Telemetry
from kanal.jobs.load import load_job
from kanal.jobs.service import Monitor, registry_for
from tests.conftest import Cli, Databases
from tests.pg import Server
from tests.streaming import erp
from tests.streaming.conftest import drop_slots  # noqa: F401 - autouse: no replication slot outlives a test
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed the way Prometheus parses a scrape."""
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def written(text: str, job: str, entity: str) -> float:
    return samples(text).get(("kanal_records_written_total", frozenset({"job": job, "entity": entity, "sink": "shop"}.items())), 0)


def test_sync_serves_metrics_and_probes_is_not_ready_while_its_sink_is_down(tmp_path: Path, dbs: Databases) -> None:
    shop_server = Server.start(tmp_path / "shop-pg")
    proc = None
    try:
        shop = shop_server.create_database("shop")
        erp.seed(dbs.erp, products=20)
        cli = Cli(tmp_path, {**os.environ, "ERP_DSN": dbs.erp, "SHOP_DSN": shop})
        cli.write_job(erp.job(name="served"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.time()
        proc = cli.start("sync", "job.yaml", "--http-port", str(port), "--log-format", "json")
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, 60, "the sync to be ready")
        assert get(f"{base}/healthz") == (200, "ok\n")

        dbs.erp_sql("insert into erp_products select 'N' || g, 'New', '1', true, now() from generate_series(1, 7) g")
        def scraped_all() -> str | None:
            text = get(f"{base}/metrics")[1]
            return text if written(text, "served", "products") == 7 else None

        scrape = wait_for(scraped_all, 60, "/metrics to count 7 products written")
        assert Databases(dbs.erp, shop).shop_sql("select count(*) from shop_products where name = 'New'") == [(7,)]
        found = samples(scrape)
        labels = frozenset({"job": "served", "entity": "products", "sink": "shop"}.items())
        assert found[("kanal_records_read_total", frozenset({"job": "served", "entity": "products"}.items()))] == 7
        assert found[("kanal_batch_write_seconds_count", labels)] >= 1
        assert found[("kanal_last_write_timestamp_seconds", labels)] >= started
        assert found[("kanal_cdc_slot_retained_wal_bytes", frozenset({"job": "served"}.items()))] >= 0
        assert found[("kanal_job_running", frozenset({"job": "served", "phase": "stream"}.items()))] == 1

        shop_server.kill()
        status, body = wait_for(lambda: (a := get(f"{base}/readyz"))[0] == 503 and a, 30, "/readyz to answer 503")
        reasons = json.loads(body)["jobs"]["served"]["reasons"]
        assert any(r.startswith("sink shop:") for r in reasons), reasons
        assert get(f"{base}/healthz")[0] == 200  # alive all along: a liveness probe must not restart it

        shop_server.restart()
        wait_for(lambda: get(f"{base}/readyz")[0] == 200, 30, "/readyz to answer 200 again")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        shop_server.stop()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # every stderr line is JSON
    assert lines and all({"time", "level", "message", "logger"} <= line.keys() for line in lines)
    assert any(line.get("job") == "served" and line["logger"] == "kanal.progress" for line in lines), err


def test_a_port_in_use_is_a_usage_error_and_options_follow_the_subcommand(cli: Cli) -> None:
    cli.write_job(erp.job(name="ported"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli.run("sync", "job.yaml", "--http-port", str(port), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"--http-port {port}" in proc.stderr and "in use" in proc.stderr
    bad = cli.run("validate", "job.yaml", "--log-format", "xml", timeout=60)
    assert bad.returncode == 2 and "xml" in bad.stderr

    unreachable = f"bootstrap_servers: 127.0.0.1:{free_port()}\n  connect_timeout_s: 1"
    cli.write_job(erp.job(name="ported").replace("bootstrap_servers: embedded", unreachable))
    failed = cli.run("sync", "job.yaml", "-v", "--log-format", "json", timeout=60)
    assert failed.returncode == 1
    lines = [json.loads(line) for line in failed.stderr.splitlines() if line.strip()]
    assert any(line["message"] == "where it failed" and "exception" in line for line in lines)  # -v took effect
    assert any(line["level"] == "error" and "not reachable" in line["message"] for line in lines)


def test_json_log_lines_name_the_job_entity_and_sink_of_their_thread_and_hide_secrets() -> None:
    stream, plain = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(stream), logging.StreamHandler(plain)]
    handlers[0].setFormatter(logs.JsonFormatter())
    handlers[1].setFormatter(logs.PlainFormatter())
    logger = logging.getLogger("kanal.test.service")
    for handler in handlers:
        handler.addFilter(logs._Context())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    register_secret("hunter2-token")
    try:
        with logs.context(job="erp-to-shop", entity="prices"):
            logger.info("wrote with %s", "hunter2-token")
            worker = threading.Thread(target=logs.in_context(lambda: logger.warning("from a thread")))
            worker.start()
            worker.join()
        logger.info("outside")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    assert plain.getvalue().splitlines()[0].endswith("INFO kanal.test.service: job erp-to-shop (entity prices): wrote with ***")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job"] == "erp-to-shop" and first["entity"] == "prices" and "sink" not in first
    assert first["message"] == "wrote with ***" and first["level"] == "info" and first["time"].endswith("Z")
    assert second["job"] == "erp-to-shop" and second["message"] == "from a thread"
    assert "job" not in third


def test_retries_are_counted_per_job_and_system() -> None:
    failures = [Unreachable("shop-db", "connection refused")] * 2

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "written"

    with logs.context(job="retrying"):
        assert call_with_retry(flaky, RetryPolicy(initial_s=0.01, max_wait_s=0.02)) == "written"
    assert TELEMETRY.retries()[("retrying", "shop-db")] == 2


def _files_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: counted\nsource:\n  connector: files\n  config: {{path: {tmp_path}}}\n  entities: {{products: {{}}}}\n"
        f"sinks:\n  - name: out\n    connector: files\n    config: {{path: {tmp_path}}}\n    entities: {{products: {{}}}}\n"
    )
    return path


def test_counters_only_grow_across_phases_and_a_stalled_run_is_not_ready(tmp_path: Path) -> None:
    telemetry = Telemetry()
    monitor = Monitor([load_job(_files_job(tmp_path))], stall_s=60, telemetry=telemetry)
    registry = registry_for(monitor)
    key = ("kanal_records_written_total", frozenset({"job": "counted", "entity": "products", "sink": "out"}.items()))

    migration = Metrics(["out"])
    with telemetry.track("counted", "migrate", migration, lambda: 0):
        migration.add("products", "written", 5, "out")
    stream = Metrics(["out"])
    pending = [3]
    with telemetry.track("counted", "stream", stream, lambda: pending[0]) as run:
        stream.add("products", "written", 2, "out")
        assert samples(generate_latest(registry).decode())[key] == 7  # the migration's 5 stay counted

        def stalled() -> bool:
            return any(r.startswith("stalled: no batch written") for r in monitor.readiness()["counted"])

        assert monitor.readiness() == {"counted": ["not checked yet"]}
        assert not stalled()
        run.started -= 120  # two minutes without a batch written while 3 reads wait
        assert stalled()
        pending[0] = 0
        assert not stalled()  # nothing waits: quiet, not stuck
        pending[0] = 3
        telemetry.wrote("counted", "products", "out", 0.02)
        assert not stalled()
    assert telemetry.live("counted") is None


def test_rate_limit_waits_of_the_http_kit_are_served(tmp_path: Path) -> None:
    budget = budget_for("https://metered.example", fingerprint("token"), BudgetSpec(capacity=1, refill_per_s=50))
    budget.acquire(Lane.DELTA)
    budget.acquire(Lane.DELTA)  # the bucket holds one request: the second waits for the refill
    budget.throttle(0.0, empty=False)
    found = samples(generate_latest(registry_for(Monitor([load_job(_files_job(tmp_path))]))).decode())
    label = frozenset({"budget": "https://metered.example requests"}.items())
    assert found[("kanal_rate_limit_requests_total", label)] == 2
    assert found[("kanal_rate_limit_waits_total", label)] == 1
    assert found[("kanal_rate_limit_wait_seconds_total", label)] > 0
    assert found[("kanal_rate_limit_throttled_total", label)] == 1


def test_deployment_manifests_parse_and_probe_the_service() -> None:
    documents = [d for path in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d]  # fmt: skip
    kinds = {d["kind"]: d for d in documents}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "ScaledObject"} <= kinds.keys()
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--http-port" in container["args"] and "0.0.0.0" in container["args"]
    trigger = kinds["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "USER kanal" in dockerfile and "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
