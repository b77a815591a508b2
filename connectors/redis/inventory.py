"""`RedisInventory`: what a checkout service calls: availability reads and atomic reservations.

    from kanal.connectors.redis import RedisInventory

    with RedisInventory("redis://:secret@redis:6379/0") as inventory:
        hold = inventory.reserve("SKU-1", "web", 2, reservation_id="cart-42", ttl_s=900)
        if hold.ok:
            ...                                  # take the order
        inventory.release("SKU-1", "web", "cart-42")

A reservation succeeds only while the channel's `quantity` minus the
quantities held by unexpired reservations covers it; the check and the hold
are one Lua script, so two checkouts can never both take the last unit.
Reserving again with the same `reservation_id` (a retry) answers with the
existing hold instead of holding twice. Holds expire by the server's clock
(`ttl_s`); release a hold when the order reached the ledger as a sale
movement (the published availability then already counts it).

Without a URL it opens the embedded server of `data_dir` (default
`.kanal/redis`), the one the sink of a job without `url:` writes: it joins
a server a running `kanal` serves, or starts one it stops on `close`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType

import polars as pl
from pydantic import SecretStr

from kanal.connectors.redis import scripts
from kanal.connectors.redis.config import Connection, RedisConfig
from kanal.connectors.redis.layout import AVAILABILITY, LAYOUTS, STOCK, reservations


@dataclass(frozen=True)
class Reservation:
    """The answer to `reserve`."""

    status: str
    """reserved (held now), held (this id already held the same quantity: a retry), insufficient, conflict
    (this id holds another quantity: release it first)."""
    available: Decimal
    """quantity minus every unexpired hold, after this call."""
    expires_at: datetime | None
    held: Decimal | None
    """The quantity this reservation id holds (None when it holds nothing)."""

    @property
    def ok(self) -> bool:
        return self.status in ("reserved", "held")


def read_records(connection: Connection, prefix: str, entity: str) -> pl.DataFrame:
    """Every record hash of `entity` under `prefix`, as text columns (empty frame: none)."""
    layout = LAYOUTS[entity]
    client = connection.client
    with connection.translated():
        keys = sorted(client.scan_iter(match=layout.pattern(prefix), count=1000, _type="HASH"))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        hashes = pipe.execute()
    rows = [{k.decode(): v.decode() for k, v in h.items()} for h in hashes]
    return pl.DataFrame(rows, infer_schema_length=None).cast(pl.String) if rows else pl.DataFrame()


class RedisInventory:
    """Availability and reservations on the Redis a Kanal redis sink writes (see the module docstring)."""

    def __init__(self, url: str | None = None, *, data_dir: str | None = None, prefix: str = "kanal",
                 config: RedisConfig | None = None) -> None:  # fmt: skip
        if config is None:
            config = RedisConfig(url=SecretStr(url) if url else None, data_dir=data_dir, prefix=prefix)
        self.config = config
        self.connection = Connection(config)

    def reserve(self, sku: str, channel: str, quantity: int | Decimal | str, reservation_id: str, ttl_s: float) -> Reservation:
        """Hold `quantity` of `sku` on `channel` for `ttl_s` seconds, if quantity minus holds covers it."""
        qty = Decimal(str(quantity))
        if qty <= 0 or ttl_s <= 0:
            raise ValueError(f"reserve needs a quantity > 0 and ttl_s > 0 (got {qty}, {ttl_s})")
        status, free, expires, held = self._run("reserve", sku, channel, reservation_id, str(qty), int(ttl_s * 1000))
        return Reservation(
            status.decode(),
            Decimal(free.decode()),
            datetime.fromtimestamp(int(float(expires)) / 1000, UTC) if expires else None,
            Decimal(held.decode()) if held else None,
        )

    def release(self, sku: str, channel: str, reservation_id: str) -> bool:
        """Give a hold back; False when the id held nothing (released before, expired, never made)."""
        released, _ = self._run("release", sku, channel, reservation_id)
        return bool(released)

    def available(self, sku: str, channel: str) -> Decimal:
        """The channel's quantity minus every unexpired hold (0 for an unknown sku)."""
        quantity, held = self._run("peek", sku, channel)
        return Decimal(quantity.decode()) - Decimal(held.decode())

    def availability(self, sku: str, channel: str) -> dict[str, str] | None:
        """The availability hash as the sink wrote it (quantity, computed_at, version, ...); None if absent."""
        return self._hash(AVAILABILITY.record(self.config.prefix, channel, sku))

    def stock(self, sku: str, location: str) -> dict[str, str] | None:
        """The stock level hash of (sku, location); None if absent."""
        return self._hash(STOCK.record(self.config.prefix, location, sku))

    def read(self, entity: str) -> pl.DataFrame:
        """Every record of `entity` (availability, stock_levels) held now, as text columns."""
        return read_records(self.connection, self.config.prefix, entity)

    def changes(self, entity: str, after: str = "0", count: int = 1000) -> list[tuple[str, dict[str, str]]]:
        """Entries of the entity's change stream after the entry id `after`, oldest first."""
        stream = LAYOUTS[entity].stream(self.config.prefix)
        with self.connection.translated():
            entries = self.connection.client.xrange(stream, min=f"({after}" if after != "0" else "-", count=count)
        return [(i.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for i, fields in entries]

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RedisInventory:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _hash(self, key: str) -> dict[str, str] | None:
        with self.connection.translated():
            found = self.connection.client.hgetall(key)
        return {k.decode(): v.decode() for k, v in found.items()} or None

    def _run(self, name: str, sku: str, channel: str, *args: object) -> list:
        if ":" in channel:
            raise ValueError(f"channel {channel!r} contains ':', which separates the parts of Redis keys")
        prefix = self.config.prefix
        holds, expiry = reservations(prefix, channel, sku)
        keys = [AVAILABILITY.record(prefix, channel, sku), holds, expiry, AVAILABILITY.stream(prefix)]
        client = self.connection.client
        with self.connection.translated():
            return client.register_script(scripts.text(name))(keys=keys, args=[self.config.stream_maxlen, sku, channel, *args])
