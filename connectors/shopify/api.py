"""Talking to one shop: GraphQL calls, lists, mutations in batches or as one bulk operation.

Everything HTTP goes through the kit (`kanal.core.http`): the access token is
a registered secret, every request waits for the shop's cost bucket (the
budget learns it from `extensions.cost`), throttling (`THROTTLED`, even
with HTTP 200), 5xx and timeouts are retried per request, 401 is an
`AuthError` that is never retried.

Writes of many records choose their way by size (`bulk_threshold`):

* below it, `mutations_per_request` mutations go in one request as aliases
  (`m0: productSet(...) m1: productSet(...)`), each 10 cost points;
* at or above it, one bulk operation: the variables are uploaded as JSONL to
  a staged target (`stagedUploadsCreate`), `bulkOperationRunMutation` runs
  them without charging the bucket per line, and the result file answers per
  `__lineNumber`. A shop runs one bulk mutation at a time: this process takes
  turns per shop, and an operation another process is running is waited for.

Either way the caller gets one outcome per record: the mutation's payload
(whose `userErrors` the caller judges) or the error text of that line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from kanal.connectors.shopify.config import ShopifyConfig
from kanal.core.errors import ConnectorError, Unreachable
from kanal.core.http import BudgetSpec, GraphQLCursor, HeaderToken, HttpClient, Lane, PageRequest
from kanal.core.retry import RetryPolicy, call_with_retry

GRAPHQL = "graphql.json"
BUDGET = BudgetSpec(name="graphql", cost=10.0)
_DONE = ("COMPLETED", "FAILED", "CANCELED", "EXPIRED")
_IN_PROGRESS = "OPERATION_IN_PROGRESS"
_bulk_turns: dict[tuple[str, str], threading.Lock] = {}
_bulk_turns_lock = threading.Lock()


def _bulk_turn(shop: str, kind: str) -> threading.Lock:
    """One bulk operation of each kind per shop at a time in this process (Shopify runs one)."""
    with _bulk_turns_lock:
        return _bulk_turns.setdefault((shop, kind), threading.Lock())


@dataclass(frozen=True)
class Mutation:
    """One mutation field with its variables and what to read back; builds single and batched documents."""

    field: str
    params: dict[str, str]
    """Variable name -> GraphQL type, e.g. {"input": "ProductSetInput!"}."""
    selection: str
    literals: str = ""
    """Arguments written into the document, e.g. "synchronous: true"."""

    def _call(self, suffix: str = "") -> str:
        args = [f"{name}: ${name}{suffix}" for name in self.params]
        if self.literals:
            args.append(self.literals)
        return f"{self.field}({', '.join(args)}) {{ {self.selection} }}"

    def document(self) -> str:
        """The mutation for one record (bulk operations run it once per line)."""
        params = ", ".join(f"${name}: {kind}" for name, kind in self.params.items())
        return f"mutation call({params}) {{ {self._call()} }}"

    def batch(self, count: int) -> str:
        """The mutation `count` times in one document, aliased m0, m1, ..."""
        params = ", ".join(f"${name}{n}: {kind}" for n in range(count) for name, kind in self.params.items())
        calls = " ".join(f"m{n}: {self._call(str(n))}" for n in range(count))
        return f"mutation batch({params}) {{ {calls} }}"


Outcome = dict[str, Any] | str
"""A mutation's payload for one record, or the error text of its line."""


class ShopifyApi:
    """One shop, as one client of the kit; thread-safe."""

    def __init__(self, config: ShopifyConfig, lane: Lane = Lane.BACKFILL, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.system = f"shopify {httpx.URL(config.shop_url).host}"
        self.retry = retry or RetryPolicy()
        self.client = HttpClient(
            self.system,
            config.endpoint,
            HeaderToken("X-Shopify-Access-Token", config.access_token),
            budget=BUDGET,
            settings=config.http,
            retry=self.retry,
            lane=lane,
        )
        self._files = httpx.Client(timeout=httpx.Timeout(config.http.timeout_s, connect=config.http.connect_timeout_s))

    def close(self) -> None:
        self.client.close()
        self._files.close()

    # -- reading ------------------------------------------------------------------------

    def query(self, document: str, variables: dict[str, Any] | None = None, *, lane: Lane | None = None) -> dict[str, Any]:
        data = self.client.graphql(GRAPHQL, document, variables, lane=lane)
        if not isinstance(data, dict):
            raise ConnectorError(self.system, "the GraphQL answer holds no data")
        return data

    def nodes(
        self, document: str, connection: str, variables: dict[str, Any] | None = None, *, lane: Lane | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """The nodes of a connection, page by page (the document takes `$after` and selects `nodes` and `pageInfo`)."""
        request = PageRequest(GRAPHQL, method="POST", json={"query": document, "variables": dict(variables or {})})
        for page in self.client.pages(request, GraphQLCursor(f"data.{connection}"), lane=lane):
            yield page.records

    # -- writing ------------------------------------------------------------------------

    def mutate(self, mutation: Mutation, variables: Sequence[dict[str, Any]], *, lane: Lane | None = None) -> list[Outcome]:
        """One outcome per entry of `variables`, by batched mutations or one bulk operation (see module)."""
        if not variables:
            return []
        if len(variables) >= self.config.bulk_threshold:
            return self.bulk_mutate(mutation, variables)
        outcomes: list[Outcome] = []
        size = self.config.mutations_per_request
        for start in range(0, len(variables), size):
            part = variables[start : start + size]
            flat = {f"{name}{n}": value for n, vars_ in enumerate(part) for name, value in vars_.items()}
            data = self.query(mutation.batch(len(part)), flat, lane=lane)
            outcomes.extend(data.get(f"m{n}") or f"{mutation.field} answered nothing" for n in range(len(part)))
        return outcomes

    def bulk_mutate(self, mutation: Mutation, variables: Sequence[dict[str, Any]]) -> list[Outcome]:
        content = b"".join(orjson.dumps(v) + b"\n" for v in variables)
        with _bulk_turn(self.config.shop_url, "MUTATION"):
            path = self._upload(content)
            operation = self._start_bulk(
                "MUTATION",
                "mutation run($mutation: String!, $path: String!) { bulkOperationRunMutation(mutation: $mutation, "
                "stagedUploadPath: $path) { bulkOperation { id status } userErrors { field message code } } }",
                {"mutation": mutation.document(), "path": path},
            )
            url = self._finish_bulk(operation)
        outcomes: list[Outcome] = [f"{mutation.field}: the bulk operation gave no result for this line"] * len(variables)
        for line in self._download(url):
            answer = orjson.loads(line)
            number = answer.get("__lineNumber")
            if not isinstance(number, int) or not 0 <= number < len(outcomes):
                continue
            if answer.get("errors"):
                outcomes[number] = "; ".join(str(e.get("message", e)) for e in answer["errors"])
            else:
                outcomes[number] = (answer.get("data") or {}).get(mutation.field) or f"{mutation.field} answered nothing"
        return outcomes

    def bulk_query(self, document: str) -> Iterator[bytes]:
        """Export `document` (one connection) as JSONL lines, nested nodes with `__parentId`."""
        with _bulk_turn(self.config.shop_url, "QUERY"):
            operation = self._start_bulk(
                "QUERY",
                "mutation run($query: String!) { bulkOperationRunQuery(query: $query) { bulkOperation { id status } "
                "userErrors { field message code } } }",
                {"query": document},
            )
            url = self._finish_bulk(operation)
        yield from self._download(url)

    def settle(self) -> None:
        """Wait until no bulk mutation runs on the shop (one a crashed run left may still be creating records)."""
        while True:
            running = self.query("query { currentBulkOperation(type: MUTATION) { id status } }")["currentBulkOperation"]
            if running is None or running["status"] in _DONE:
                return
            time.sleep(self.config.bulk_poll_s)

    def _upload(self, content: bytes) -> str:
        data = self.query(
            "mutation stage($input: [StagedUploadInput!]!) { stagedUploadsCreate(input: $input) { "
            "stagedTargets { url resourceUrl parameters { name value } } userErrors { field message } } }",
            {"input": [{"resource": "BULK_MUTATION_VARIABLES", "filename": "kanal.jsonl", "mimeType": "text/jsonl", "httpMethod": "POST"}]},
        )
        staged = data["stagedUploadsCreate"]
        if staged.get("userErrors") or not staged.get("stagedTargets"):
            raise ConnectorError(self.system, f"stagedUploadsCreate refused: {_said(staged.get('userErrors'))}")
        target = staged["stagedTargets"][0]
        params = {p["name"]: p["value"] for p in target["parameters"]}

        def send() -> None:
            # The staged target is storage, not the shop: no access token goes there.
            try:
                response = self._files.post(target["url"], data=params, files={"file": ("kanal.jsonl", content, "text/jsonl")})
            except httpx.TransportError as exc:
                raise Unreachable(self.system, f"uploading bulk variables failed: {exc}") from None
            if response.status_code >= 500 or response.status_code == 429:
                raise Unreachable(self.system, f"uploading bulk variables answered {response.status_code}")
            if response.status_code >= 300:
                raise ConnectorError(self.system, f"uploading bulk variables answered {response.status_code}: {response.text[:300]}")

        call_with_retry(send, self.retry)
        return params["key"]

    def _start_bulk(self, kind: str, document: str, variables: dict[str, Any]) -> str:
        """Start a bulk operation, waiting out one that another process runs on this shop; returns its id."""
        field = "bulkOperationRunMutation" if kind == "MUTATION" else "bulkOperationRunQuery"

        def start() -> str:
            answer = self.query(document, variables)[field]
            errors = answer.get("userErrors") or []
            if any(e.get("code") == _IN_PROGRESS or "already in progress" in str(e.get("message")) for e in errors):
                raise Unreachable(self.system, f"another bulk {kind.lower()} is running on the shop; waiting for it")
            if errors or not answer.get("bulkOperation"):
                raise ConnectorError(self.system, f"{field} refused: {_said(errors)}")
            return str(answer["bulkOperation"]["id"])

        return call_with_retry(start, self.retry)

    def _finish_bulk(self, operation: str) -> str | None:
        """Poll until the operation ends; its result URL (None: no results)."""
        while True:
            node = self.query(
                "query poll($id: ID!) { node(id: $id) { ... on BulkOperation { id status errorCode objectCount url } } }",
                {"id": operation},
            )["node"]
            if node is None:
                raise ConnectorError(self.system, f"bulk operation {operation} disappeared")
            if node["status"] in _DONE:
                break
            time.sleep(self.config.bulk_poll_s)
        if node["status"] != "COMPLETED":
            raise Unreachable(self.system, f"bulk operation {operation} ended {node['status']} ({node.get('errorCode')})")
        return node.get("url")

    def _download(self, url: str | None) -> Iterator[bytes]:
        if not url:
            return

        def fetch() -> bytes:
            try:
                response = self._files.get(url)
            except httpx.TransportError as exc:
                raise Unreachable(self.system, f"downloading bulk results failed: {exc}") from None
            if response.status_code >= 500:
                raise Unreachable(self.system, f"downloading bulk results answered {response.status_code}")
            if response.status_code >= 300:
                raise ConnectorError(self.system, f"downloading bulk results answered {response.status_code}")
            return response.content

        for line in call_with_retry(fetch, self.retry).splitlines():
            if line.strip():
                yield line


def _said(errors: Any) -> str:
    if not errors:
        return "no reason given"
    return "; ".join(f"{'.'.join(map(str, e.get('field') or []))}: {e.get('message')}" for e in errors)


def user_error(payload: Outcome) -> str | None:
    """The refusal in one mutation outcome (its userErrors, or a line's error), else None."""
    if isinstance(payload, str):
        return payload
    errors = payload.get("userErrors") or []
    return _said(errors) if errors else None
