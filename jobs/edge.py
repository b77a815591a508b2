"""`kanal edge JOB --store S1 --journal DIR`: the store agent that keeps selling while the network is down.

A small process per store (a store PC, a Raspberry Pi). Movements come from
the POS over HTTP (`jobs.edge_http`), from a drop folder, or from
`kanal edge ... post FILE`; all three go through `Edge.take`:

1. the records are checked against the canonical `stock_movements` model
   (`core.validate`) and the ledger's rules (`core.inventory`); one bad
   record refuses the whole request, naming its index and field, so a
   client never has to find out which half was taken;
2. they are journaled durably (`core.journal`: SQLite WAL, fsynced) before
   anyone is told "taken"; a repeated `event_id` is ignored;
3. the store's local ledger (`core.inventory.Ledger`) applies them at once,
   so `GET /availability/<sku>` answers from the store's own state, online
   or not.

Three threads do the rest:

* `_Forwarder` sends the journal's unforwarded movements, in journal order,
  to the job's `stock_movements` topic in the wire format the aggregator
  (`kanal inventory`) reads, partitioned by sku (`Entity.partition_by`), with
  an idempotent producer that never gives a message up
  (`message.timeout.ms: 0`): per partition, acknowledgements come in order,
  so what was acknowledged is a prefix and is marked forwarded; the rest
  goes out again with a new producer after an outage or a restart (a
  duplicate on the wire is harmless: the ledger deduplicates by event_id).
* `_Central` follows the same topic and applies the movements that concern
  the store (its location, or a transfer towards it) to the local ledger:
  receipts, transfers and counts booked centrally. The ledger stores how far
  it read in the same transaction, and its own movements coming back are
  ignored by event_id, so local figures converge on the central ones.
* `_DropFolder` picks up complete JSON and CSV files from `--drop`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from kanal.core import wire
from kanal.core.connector import OP, UPSERT, VERSION
from kanal.core.errors import ConfigError, KanalError, redact
from kanal.core.inventory import ChannelRules, Ledger
from kanal.core.inventory.movements import REJECTED, check
from kanal.core.journal import Entry, Journal
from kanal.core.kafka import BoundedProducer, KafkaConnection
from kanal.core.model import STOCK_MOVEMENT
from kanal.core.places import did_you_mean
from kanal.core.validate import KEY, REASON, conform
from kanal.jobs.load import LoadedJob

log = logging.getLogger("kanal.edge")
FIELDS = STOCK_MOVEMENT.field_names
MAX_BODY = 1024 * 1024
"""Largest request body `POST /movements` reads (413 beyond)."""
MAX_RECORDS = 1000
"""Most records one request may carry (413 beyond): a POS sends more as several requests."""
_JOURNAL_INPUT = ("journal", 0)
"""The local ledger's input position for the journal (next to its Kafka offsets)."""
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
    elsewhere = pl.when(pl.col("location") != store).then(
        pl.format(f"location: '{{}}' is not this store's; kanal edge --store {store} takes the movements of {store}",
                  pl.col("location"))
    )
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
        self._catching_up = threading.Lock()
        self.catch_up()

    def close(self) -> None:
        self.journal.close()
        self.ledger.close()

    def take(self, frame: pl.DataFrame) -> Taken:
        """Check, journal durably, apply locally. Returns once the movements are on disk."""
        valid = checked(frame, self.store, dt.datetime.now(dt.UTC))
        lines = valid.write_ndjson().encode().splitlines() if not valid.is_empty() else []
        appended = self.journal.append(valid.get_column("event_id").to_list(), lines)
        self.catch_up()
        self.wake.set()
        return Taken(valid.height, appended.new, appended.duplicate)

    def catch_up(self) -> None:
        """Apply to the local ledger what the journal holds beyond it (also what `post` journaled from another process)."""
        with self._catching_up:
            while True:
                after = self.ledger.offsets().get(_JOURNAL_INPUT, 1) - 1
                entries = self.journal.after(after, 10_000)
                if not entries:
                    return
                self.ledger.apply_frame(self.movements(entries), {_JOURNAL_INPUT: entries[-1].seq + 1})

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
        """The store's figure for `sku` from its own state (no network)."""
        level = self.ledger.level(sku, self.store)
        channels = {name: self.ledger.availability(sku, name) for name in self.ledger.rules.channels}
        return {
            "sku": sku, "location": self.store, "on_hand": level.on_hand, "reserved": level.reserved,
            "unavailable": level.unavailable, "incoming": level.incoming, "available": level.available,
            "channels": channels, "version": level.version,
        }  # fmt: skip


# forwarding ------------------------------------------------------------------------------------


def _iso(us: int | float | None) -> str | None:
    if us is None:
        return None
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).isoformat().replace("+00:00", "Z")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return redact(str(exc))


class _Batch:
    """Delivery reports of one batch, by position; `settled` once every one came or one failed."""

    def __init__(self, size: int) -> None:
        self.results: list[KafkaError | bool | None] = [None] * size
        self.settled = threading.Event()
        self.progress = time.monotonic()
        self._lock = threading.Lock()
        self._left = size

    def ack(self, index: int, err: KafkaError | None) -> None:
        with self._lock:
            self.results[index] = err if err is not None else True
            self._left -= 1
            self.progress = time.monotonic()
            if err is not None or self._left == 0:
                self.settled.set()

    def forwarded(self, entries: list[Entry], partitions: list[int]) -> list[int]:
        """Seqs acknowledged with nothing unacknowledged before them in their partition (so order holds when the rest is sent again)."""
        with self._lock:
            results = list(self.results)
        broken: set[int] = set()
        seqs = []
        for entry, partition, result in zip(entries, partitions, results, strict=True):
            if result is True and partition not in broken:
                seqs.append(entry.seq)
            else:
                broken.add(partition)
        return seqs


@dataclass
class BrokerState:
    connected: bool = False
    error: str | None = None
    forwarded: int = 0
    last_forwarded_us: int | None = None


class _Forwarder:
    """Sends the journal's backlog to the movements topic whenever the broker is there (see the module docstring)."""

    def __init__(self, edge: Edge, kafka: KafkaConnection, stop: threading.Event, *, batch: int = 500,
                 stall_s: float = 10.0, retry_s: float = 1.0) -> None:  # fmt: skip
        self.edge, self.kafka, self.stop = edge, kafka, stop
        self.batch, self.stall_s, self.retry_s = batch, stall_s, retry_s
        self.topic = kafka.settings.topic(STOCK_MOVEMENT.name)
        self.state = BrokerState()
        self.topic_ready = threading.Event()
        self.partitions = 0
        self.producer: BoundedProducer | None = None
        self._headers = [
            (wire.H_ENTITY, STOCK_MOVEMENT.name.encode()), (wire.H_FORMAT, b"json"),
            (wire.H_JOB, edge.loaded.name.encode()), (wire.H_SOURCE, edge.source.encode()),
            (wire.H_SCHEMA, wire.SCHEMA_VERSION),
        ]  # fmt: skip

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self._round()
                except Exception as exc:  # noqa: BLE001 - a background thread reports and tries again
                    log.warning("forwarding failed, trying again: %s", _describe(exc))
                    self._drop_producer(_describe(exc))
                    self.stop.wait(self.retry_s)
        finally:
            self._drop_producer(None)

    def _round(self) -> None:
        self.edge.catch_up()
        if self.producer is None and not self._connect():
            self.stop.wait(self.retry_s)
            return
        self.edge.wake.clear()
        entries = self.edge.journal.pending(self.batch)
        if not entries:
            self.edge.wake.wait(1.0)
            return
        self._forward(entries)

    def _reachable(self) -> bool:
        try:
            AdminClient(self.kafka.config()).list_topics(timeout=2)
            return True
        except KafkaException:
            return False

    def _connect(self) -> bool:
        """Reach the broker, make sure the topic exists (as the aggregator makes it), start a producer."""
        if not self._reachable():
            self._down(f"kafka {self.kafka.bootstrap} not reachable")
            return False
        self.kafka.ensure_topics([self.topic], compact=True)
        self.partitions = self.kafka.partitions_of(self.topic)
        # Never give a message up (0: no timeout): librdkafka keeps retrying in order through an outage.
        self.producer = BoundedProducer(self.kafka, max_in_flight=self.batch, **{"message.timeout.ms": 0})
        self.state.connected, self.state.error = True, None
        self.topic_ready.set()
        log.info("connected to kafka %s, forwarding to %s", self.kafka.bootstrap, self.topic)
        return True

    def _down(self, error: str) -> None:
        if self.state.connected or self.state.error != error:
            log.warning("%s; movements stay journaled and are forwarded once it answers", error)
        self.state.connected, self.state.error = False, error

    def _drop_producer(self, error: str | None) -> None:
        if self.producer is not None:
            self.producer.abandon()
            self.producer = None
        if error:
            self._down(error)

    def _forward(self, entries: list[Entry]) -> None:
        assert self.producer is not None
        records = wire.record_messages(self.edge.wire_frame(entries), self.partitions)
        batch = _Batch(len(records))
        for index, record in enumerate(records):
            headers = [*self._headers, (wire.H_OP, record.op), (wire.H_VERSION, record.version)]
            self.producer.send(self.topic, record.value, key=record.key, partition=record.partition, headers=headers,
                               on_ack=partial(batch.ack, index))  # fmt: skip
        complete = self._await(batch)
        seqs = batch.forwarded(entries, [r.partition for r in records])
        self.edge.journal.mark_forwarded(seqs)
        if seqs:
            self.state.forwarded += len(seqs)
            self.state.last_forwarded_us = int(time.time() * 1_000_000)
        if not complete:
            failed = next((r for r in batch.results if isinstance(r, KafkaError)), None)
            self._drop_producer(failed.str() if failed is not None else None)

    def _await(self, batch: _Batch) -> bool:
        """Wait for the batch's acknowledgements; False when a new producer must send the rest.

        A broker that is down is waited for (librdkafka retries). One that
        answers requests but acknowledges nothing for `stall_s` lost the
        producer's state (restarted without its data): start afresh.
        """
        while not self.stop.is_set():
            if batch.settled.wait(0.2):
                return all(r is True for r in batch.results)
            if time.monotonic() - batch.progress < self.stall_s:
                continue
            if self._reachable():
                log.warning("kafka answers but acknowledged nothing for %.0fs; sending again", self.stall_s)
                return False
            self._down(f"kafka {self.kafka.bootstrap} not reachable")
            batch.progress = time.monotonic()
        return False


# central updates -------------------------------------------------------------------------------


@dataclass
class CentralState:
    following: bool = False
    applied: int = 0
    """Movements concerning the store applied from the topic (its own, coming back, included)."""
    last_applied_us: int | None = None


class _Central:
    """Applies the topic's movements that concern the store to its local ledger (see the module docstring)."""

    def __init__(self, edge: Edge, kafka: KafkaConnection, topic_ready: threading.Event, stop: threading.Event,
                 *, retry_s: float = 1.0) -> None:  # fmt: skip
        self.edge, self.kafka, self.topic_ready, self.stop, self.retry_s = edge, kafka, topic_ready, stop, retry_s
        self.topic = kafka.settings.topic(STOCK_MOVEMENT.name)
        self.group = f"{kafka.settings.topic_prefix}.{edge.loaded.name}.edge.{edge.store}"
        self.state = CentralState()
        self.consumer: Consumer | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    if self.consumer is None:
                        if self.topic_ready.wait(0.5):
                            self._assign()
                        continue
                    self._apply(self.consumer.consume(num_messages=2_000, timeout=0.5))
                except Exception as exc:  # noqa: BLE001 - a background thread reports and tries again
                    log.warning("following central movements failed, trying again: %s", _describe(exc))
                    self._close()
                    self.stop.wait(self.retry_s)
        finally:
            self._close()

    def _assign(self) -> None:
        """Read every partition from where the local ledger stopped (the start for a new store)."""
        offsets = self.edge.ledger.offsets()
        partitions = self.kafka.partitions_of(self.topic)
        self.consumer = self.kafka.consumer(self.group)
        self.consumer.assign([
            TopicPartition(self.topic, p, offsets.get((self.topic, p), OFFSET_BEGINNING)) for p in range(partitions)
        ])  # fmt: skip
        self.state.following = True

    def _apply(self, messages: list[Message]) -> None:
        ends: dict[tuple[str, int], int] = {}
        taken: list[tuple[bytes | None, dict[str, str]]] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue  # transport errors while the broker is away: librdkafka reconnects
            ends[(self.topic, msg.partition())] = msg.offset() + 1
            taken.append((msg.value(), wire.headers_of(msg.headers())))
        if not ends:
            return
        store = self.edge.store
        frame = wire.messages_frame(taken, STOCK_MOVEMENT.schema)
        mine = frame.filter((pl.col("location") == store) | (pl.col("counterpart") == store).fill_null(False))
        self.edge.ledger.apply_frame(mine, ends)
        if not mine.is_empty():
            self.state.applied += mine.height
            self.state.last_applied_us = int(time.time() * 1_000_000)

    def _close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self.state.following = False


# the drop folder -------------------------------------------------------------------------------


class DropFolder:
    """Takes complete .json and .csv files from a folder, then moves them to `done/` (or `failed/` with the reasons).

    Complete means: unchanged in size and time between two scans and not
    written to for `settle_s`. Writing a file elsewhere and moving it in is
    safest. A file taken but not moved yet (the agent was killed) is taken
    again at the next start: its movements are duplicates and ignored.
    """

    SUFFIXES = (".json", ".csv")

    def __init__(self, edge: Edge, folder: Path, *, settle_s: float = 1.0) -> None:
        self.edge, self.folder, self.settle_s = edge, folder, settle_s
        self._seen: dict[str, tuple[int, int]] = {}
        for sub in ("done", "failed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def run(self, stop: threading.Event, every_s: float = 1.0) -> None:
        while not stop.wait(every_s):
            try:
                self.scan()
            except OSError as exc:
                log.warning("cannot read the drop folder %s: %s", self.folder, exc)

    def scan(self) -> list[Path]:
        """One look at the folder; returns the files taken (or refused) now."""
        handled, now = [], time.time()
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in self.SUFFIXES:
                continue
            stat = path.stat()
            mark = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(path.name) != mark or now - stat.st_mtime < self.settle_s:
                self._seen[path.name] = mark
                continue
            self._take(path)
            self._seen.pop(path.name, None)
            handled.append(path)
        return handled

    def _take(self, path: Path) -> None:
        try:
            taken = self.edge.take(read_file(path))
        except Malformed as exc:
            target = _move(path, self.folder / "failed")
            target.with_name(target.name + ".errors.txt").write_text(_report(exc, path.suffix.lower() == ".csv"))
            log.warning("%s refused, moved to %s: %s", path.name, target, exc.message)
            return
        target = _move(path, self.folder / "done")
        log.info("%s: %d movement(s) journaled (%d new, %d duplicate), moved to %s",
                 path.name, taken.records, taken.new, taken.duplicate, target)  # fmt: skip


def _move(path: Path, folder: Path) -> Path:
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{time.monotonic_ns()}{path.suffix}"
    shutil.move(path, target)
    return target


def _report(exc: Malformed, csv: bool) -> str:
    """A refused file's reasons, one line per problem (CSV records also by line: the header is line 1)."""
    lines = [exc.message, ""]
    for p in exc.problems:
        where = f"record {p.index}" + (f" (line {p.index + 2})" if csv else "")
        lines.append(f"{where}: {p.problem}")
    return "\n".join(lines) + "\n"


# running ---------------------------------------------------------------------------------------


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


@contextmanager
def only_agent(folder: Path) -> Iterator[None]:
    """One agent per journal: two would forward the same backlog and fight over the local ledger."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "agent.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another kanal edge already runs on the journal {folder}; stop it first") from None
        yield


def require_shared_broker(loaded: LoadedJob) -> None:
    if loaded.job.kafka.embedded:
        raise ConfigError(
            f"{loaded.path}: `kanal edge` forwards to the broker the aggregator reads, not to "
            "`kafka.bootstrap_servers: embedded` (memory of one process): set it to your cluster"
        )


class Agent:
    """A running store agent: its `Edge`, forwarder, central follower and drop folder (the HTTP server is `jobs.edge_http`)."""

    def __init__(self, loaded: LoadedJob, options: EdgeOptions, stop: threading.Event, **forwarding: float) -> None:
        require_shared_broker(loaded)
        self.options, self.stop = options, stop
        self.edge = Edge(loaded, options.store, options.journal)
        kafka = KafkaConnection(loaded.job.kafka)
        self.forwarder = _Forwarder(self.edge, kafka, stop, **forwarding)  # type: ignore[arg-type]
        self.central = _Central(self.edge, kafka, self.forwarder.topic_ready, stop)
        self.drop = DropFolder(self.edge, options.drop) if options.drop else None
        self._threads = [
            threading.Thread(target=self.forwarder.run, name="kanal-edge-forward", daemon=True),
            threading.Thread(target=self.central.run, name="kanal-edge-central", daemon=True),
        ]
        if self.drop is not None:
            self._threads.append(threading.Thread(target=self.drop.run, args=(stop,), name="kanal-edge-drop", daemon=True))

    def start(self) -> Agent:
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.edge.wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        self.edge.close()

    def status(self) -> dict[str, Any]:
        stats = self.edge.journal.stats()
        broker, central = self.forwarder.state, self.central.state
        return {
            "store": self.options.store,
            "journaled": stats.journaled,
            "backlog": stats.backlog,
            "oldest_unforwarded_at": _iso(stats.oldest_pending_us),
            "broker": {"connected": broker.connected, "error": broker.error, "forwarded": broker.forwarded,
                       "last_forwarded_at": _iso(broker.last_forwarded_us)},
            "central": {"following": central.following, "applied": central.applied,
                        "last_applied_at": _iso(central.last_applied_us)},
        }  # fmt: skip


def journal_status(loaded: LoadedJob, store: str, folder: Path) -> dict[str, Any]:
    """`kanal edge ... status`: the journal's counts, read from disk (the agent may run or not)."""
    journal = Journal(folder / "journal.sqlite")
    try:
        stats = journal.stats()
    finally:
        journal.close()
    return {"store": store, "journaled": stats.journaled, "backlog": stats.backlog,
            "oldest_unforwarded_at": _iso(stats.oldest_pending_us)}  # fmt: skip


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


