"""Progress of a run: counters per entity, the live view, waits made visible.

Counters are plain integers behind one lock; they are touched once per batch,
never per record. The view only samples them (four times a second, in its own
thread), so it costs the bulk path nothing. Rates and ETAs come from those
samples over a sliding window (`RateWindow`, `RATE_WINDOW_S`): a stall shows
at once as a falling rate, where an average since the start would hide it for
minutes.

On a terminal the view is live (`rich`): a bar per entity and a total for a
migration; changes read and written, lag and last write per entity for a
stream; the current phase and every wait for an unreachable system
(`core.retry.Wait`). Anywhere else (CI, a log file) it prints timestamped
plain lines without ANSI codes: at once when the phase or a wait changes,
otherwise every `interval_s` while something moved — never a line that says
nothing new.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kanal.core import logs
from kanal.core.console import console as literal_console
from kanal.core.retry import Wait, WaitObserver, duration

RATE_WINDOW_S = 20.0
"""The span rates and ETAs are measured over: long enough to smooth batch steps, short enough to show a stall."""
LINE_INTERVAL_S = 10.0
"""Plain output: the least time between two lines that only report new counts."""
_SAMPLE_S = 0.25
_MIN_SPAN_S = 3.0


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
    last_write: float = 0.0  # unix time of the last batch a sink wrote


class Metrics:
    def __init__(self, sinks: list[str]) -> None:
        self.sinks = sinks
        self.entities: dict[str, EntityCounters] = {}
        self.notes: dict[str, str] = {}
        self.phase = "starting"
        self.figures: dict[str, str] = {}
        """Source-side figures a stream shows (a CDC slot's retained WAL), from `DeltaReader.status`."""
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
            if counter == "written" and n > 0:
                c.last_write = time.time()

    def note(self, who: str, text: str | None) -> None:
        """A status line such as 'waiting for shop: ...'; None clears it."""
        with self._lock:
            if text is None:
                self.notes.pop(who, None)
            else:
                self.notes[who] = text

    def waiting(self, who: str) -> WaitObserver:
        """The observer that shows `call_with_retry`'s waits for `who` (a sink's name, "source")."""

        def observe(wait: Wait | None) -> None:
            self.note(who, wait.describe(who) if wait is not None else None)

        return observe

    def set_phase(self, phase: str) -> None:
        """What the run does now: planning, reading, delivering, building keys ..."""
        self.phase = phase

    def delivered(self, c: EntityCounters) -> int:
        """Rows handled by every sink (written, skipped as older or unchanged, or failed) plus dead letters."""
        if not self.sinks:
            return c.dead
        return min(c.written[s] + c.skipped[s] + c.unchanged[s] + c.failed[s] for s in self.sinks) + c.dead

    def sample(self) -> Sample:
        """A consistent copy of the figures the view shows, taken under the counters' lock."""
        with self._lock:
            rows = [
                EntitySample(
                    name, self.delivered(c) + c.already, c.total, c.read + c.already, c.read, self.delivered(c),
                    c.dead + sum(c.failed.values()), {s: c.written[s] for s in self.sinks}, c.last_write,
                    c.chunks, c.chunks_done,
                )
                for name, c in sorted(self.entities.items())
            ]
            return Sample(time.monotonic(), self.phase, rows, dict(sorted(self.notes.items())), dict(self.figures))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class EntitySample:
    name: str
    done: int
    """Rows delivered everywhere, including those of chunks done by an earlier attempt."""
    total: int
    read_all: int
    read: int
    """Read by this run (a stream's changes)."""
    delivered: int
    dead: int
    written: dict[str, int]
    last_write: float
    chunks: int
    chunks_done: int

    @property
    def lag(self) -> int:
        """Read but not yet delivered by every sink."""
        return max(0, self.read - self.delivered)

    @property
    def state(self) -> str:
        if self.chunks and self.chunks_done >= self.chunks:
            return "done"
        return "reading" if self.read_all < self.total else "delivering"


@dataclass(frozen=True)
class Sample:
    at: float
    phase: str
    entities: list[EntitySample]
    waits: dict[str, str]
    figures: dict[str, str]

    def total(self) -> tuple[int, int]:
        return sum(e.done for e in self.entities), sum(e.total for e in self.entities)


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


# rates ------------------------------------------------------------------------


class RateWindow:
    """Units per second over the last `window_s` seconds of samples of a growing count."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, count: int) -> None:
        self._samples.append((at, count))
        # keep one sample at or before the window's start, so the window is always fully spanned
        while len(self._samples) > 2 and self._samples[1][0] <= at - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """None until samples span `_MIN_SPAN_S`: the first seconds of a run (deliveries starting) are noise."""
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        return max(0.0, (c1 - c0) / span) if span >= _MIN_SPAN_S else None


def eta(done: int, total: int, rate: float | None) -> str:
    """Time left at `rate`: 'done', '-' (nothing planned), '…' (no rate yet, or stalled)."""
    if total <= done:
        return "done" if total else "-"
    if not rate:
        return "…"
    return duration((total - done) / rate)


def _rate_text(rate: float | None) -> str:
    return "…" if rate is None else f"{rate:,.0f}/s"


def _clock(unix: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix)) if unix else "-"


# views --------------------------------------------------------------------------


class _Rates:
    """A `RateWindow` per entity and one for the total, fed from samples."""

    def __init__(self) -> None:
        self._windows: dict[str, RateWindow] = defaultdict(RateWindow)

    def feed(self, sample: Sample, count: Callable[[EntitySample], int]) -> None:
        for e in sample.entities:
            self._windows[e.name].add(sample.at, count(e))
        self._windows[""].add(sample.at, sum(count(e) for e in sample.entities))

    def of(self, entity: str = "") -> float | None:
        return self._windows[entity].rate() if entity in self._windows else None


class MigrationView:
    """Bars per entity and a total row; a plain line for logs."""

    def __init__(self, title: str) -> None:
        self.title = title

    @staticmethod
    def count(e: EntitySample) -> int:
        """What the rate measures: rows delivered everywhere."""
        return e.done

    def render(self, s: Sample, rates: _Rates, elapsed: float) -> RenderableType:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col, justify in (("entity", "left"), ("", "left"), ("rows", "right"), ("", "right"), ("rate", "right"),
                             ("ETA", "right"), ("dead letters", "right"), ("", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for e in s.entities:
            table.add_row(e.name, ProgressBar(total=max(e.total, 1), completed=min(e.done, e.total), width=30),
                          f"{e.done:,}/{e.total:,}", _percent(e.done, e.total), _rate_text(rates.of(e.name)),
                          eta(e.done, e.total, rates.of(e.name)), f"{e.dead:,}", e.state)
        done, total = s.total()
        if len(s.entities) > 1:
            table.add_section()
            table.add_row("total", ProgressBar(total=max(total, 1), completed=min(done, total), width=30),
                          f"{done:,}/{total:,}", _percent(done, total), _rate_text(rates.of()), eta(done, total, rates.of()),
                          f"{sum(e.dead for e in s.entities):,}", "", style="bold")
        return _framed(self.title, s, elapsed, table)

    def line(self, s: Sample, rates: _Rates, elapsed: float) -> str:
        parts = [f"{e.name} {e.done:,}/{e.total:,}" + _moving(e.done, e.total, rates.of(e.name)) for e in s.entities]
        if len(s.entities) > 1:
            done, total = s.total()
            parts.append(f"total {done:,}/{total:,} {_percent(done, total)}" + _moving(done, total, rates.of()))
        dead = sum(e.dead for e in s.entities)
        if dead:
            parts.append(f"{dead:,} dead letters")
        return _line(self.title, s, elapsed, parts)


class StreamView:
    """Changes read and written, lag and last write per entity; source figures (retained WAL)."""

    def __init__(self, title: str, sinks: list[str]) -> None:
        self.title, self.sinks = title, sinks

    @staticmethod
    def count(e: EntitySample) -> int:
        """What the rate measures: changes delivered everywhere."""
        return e.delivered

    def render(self, s: Sample, rates: _Rates, elapsed: float) -> RenderableType:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("entity", "changes read", *(f"→ {sink}" for sink in self.sinks), "lag", "dead letters", "rate", "last write"):
            table.add_column(col, justify="left" if col == "entity" else "right")
        for e in s.entities:
            table.add_row(e.name, f"{e.read:,}", *(f"{e.written.get(sink, 0):,}" for sink in self.sinks), f"{e.lag:,}",
                          f"{e.dead:,}", _rate_text(rates.of(e.name)), _clock(e.last_write))
        return _framed(self.title, s, elapsed, table)

    def line(self, s: Sample, rates: _Rates, elapsed: float) -> str:
        parts = []
        for e in s.entities:
            if e.read or e.dead:
                rate = rates.of(e.name)
                parts.append(f"{e.name} read {e.read:,} written {e.delivered:,} lag {e.lag:,}"
                             + (f" {rate:,.0f}/s" if rate else "") + (f" dead letters {e.dead:,}" if e.dead else "")
                             + (f" last write {_clock(e.last_write)}" if e.last_write else ""))
        parts.extend(f"{k} {v}" for k, v in s.figures.items())
        return _line(self.title, s, elapsed, parts)


def _percent(done: int, total: int) -> str:
    return f"{min(done, total) * 100 // total}%" if total else ""


def _moving(done: int, total: int, rate: float | None) -> str:
    if done >= total:
        return " done" if total else ""
    return f" {rate:,.0f}/s ETA {eta(done, total, rate)}" if rate else ""


def _framed(title: str, s: Sample, elapsed: float, table: Table) -> RenderableType:
    head = Text.assemble((title, "bold"), f" — {s.phase}, {duration(elapsed)}")
    extra = [Text(", ".join(f"{k}: {v}" for k, v in s.figures.items()), style="dim")] if s.figures else []
    waits = [Text(text, style="yellow") for text in s.waits.values()]
    return Group(head, table, *extra, *waits)


def _line(title: str, s: Sample, elapsed: float, parts: list[str]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return " | ".join([f"{stamp} {title}: {s.phase} {duration(elapsed)}", *parts, *s.waits.values()])


View = MigrationView | StreamView


# display ----------------------------------------------------------------------------


class ProgressDisplay:
    """Shows a `View` of `metrics` while a run is going; a context manager.

    The view's thread stops and is joined on exit, after a last refresh (or a
    last plain line, when counts moved since the previous one), so whatever
    the caller prints next (the report) comes after it, never inside it.
    """

    def __init__(
        self,
        metrics: Metrics,
        view: View,
        console: Console | None = None,
        quiet: bool = False,
        interval_s: float = LINE_INTERVAL_S,
        plain: TextIO | None = None,
    ) -> None:
        self.metrics, self.view, self.quiet, self.interval_s = metrics, view, quiet, interval_s
        self.console = console or literal_console(stderr=True)
        self._plain = plain
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._rerouted: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
        self._rates = _Rates()
        self._last_line = 0.0
        self._last_said: tuple[object, ...] | None = None
        self._last_counts: tuple[object, ...] | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.quiet:
            return self
        if self.console.is_terminal and not logs.json_mode():
            terminal = sys.stderr
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
            self._reroute_logs(terminal)
        self._thread = threading.Thread(target=logs.in_context(self._loop), name="kanal-progress", daemon=True)
        self._thread.start()
        return self

    def _reroute_logs(self, terminal: TextIO) -> None:
        """Log handlers writing to the terminal write through the live view (above it) while it runs.

        They hold the stream they were made with, so the live view's own
        redirection of sys.stderr misses them and their lines would tear the view.
        """
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is terminal and sys.stderr is not terminal:
                handler.setStream(sys.stderr)
                self._rerouted.append((handler, terminal))

    def _loop(self) -> None:
        while True:
            self._tick(final=False)
            if self._stop.wait(_SAMPLE_S):
                return

    def _tick(self, final: bool) -> None:
        sample = self.metrics.sample()
        self._rates.feed(sample, self.view.count)
        elapsed = self.metrics.elapsed
        if self._live is not None:
            self._live.update(self.view.render(sample, self._rates, elapsed), refresh=True)
            return
        for line in self._plain_lines(sample, elapsed, final):
            if self._plain is None and logs.json_mode():  # every stderr line is then a JSON record
                logging.getLogger("kanal.progress").info(line)
            else:
                print(line, file=self._plain or sys.stderr, flush=True)

    def _plain_lines(self, sample: Sample, elapsed: float, final: bool) -> Iterator[str]:
        """A line when the phase or a wait changed, or when counts moved (or a wait goes on) for `interval_s`."""
        said = (sample.phase, tuple(w.split(", retry")[0] for w in sample.waits.values()))
        counts = tuple((e.done, e.read, e.delivered, e.dead) for e in sample.entities)
        due = sample.at - self._last_line >= self.interval_s
        moved = counts != self._last_counts and bool(sample.entities)
        if said != self._last_said or ((due or final) and moved) or (due and bool(sample.waits)):
            self._last_line, self._last_said, self._last_counts = sample.at, said, counts
            yield self.view.line(sample, self._rates, elapsed)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._tick(final=True)
        for handler, stream in self._rerouted:
            handler.setStream(stream)
        if self._live is not None:
            self._live.__exit__(None, None, None)
