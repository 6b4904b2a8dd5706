"""What differs between the store's two SQL dialects, written once: placeholders, and the DDL of migrations.

The stages write their SQL once, with SQLite's `?` placeholders; on PostgreSQL `placeholders` numbers them
(`$1`, `$2`, ...) for asyncpg. Migrations are written in SQLite's DDL; `postgresql_ddl` maps its storage classes
onto PostgreSQL's types (a rowid alias becomes an identity column, REAL a float8, BLOB a bytea). A migration
that needs more than that gives each dialect its own text (ingest/migrations.py `for_dialect`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def _scan(sql: str) -> list[tuple[str, str]]:
    """Split SQL into ("code", text) and ("quoted", text) pieces: string literals, quoted identifiers and
    comments are never rewritten."""
    pieces: list[tuple[str, str]] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        c = sql[i]
        end = -1
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # a doubled quote stays inside
                        j += 2
                        continue
                    break
                j += 1
            end = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            end = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            end = n if j < 0 else j + 2
        if end < 0:
            i += 1
            continue
        if start < i:
            pieces.append(("code", sql[start:i]))
        pieces.append(("quoted", sql[i:end]))
        i = start = end
    if start < n:
        pieces.append(("code", sql[start:]))
    return pieces


_BLOB_PREFIX = re.compile(r"(?<![\w$])[xX]$")
_HEX = re.compile(r"'([0-9a-fA-F]*)'")


def _pg_pieces(sql: str) -> list[tuple[str, str]]:
    """`_scan`'s pieces with SQLite's blob literals (x'CAFE', x'') as PostgreSQL's bytea literals: the literal's
    quote starts a quoted piece, so the `x` before it ends a code piece and no pattern over code alone sees both."""
    pieces = _scan(sql)
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        if kind == "quoted" and out and out[-1][0] == "code" and (hexed := _HEX.fullmatch(text)) \
                and _BLOB_PREFIX.search(out[-1][1]):
            out[-1] = ("code", out[-1][1][:-1])
            out.append(("quoted", f"'\\x{hexed.group(1)}'::bytea"))
            continue
        out.append((kind, text))
    return out


@lru_cache(maxsize=4096)
def placeholders(sql: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's numbered ones, outside literals and comments."""
    out, count = [], 0
    for kind, text in _scan(sql):
        if kind == "quoted" or "?" not in text:
            out.append(text)
            continue
        parts = text.split("?")
        rebuilt = [parts[0]]
        for part in parts[1:]:
            count += 1
            rebuilt.append(f"${count}{part}")
        out.append("".join(rebuilt))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Translated:
    """A statement in PostgreSQL's dialect. `replace_into` names (table, columns) of an `INSERT OR REPLACE`, which
    needs the table's key to become `ON CONFLICT (key) DO UPDATE` (the caller looks the key up)."""

    sql: str
    replace_into: tuple[str, tuple[str, ...]] | None = None


_SENTINEL = re.compile("\x01(\d+)\x01")
_FUNC = re.compile(r"\b(MAX|MIN|IFNULL|json_extract|json_group_array)\s*\(", re.I)
_OR_IGNORE = re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_OR_REPLACE = re.compile(r"\bINSERT\s+OR\s+REPLACE\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)


def _args(code: str, open_at: int) -> tuple[list[str], int]:
    """The top-level arguments of the call whose "(" is at `open_at`, and the index just past its ")"."""
    depth, start, args = 0, open_at + 1, []
    for i in range(open_at, len(code)):
        c = code[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(code[start:i])
                return args, i + 1
        elif c == "," and depth == 1:
            args.append(code[start:i])
            start = i + 1
    raise ValueError("unbalanced parentheses")


def _functions(code: str, saved: list[str]) -> str:
    """SQLite's scalar MAX/MIN of several values, IFNULL, json_extract and json_group_array in PostgreSQL's words."""
    out, pos = [], 0
    while m := _FUNC.search(code, pos):
        name = m.group(1).lower()
        args, end = _args(code, m.end() - 1)
        inner = [_functions(a, saved) for a in args]
        if name in ("max", "min") and len(inner) >= 2:
            call = f"{'GREATEST' if name == 'max' else 'LEAST'}({','.join(inner)})"
        elif name == "ifnull":
            call = f"COALESCE({','.join(inner)})"
        elif name == "json_extract" and len(inner) == 2 and _SENTINEL.fullmatch(inner[1].strip()):
            path = saved[int(_SENTINEL.fullmatch(inner[1].strip()).group(1))].strip("'")  # type: ignore[union-attr]
            if not path.startswith("$."):
                raise ValueError(f"json path {path!r} not supported")
            keys = ",".join(path[2:].split("."))
            call = f"(({inner[0]})::jsonb #>> '{{{keys}}}')"
        elif name == "json_group_array" and len(inner) == 1:
            call = f"COALESCE(json_agg({inner[0]}), '[]'::json)::text"
        else:
            call = f"{m.group(1)}({','.join(inner)})"
        out.append(code[pos:m.start()] + call)
        pos = end
    out.append(code[pos:])
    return "".join(out)


@lru_cache(maxsize=4096)
def to_postgresql(sql: str) -> Translated:
    """A statement the stages wrote for SQLite, as PostgreSQL runs it: `?` placeholders numbered; scalar
    MAX/MIN(a, b) as GREATEST/LEAST; IFNULL as COALESCE; `json_extract(x, '$.a.b')` as text extraction from
    jsonb; `json_group_array` as json_agg; `INSERT OR IGNORE` as `ON CONFLICT DO NOTHING`. Literals and comments
    are left as they are."""
    saved: list[str] = []
    masked = []
    for kind, text in _pg_pieces(sql):
        if kind == "quoted":
            saved.append(text)
            masked.append(f"\x01{len(saved) - 1}\x01")
        else:
            masked.append(text)
    code = "".join(masked)
    replace_into = None
    if m := _OR_REPLACE.search(code):
        replace_into = (m.group(1), tuple(c.strip() for c in m.group(2).split(",")))
        code = code[:m.start()] + f"INSERT INTO {m.group(1)}({m.group(2)})" + code[m.end():]
    ignore = bool(_OR_IGNORE.search(code))
    if ignore:
        code = _OR_IGNORE.sub("INSERT INTO", code)
        stripped = code.rstrip().rstrip(";")
        r = _RETURNING.search(stripped)
        code = (stripped[:r.start()] + "ON CONFLICT DO NOTHING " + stripped[r.start():] if r
                else stripped + " ON CONFLICT DO NOTHING")
    code = _functions(code, saved)
    parts = code.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    return Translated(_SENTINEL.sub(lambda s: saved[int(s.group(1))], numbered), replace_into)


# SQLite DDL -> PostgreSQL DDL, applied to code only (never inside literals or comments).
_DDL = [
    # A rowid alias: SQLite assigns the next id when none is given; an identity column does the same and still
    # takes an explicit value (report_id keys given by the writer, rows copied by migrate-store).
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),  # SQLite's integers are 64-bit
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
]


def postgresql_ddl(sql: str) -> str:
    out = []
    for kind, text in _pg_pieces(sql):
        if kind == "code":
            for pattern, replacement in _DDL:
                text = pattern.sub(replacement, text)
        out.append(text)
    return "".join(out)


def split_statements(script: str) -> list[str]:
    """The statements of a script: semicolons inside literals and comments do not split; empty ones dropped."""
    statements, current = [], []
    for kind, text in _scan(script):
        if kind == "quoted":
            current.append(text)
            continue
        parts = text.split(";")
        current.append(parts[0])
        for part in parts[1:]:
            statements.append("".join(current))
            current = [part]
    statements.append("".join(current))
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    return any(kind == "code" and text.strip() for kind, text in _scan(statement))
