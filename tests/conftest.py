"""Fixtures shared by every test package: a real SQLite store in tmp_path, a controllable clock, offline models."""
from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ingest.clock import FakeClock  # noqa: E402
from ingest.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The project's copy of the labelled dev reports: tests read only the repository.
DEV_REPORTS = REPO / "classifier" / "data" / "reports-seed.jsonl"


# -- programs from Debian packages (tests/debian-packages.txt) ------------------------------------------------
# `@pytest.mark.system("dovecot")`: the test runs that program. Missing, the test is skipped on a developer's
# machine and the run ends naming the one command that installs what was missing; under CI (CI set, as .ci/run
# runs) a missing program fails the test, so CI never passes by skipping.
DEBIAN_PACKAGES = {line.split()[0]: line.split()[1]
                   for line in (REPO / "tests" / "debian-packages.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
_missing_packages: set[str] = set()


def system_binary(name: str) -> str | None:
    """The program's path: on PATH, or in /usr/sbin (dovecot is there, and /usr/sbin is not on every PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system(binary, ...): the test runs these programs (tests/debian-packages.txt)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("system"):
        for binary in marker.args:
            if system_binary(binary) is not None:
                continue
            package = DEBIAN_PACKAGES[binary]
            if os.environ.get("CI"):
                pytest.fail(f"{binary} is missing under CI: `apt-get install -y {package}` (tests/system-deps.sh)")
            _missing_packages.add(package)
            pytest.skip(f"{binary} is not installed (Debian package {package})")


def pytest_unconfigure(config: pytest.Config) -> None:
    # After pytest's own closing line, so that the run ends with the command.
    if _missing_packages:
        sudo = "" if os.geteuid() == 0 else "sudo "
        print("tests were skipped for missing programs; install them with: "
              f"{sudo}apt-get install -y --no-install-recommends {' '.join(sorted(_missing_packages))}")


# -- the machine's PostgreSQL (tests/pg.py) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """This run's own database on 127.0.0.1:5432, dropped at the end. No server: skipped, or failed under CI."""
    from tests import pg

    admin = pg.admin_url()
    if admin is None:
        message = f"no PostgreSQL answers on {pg.HOST}:{pg.PORT} (trust auth, user postgres or root)"
        if os.environ.get("CI"):
            pytest.fail(f"{message} under CI: the machine runs PostgreSQL, so this is a fault")
        pytest.skip(message)
    name, url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, name)


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A URL onto an empty schema of its own for this test (the run's database is shared). Synchronous, so that
    a fixture choosing its backend at run time can ask for it (request.getfixturevalue)."""
    from tests import pg

    schema, url = pg.create_schema(pg_database)
    yield url
    pg.drop_schema(pg_database, schema)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs")
    yield s
    await s.close()


@pytest.fixture
async def clocked_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store.sqlite3", tmp_path / "blobs", clock=clock)
    yield s
    await s.close()
