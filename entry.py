"""The `kanal` command's entry point: process settings that must precede the first import of polars.

The real-time commands (`edge`, `inventory`, `sync`) handle many small
batches, a request of a till or a poll's worth of changes. Polars would hand
each of its many small operations to a pool of one thread per core, and on a
small machine those hand-offs cost more than they give: at 1,000 sales/s on
two cores, one thread per process took the 99th percentile of a sale's way
from the till to Redis from about 570 to about 470 ms. They run polars on the
calling thread unless POLARS_MAX_THREADS says otherwise. Bulk commands
(`migrate`, `run`) keep the pool: their frames are large.
"""

from __future__ import annotations

import os
import sys

REAL_TIME = frozenset({"edge", "inventory", "sync"})


def main() -> None:
    if REAL_TIME.intersection(sys.argv[1:3]):
        os.environ.setdefault("POLARS_MAX_THREADS", "1")
    from kanal.cli import main as cli

    cli()
