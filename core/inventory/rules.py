"""Channel rules: which stock a sales channel may sell, parsed from the job file's `inventory:` section.

```yaml
inventory:
  floors: {S1: 1}                 # units every channel leaves at a location (default for all channels)
  channels:
    web:         {locations: [WH1, S1, S2], buffer: 2, floors: {S2: 2}}
    marketplace: {locations: [WH1], buffer: "10%", cap: 50, max_updates_per_key_per_day: 250}
  reservation_ttl_s: 900
  publish_window_ms: 200          # API channels: updates of a sku inside the window make one call
```

Availability of a sku on a channel, always a whole number and never negative::

    sellable(location) = max(0, on_hand - reserved - unavailable - floor(location))
    pooled             = sum of sellable over the channel's locations
    buffer             = fixed units, or ceil(pooled * percent / 100)
    quantity           = min(cap, max(0, pooled - buffer))

Floors are per location (a store keeps its display unit for walk-in
customers), so they are subtracted before pooling: a location can never lend
its floor to another. The buffer is per channel (a margin against the
latency of pushing numbers to a marketplace), the cap limits exposure on a
channel (sell at most 50 on a marketplace, whatever the warehouse holds).
The ledger computes the formula in SQL, next to the levels it reads, both
for publishing and for the check-and-reserve of `Ledger.reserve`: one
statement, so the two can never disagree.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Units = Annotated[int, Field(ge=0)]


class Channel(_Strict):
    """One sales channel: the locations that feed it and what it holds back."""

    locations: list[str] = Field(min_length=1, description="locations whose stock the channel may sell")
    buffer: int | str = Field(
        0, description="units held back per sku on this channel: a whole number, or a percentage such as '10%'"
    )
    cap: int | None = Field(None, ge=0, description="the channel never shows more than this per sku")
    floors: dict[str, Units] = Field(
        default_factory=dict, description="units left at a location for this channel (overrides inventory.floors)"
    )
    max_updates_per_key_per_day: int | None = Field(
        None, ge=1, description="API sinks send a sku's availability on this channel at most this often per UTC day "
        "(a marketplace's revision limit); the newest value waits for the next day"
    )  # fmt: skip

    @field_validator("buffer")
    @classmethod
    def _buffer(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("buffer must not be negative")
            return value
        match = _PERCENT.match(value)
        if not match or float(match.group(1)) > 100:
            raise ValueError(f"buffer {value!r}: give whole units (2) or a percentage from 0% to 100% ('10%')")
        return value

    @model_validator(mode="after")
    def _floors_in_pool(self) -> Channel:
        stray = [loc for loc in self.floors if loc not in self.locations]
        if stray:
            raise ValueError(f"floors name {', '.join(stray)}, which the channel's locations do not list")
        if len(set(self.locations)) != len(self.locations):
            raise ValueError("a location is listed twice")
        return self

    @property
    def percent(self) -> float | None:
        """The buffer as a percentage, or None when it is a fixed number of units."""
        if isinstance(self.buffer, int):
            return None
        match = _PERCENT.match(self.buffer)
        assert match is not None
        return float(match.group(1))


class ChannelRules(_Strict):
    """The `inventory:` section of a job file."""

    channels: dict[str, Channel] = Field(default_factory=dict, description="sales channel name -> its rules")
    floors: dict[str, Units] = Field(
        default_factory=dict, description="units every channel leaves at a location (a store's display stock)"
    )
    reservation_ttl_s: float = Field(
        900, gt=0, description="seconds after which a reservation made by `Ledger.reserve` lapses unless fulfilled"
    )
    publish_window_ms: int = Field(
        200, ge=0, le=60_000, description="API sinks send a sku's availability once it settled this long: the "
        "updates inside the window make one call with the last value"
    )  # fmt: skip

    @field_validator("channels")
    @classmethod
    def _names(cls, value: dict[str, Channel]) -> dict[str, Channel]:
        bad = [name for name in value if not re.match(r"^[A-Za-z0-9_.-]+$", name)]
        if bad:
            raise ValueError(f"channel name {bad[0]!r}: use letters, digits, '.', '_' or '-'")
        return value

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            known = ", ".join(self.channels) or "none"
            raise KeyError(f"unknown channel {name!r} (inventory.channels lists: {known})") from None

    def floor(self, channel: str, location: str) -> int:
        return self.channel(channel).floors.get(location, self.floors.get(location, 0))

    def locations(self) -> set[str]:
        """Every location some channel sells from."""
        return {loc for ch in self.channels.values() for loc in ch.locations}
