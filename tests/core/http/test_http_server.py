"""Against a real HTTP server on 127.0.0.1: connections are kept alive, a host's concurrency limit
holds across clients, and a waiting delta request gets the next free slot."""

from __future__ import annotations

import threading

from kanal.core.http import HttpClient, HttpSettings, Lane
from tests.core.http.local_server import LocalServer
from tests.waiting import wait_for


def test_sequential_requests_reuse_one_kept_alive_connection(local_server: LocalServer) -> None:
    with HttpClient("erp", local_server.url) as client:
        for _ in range(5):
            assert client.request("GET", "items").json() == {"ok": True}
    assert local_server.count("connections") == 1


def test_the_concurrency_limit_holds_across_clients_of_one_host(local_server: LocalServer) -> None:
    settings = HttpSettings(max_concurrency=2)
    clients = [HttpClient("erp", local_server.url, settings=settings) for _ in range(3)]  # three jobs, one host
    answers: list[int] = []

    def call(client: HttpClient, n: int) -> None:
        answers.append(client.request("GET", "hold", params={"name": str(n)}).status_code)

    threads = [threading.Thread(target=call, args=(clients[n % 3], n), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    wait_for(lambda: local_server.count("arrivals") == 2, 10, "two requests at the server")
    slots = clients[0]._pool.slots
    wait_for(lambda: sum(slots.waiting().values()) == 4, 10, "four requests queued at the client")
    for released in range(1, 7):
        local_server.gate.release()
        wait_for(lambda r=released: len(answers) == r, 10, f"answer {released}")
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.close()
    assert answers == [200] * 6
    assert local_server.count("peak") == 2


def test_a_waiting_delta_request_gets_the_next_free_slot(local_server: LocalServer) -> None:
    settings = HttpSettings(max_concurrency=1)
    backfill = HttpClient("erp", local_server.url, settings=settings, lane=Lane.BACKFILL)
    delta = HttpClient("erp", local_server.url, settings=settings, lane=Lane.DELTA)
    slots = backfill._pool.slots

    def call(client: HttpClient, name: str) -> None:
        client.request("GET", "hold", params={"name": name})

    started = []
    for client, name, queued in ((backfill, "backfill-1", 0), (backfill, "backfill-2", 1), (delta, "delta-1", 2)):
        started.append(threading.Thread(target=call, args=(client, name), daemon=True))
        started[-1].start()
        if name == "backfill-1":
            wait_for(lambda: local_server.count("arrivals") == 1, 10, "backfill-1 in flight")
        else:
            wait_for(lambda q=queued: sum(slots.waiting().values()) == q, 10, f"{name} queued")
    for admitted in (2, 3):
        local_server.gate.release()
        wait_for(lambda a=admitted: local_server.count("arrivals") == a, 10, f"request {admitted} admitted")
    local_server.gate.release()
    for thread in started:
        thread.join(10)
    backfill.close()
    delta.close()
    assert local_server.arrivals == ["backfill-1", "delta-1", "backfill-2"]
