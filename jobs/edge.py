"""`kanal edge JOB --store S1 --journal DIR`: the store agent that keeps selling while the network is down.

A small process per store (a store PC, a Raspberry Pi). Movements come from
the POS over HTTP (`jobs.edge_http`), from a drop folder (`jobs.edge_drop`)
or from `kanal edge ... post FILE`; all of them go through `Edge.take`:

1. the records are checked against the canonical `stock_movements` model
   (`core.validate`) and the ledger's rules (`core.inventory`); one bad
   record refuses the whole request, naming its index and field, so a
   client never has to find out which half was taken;
2. they are journaled durably (`core.journal`: SQLite WAL, fsynced) before
   anyone is told "taken"; a repeated `event_id` is ignored;
3. the store's local ledger (`core.inventory.Ledger`) applies them at once,
   so `GET /availability/<sku>` answers from the store's own state, online
   or not.

`jobs.edge_kafka` forwards the journal to Kafka and follows central
movements; `jobs.edge_agent` runs it all.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kanal.core import wire
from kanal.core.connector import OP, UPSERT, VERSION
from kanal.core.errors import ConfigError, KanalError
from kanal.core.inventory import ChannelRules, Ledger
from kanal.core.inventory.movements import REJECTED, check
from kanal.core.journal import Entry, Journal
from kanal.core.model import STOCK_MOVEMENT
from kanal.core.places import did_you_mean
from kanal.core.validate import REASON, conform
from kanal.jobs.load import LoadedJob

log = logging.getLogger("kanal.edge")
FIELDS = STOCK_MOVEMENT.field_names
MAX_BODY = 1024 * 1024
"""Largest request body `POST /movements` reads (413 beyond)."""
MAX_RECORDS = 1000
"""Most records one request may carry (413 beyond): a POS sends more as several requests."""
_JOURNAL_INPUT = ("journal", 0)
"""The local ledger's input position for the journal (next to its Kafka offsets)."""
_PRUNE_EVERY_S = 3600.0
_APPLY_EVERY_S = 0.2
_INDEX = "_kanal_index"


@dataclass(frozen=True)
class Problem:
    """A refused record: its index in the request or file (from 0), the field concerned and what is wrong."""

    index: int
    field: str | None
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "problem": self.problem}


class Malformed(KanalError):
    """Records that cannot be taken; nothing of the request or file was journaled."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)


class TooMany(Malformed):
    """More records in one request than `MAX_RECORDS` (413)."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} records in one request; send at most {MAX_RECORDS} per request")


@dataclass(frozen=True)
class Taken:
    records: int
    new: int
    duplicate: int


# records in ------------------------------------------------------------------------------------


def records_frame(records: object) -> pl.DataFrame:
    """A JSON array of `stock_movements` objects as text columns; shapes the model cannot judge are refused here."""
    if not isinstance(records, list):
        raise Malformed("expected a JSON array of stock_movements records, e.g. "
                        '[{"event_id": "pos1-77", "sku": "A-1", "location": "S1", "delta": -1, "reason": "sale"}]')
    problems: list[Problem] = []
    columns: dict[str, list[str | None]] = {f: [] for f in FIELDS}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(Problem(index, None, "not a JSON object"))
            record = {}
        for name in record:
            if name not in FIELDS:
                problems.append(Problem(index, name, f"unknown field{did_you_mean(name, FIELDS)} "
                                                     f"(stock_movements has {', '.join(FIELDS)})"))
        for name in FIELDS:
            value = record.get(name)
            if isinstance(value, dict | list | bool):
                problems.append(Problem(index, name, "must be text or a number"))
                value = None
            columns[name].append(None if value is None else str(value))
    if problems:
        raise _refused(problems, len(records))
    return pl.DataFrame(columns, schema=dict.fromkeys(FIELDS, pl.String))


def read_file(path: Path) -> pl.DataFrame:
    """A drop-folder or `post` file: a JSON array of records (.json) or a CSV file with a header row (.csv)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return records_frame(orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError as exc:
            raise Malformed(f"not JSON ({exc})") from None
    if suffix == ".csv":
        try:
            frame = pl.read_csv(path, infer_schema=False)
        except pl.exceptions.PolarsError as exc:
            raise Malformed(f"not a readable CSV file ({exc})") from None
        unknown = [c for c in frame.columns if c not in FIELDS]
        if unknown:
            raise Malformed(f"unknown column {unknown[0]!r}{did_you_mean(unknown[0], FIELDS)} "
                            f"(stock_movements has {', '.join(FIELDS)})")
        return frame
    raise Malformed(f"{path.suffix or 'no suffix'}: give movements as .json (an array of records) or .csv (a header row)")


def _field_of(reason: str) -> str | None:
    """The field a rule's message is about: `delta: ...` names it first; otherwise the first field it mentions."""
    head = reason.split(":", 1)[0]
    if head in FIELDS:
        return head
    found = [(m.start(), name) for name in FIELDS for m in [re.search(rf"\b{name}\b", reason)] if m]
    return min(found)[1] if found else None


def _refused(problems: list[Problem], total: int) -> Malformed:
    problems = sorted(problems, key=lambda p: p.index)
    first = problems[0]
    where = f"record {first.index}" + (f", field {first.field}" if first.field else "")
    indexes = {p.index for p in problems}
    return Malformed(f"{len(indexes)} of {total} record(s) refused, nothing taken; {where}: {first.problem}", problems)


def checked(frame: pl.DataFrame, store: str, now: dt.datetime) -> pl.DataFrame:
    """Text columns -> canonical movements of `store`, or `Malformed` naming every refused record and field.

    A record without `location` is the store's; one without `occurred_at`
    happened now (stamped here, not on arrival at the aggregator hours later,
    where a count in between would place it wrongly).
    """
    if "location" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("location"))
    frame = frame.with_columns(pl.col("location").fill_null(store))
    conformed = conform(frame, STOCK_MOVEMENT).with_columns(
        pl.col("occurred_at").fill_null(pl.lit(now, pl.Datetime("us", "UTC"))),
        pl.int_range(pl.len()).alias(_INDEX),
    )
    elsewhere = pl.when(pl.col("location") != store).then(pl.concat_str(
        pl.lit("location: '"), pl.col("location"),
        pl.lit(f"' is not this store's; kanal edge --store {store} takes the movements of {store}"),
    ))  # fmt: skip
    conformed = conformed.with_columns(pl.coalesce(pl.col(REASON), elsewhere).alias(REASON))
    bad = conformed.filter(pl.col(REASON).is_not_null())
    good = conformed.filter(pl.col(REASON).is_null()).select(*FIELDS, _INDEX)
    _, rejected = check(good.drop(_INDEX), int(now.timestamp() * 1_000_000))
    problems = [Problem(i, _field_of(r), r) for i, r in bad.select(_INDEX, REASON).iter_rows()]
    if not rejected.is_empty():
        first_index = good.group_by("event_id").agg(pl.col(_INDEX).min())
        broken = rejected.select("event_id", REJECTED).join(first_index, on="event_id", how="left")
        problems += [Problem(i, _field_of(r), r) for i, r in broken.select(_INDEX, REJECTED).iter_rows()]
    if problems:
        raise _refused(problems, frame.height)
    return good.select(FIELDS)


# the agent's state -----------------------------------------------------------------------------


def store_rules(rules: ChannelRules | None, store: str) -> ChannelRules:
    """The job's channel rules for a store's local ledger: only channels that sell from this store alone are exact there."""
    if rules is None:
        return ChannelRules()
    own = {name: ch for name, ch in rules.channels.items() if set(ch.locations) == {store}}
    return rules.model_copy(update={"channels": own})


class Edge:
    """One store's journal and local ledger; `take` is the one way in (HTTP, drop folder and `post` use it)."""

    def __init__(self, loaded: LoadedJob, store: str, folder: Path) -> None:
        if not store.strip() or store != store.strip():
            raise ConfigError(f"--store {store!r}: give the store's location code, e.g. --store S1")
        self.loaded, self.store, self.folder = loaded, store, folder
        self.source = f"edge:{store}"
        self.journal = Journal(folder / "journal.sqlite")
        self.ledger = Ledger(folder / "ledger.sqlite", store_rules(loaded.job.inventory, store))
        self.wake = threading.Event()
        """Set when movements were journaled: the forwarder sends them without waiting for its next round."""
        self.journaled = threading.Event()
        """Set when movements were journaled: the applier (`keep_up`) takes them into the store's ledger."""
        self._catching_up = threading.Lock()
        self.catch_up()

    def close(self) -> None:
        self.journal.close()
        self.ledger.close()

    def take(self, frame: pl.DataFrame) -> Taken:
        """Check and journal durably. Returns once the movements are on disk.

        The local ledger takes them after the answer (`keep_up`), and every
        read of the store's figures (`availability`) applies what is
        journaled first, so a till reads its own sale all the same. Applying
        on the request's way, or on the forwarder's, cost the answer and the
        forwarding a third of their time under a till rush.
        """
        valid = checked(frame, self.store, dt.datetime.now(dt.UTC))
        lines = valid.write_ndjson().encode().splitlines() if not valid.is_empty() else []
        appended = self.journal.append(valid.get_column("event_id").to_list(), lines)
        self.wake.set()
        self.journaled.set()
        return Taken(valid.height, appended.new, appended.duplicate)

    def keep_up(self, stop: threading.Event, keep_days: float) -> None:
        """The agent's applier: apply what is journaled as it comes, and what `post` journals from another process within a second.

        It waits `_APPLY_EVERY_S` between rounds: every round costs a ledger
        transaction's fixed share, and a read applies what is journaled
        first, so batching never shows in the store's figures.

        Once an hour it also prunes the journal of what was forwarded and
        applied more than `keep_days` ago.
        """
        pruned_at = -_PRUNE_EVERY_S
        while not stop.wait(_APPLY_EVERY_S):
            self.journaled.wait(1.0)
            self.journaled.clear()
            if self._applied() and time.monotonic() - pruned_at >= _PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                try:
                    self.prune(keep_days)
                except sqlite3.Error as exc:  # the disk fills an hour later at most: tried again then
                    log.warning("the journal was not pruned this time: %s", exc)

    def _applied(self) -> bool:
        """`catch_up`, where a failure only delays the store's figures: journaled is taken, the next round tries again."""
        try:
            self.catch_up()
            return True
        except sqlite3.Error as exc:
            log.warning("the store's figures lag behind its journal for now: %s", exc)
            return False

    def prune(self, keep_days: float, now: float | None = None) -> int:
        """Forget journal records forwarded and applied, taken more than `keep_days` ago; returns how many."""
        before_us = int(((now if now is not None else time.time()) - keep_days * 86_400) * 1_000_000)
        applied = self.ledger.offsets().get(_JOURNAL_INPUT, 1)
        pruned = self.journal.prune(before_us, applied)
        if pruned:
            log.info("journal: %d record(s) forwarded more than %g days ago forgotten", pruned, keep_days)
        return pruned

    def catch_up(self) -> None:
        """Apply to the local ledger what the journal holds beyond it (also what `post` journaled from another process)."""
        with self._catching_up:
            while True:
                after = self.ledger.offsets().get(_JOURNAL_INPUT, 1) - 1
                entries = self.journal.after(after, 10_000)
                if not entries:
                    return
                self.ledger.ingest(self.movements(entries), {_JOURNAL_INPUT: entries[-1].seq + 1})

    def movements(self, entries: list[Entry]) -> pl.DataFrame:
        """Journal entries as canonical movements; records without a `source` are this agent's, numbered by the journal."""
        frame = wire.decode_lines([e.line for e in entries], STOCK_MOVEMENT.schema)
        seq = pl.Series("_seq", [e.seq for e in entries], pl.Int64)
        own = pl.col("source").is_null()
        return frame.with_columns(seq).with_columns(
            pl.when(own).then(pl.lit(self.source)).otherwise(pl.col("source")).alias("source"),
            pl.when(own).then(pl.col("_seq").cast(pl.String)).otherwise(pl.col("sequence")).alias("sequence"),
        ).drop("_seq")

    def wire_frame(self, entries: list[Entry]) -> pl.DataFrame:
        """Entries as a change frame for the movements topic: key, op upsert, the journal seq as version, sku as partition basis."""
        frame = self.movements(entries).with_columns(
            STOCK_MOVEMENT.key_expr(),
            pl.lit(UPSERT).alias(OP),
            pl.Series(VERSION, [e.seq for e in entries], pl.Int64),
        )
        return wire.with_partition_basis(frame, STOCK_MOVEMENT)

    def availability(self, sku: str) -> dict[str, Any]:
        """The store's figure for `sku` from its own state (no network), with everything journaled applied."""
        self._applied()
        level = self.ledger.level(sku, self.store)
        channels = {name: self.ledger.availability(sku, name) for name in self.ledger.rules.channels}
        return {
            "sku": sku, "location": self.store, "on_hand": level.on_hand, "reserved": level.reserved,
            "unavailable": level.unavailable, "incoming": level.incoming, "available": level.available,
            "channels": channels, "version": level.version,
        }  # fmt: skip


@dataclass(frozen=True)
class EdgeOptions:
    store: str
    journal: Path
    host: str = "127.0.0.1"
    port: int = 8600
    drop: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    tokens: tuple[str, ...] = field(default=(), repr=False)
    keep_days: float = 14.0
    """How long the journal keeps what it forwarded (the agent's disk stays bounded)."""


def iso(us: int | float | None) -> str | None:
    """Epoch microseconds as UTC ISO 8601 text with Z (None stays None)."""
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).isoformat().replace("+00:00", "Z")


def journal_status(store: str, folder: Path) -> dict[str, Any]:
    """`kanal edge ... status`: the journal's counts, read from disk (the agent may run or not)."""
    journal = Journal(folder / "journal.sqlite")
    try:
        stats = journal.stats()
    finally:
        journal.close()
    return {"store": store, "journaled": stats.journaled, "backlog": stats.backlog,
            "oldest_unforwarded_at": iso(stats.oldest_pending_us)}  # fmt: skip


def post(loaded: LoadedJob, store: str, folder: Path, files: list[Path]) -> Iterator[tuple[Path, Taken]]:
    """`kanal edge ... post FILE...`: journal files' movements, one file at a time (a running agent forwards them)."""
    edge = Edge(loaded, store, folder)
    try:
        for path in files:
            try:
                yield path, edge.take(read_file(path))
            except Malformed as exc:
                raise Malformed(f"{path}: {exc.message}", exc.problems) from None
    finally:
        edge.close()


def frame_of_body(body: bytes) -> pl.DataFrame:
    """A request body (a JSON array) as text columns; `Malformed` when it is not one."""
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not JSON ({exc})") from None
    if isinstance(records, list) and len(records) > MAX_RECORDS:
        raise TooMany(len(records))
    return records_frame(records)
