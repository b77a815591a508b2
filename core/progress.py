"""Progress and metrics of a run: counters per entity, a live display, a report.

Counters are plain integers behind one lock; they are touched once per batch,
never per record. The display reads them four times a second: a rich live
table on a terminal, one plain line every few seconds otherwise (CI, logs).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class EntityCounters:
    total: int = 0          # rows expected from the source plan
    already: int = 0        # rows of chunks done in an earlier attempt
    read: int = 0
    published: int = 0
    dead: int = 0
    written: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unchanged: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # not sent: the system has it
    failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chunks: int = 0
    chunks_done: int = 0


class Metrics:
    def __init__(self, sinks: list[str]) -> None:
        self.sinks = sinks
        self.entities: dict[str, EntityCounters] = {}
        self.notes: dict[str, str] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def entity(self, name: str) -> EntityCounters:
        with self._lock:
            return self.entities.setdefault(name, EntityCounters())

    def add(self, entity: str, counter: str, n: int, sink: str | None = None) -> None:
        c = self.entity(entity)
        with self._lock:
            if sink is None:
                setattr(c, counter, getattr(c, counter) + n)
            else:
                getattr(c, counter)[sink] += n

    def note(self, who: str, text: str | None) -> None:
        """A status line such as 'shop: waiting for postgres (retry 3)'; None clears it."""
        with self._lock:
            if text is None:
                self.notes.pop(who, None)
            else:
                self.notes[who] = text

    def delivered(self, c: EntityCounters) -> int:
        """Rows handled by every sink (written, skipped as older or unchanged, or failed) plus dead letters."""
        if not self.sinks:
            return c.dead
        return min(c.written[s] + c.skipped[s] + c.unchanged[s] + c.failed[s] for s in self.sinks) + c.dead

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Tally:
    """Counters of one unit of work (a snapshot chunk) that a failure takes back.

    They show in the live display as they come; when the unit fails and is
    read again (a retry, or the next run), `revert` removes what it counted,
    so a retried chunk counts once.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._counted: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, entity: str, counter: str, n: int) -> None:
        self.metrics.add(entity, counter, n)
        self._counted[(entity, counter)] += n

    def revert(self) -> None:
        for (entity, counter), n in self._counted.items():
            self.metrics.add(entity, counter, -n)
        self._counted.clear()


def _eta(done: int, total: int, rate: float) -> str:
    if total <= done:
        return "done" if total else "-"
    if rate <= 0:
        return "…"
    seconds = (total - done) / rate
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def progress_table(metrics: Metrics, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("entity", "chunks", "read", "delivered", "dead letters", "records/s", "ETA"):
        table.add_column(col, justify="left" if col == "entity" else "right")
    elapsed = max(metrics.elapsed, 1e-6)
    for name, c in sorted(metrics.entities.items()):
        delivered = metrics.delivered(c)
        rate = delivered / elapsed
        table.add_row(
            name,
            f"{c.chunks_done}/{c.chunks}",
            f"{c.read + c.already:,}/{c.total:,}",
            f"{delivered + c.already:,}",
            f"{c.dead:,}",
            f"{rate:,.0f}",
            _eta(delivered + c.already, c.total, rate),
        )
    for who, text in sorted(metrics.notes.items()):
        table.caption = f"{who}: {text}"
    return table


class ProgressDisplay:
    """Shows `progress_table` while a run is going; a context manager."""

    def __init__(self, metrics: Metrics, title: str, console: Console | None = None, quiet: bool = False) -> None:
        self.metrics, self.title, self.quiet = metrics, title, quiet
        self.console = console or Console(stderr=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.quiet:
            return self
        if self.console.is_terminal:
            self._live = Live(progress_table(self.metrics, self.title), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        self._thread = threading.Thread(target=self._loop, name="kanal-progress", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        last_line = 0.0
        while not self._stop.wait(0.25):
            if self._live is not None:
                self._live.update(progress_table(self.metrics, self.title))
            elif time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                self._line()

    def _line(self) -> None:
        parts = []
        for name, c in sorted(self.metrics.entities.items()):
            parts.append(f"{name} {self.metrics.delivered(c) + c.already:,}/{c.total:,}")
        notes = "; ".join(f"{w}: {t}" for w, t in self.metrics.notes.items())
        print(f"[{self.metrics.elapsed:6.1f}s] " + ", ".join(parts) + (f" ({notes})" if notes else ""), file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.update(progress_table(self.metrics, self.title))
            self._live.__exit__(None, None, None)
