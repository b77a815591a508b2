"""Decoding PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

The SQL interface (`pg_logical_slot_peek_binary_changes`) returns one row per
message: (lsn, xid, data). Only what change capture needs is decoded:
relations (names, columns, type OIDs), begin/commit, and insert, update,
delete (with their tuples in text format) and truncate. Values stay text,
exactly as COPY would print them, so a change and a snapshot row look alike to
mappings.

Versions. Every change of a transaction carries its commit LSN + 1 (the LSN
where its commit record starts, plus one). The slot holds exactly the
transactions whose commit record starts at or after the slot's start, so
their changes are all newer than a snapshot taken at the start, even those
written before it by a transaction still open then (their own LSNs are
older). Per row, a later transaction commits later (the second writer waits
for the first). Inside one transaction, order is the order of the messages,
except around a TRUNCATE, which must be newer than the rows it removes and
older than the rows written after it: the k-th truncate (from 0) of a table in
a transaction has version commit + 1 + k, and later changes of that table
commit + 2 + k. A commit record is longer than `MAX_TRUNCATES` + 2 bytes, so
these versions stay below the next transaction's.

Positions. A read may stop inside a transaction (reads are bounded, big
transactions are not): `Position` is the end of the last transaction handed
out whole, plus how many change messages of the next one were handed out.

Message layouts are those of the PostgreSQL documentation, "Logical
Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

UNCHANGED = object()
"""A TOASTed value PostgreSQL did not send because the update did not change it."""

INSERT, UPDATE, DELETE, TRUNCATE = "insert", "update", "delete", "truncate"
MAX_TRUNCATES = 32
"""Truncates of one table in one transaction that versions can tell apart (see above)."""
_CHANGES = frozenset(b"IUDT")


class TooManyTruncates(Exception):
    """A transaction truncated one table more often than versions can order."""


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str  # d (default), n (nothing), f (full), i (index)
    columns: tuple[str, ...]
    types: tuple[int, ...]
    key: tuple[int, ...]  # positions of the replica identity's columns


@dataclass(frozen=True)
class Change:
    relation: Relation
    kind: str  # INSERT, UPDATE, DELETE, TRUNCATE
    version: int  # see the module docstring
    values: tuple[object, ...]  # str | None | UNCHANGED, per relation column (empty for a truncate)
    old: tuple[object, ...] | None  # old tuple of an update or delete (key or full), if sent


@dataclass(frozen=True)
class Position:
    """Everything up to the end of the transaction ending at `lsn` is handed out,
    plus the first `changes` change messages of the transaction committed at `commit`."""

    lsn: int
    commit: int = 0
    changes: int = 0

    @property
    def inside(self) -> bool:
        return self.changes > 0

    def to_json(self) -> dict[str, Any]:
        if not self.inside:
            return {"lsn": lsn_text(self.lsn)}
        return {"lsn": lsn_text(self.lsn), "commit": lsn_text(self.commit), "changes": self.changes}

    @classmethod
    def of(cls, position: dict[str, Any]) -> Position:
        if not position.get("changes"):
            return cls(lsn_int(position["lsn"]))
        return cls(lsn_int(position["lsn"]), lsn_int(position["commit"]), int(position["changes"]))


@dataclass
class Read:
    """What one pass over peeked messages handed out, and where it ended."""

    changes: list[Change]
    position: Position
    rows: int = 0
    """Messages consumed (the next peek, from the same slot position, reads them again)."""


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 1  # byte 0 is the message type

    def int(self, fmt: str, size: int) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def byte(self) -> str:
        self.pos += 1
        return chr(self.data[self.pos - 1])

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        value = self.data[self.pos : end].decode()
        self.pos = end + 1
        return value

    def tuple(self) -> tuple[object, ...]:
        values: list[object] = []
        for _ in range(self.int("!h", 2)):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            else:  # 't' text (binary is never requested)
                size = self.int("!i", 4)
                values.append(self.data[self.pos : self.pos + size].decode())
                self.pos += size
        return tuple(values)


class _Transaction:
    """The transaction being read: its commit LSN, change messages met, truncates per table."""

    __slots__ = ("commit", "seen", "skip", "truncates")

    def __init__(self, commit: int, skip: int) -> None:
        self.commit, self.seen, self.skip = commit, 0, skip
        self.truncates: Counter[int] = Counter()

    def version(self, oid: int) -> int:
        return self.commit + 1 + self.truncates[oid]

    def truncated(self, oids: list[int], names: dict[int, Relation]) -> None:
        for oid in oids:
            self.truncates[oid] += 1
            if self.truncates[oid] > MAX_TRUNCATES:
                r = names.get(oid)
                table = f"{r.schema}.{r.name}" if r else f"oid {oid}"
                raise TooManyTruncates(
                    f"the transaction committed at {lsn_text(self.commit)} truncates {table} more than "
                    f"{MAX_TRUNCATES} times; its changes cannot be ordered"
                )


class Decoder:
    """Turns peeked messages into changes after a position; keeps the relation cache."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def read(self, rows: Iterable[tuple[str, object, bytes]], start: Position, limit: int) -> Read:
        """At most `limit` change messages after `start` (an update with its old image is one).

        Transactions handed out before (peeked again because they are not
        confirmed yet) are skipped without decoding their rows; so are the
        handed-out messages of a transaction `start` points inside. Only
        relations, and truncates (which shift versions), are always decoded.
        """
        read = Read([], start)
        boundary = start.lsn  # end of the last transaction seen whole
        txn: _Transaction | None = None
        for lsn, _xid, data in rows:
            read.rows += 1
            kind = data[0]
            if kind == 0x52:  # R
                self._relation(_Reader(bytes(data)))
            elif kind == 0x42:  # B: final_lsn is where the commit record starts
                commit = struct.unpack_from("!q", data, 1)[0]
                txn = None if commit < start.lsn else _Transaction(commit, start.changes if commit == start.commit else 0)
            elif txn is None:
                continue  # inside a transaction handed out before
            elif kind == 0x43:  # C
                boundary = struct.unpack_from("!q", data, 10)[0]
                read.position, txn = Position(boundary), None
                if len(read.changes) >= limit:
                    break
            elif kind in _CHANGES:
                txn.seen += 1
                if txn.seen <= txn.skip:
                    if kind == 0x54:  # T
                        txn.truncated(self._truncated(_Reader(bytes(data))), self.relations)
                    continue
                if len(read.changes) >= limit:
                    read.rows -= 1
                    read.position = Position(boundary, txn.commit, txn.seen - 1)
                    break
                read.changes.extend(self._changes(kind, _Reader(bytes(data)), txn))
            # 'Y' types, 'O' origins and 'M' messages (heartbeats) carry no rows
        return read

    def _relation(self, r: _Reader) -> None:
        oid = r.int("!I", 4)
        schema, name, identity = r.string(), r.string(), r.byte()
        columns, types, key = [], [], []
        for i in range(r.int("!h", 2)):
            if r.int("!b", 1) & 1:  # flag 1: part of the replica identity
                key.append(i)
            columns.append(r.string())
            types.append(r.int("!I", 4))
            r.int("!i", 4)  # type modifier
        self.relations[oid] = Relation(oid, schema or "pg_catalog", name, identity, tuple(columns), tuple(types), tuple(key))

    @staticmethod
    def _truncated(r: _Reader) -> list[int]:
        count = r.int("!i", 4)
        r.int("!b", 1)  # options: cascade, restart identity (the truncated tables are listed either way)
        return [r.int("!I", 4) for _ in range(count)]

    def _changes(self, kind: int, r: _Reader, txn: _Transaction) -> list[Change]:
        if kind == 0x54:  # T
            oids = self._truncated(r)
            changes = [Change(self.relations[oid], TRUNCATE, txn.version(oid), (), None) for oid in oids]
            txn.truncated(oids, self.relations)
            return changes
        relation = self.relations[r.int("!I", 4)]
        version = txn.version(relation.oid)
        marker = r.byte()
        if kind == 0x49:  # I
            return [Change(relation, INSERT, version, r.tuple(), None)]
        old = None
        if marker in "KO":
            old = r.tuple()
            if kind == 0x44:  # D
                return [Change(relation, DELETE, version, old, old)]
            r.byte()  # 'N'
        return [Change(relation, UPDATE, version, r.tuple(), old)]
