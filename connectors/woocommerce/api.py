"""Talking to one WooCommerce shop: the client, `/batch` calls, lookups by SKU.

Everything HTTP (retries per request, Retry-After, auth errors not retried,
keys kept out of messages) is the kit's (`kanal.core.http`); this module
adds only WooCommerce's shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from kanal.connectors.woocommerce.config import SYSTEM, WooConfig
from kanal.core.http import BudgetSpec, HttpClient, Lane

Json = dict[str, Any]


def connect(config: WooConfig, lane: Lane = Lane.BACKFILL) -> HttpClient:
    """A client of the shop's REST API; the host names the shop in every message."""
    host = httpx.URL(config.url).host
    return HttpClient(
        f"{SYSTEM} {host}", config.api_url, config.credentials(), budget=BudgetSpec(), settings=config.http, lane=lane
    )


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Item:
    """One item of a `/batch` call and what the shop answered for it."""

    key: str
    action: str
    """create, update or delete."""
    answer: Json

    @property
    def error(self) -> Json | None:
        error = self.answer.get("error")
        return error if isinstance(error, dict) else None

    @property
    def code(self) -> str:
        return str((self.error or {}).get("code", ""))

    def reason(self, what: str) -> str:
        """The shop's refusal, in its own words, for the dead-letter queue."""
        error = self.error or {}
        status = (error.get("data") or {}).get("status", "?")
        return f"WooCommerce refused to {self.action} {what}: {error.get('message', '')} ({error.get('code', '')}, HTTP {status})"


@dataclass
class Batch:
    """The items of one or more `/batch` calls to one endpoint, in the order WooCommerce handles them."""

    create: list[tuple[str, Json]] = field(default_factory=list)
    update: list[tuple[str, Json]] = field(default_factory=list)
    delete: list[tuple[str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


def send(client: HttpClient, path: str, batch: Batch, limit: int) -> list[Item]:
    """Every item of `batch`, at most `limit` per call; answers matched to items by position.

    WooCommerce answers each list (create, update, delete) in the order it
    was sent, an item that failed with `{"id", "error": {...}}` in its place.
    """
    queue = [("create", k, p) for k, p in batch.create] + [("update", k, p) for k, p in batch.update]
    queue += [("delete", k, i) for k, i in batch.delete]
    items: list[Item] = []
    for part in chunks(queue, limit):
        body: Json = {}
        for action, _, payload in part:
            body.setdefault(action, []).append(payload)
        answer = client.request("POST", path, json=body).json()
        for action in ("create", "update", "delete"):
            sent = [key for a, key, _ in part if a == action]
            results = (answer or {}).get(action) or []
            for n, key in enumerate(sent):
                result = results[n] if n < len(results) and isinstance(results[n], dict) else _missing(action)
                items.append(Item(key, action, result))
    return items


def _missing(action: str) -> Json:
    return {"error": {"code": "kanal_no_answer", "message": f"the shop's answer has no result for this {action}", "data": {}}}


def system_id(record: Json) -> str:
    """How the sink remembers a record: `id` for a product, `parent/id` for a variation."""
    parent = record.get("parent_id") or 0
    return f"{parent}/{record['id']}" if record.get("type") == "variation" or parent else str(record["id"])


def find_skus(client: HttpClient, skus: Iterable[str], per_call: int) -> dict[str, str]:
    """The shop's products and variations with these SKUs (`?sku=a,b,c` is exact and finds variations).

    A SKU holding a comma cannot be asked for in a list; it is asked for alone.
    """
    wanted = sorted(set(skus))
    found: dict[str, str] = {}
    plain = [s for s in wanted if "," not in s]
    groups = [*chunks(plain, per_call), *[[s] for s in wanted if "," in s]]
    for group in groups:
        records = client.request("GET", "products", params={"sku": ",".join(group), "per_page": 100}).json()
        for record in records if isinstance(records, list) else []:
            if record.get("sku") in group:
                found[record["sku"]] = system_id(record)
    return found


def find_email(client: HttpClient, email: str) -> str | None:
    """The id of the customer with this email (WooCommerce keeps emails unique), or None."""
    records = client.request("GET", "customers", params={"email": email, "role": "all"}).json()
    for record in records if isinstance(records, list) else []:
        if str(record.get("email", "")).lower() == email.lower():
            return str(record["id"])
    return None
