"""`make run` on a store without logins, with a person at the terminal: the first administrator is asked for and
created there. A real pseudo-terminal (the child's controlling tty, so getpass turns echo off as it would for a
person), not a patched `isatty`."""
from __future__ import annotations

import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest

import run_daemon
from console.auth import login

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "mat-khau-cua-truc-ban-2026"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "store.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n'
                    '[logging]\nlevel = "WARNING"\n', encoding="utf-8")
    return path


def _first_run_at_a_terminal(config: Path) -> tuple[int, int]:
    """`make run`'s first-admin step in a child whose controlling terminal is a new pty: (its pid, our side)."""
    code = ("import asyncio, sys, run_daemon; s = run_daemon.load_settings(sys.argv[1]);"
            " asyncio.run(run_daemon.ensure_first_admin(s, sys.argv[1]))")
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-c", code, str(config)], {**os.environ, "PYTHONPATH": str(REPO)})
    return pid, fd


class Terminal:
    """The parent side of a pty: reads what the child prints until an expected prompt, types answers."""

    def __init__(self, fd: int) -> None:
        self.fd, self.seen = fd, b""

    def expect(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"never saw {text!r}; the terminal shows {self.seen.decode(errors='replace')!r}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def drain(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed its side
            return False
        self.seen += chunk
        return bool(chunk)


@pytest.mark.timeout(180)
async def test_the_first_administrator_is_asked_for_at_the_terminal(tmp_path: Path) -> None:
    config = _config(tmp_path)
    pid, fd = _first_run_at_a_terminal(config)
    term = Terminal(fd)
    try:
        term.expect(b"administrator name [admin]:")
        term.type("truc-ban")
        term.expect(b"password for truc-ban:")
        term.type(PASSWORD)
        term.expect(b"again:")
        term.type(PASSWORD)
        term.expect(b"administrator truc-ban created")
        term.drain(timeout=30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, term.seen
    assert PASSWORD.encode() not in term.seen  # typed with echo off, never shown
    store = await run_daemon.open_store(run_daemon.load_settings(str(config)))
    try:
        logged_in = await login(store, "truc-ban", PASSWORD)
        assert logged_in is not None and logged_in[1].role == "admin"
    finally:
        await store.close()


@pytest.mark.timeout(180)
async def test_differing_passwords_create_no_one_and_say_how_to_do_it_later(tmp_path: Path) -> None:
    config = _config(tmp_path)
    pid, fd = _first_run_at_a_terminal(config)
    term = Terminal(fd)
    try:
        term.expect(b"administrator name [admin]:")
        term.type("")
        term.expect(b"password for admin:")
        term.type(PASSWORD)
        term.expect(b"again:")
        term.type(PASSWORD + "x")
        term.expect(b"run_daemon.py user add admin --role admin")
        term.drain(timeout=30)
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    assert b"differ" in term.seen
    store = await run_daemon.open_store(run_daemon.load_settings(str(config)))
    try:
        row = await store.fetchone("SELECT COUNT(*) AS n FROM users")
        assert row is not None and row["n"] == 0
    finally:
        await store.close()
