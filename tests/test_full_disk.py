"""A full disk never ends the daemon (issue 17, item 5), on a small tmpfs the test mounts (root needed, as in CI).

The daemon runs as a real subprocess with its store and blobs on an 8 MiB tmpfs. Once the disk is filled:
a photo upload gets 503 and leaves no partial file, reports get 503 (never a 500, never a 201 for anything not
stored), mail gets `451 4.3.0`, /readyz says 503 and why, and the process stays up; restarted on the full disk it
starts degraded (/healthz 200, /readyz 503); when space returns it recovers by itself and takes reports again.
"""
from __future__ import annotations

import asyncio
import errno
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon import Daemon, query, toml_str, wait_for
from tests.net import free_port

FS_BYTES = 8 * 1024 * 1024
RCPT = "1022@intake.test"
REPORT = {"service_code": "drainage", "description": "Cống bị rác bít kín, nước ngập nửa bánh xe",
          "lat": "10.761701", "long": "106.668647"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> None:
    """Append to a filler file until the file system says ENOSPC."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 12, 1 << 9):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)


def config(tmp: Path, disk: Path, port: int, smtp_port: int) -> Path:
    path = tmp / "config.toml"
    path.write_text(f"""
[store]
path = {toml_str(disk / 'store.sqlite3')}
blob_dir = {toml_str(disk / 'blobs')}
min_free_bytes = 1048576

[http]
host = "127.0.0.1"
port = {port}

[queue]
lease_seconds = 5
reclaim_interval = 1
drain_seconds = 4

[classifier]
backend = "none"

[[channels]]
kind = "open311"
name = "app"

[[channels]]
kind = "smtp"
name = "mailbox"
port = {smtp_port}
recipients = ["{RCPT}"]
""", encoding="utf-8")
    return path


def send_mail(port: int, n: int) -> int:
    raw = (f"From: dan@example.vn\r\nTo: {RCPT}\r\nSubject: Ngập nước {n}\r\nMessage-ID: <full-{n}@example.vn>\r\n\r\n"
           f"Đường Nguyễn Trãi quận 5 ngập sâu, lần {n}.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("dan@example.vn")
        client.rcpt(RCPT)
        code, _ = client.data(raw)
        return code


@pytest.mark.timeout(240)
async def test_full_disk_degrades_and_recovers_without_ending_the_process(tmp_path: Path, small_disk: Path) -> None:
    port, smtp_port = free_port(), free_port()
    daemon = Daemon(config(tmp_path, small_disk, port, smtp_port), port, tmp_path / "daemon.log")
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    daemon.start()
    try:
        async with aiohttp.ClientSession() as http:
            async def post(key: str, **kw: object) -> int:
                kw.setdefault("data", REPORT)
                async with http.post(base + "/open311/v2/requests.json", headers={"Idempotency-Key": key},
                                     **kw) as resp:
                    text = await resp.text()
                    assert resp.status in (200, 201, 503), (resp.status, text)
                    assert "Traceback" not in text
                    if resp.status == 503:
                        assert resp.headers["Retry-After"]
                    else:
                        acked.append(key)
                    return resp.status

            async def readyz() -> tuple[int, dict]:
                async with http.get(base + "/readyz") as resp:
                    return resp.status, await resp.json()

            await daemon.wait_ready(60)
            assert await post("before") == 201

            fill(small_disk)
            photo = aiohttp.FormData(REPORT)
            jpeg = b"\xff\xd8\xff" + os.urandom(256 * 1024)  # a JPEG by its bytes: intake sniffs media
            photo.add_field("media", jpeg, filename="o-ga.jpg", content_type="image/jpeg")
            assert await post("photo", data=photo) == 503
            leftovers = [p.name for p in (small_disk / "blobs").rglob("*") if p.is_file()]
            assert leftovers == [], leftovers  # no partial blob left behind

            statuses = [await post(f"full-{i}") for i in range(60)]
            assert 503 in statuses, statuses  # the WAL could not grow any more
            mail_codes = [await asyncio.to_thread(send_mail, smtp_port, i) for i in range(3)]
            assert 451 in mail_codes and all(c in (250, 451) for c in mail_codes), mail_codes

            status, body = await readyz()
            assert status == 503 and any("disk nearly full" in r or "writes failing" in r for r in body["reasons"])
            await asyncio.sleep(3)  # workers and the reclaimer keep failing to write meanwhile
            assert daemon.alive(), daemon.log()[-3000:]

            # Restarted on the full disk: up, degraded, not in a restart loop.
            assert daemon.stop() == 0
            fill(small_disk)  # the clean stop removed the WAL and freed its space
            daemon.start()

            async def answering() -> bool:
                assert daemon.alive(), daemon.log()[-3000:]
                try:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(answering, 60, "no /healthz on the full disk; log:\n{log}", log=daemon.log)
            status, body = await readyz()
            assert status == 503 and body["reasons"], body
            assert await post("while-degraded") == 503
            await asyncio.sleep(2)
            assert daemon.alive(), daemon.log()[-3000:]

            # Space comes back: it recovers by itself.
            (small_disk / "filler").unlink()

            async def ready() -> bool:
                return (await readyz())[0] == 200
            await wait_for(ready, 60, "not ready again after space returned; log:\n{log}", log=daemon.log)
            assert await post("after") == 201
            assert await asyncio.to_thread(send_mail, smtp_port, 99) == 250
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log()[-3000:]
    stored = {r["idem_key"] for r in query(small_disk / "store.sqlite3", "SELECT idem_key FROM reports")}
    assert set(acked) <= stored, set(acked) - stored  # nothing acknowledged is lost
    assert "Traceback" not in daemon.log()
