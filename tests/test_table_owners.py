"""Stages meet through records and the queue, and views read a stage's tables through its own query functions:
a table is named in SQL only by the package whose migrations create it (README, "Layout: who may import what").

The base's tables (ingest/migrations.py: reports, events, jobs, ...) are everyone's to read. Read from the source
of every module: a string constant that selects from, joins, inserts into or updates another package's table
fails here.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("channels", "classifier", "config", "console", "dedupe", "dispatch", "ingest", "ops", "portal")
SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)

# (file, table) reads that cross a stage's boundary: none left; a new one is replaced by a record or a query function
# of the owner, not listed here.
KNOWN_CROSSINGS: set[tuple[str, str]] = set()


def owners() -> dict[str, str]:
    """table -> the package whose schema creates it."""
    found = {}
    for path in REPO.glob("*/schema.py"):
        for table in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", path.read_text(encoding="utf-8"), re.I):
            found[table] = path.parent.name
    return found


def crossings(source: str, package: str, table_owners: dict[str, str]) -> set[str]:
    """The tables of other packages the module's SQL names (docstrings aside)."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {table for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            for table in SQL_TABLE.findall(node.value)
            if table_owners.get(table, package) != package}


def test_a_package_names_only_its_own_tables_and_the_base_ones() -> None:
    table_owners = owners()
    found = {(path.relative_to(REPO).as_posix(), table)
             for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
             for table in crossings(path.read_text(encoding="utf-8"), package, table_owners)}
    assert found - KNOWN_CROSSINGS == set(), "read through the owning stage's query functions (e.g. dispatch/queries.py)"
    assert KNOWN_CROSSINGS <= found, "a crossing is gone: remove it from KNOWN_CROSSINGS"


def test_the_check_sees_a_crossing() -> None:
    table_owners = owners()
    assert table_owners["cases"] == "dispatch" and table_owners["incidents"] == "dedupe"
    source = '"""Reads FROM cases in prose."""\nQ = f"SELECT id FROM reports r JOIN cases c ON c.x = r.y {1}"\n'
    assert crossings(source, "console", table_owners) == {"cases"}
    assert crossings(source, "dispatch", table_owners) == set()
