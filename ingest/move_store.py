"""Moving a store from its SQLite file to PostgreSQL: every table, row for row, then the blobs, verified.

The target is opened as the daemon opens it (every component's migrations applied), and must hold no rows yet:
a move never merges into a store that is in use. Each table is read from one SQLite read transaction (a consistent
snapshot) and written with COPY; identity counters are then moved past the copied ids so new rows continue the
numbering. Verification reads both sides back: the same row count per table, and the same checksum of the rows'
values (an order-free sum of per-row hashes, so the two databases' orderings do not matter). Blobs are read from
the blob directory, their sha256 checked against their name, and stored in the database (or, when the target keeps
blobs in a shared directory, counted and left for the operator to copy). Nothing is written to the source.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from .blobs import BlobStore
from .migrations import Migration
from .pgstore import PgStore

BATCH = 2000
# Bookkeeping of each database itself, not data to move: the target's migrations were applied by opening it.
SKIP_TABLES = {"schema_migrations", "sqlite_sequence"}


class MoveError(Exception):
    """The move cannot start (target not empty, a table missing there) or did not verify."""


@dataclass(frozen=True, slots=True)
class TableResult:
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str
    altered_values: int  # text values PostgreSQL cannot hold as they were (a NUL), stored with U+FFFD

    @property
    def ok(self) -> bool:
        return (self.source_rows == self.target_rows and self.source_checksum == self.target_checksum
                and self.altered_values == 0)


@dataclass(frozen=True, slots=True)
class BlobResult:
    listed: int  # rows of `blobs`
    copied: int  # stored in the target database
    missing: list[str]  # listed but absent from the blob directory
    corrupt: list[str]  # present, but their content does not hash to their name

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def _value_digest(value: Any) -> bytes:
    """One value, typed, as bytes: 1 and 1.0 and "1" hash apart, so a changed type is a changed checksum."""
    if value is None:
        return b"n"
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + (b"nan" if math.isnan(value) else struct.pack(">d", value))
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    return b"b" + bytes(value)


def row_hash(row: Sequence[Any]) -> int:
    h = hashlib.sha256()
    for value in row:
        part = _value_digest(value)
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return int.from_bytes(h.digest(), "big")


class Checksum:
    """Order-free and multiset-exact: the sum of the rows' hashes modulo 2**256."""

    def __init__(self) -> None:
        self.total = 0
        self.rows = 0

    def add(self, row: Sequence[Any]) -> None:
        self.total = (self.total + row_hash(row)) % (1 << 256)
        self.rows += 1

    def hexdigest(self) -> str:
        return f"{self.total:064x}"


def _coercer(pg_type: str) -> Callable[[Any], tuple[Any, bool]]:
    """SQLite keeps whatever type a value arrived with; PostgreSQL's column decides. Returns (value, altered)."""
    def text(v: Any) -> tuple[Any, bool]:
        if v is None:
            return None, False
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif not isinstance(v, str):
            v = str(v)
        return (v.replace("\x00", "\ufffd"), True) if "\x00" in v else (v, False)

    def integer(v: Any) -> tuple[Any, bool]:
        return (v if v is None or isinstance(v, int) else int(v)), False

    def real(v: Any) -> tuple[Any, bool]:
        return (v if v is None else float(v)), False

    def blob(v: Any) -> tuple[Any, bool]:
        if v is None or isinstance(v, bytes):
            return v, False
        return (v.encode("utf-8") if isinstance(v, str) else bytes(v)), False

    return {"text": text, "bigint": integer, "integer": integer, "smallint": integer,
            "double precision": real, "real": real, "bytea": blob}.get(pg_type, lambda v: (v, False))


async def move_store(source: Path, blob_dir: Path, target_url: str, migrations: dict[str, list[Migration]], *,
                     blobs_in_database: bool = True,
                     progress: Callable[[str], None] = lambda _: None) -> tuple[list[TableResult], BlobResult]:
    """Copy the SQLite store at `source` into the PostgreSQL database at `target_url` and verify the copy."""
    target = await PgStore.open(target_url, blob_dir, migrations=migrations, blobs_in_database=blobs_in_database)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        src.execute("BEGIN")  # one snapshot for every table
        tables = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
                  if r[0] not in SKIP_TABLES and not r[0].startswith("sqlite_")]
        assert target._pool is not None
        async with target._pool.acquire() as conn:
            columns = await _target_columns(conn)
            await _check_target(conn, tables, columns)
            tables = parents_first(tables, await _foreign_keys(conn))
            results = []
            async with conn.transaction():
                copied: dict[str, tuple[Checksum, int]] = {}
                for table in tables:
                    progress(f"copying {table}")
                    copied[table] = await _copy_table(src, conn, table, columns[table])
                    await _advance_identity(conn, table, columns[table])
            for table in sorted(tables):  # reported in name order, whatever order the copy took
                progress(f"verifying {table}")
                source_sum, altered = copied[table]
                target_sum = await _target_checksum(conn, table, list(_source_columns(src, table)))
                results.append(TableResult(table, source_sum.rows, target_sum.rows, source_sum.hexdigest(),
                                           target_sum.hexdigest(), altered))
        blobs = await _move_blobs(src, target, blob_dir, blobs_in_database, progress)
    finally:
        src.close()
        await target.close()
    return results, blobs


async def _foreign_keys(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(table, the table it references) for every foreign key of the target's schema."""
    rows = await conn.fetch("SELECT c.relname AS child, p.relname AS parent FROM pg_constraint k"
                            " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid"
                            " JOIN pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE k.contype = 'f' AND n.nspname = current_schema()")
    return [(r["child"], r["parent"]) for r in rows]


def parents_first(tables: Sequence[str], references: Iterable[tuple[str, str]]) -> list[str]:
    """`tables` (in their given order where nothing constrains it) with every referenced table before the tables
    that reference it: the target checks each foreign key as its rows arrive (answers before cases, in name
    order, failed the move of any store that had a case with an answer). A table referencing itself is left to
    its own row order (none does); a cycle between tables is refused, since no order could copy it."""
    wanted = list(tables)
    parents: dict[str, set[str]] = {t: set() for t in wanted}
    for child, parent in references:
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    placed: set[str] = set()
    while len(ordered) < len(wanted):
        ready = [t for t in wanted if t not in placed and parents[t] <= placed]
        if not ready:
            raise MoveError("foreign keys form a cycle between tables: "
                            + ", ".join(t for t in wanted if t not in placed))
        ordered.append(ready[0])
        placed.add(ready[0])
    return ordered


async def _target_columns(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    rows = await conn.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns"
                            " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    return out


async def _check_target(conn: asyncpg.Connection, tables: Iterable[str], columns: dict[str, dict[str, str]]) -> None:
    problems = [f"table {t} does not exist in the target" for t in tables if t not in columns]
    if problems:
        raise MoveError("; ".join(problems))
    for table in tables:
        if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
            raise MoveError(f"the target already holds rows (table {table}): a move needs an empty database")


def _source_columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]


async def _copy_table(src: sqlite3.Connection, conn: asyncpg.Connection, table: str,
                      target_types: dict[str, str]) -> tuple[Checksum, int]:
    names = _source_columns(src, table)
    missing = [n for n in names if n not in target_types]
    if missing:
        raise MoveError(f"table {table}: columns {missing} do not exist in the target")
    coerce = [_coercer(target_types[n]) for n in names]
    checksum, altered = Checksum(), 0
    cursor = src.execute(f'SELECT {", ".join(chr(34) + n + chr(34) for n in names)} FROM "{table}"')
    while batch := cursor.fetchmany(BATCH):
        records = []
        for row in batch:
            values = []
            for fn, value in zip(coerce, row):
                new, changed = fn(value)
                altered += changed
                values.append(new)
            records.append(tuple(values))
            checksum.add(values)
        await conn.copy_records_to_table(table, records=records, columns=names)
    return checksum, altered


async def _advance_identity(conn: asyncpg.Connection, table: str, types: dict[str, str]) -> None:
    """Rows were copied with their ids: the identity counter must continue after the largest."""
    for column in types:
        seq = await conn.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, column)
        if seq is not None:
            await conn.execute(f'SELECT setval($1::regclass, COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1,'
                               " false)", seq)


async def _target_checksum(conn: asyncpg.Connection, table: str, names: list[str]) -> Checksum:
    checksum = Checksum()
    cols = ", ".join(f'"{n}"' for n in names)
    async with conn.transaction():  # a cursor needs one
        async for row in conn.cursor(f'SELECT {cols} FROM "{table}"', prefetch=BATCH):
            checksum.add(list(row))
    return checksum


async def _move_blobs(src: sqlite3.Connection, target: PgStore, blob_dir: Path, in_database: bool,
                      progress: Callable[[str], None]) -> BlobResult:
    names = [r[0] for r in src.execute("SELECT sha256 FROM blobs ORDER BY sha256")]
    files = BlobStore(blob_dir)
    missing, corrupt, copied = [], [], 0
    assert target._pool is not None
    for i, digest in enumerate(names):
        if i % 500 == 0:
            progress(f"blobs {i}/{len(names)}")
        path = files.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            missing.append(digest)
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            corrupt.append(digest)
            continue
        if in_database:
            await target._pool.execute("INSERT INTO blob_data(sha256, data) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                       digest, data)
            stored = await target._pool.fetchval("SELECT sha256(data) FROM blob_data WHERE sha256=$1", digest)
            if bytes(stored).hex() != digest:
                corrupt.append(digest)
                continue
            copied += 1
    return BlobResult(listed=len(names), copied=copied, missing=missing, corrupt=corrupt)
