"""The Lua scripts the Redis connector runs, loaded from `lua/` beside this module.

Every change Kanal makes in Redis is one script call: Redis runs a script
alone, start to end, so a batch's version checks and writes, or a
reservation's check and hold, cannot interleave with another client's.
Reservation scripts share `holds.lua` (expiry, sums), prepended to each.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def text(name: str) -> str:
    """The script `name` (without `.lua`), with the shared part for reservation scripts."""
    folder = files("kanal.connectors.redis") / "lua"
    body = (folder / f"{name}.lua").read_text()
    if name in ("reserve", "release", "peek"):
        return (folder / "holds.lua").read_text() + "\n" + body
    return body
