"""Where each entity lives in Redis: one hash per record, a change stream and tombstones per entity.

    <prefix>:availability:<channel>:<sku>     hash: quantity, computed_at, version, ...   (availability)
    <prefix>:stock:<location>:<sku>           hash: on_hand, reserved, available, version  (stock_levels)
    <prefix>:availability:changes             stream of applied changes (and reservations)
    <prefix>:stock:changes
    <prefix>:availability:tombstones          hash: deleted record key -> the delete's version
    <prefix>:reservations:<channel>:<sku>     hash: reservation id -> quantity
    <prefix>:reservation-expiry:<channel>:<sku>  sorted set: reservation id -> expiry (epoch ms)

A hash holds the record's canonical fields as text (timestamps ISO 8601
UTC), plus `_kanal_version`, the source position, when the record had one.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Layout:
    entity: str
    area: str
    scope: str
    """The key part naming the place (channel, location); it may not contain ':'."""

    def key(self, prefix: str) -> pl.Expr:
        return pl.concat_str([pl.lit(f"{prefix}:{self.area}:"), pl.col(self.scope), pl.lit(":"), pl.col("sku")])

    def record(self, prefix: str, place: str, sku: str) -> str:
        return f"{prefix}:{self.area}:{place}:{sku}"

    def pattern(self, prefix: str) -> str:
        """SCAN pattern of the record hashes (the stream and tombstones have one part fewer)."""
        return f"{prefix}:{self.area}:*:*"

    def stream(self, prefix: str) -> str:
        return f"{prefix}:{self.area}:changes"

    def tombstones(self, prefix: str) -> str:
        return f"{prefix}:{self.area}:tombstones"


AVAILABILITY = Layout("availability", "availability", "channel")
STOCK = Layout("stock_levels", "stock", "location")
LAYOUTS = {layout.entity: layout for layout in (AVAILABILITY, STOCK)}


def reservations(prefix: str, channel: str, sku: str) -> tuple[str, str]:
    """The reservations hash and expiry set of one (sku, channel)."""
    return f"{prefix}:reservations:{channel}:{sku}", f"{prefix}:reservation-expiry:{channel}:{sku}"
