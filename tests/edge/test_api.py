"""The store agent's HTTP API on a real loopback socket: tokens, limits, refusals, duplicates, local figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from kanal.core.embedded import free_port
from kanal.core.errors import ConfigError
from kanal.jobs.edge import MAX_BODY, MAX_RECORDS, EdgeOptions, records_frame
from kanal.jobs.edge_agent import Agent
from kanal.jobs.edge_drop import DropFolder
from kanal.jobs.edge_http import serving
from tests.edge.conftest import NEXT_TOKEN, TOKEN, Served, write_job


def sale(event_id: str, delta: int = -1, sku: str = "A-1", **more: object) -> dict[str, object]:
    return {"event_id": event_id, "sku": sku, "location": "S1", "delta": delta, "reason": "sale",
            "occurred_at": "2026-03-01T13:20:00Z", **more}  # fmt: skip


def receipt(event_id: str, units: int, sku: str = "A-1") -> dict[str, object]:
    return {"event_id": event_id, "sku": sku, "location": "S1", "delta": units, "reason": "receipt",
            "occurred_at": "2026-03-01T08:00:00Z"}  # fmt: skip


def test_requests_without_a_valid_token_get_401_and_change_nothing(served: Served) -> None:
    body = [receipt("r1", 10)]
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": "Bearer"}):  # fmt: skip
        with httpx.Client(base_url=served.url, headers=headers, timeout=10) as client:
            answer = client.post("/movements", json=body)
            assert answer.status_code == 401, headers
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert client.get("/availability/A-1").status_code == 401
            assert client.get("/status").status_code == 401
    assert served.agent.edge.journal.stats().journaled == 0
    assert served.agent.edge.availability("A-1")["on_hand"] == 0
    # both tokens of a rotation are taken
    for token in (TOKEN, NEXT_TOKEN):
        with served.client(token) as client:
            assert client.post("/movements", json=[receipt(f"r-{token[:3]}", 1)]).status_code == 200
    assert served.agent.edge.journal.stats().journaled == 2


def test_bodies_and_record_counts_beyond_the_limits_get_413(served: Served) -> None:
    with served.client() as client:
        big = b"[" + b" " * MAX_BODY + b"]"
        assert client.post("/movements", content=big, headers={"Content-Type": "application/json"}).status_code == 413
    with served.client() as client:
        many = [receipt(f"r{i}", 1) for i in range(MAX_RECORDS + 1)]
        answer = client.post("/movements", json=many)
        assert answer.status_code == 413
        assert f"at most {MAX_RECORDS}" in answer.json()["error"]
        assert client.post("/movements", json=many[:MAX_RECORDS]).json()["new"] == MAX_RECORDS
    assert served.agent.edge.journal.stats().journaled == MAX_RECORDS


def test_malformed_records_get_400_naming_record_and_field_and_nothing_is_taken(served: Served) -> None:
    records = [
        receipt("ok", 5),
        sale("bad-delta", delta="two"),  # type: ignore[arg-type]
        sale("positive-sale", delta=2),
        {**sale("typo"), "qty": 1},
        {**sale("elsewhere"), "location": "S9"},
        {**sale("no-reason"), "reason": "stolen"},
        {**sale("when"), "occurred_at": "yesterday"},
        {**sale("no-id"), "event_id": ""},
    ]
    with served.client() as client:
        answer = client.post("/movements", json=records)
        assert answer.status_code == 400
        # an unknown field refuses the request before the values are looked at
        assert [(p["index"], p["field"]) for p in answer.json()["problems"]] == [(3, "qty")]
        assert "record 3, field qty: unknown field" in answer.json()["error"]
        answer = client.post("/movements", json=[r for i, r in enumerate(records) if i != 3])
        problems = {(p["index"], p["field"]) for p in answer.json()["problems"]}
        assert problems == {(1, "delta"), (2, "delta"), (3, "location"), (4, "reason"), (5, "occurred_at"), (6, "event_id")}
        assert "sale needs a delta of 0 or less" in json.dumps(answer.json())
        assert client.post("/movements", content=b"{not json").status_code == 400
        assert client.post("/movements", json={"event_id": "x"}).status_code == 400
    assert served.agent.edge.journal.stats().journaled == 0
    assert served.agent.edge.availability("A-1")["on_hand"] == 0


def test_a_repeated_event_id_is_accepted_and_ignored(served: Served) -> None:
    with served.client() as client:
        first = client.post("/movements", json=[receipt("r1", 10), sale("s1")])
        assert first.status_code == 200
        assert first.json() == {"records": 2, "new": 2, "duplicate": 0, "backlog": 2}
        again = client.post("/movements", json=[sale("s1"), sale("s2", -2), sale("s2", -2)])
        assert again.json() == {"records": 3, "new": 1, "duplicate": 2, "backlog": 3}
        assert client.get("/availability/A-1").json()["on_hand"] == 10 - 1 - 2


def test_availability_answers_from_the_store_own_state(served: Served) -> None:
    with served.client() as client:
        client.post("/movements", json=[
            receipt("r1", 10, "B/2"),
            sale("s1", -3, "B/2"),
            {"event_id": "dmg", "sku": "B/2", "delta": 2, "reason": "adjustment", "bucket": "unavailable"},  # no location: the store's
        ]).raise_for_status()  # fmt: skip
        figure = client.get("/availability/B%2F2").json()
        assert figure == {
            "sku": "B/2", "location": "S1", "on_hand": 7, "reserved": 0, "unavailable": 2, "incoming": 0,
            "available": 5, "channels": {"store": 4}, "version": figure["version"],
        }  # fmt: skip  (store sells from S1 alone, after its floor of 1; web pools WH1 too, unknown here)
        assert client.get("/availability/unknown").json()["on_hand"] == 0
        status = client.get("/status").json()
        assert (status["store"], status["journaled"], status["backlog"]) == ("S1", 3, 3)
        assert status["broker"]["connected"] is False
        assert client.get("/nothing").status_code == 404


def test_drop_folder_takes_complete_files_and_sets_bad_ones_aside(served: Served, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    folder = DropFolder(served.agent.edge, drop, settle_s=0)
    (drop / "day.csv").write_text("event_id,sku,delta,reason,occurred_at\nc1,A-1,12,receipt,2026-03-01T08:00:00Z\n"
                                  "c2,A-1,-2,sale,2026-03-01T09:00:00Z\n")  # fmt: skip
    (drop / "broken.json").write_text(json.dumps([sale("j1"), sale("j2", delta=3)]))
    (drop / "notes.txt").write_text("not movements")
    assert folder.scan() == []  # first sight: not known to be complete yet
    assert sorted(p.name for p in folder.scan()) == ["broken.json", "day.csv"]
    assert (drop / "done" / "day.csv").exists() and (drop / "failed" / "broken.json").exists()
    assert "record 1: sale needs a delta of 0 or less" in (drop / "failed" / "broken.json.errors.txt").read_text()
    assert (drop / "notes.txt").exists()
    assert served.agent.edge.availability("A-1")["on_hand"] == 10
    assert served.agent.edge.journal.stats().journaled == 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_serves_https_and_plain_http_beyond_loopback_needs_insecure(served: Served, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    edge_options = EdgeOptions("S1", tmp_path / "tls-journal", port=0, tls_cert=cert, tls_key=key, tokens=(TOKEN,))
    agent = Agent(served.loaded, edge_options, threading.Event())
    try:
        with serving(agent, edge_options) as url:
            assert url.startswith("https://")
            with httpx.Client(base_url=url, verify=str(cert), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                assert client.post("/movements", json=[receipt("r1", 4)]).json()["new"] == 1
            with pytest.raises(httpx.HTTPError):
                httpx.get(url.replace("https://", "http://") + "/status", timeout=5)
        open_options = EdgeOptions("S1", tmp_path / "tls-journal", host="0.0.0.0", port=0, tokens=(TOKEN,))
        with pytest.raises(ConfigError, match="--tls-cert and --tls-key, or --insecure"), serving(agent, open_options):
            pass
        insecure = EdgeOptions("S1", tmp_path / "tls-journal", host="0.0.0.0", port=0, insecure=True, tokens=(TOKEN,))
        with serving(agent, insecure) as url:
            assert url.startswith("http://0.0.0.0:")
    finally:
        agent.close()


def test_post_and_status_commands_journal_files_and_the_agent_needs_a_token(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kanal.cli import main

    job = write_job(tmp_path, f"127.0.0.1:{free_port()}")
    day = tmp_path / "day.csv"
    day.write_text("event_id,sku,delta,reason\nc1,A-1,12,receipt\nc2,A-1,-2,sale\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([receipt("j1", 1), {**receipt("j2", 1), "reason": "gift"}]))
    at = [str(job), "--store", "S1", "--journal", str(tmp_path / "journal")]
    runner = CliRunner()
    posted = runner.invoke(main, ["edge", *at, "post", str(day), str(day)])
    assert posted.exit_code == 0, posted.output
    assert "2 movement(s) journaled (2 new, 0 duplicate)" in posted.output
    assert "2 movement(s) journaled (0 new, 2 duplicate)" in posted.output
    refused = runner.invoke(main, ["edge", *at, "post", str(bad)])
    assert refused.exit_code == 1 and "record 1, field reason" in refused.output
    status = runner.invoke(main, ["edge", *at, "status"])
    assert json.loads(status.output) | {"oldest_unforwarded_at": None} == {
        "store": "S1", "journaled": 2, "backlog": 2, "oldest_unforwarded_at": None}  # fmt: skip
    untokened = runner.invoke(main, ["edge", *at], env={"KANAL_EDGE_TOKENS": ""})
    assert untokened.exit_code == 2 and "KANAL_EDGE_TOKENS" in untokened.output


def test_the_journal_forgets_what_it_forwarded_after_the_retention_and_nothing_else(served: Served) -> None:
    edge = served.agent.edge
    edge.take(records_frame([sale("old-1"), sale("old-2"), sale("old-3")]))
    edge.journal.mark_forwarded([1, 2])  # the broker acknowledged two; the third waits for it
    edge.catch_up()
    assert edge.prune(keep_days=14) == 0  # taken just now: kept
    assert edge.prune(keep_days=14, now=time.time() + 15 * 86_400) == 2
    assert [e.key for e in edge.journal.after(0, 10)] == ["old-3"]  # not forwarded: never forgotten
    # a till sending a forgotten event again: journaled and forwarded again, counted once by the ledgers
    again = edge.take(records_frame([sale("old-1")]))
    assert (again.new, again.duplicate) == (1, 0)
    assert edge.availability("A-1")["on_hand"] == -3
    assert edge.journal.after(0, 10)[-1].seq == 4  # seqs are not reused: the ledger's position keeps its meaning
