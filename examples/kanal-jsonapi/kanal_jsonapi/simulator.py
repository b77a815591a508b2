"""A simulator of the jsonapi API on 127.0.0.1, for tests and tries: `python -m kanal_jsonapi.simulator --port 8080`.

The API it simulates (replace it with your system's documented behaviour):

* Every request carries `Authorization: Bearer <token>`; otherwise 401.
* `GET /` lists the entities, `GET /ping` answers when the API is up.
* `GET /<entity>?page=N&per_page=M`: records ordered by key, with the
  headers `X-Total` and `X-Total-Pages`.
* `GET /<entity>/changes?since=<ISO time>&after=<key>&limit=N`: records
  whose `(updated_at, key)` comes after `(since, after)` (at or after
  `since` when `after` is empty), in that order, and the API's `clock`
  (its time when the request arrived).
* `POST /<entity>/batch` with `{"items": [{"op", "key", "version", "record"}]}`
  (op `upsert`, `delete` or `truncate`): answers one result per item,
  `applied`, `stale` (older than what the API holds: skipped) or `refused`
  with a `message` (a blank text value).
* Faults for tests: `fail_next(n, status)` answers the next n requests with
  `status` and `Retry-After: 0`.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from kanal.core.model import ENTITIES

Answer = tuple[int, dict[str, str], Any]


class Simulator:
    """The API's records in memory (`records`, `put`), served over real HTTP while entered."""

    def __init__(self, token: str = "secret-token", port: int = 0) -> None:
        self.token = token
        self.store: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in ENTITIES}
        self.versions: dict[str, dict[str, int]] = {e: {} for e in ENTITIES}  # kept after a delete
        self.floors: dict[str, int] = {}  # per entity, the version of the last truncate
        self.requests: Counter[str] = Counter()
        self.failures: list[int] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Simulator:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, entity: str, records: list[dict[str, Any]]) -> None:
        """Records as a user of the system would create or change them (each with its `key`)."""
        with self.lock:
            self.store[entity].update({r["key"]: r for r in records})

    def records(self, entity: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self.store[entity][k] for k in sorted(self.store[entity])]

    def clear(self, entity: str) -> None:
        with self.lock:
            self.store[entity].clear()

    def fail_next(self, n: int, status: int = 503) -> None:
        with self.lock:
            self.failures += [status] * n

    def answer(self, method: str, target: str, headers: dict[str, str], body: Any) -> Answer:
        url = urlsplit(target)
        path, query = url.path.strip("/").split("/"), dict(parse_qsl(url.query, keep_blank_values=True))
        with self.lock:
            route = "/".join(["<entity>", *path[1:]] if path[0] in self.store else path)
            self.requests[f"{method} /{route}"] += 1
            if self.failures:
                return self.failures.pop(0), {"Retry-After": "0"}, {"message": "injected outage"}
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401, {}, {"message": "invalid token"}
            if path in ([""], ["ping"]):
                return 200, {}, {"entities": list(self.store)} if path == [""] else {"ok": True}
            if path[0] not in self.store:
                return 404, {}, {"message": f"no such entity {path[0]!r}"}
            if method == "GET" and len(path) == 1:
                return self._page(path[0], int(query.get("page", 1)), int(query.get("per_page", 100)))
            if method == "GET" and path[1:] == ["changes"]:
                return self._changes(path[0], query["since"], query.get("after", ""), int(query["limit"]))
            if method == "POST" and path[1:] == ["batch"]:
                return 200, {}, {"results": [self._apply(path[0], item) for item in body["items"]]}
        return 404, {}, {"message": f"no route {method} {url.path}"}

    def _page(self, entity: str, page: int, size: int) -> Answer:
        keys = sorted(self.store[entity])
        records = [self.store[entity][k] for k in keys[(page - 1) * size : page * size]]
        return 200, {"X-Total": str(len(keys)), "X-Total-Pages": str(-(-len(keys) // size))}, records

    def _changes(self, entity: str, since: str, after: str, limit: int) -> Answer:
        clock = datetime.now(UTC)
        start = (datetime.fromisoformat(since), after)
        found = sorted(
            (datetime.fromisoformat(r["updated_at"]), r["key"]) for r in self.store[entity].values() if r.get("updated_at")
        )
        chosen = [self.store[entity][k] for at, k in found if (at, k) > start or (not after and at == start[0])]
        return 200, {}, {"clock": clock.isoformat(), "records": chosen[:limit]}

    def _apply(self, entity: str, item: dict[str, Any]) -> dict[str, str]:
        key, version, op = item["key"], item.get("version"), item["op"]
        newest = max(self.versions[entity].get(key, -1), self.floors.get(entity, -1))
        if version is not None and (version < newest or (op != "truncate" and version <= self.floors.get(entity, -1))):
            return {"key": key, "status": "stale"}
        blank = [f for f, v in (item.get("record") or {}).items() if v == ""]
        if op == "upsert" and blank:
            return {"key": key, "status": "refused", "message": f"{blank[0]}: can't be blank"}
        if op == "truncate":
            self.store[entity].clear()
            self.floors[entity] = version if version is not None else newest
        elif op == "delete":
            self.store[entity].pop(key, None)
        else:
            self.store[entity][key] = {**item["record"], "key": key}
        if version is not None and op != "truncate":
            self.versions[entity][key] = version
        return {"key": key, "status": "applied"}


def _handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve(None)

        def do_POST(self) -> None:
            self._serve(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null"))

        def _serve(self, body: Any) -> None:
            status, headers, answer = sim.answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the jsonapi API simulator")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default="secret-token")
    options = parser.parse_args()
    with Simulator(options.token, options.port) as simulator:
        print(f"jsonapi simulator on {simulator.url} (token {options.token!r}); Ctrl-C stops it")
        threading.Event().wait()
