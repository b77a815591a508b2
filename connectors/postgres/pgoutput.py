"""Decoding PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

The SQL interface (`pg_logical_slot_peek_binary_changes`) returns one row per
message: (lsn, xid, data). Only what change capture needs is decoded:
relations (names, columns, type OIDs), begin/commit, and insert, update and
delete with their tuples in text format. Values stay text, exactly as COPY
would print them, so a change and a snapshot row look alike to mappings.

Message layouts are those of the PostgreSQL documentation, "Logical
Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

UNCHANGED = object()
"""A TOASTed value PostgreSQL did not send because the update did not change it."""

INSERT, UPDATE, DELETE = "insert", "update", "delete"


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
    kind: str  # INSERT, UPDATE, DELETE
    lsn: int
    values: tuple[object, ...]  # str | None | UNCHANGED, per relation column
    old: tuple[object, ...] | None  # old tuple of an update or delete (key or full), if sent


@dataclass
class Transaction:
    end_lsn: int = 0
    changes: list[Change] = field(default_factory=list)


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


class Decoder:
    """Turns peeked rows into committed transactions; keeps the relation cache."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def transactions(self, rows: Iterable[tuple[str, object, bytes]], after: int = 0) -> Iterator[Transaction]:
        """The committed transactions in `rows` that end after LSN `after`.

        Earlier ones (handed out before, not yet confirmed, so peeked again)
        are skipped without decoding their rows: only relations are kept.
        """
        current: Transaction | None = None
        skipping = False
        for lsn, _xid, data in rows:
            kind = chr(data[0])
            if kind == "B":
                # final_lsn is where the commit record starts: before `after` means it ended there too
                skipping = struct.unpack_from("!q", data, 1)[0] < after
                current = None if skipping else Transaction()
            elif kind == "C":
                if current is not None:
                    current.end_lsn = struct.unpack_from("!q", data, 10)[0]
                    yield current
                current = None
            elif kind == "R":
                self._relation(_Reader(bytes(data)))
            elif kind in "IUD" and current is not None:
                current.changes.append(self._change(kind, _Reader(bytes(data)), lsn_int(lsn)))
            # 'Y' types, 'O' origins, 'M' messages (heartbeats) and 'T' truncates carry no rows

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

    def _change(self, kind: str, r: _Reader, lsn: int) -> Change:
        relation = self.relations[r.int("!I", 4)]
        marker = r.byte()
        if kind == "I":
            return Change(relation, INSERT, lsn, r.tuple(), None)
        old = None
        if marker in "KO":
            old = r.tuple()
            if kind == "D":
                return Change(relation, DELETE, lsn, old, old)
            marker = r.byte()  # 'N'
        return Change(relation, UPDATE, lsn, r.tuple(), old)
