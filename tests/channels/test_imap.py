"""The IMAP poller against a real Dovecot on loopback: fetch, cursor, move, IDLE, UIDVALIDITY, failures."""
from __future__ import annotations

import asyncio
import contextlib
import email.policy
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels.email_intake import EmailIntake, limits_from
from channels.imap import ImapService
from config.channels import ImapOptions
from ingest.store import Store
from tests.channels.dovecot import NO_MOVE_CAPS, Dovecot, make_root
from tests.net import free_port

pytestmark = pytest.mark.system("dovecot")


def mail(n: int, body: str | None = None, message_id: str | None = "auto") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Người dân {n} <dan{n}@example.vn>"
    msg["To"] = "phananh@1022.test"
    msg["Subject"] = f"Phản ánh số {n}"
    if message_id:
        msg["Message-ID"] = f"<imap{n}@example.vn>" if message_id == "auto" else message_id
    msg.set_content(body or f"Đèn đường hỏng số {n} trên đường Võ Văn Kiệt.")
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def dovecot_factory() -> Iterator[Callable[..., Dovecot]]:
    servers: list[Dovecot] = []

    def start(capabilities: str | None = None) -> Dovecot:
        server = Dovecot(root=make_root(), port=free_port(), capabilities=capabilities)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    return dovecot_factory()


def options(server: Dovecot, **overrides: Any) -> ImapOptions:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "ssl": False, "username": server.user,
                            "password": server.password, "idle": False, "poll_seconds": 0.2, "backoff_base": 0.05,
                            "backoff_cap": 0.3, "timeout_seconds": 10}
    return ImapOptions(**{**base, **overrides})


@contextlib.asynccontextmanager
async def running(store: Store, opts: ImapOptions, **kwargs: Any) -> AsyncIterator[ImapService]:
    service = ImapService("mailbox-2", store, EmailIntake(store, "mailbox-2", limits_from(opts)), opts, **kwargs)
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def report_count(store: Store) -> int:
    return int((await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"])


async def test_messages_fetched_cursor_stored_and_moved_unread(store: Store, dovecot: Dovecot) -> None:
    await asyncio.to_thread(dovecot.deliver, mail(1), mail(2), mail(3))
    async with running(store, options(dovecot)) as service:
        await until(lambda: _has(store, 3))
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    cursor = await store.get_cursor("imap:mailbox-2:INBOX")
    assert cursor["last_uid"] == 3 and isinstance(cursor["uidvalidity"], int)
    assert await asyncio.to_thread(dovecot.count, "Processed") == 3
    # BODY.PEEK: the poller never marked anything \Seen, so a human reading the mailbox sees them as new.
    assert all(b"\\Seen" not in f for f in await asyncio.to_thread(dovecot.flags, "Processed"))
    rows = await store.fetchall("SELECT raw, channel_instance, status FROM reports ORDER BY id")
    assert [r["raw"] for r in rows] == [mail(1), mail(2), mail(3)]
    assert {r["status"] for r in rows} == {"received"}
    assert await store.queue_depths() == {("classify", "ready"): 3}
    assert service.state in ("waiting", "connected")


async def _has(store: Store, n: int) -> bool:
    return await report_count(store) >= n


async def test_idle_wakes_on_new_mail(store: Store, dovecot: Dovecot) -> None:
    # A long poll interval: only IDLE can bring the mail in within the wait below.
    async with running(store, options(dovecot, idle=True, poll_seconds=600, idle_seconds=600)) as service:
        await until(lambda: _waiting(service))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(dovecot.deliver, mail(7))
        await until(lambda: _has(store, 1), timeout=10)


async def _waiting(service: ImapService) -> bool:
    return service.state == "waiting"


async def test_copy_delete_expunge_when_server_lacks_move(store: Store,
                                                        dovecot_factory: Callable[..., Dovecot]) -> None:
    server = dovecot_factory(capabilities=NO_MOVE_CAPS)
    await asyncio.to_thread(server.deliver, mail(1), mail(2))
    async with running(store, options(server)):
        await until(lambda: _has(store, 2))
        await until(lambda: asyncio.to_thread(lambda: server.count("INBOX") == 0))
    assert await asyncio.to_thread(server.count, "Processed") == 2


async def test_uidvalidity_change_rereads_without_duplicates(store: Store, dovecot: Dovecot) -> None:
    opts = options(dovecot, folder="Intake", processed_folder="Intake-done")
    await asyncio.to_thread(dovecot.deliver, mail(1), mail(2), folder="Intake")
    async with running(store, opts):
        await until(lambda: _has(store, 2))
    first = await store.get_cursor("imap:mailbox-2:Intake")

    def recreate() -> None:
        with dovecot.client() as c:
            c.delete_folder("Intake")
            c.create_folder("Intake")
            # The new mail gets UID 1: a poller trusting its old cursor (last UID 2) would skip it.
            c.append("Intake", mail(3))
            c.append("Intake", mail(1))
            c.append("Intake", mail(2))

    await asyncio.to_thread(recreate)
    async with running(store, opts):
        await until(lambda: _has(store, 3))
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("Intake") == 0))
    second = await store.get_cursor("imap:mailbox-2:Intake")
    assert second["uidvalidity"] != first["uidvalidity"] and second["last_uid"] == 3
    keys = [r["idem_key"] for r in await store.fetchall("SELECT idem_key FROM reports ORDER BY id")]
    assert keys == ["<imap1@example.vn>", "<imap2@example.vn>", "<imap3@example.vn>"]


async def test_failed_commit_loses_nothing_and_moves_nothing(store: Store, dovecot: Dovecot) -> None:
    async with store.transaction() as tx:
        await tx.execute("CREATE TRIGGER broken BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    await asyncio.to_thread(dovecot.deliver, mail(1), mail(2))
    async with running(store, options(dovecot)) as service:
        await until(lambda: _retrying(service))
        # Fetched, not committed: no cursor, and the mail is still waiting in the inbox.
        assert await store.get_cursor("imap:mailbox-2:INBOX") is None
        assert await asyncio.to_thread(dovecot.count, "INBOX") == 2
        async with store.transaction() as tx:
            await tx.execute("DROP TRIGGER broken")
        await until(lambda: _has(store, 2))
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    assert (await store.get_cursor("imap:mailbox-2:INBOX"))["last_uid"] == 2


async def _retrying(service: ImapService) -> bool:
    return service.state == "retrying"


async def test_crash_after_commit_before_move_finishes_the_move(store: Store, dovecot: Dovecot) -> None:
    """The cursor says UID 2 is stored; a restarted poller moves it away without storing it twice."""
    await asyncio.to_thread(dovecot.deliver, mail(1), mail(2))
    opts = options(dovecot)
    service = ImapService("mailbox-2", store, EmailIntake(store, "mailbox-2", limits_from(opts)), opts)
    moved: list[list[int]] = []
    real_move = service.mailbox.move
    service.mailbox.move = lambda uids: moved.append(uids)  # type: ignore[method-assign]  # the crash
    await service._call(service.mailbox.connect)
    try:
        await service.cycle()
    finally:
        await service._call(service.mailbox.close)
    assert await report_count(store) == 2 and await asyncio.to_thread(dovecot.count, "INBOX") == 2
    del real_move
    async with running(store, opts):
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    assert await report_count(store) == 2
    assert await asyncio.to_thread(dovecot.count, "Processed") == 2


async def test_reconnects_after_server_restart(store: Store, dovecot: Dovecot) -> None:
    async with running(store, options(dovecot)) as service:
        await until(lambda: _waiting(service))
        await asyncio.to_thread(dovecot.stop)
        await until(lambda: _retrying(service))
        await asyncio.to_thread(dovecot.start)
        await asyncio.to_thread(dovecot.deliver, mail(5))
        await until(lambda: _has(store, 1))


async def test_bad_password_stops_the_account_without_a_retry_loop(store: Store, dovecot: Dovecot,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="channels.imap")
    async with running(store, options(dovecot, password="sai")) as service:
        await until(lambda: _auth_failed(service))
        await asyncio.sleep(1.0)
        assert service.state == "auth_failed"
    failures = [r for r in caplog.records if "credentials rejected" in r.getMessage()]
    assert len(failures) == 1
    logins = dovecot.log().count("auth failed") + dovecot.log().count("Aborted login")
    assert 1 <= logins <= 2


async def _auth_failed(service: ImapService) -> bool:
    return service.state == "auth_failed"


async def test_oversize_and_unparseable_mail_is_quarantined_and_moved(store: Store, dovecot: Dovecot) -> None:
    big = mail(8, body="rác " * 60_000)
    garbage = b"From: x@example.vn\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n\r\nbody\r\n"
    await asyncio.to_thread(dovecot.deliver, big, garbage, mail(9))
    async with running(store, options(dovecot, max_message_bytes=150_000)):
        await until(lambda: _has(store, 1))
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    reasons = sorted(r["reason"] for r in await store.fetchall("SELECT reason FROM quarantine"))
    assert reasons == ["header_too_large", "oversize"]
    assert await report_count(store) == 1
    assert await asyncio.to_thread(dovecot.count, "Processed") == 3


class _Killed(Exception):
    """The process dying (kill -9) right after a commit: nothing after it runs."""


async def test_a_reporter_reply_commits_with_its_mail_and_cursor(store: Store, dovecot: Dovecot) -> None:
    # A reporter answers their own report by mail. Whatever the reply means for the report (its reporter_reply
    # event, dispatch's follow-up job) must commit with the mail and the cursor: after a crash right after that
    # commit the cursor says "stored", the mail is only moved away, and nothing else would write it.
    await asyncio.to_thread(dovecot.deliver, mail(1))
    opts = options(dovecot)
    async with running(store, opts):
        await until(lambda: _has(store, 1))
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    (first,) = [r["id"] for r in await store.fetchall("SELECT id FROM reports")]
    reply = EmailMessage()
    reply["From"] = "Người dân 1 <dan1@example.vn>"
    reply["To"] = "phananh@1022.test"
    reply["Subject"] = "Re: Phản ánh số 1"
    reply["Message-ID"] = "<imap1-reply@example.vn>"
    reply["In-Reply-To"] = reply["References"] = "<imap1@example.vn>"
    reply.set_content("Đèn vẫn chưa được sửa, vẫn tối om.")
    await asyncio.to_thread(dovecot.deliver, reply.as_bytes(policy=email.policy.SMTP))

    service = ImapService("mailbox-2", store, EmailIntake(store, "mailbox-2", limits_from(opts)), opts)
    real_submit = store.submit_batch

    async def submit_then_die(*args: Any, **kwargs: Any) -> Any:
        await real_submit(*args, **kwargs)
        raise _Killed

    store.submit_batch = submit_then_die  # type: ignore[method-assign]
    await service._call(service.mailbox.connect)
    try:
        with pytest.raises(_Killed):
            await service.cycle()
    finally:
        await service._call(service.mailbox.close)
        store.submit_batch = real_submit  # type: ignore[method-assign]
    async with running(store, opts):  # the restarted poller: the cursor says stored, it only moves the mail
        await until(lambda: asyncio.to_thread(lambda: dovecot.count("INBOX") == 0))
    assert await report_count(store) == 2
    events = await store.fetchall("SELECT kind FROM events WHERE report_id=? AND kind='reporter_reply'", (first,))
    assert len(events) == 1
    jobs = await store.fetchall("SELECT state FROM jobs WHERE stage='reporter_follow_up' AND report_id=?", (first,))
    assert [j["state"] for j in jobs] == ["ready"]
