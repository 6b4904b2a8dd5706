"""The SMTP listener against real clients (smtplib, swaks) on loopback, with a real SQLite store."""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import contextlib
import dataclasses
import email.policy
import smtplib
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels import email_intake
from channels.email_intake import EmailIntake, limits_from
from channels.email_parse import ParseLimits
from channels.smtp import SmtpService, from_trusted_relay
from config.channels import SmtpOptions
from ingest.store import Store
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

RCPT = "phananh@1022.hochiminhcity.gov.vn"
# How long a test waits for what should happen at once before it gives up (a deadline to stop waiting, not a
# measure of speed).
GIVE_UP_SECONDS = 30


def mail(body: str = "Ổ gà lớn trước nhà số 83/16/4 đường Nguyễn Văn Linh, quận 7.", *,
         subject: str = "Phản ánh ổ gà", message_id: str | None = "<m1@example.vn>",
         sender: str = "Nguyễn Văn A <nva@example.vn>", headers: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = RCPT
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as it travels


Factory = Callable[..., "contextlib.AbstractAsyncContextManager[SmtpService]"]


@pytest.fixture
def listener(store: Store) -> Factory:
    return listener_for(store)


def listener_for(store: AnyStore) -> Factory:
    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[SmtpService]:
        options = SmtpOptions(**{"port": 0, "recipients": [RCPT], "max_message_bytes": 200_000, **overrides})
        intake = EmailIntake(store, "mailbox-1", limits_from(options), trusted_authserv_ids=options.trusted_authserv_ids)
        service = SmtpService("mailbox-1", intake, options)
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(service.started.wait(), 5)
        try:
            yield service
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return start


def send(port: int, raw: bytes, *, sender: str = "nva@example.vn", rcpts: tuple[str, ...] = (RCPT,),
         db: Path | None = None) -> tuple[dict[str, Any], int | None]:
    """Send in a thread; when `db` is given, count its reports the instant the 250 has arrived."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        refused = client.sendmail(sender, list(rcpts), raw)
        rows = None
        if db is not None:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                rows = conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    return refused, rows


async def test_250_only_after_the_report_is_committed(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        _, rows_at_ack = await asyncio.to_thread(send, smtp.port, mail(), db=store.path)
    assert rows_at_ack == 1
    row = await store.fetchone("SELECT id, channel, channel_instance, idem_key, raw, status FROM reports")
    assert (row["channel"], row["channel_instance"], row["idem_key"]) == ("email", "mailbox-1", "<m1@example.vn>")
    assert row["raw"] == mail()  # the raw message is kept byte for byte
    assert row["status"] == "received"
    report = await store.get_report(row["id"])
    assert report is not None
    assert report.message.reporter.email == "nva@example.vn"
    assert report.message.reporter.name == "Nguyễn Văn A"
    assert report.message.reporter.reply_to == "<m1@example.vn>"
    assert report.message.text.startswith("Ổ gà lớn")
    assert await store.queue_depths() == {("classify", "ready"): 1}


async def test_storage_failure_answers_451_without_internals_then_retry_succeeds(listener: Factory,
                                                                                 store: Store) -> None:
    async with store.transaction() as tx:
        await tx.execute("CREATE TRIGGER broken BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    async with listener() as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(send, smtp.port, mail())
        assert err.value.smtp_code == 451
        assert b"4.3.0" in err.value.smtp_error
        assert b"fire" not in err.value.smtp_error and b"Error" not in err.value.smtp_error
        async with store.transaction() as tx:
            await tx.execute("DROP TRIGGER broken")
        await asyncio.to_thread(send, smtp.port, mail())  # the sending MTA's retry
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 1


async def test_closed_store_answers_451(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        await store.close()
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(send, smtp.port, mail())
    assert err.value.smtp_code == 451


async def test_unknown_recipient_is_refused_550(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            await asyncio.to_thread(send, smtp.port, mail(), rcpts=("someone@else.vn",))
        code, _ = err.value.recipients["someone@else.vn"]
        assert code == 550
        # A mix: the known address gets the mail, the unknown one is listed as refused.
        refused, _ = await asyncio.to_thread(send, smtp.port, mail(), rcpts=("other@else.vn", RCPT.upper()))
    assert list(refused) == ["other@else.vn"]
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 1


async def test_oversize_mail_is_refused_552_and_not_stored(listener: Factory, store: Store) -> None:
    async with listener(max_message_bytes=5_000) as smtp:
        with pytest.raises(smtplib.SMTPException) as err:
            await asyncio.to_thread(send, smtp.port, mail("x " * 10_000))
    code = getattr(err.value, "smtp_code", None)
    assert code == 552
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 0


async def test_overlong_line_is_refused(listener: Factory, store: Store) -> None:
    raw = b"From: a@example.vn\r\nSubject: long\r\n\r\n" + b"y" * 5000 + b"\r\n"
    async with listener(max_line_bytes=2000) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            await asyncio.to_thread(send, smtp.port, raw)
    assert err.value.smtp_code == 500
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 0


async def test_duplicate_message_id_creates_nothing(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        await asyncio.to_thread(send, smtp.port, mail("same id, resent by a retrying server"))
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 1
    assert await store.queue_depths() == {("classify", "ready"): 1}


async def test_without_message_id_the_raw_hash_deduplicates(listener: Factory, store: Store) -> None:
    raw = mail(message_id=None)
    async with listener() as smtp:
        await asyncio.to_thread(send, smtp.port, raw)
        await asyncio.to_thread(send, smtp.port, raw)
        await asyncio.to_thread(send, smtp.port, mail("khác", message_id=None))
    keys = [r["idem_key"] for r in await store.fetchall("SELECT idem_key FROM reports ORDER BY id")]
    assert len(keys) == 2 and all(k.startswith("sha256:") for k in keys)


async def test_hundred_messages_on_one_connection(listener: Factory, store: Store) -> None:
    def many(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for i in range(100):
                client.sendmail("nva@example.vn", [RCPT], mail(f"báo cáo {i}", message_id=f"<bulk{i}@example.vn>"))

    async with listener() as smtp:
        await asyncio.to_thread(many, smtp.port)
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 100


async def test_auto_replies_and_bounces_are_stored_but_never_routed(listener: Factory, store: Store) -> None:
    ooo = mail("Tôi đang nghỉ phép đến thứ Hai.", subject="Trả lời tự động: Phản ánh", message_id="<ooo@x.vn>",
               headers={"Auto-Submitted": "auto-replied"})
    bulk = mail("Bản tin tuần", message_id="<news@x.vn>", headers={"Precedence": "bulk"})
    bounce = mail("Delivery failed", message_id="<dsn@x.vn>", sender="MAILER-DAEMON@mx.example.vn")
    null_sender = mail("Undeliverable", message_id="<null@x.vn>")
    async with listener() as smtp:
        for raw in (ooo, bulk, bounce):
            await asyncio.to_thread(send, smtp.port, raw)
        await asyncio.to_thread(send, smtp.port, null_sender, sender="")
    rows = await store.fetchall("SELECT id, idem_key, status FROM reports ORDER BY id")
    assert [r["status"] for r in rows] == ["ignored"] * 4
    flags = {r["idem_key"]: (await store.get_report(r["id"])).message.flags for r in rows}  # type: ignore[union-attr]
    assert "auto_reply" in flags["<ooo@x.vn>"]
    assert "bulk" in flags["<news@x.vn>"]
    assert "bounce" in flags["<dsn@x.vn>"] and "bounce" in flags["<null@x.vn>"]
    assert await store.queue_depths() == {}


@pytest.fixture
async def any_store(store_factory: StoreFactory) -> AnyStore:
    return await store_factory.open()


async def test_reporter_reply_threads_onto_the_earlier_report(any_store: AnyStore) -> None:
    # On both backends: the reply's event is looked up by its JSON field, compared with an integer id.
    store = any_store
    async with listener_for(store)() as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        first = (await store.fetchone("SELECT id FROM reports"))["id"]
        # Their mail client answers our acknowledgement (whose Message-ID names the report).
        reply = mail("Đến nay vẫn chưa sửa.\n\nVào 10/3/2025, Cổng 1022 đã viết:\n> Cảm ơn bạn",
                     subject="Re: Phản ánh ổ gà", message_id="<m2@example.vn>",
                     headers={"In-Reply-To": f"<1022.r{first}.abcdef0123@1022.hochiminhcity.gov.vn>",
                              "References": f"<m1@example.vn> <1022.r{first}.abcdef0123@1022.hochiminhcity.gov.vn>"})
        await asyncio.to_thread(send, smtp.port, reply)
        await asyncio.to_thread(send, smtp.port, reply)  # redelivered: still one event
        # A case token in the subject works without any header.
        token_reply = mail("Bổ sung ảnh", subject=f"Phản ánh [1022-{first}]", message_id="<m3@example.vn>")
        await asyncio.to_thread(send, smtp.port, token_reply)
    rows = await store.fetchall("SELECT id, status FROM reports ORDER BY id")
    assert [r["status"] for r in rows] == ["received", "ignored", "ignored"]
    events = await store.fetchall("SELECT report_id, kind, data FROM events WHERE kind='reporter_reply' ORDER BY id")
    assert [e["report_id"] for e in events] == [first, first]
    assert "Đến nay vẫn chưa sửa." in events[0]["data"] and "Cảm ơn" not in events[0]["data"]
    # Dispatch decides whether each reply disputes the report's result (dispatch/replies.py): one job per reply.
    assert await store.queue_depths() == {("classify", "ready"): 1, ("reporter_follow_up", "ready"): 2}


async def test_a_guessed_reference_never_writes_into_someone_elses_report(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        first = (await store.fetchone("SELECT id FROM reports"))["id"]
        # A stranger guesses the report number: in the subject, and as one of our reply Message-IDs.
        for n, extra in enumerate(({"subject": f"Re: [1022-{first}]"},
                                   {"headers": {"In-Reply-To": f"<1022.r{first}.abcdef0123@1022.hochiminhcity.gov.vn>"}},
                                   {"subject": "Re: [1022 #CASE-000001]"})):
            await asyncio.to_thread(send, smtp.port, mail("Sự việc đã xong, gọi 0900000000", sender="x@evil.example",
                                                          message_id=f"<g{n}@evil.example>", **extra))
    assert await store.fetchall("SELECT 1 FROM events WHERE kind='reporter_reply'") == []
    # Each is an ordinary new report instead (classified like any other), not a note on report `first`; the one
    # naming a case waits for dispatch to find it names none of ours (then it is classified, see
    # test_agency_email_reply.py), never for a reporter's thread.
    rows = await store.fetchall("SELECT r.status, j.stage FROM reports r JOIN jobs j ON j.report_id=r.id"
                                " WHERE r.id<>? ORDER BY r.id", (first,))
    assert [(r["status"], r["stage"]) for r in rows] == [("received", "classify")] * 2 + [
        ("ignored", "agency_email_reply")]


async def test_a_reply_threaded_by_claims_alone_is_a_note_that_disputes_nothing(listener: Factory, store: Store) -> None:
    # The reporter's address and the report's number are all a forger needs for the subject path: before, their
    # "chưa xử lý" reopened the case like the reporter's own reply (a reporter_follow_up job like any other).
    async with listener() as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        first = (await store.fetchone("SELECT id FROM reports"))["id"]
        forged = mail("Vẫn chưa xử lý gì cả", subject=f"Re: [1022-{first}]", message_id="<f1@evil.example>")
        await asyncio.to_thread(send, smtp.port, forged)  # From: the reporter's own address, written by anyone
    # With our relay's pass for that From, the same reply is the reporter's.
    intake = EmailIntake(store, "mailbox-1", limits_from(SmtpOptions(port=0, recipients=[RCPT])),
                         trusted_authserv_ids=["mx.tphcm.gov.vn"])
    await intake.accept(mail("Vẫn chưa xử lý gì cả", subject=f"Re: [1022-{first}]", message_id="<f2@example.vn>",
                             headers={"Authentication-Results": "mx.tphcm.gov.vn; dmarc=pass header.from=example.vn"}))
    jobs = await store.fetchall("SELECT payload FROM jobs WHERE stage='reporter_follow_up' ORDER BY id")
    assert [json.loads(j["payload"])["proven"] for j in jobs] == [False, True]
    events = await store.fetchall("SELECT data FROM events WHERE kind='reporter_reply' ORDER BY id")
    assert [json.loads(e["data"])["proven"] for e in events] == [False, True]


async def test_a_reporters_reply_proven_by_our_relay_only_when_our_relay_handed_it_over(store: Store) -> None:
    """The subject's number and the reporter's From, with a pass under our relay's authserv-id: the reporter's own
    reply when it came from a trusted relay (loopback, the default), a note that disputes nothing when it came from
    anyone else who can reach the port (here the relay is configured at 192.0.2.25)."""
    relay = {"trusted_authserv_ids": ["mx.tphcm.gov.vn"]}
    passed = {"Authentication-Results": "mx.tphcm.gov.vn; dmarc=pass header.from=example.vn"}
    async with listener_for(store)(**relay) as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        first = (await store.fetchone("SELECT id FROM reports"))["id"]
        await asyncio.to_thread(send, smtp.port, mail("Vẫn chưa xử lý", subject=f"Re: [1022-{first}]",
                                                      message_id="<r1@example.vn>", headers=passed))
    async with listener_for(store)(trusted_relays=["192.0.2.25/32"], **relay) as smtp:
        await asyncio.to_thread(send, smtp.port, mail("Vẫn chưa xử lý", subject=f"Re: [1022-{first}]",
                                                      message_id="<r2@evil.example>", headers=passed))
    jobs = await store.fetchall("SELECT payload FROM jobs WHERE stage='reporter_follow_up' ORDER BY id")
    assert [json.loads(j["payload"])["proven"] for j in jobs] == [True, False]


def test_trusted_relays_are_addresses_or_networks_and_match_the_peer() -> None:
    options = SmtpOptions(recipients=[RCPT])
    assert [str(n) for n in options.trusted_relays] == ["127.0.0.1/32", "::1/128"]  # this host's relay only
    for peer, trusted in ((("127.0.0.1", 41000), True), (("::1", 41000, 0, 0), True),
                          (("::ffff:127.0.0.1", 41000, 0, 0), True),  # a listener on "::" sees IPv4 peers so
                          (("127.0.0.2", 41000), False), (("192.0.2.25", 25), False), (None, False), ("", False)):
        assert from_trusted_relay(peer, options.trusted_relays) is trusted, peer
    relays = SmtpOptions(recipients=[RCPT], trusted_relays=["10.1.2.3", "2001:db8::/64"]).trusted_relays
    assert from_trusted_relay(("10.1.2.3", 25), relays) and from_trusted_relay(("2001:db8::9", 25, 0, 0), relays)
    assert not from_trusted_relay(("127.0.0.1", 25), relays) and not from_trusted_relay(("10.1.2.4", 25), relays)
    assert SmtpOptions(recipients=[RCPT], trusted_relays=[]).trusted_relays == ()
    for bad in (["10.1.2.3/24"], ["mx.tphcm.gov.vn"], ["300.1.1.1"], "127.0.0.1"):
        with pytest.raises(ValueError, match="trusted_relays"):
            SmtpOptions(recipients=[RCPT], trusted_relays=bad)


async def test_unparseable_mail_is_quarantined_and_acknowledged(listener: Factory, store: Store) -> None:
    huge = b"From: a@example.vn\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"z" * 900) for i in range(80))
    raw = huge + b"Subject: big\r\n\r\nbody\r\n"
    async with listener() as smtp:
        code, _ = await asyncio.to_thread(_data_reply, smtp.port, raw)
        await asyncio.to_thread(_data_reply, smtp.port, raw)  # a retry does not add a second row
    assert code == 250
    rows = await store.fetchall("SELECT reason, raw, sha256, size, repeats FROM quarantine")
    assert [r["reason"] for r in rows] == ["header_too_large"]
    # Kept bounded: the head of the mail, and the whole mail's hash and size.
    assert rows[0]["raw"] == raw[:store.quarantine_limits.head_bytes] and len(raw) > len(rows[0]["raw"])
    assert (rows[0]["sha256"], rows[0]["size"], rows[0]["repeats"]) == (hashlib.sha256(raw).hexdigest(), len(raw), 2)
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 0


def _data_reply(port: int, raw: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("a@example.vn")
        client.rcpt(RCPT)
        return client.data(raw)


@pytest.mark.system("swaks")
async def test_swaks_delivers(listener: Factory, store: Store) -> None:
    async with listener() as smtp:
        proc = await asyncio.create_subprocess_exec(
            "swaks", "--server", "127.0.0.1", "--port", str(smtp.port), "--from", "dan@example.vn",
            "--to", RCPT, "--header", "Subject: Cây đổ", "--header", "Message-ID: <swaks1@example.vn>",
            "--body", "Cây đổ chắn ngang đường Lê Lợi, quận 1.", "--silent", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode(errors="replace")
        bad = await asyncio.create_subprocess_exec(
            "swaks", "--server", "127.0.0.1", "--port", str(smtp.port), "--to", "nobody@example.vn",
            "--silent", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(bad.communicate(), 60)
        assert bad.returncode != 0  # swaks exits non-zero when RCPT is refused
    report = await store.get_report((await store.fetchone("SELECT id FROM reports"))["id"])
    assert report is not None and report.message.subject == "Cây đổ"
    assert report.message.text == "Cây đổ chắn ngang đường Lê Lợi, quận 1."


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.system("openssl")
async def test_starttls_and_auth(listener: Factory, store: Store, tls_pair: tuple[Path, Path]) -> None:
    cert, key = tls_pair
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

    def attempt(port: int, password: str | None) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.starttls(context=client_ctx)
            if password is not None:
                client.login("relay", password)
            client.sendmail("nva@example.vn", [RCPT], mail())

    async with listener(tls_cert=cert, tls_key=key, require_starttls=True, auth_users={"relay": "s3cret"},
                        auth_required=True) as smtp:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await asyncio.to_thread(attempt, smtp.port, "wrong")
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            await asyncio.to_thread(attempt, smtp.port, None)
        assert err.value.smtp_code == 530
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 0
        await asyncio.to_thread(attempt, smtp.port, "s3cret")
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 1


async def test_reply_sender_delivers_marked_mail_that_our_listener_would_never_route(listener: Factory,
                                                                                   store: Store) -> None:
    """Our answer goes out over real SMTP; were it to loop back into an intake mailbox, it is flagged."""
    from channels.email_reply import EmailReplySender
    from config.channels import EmailReplyOptions

    async with listener() as smtp:
        await asyncio.to_thread(send, smtp.port, mail())
        report = await store.get_report((await store.fetchone("SELECT id FROM reports"))["id"])
        assert report is not None
        # The reporter's address is the listener's recipient here, standing in for their mailbox.
        report = dataclasses.replace(report, message=dataclasses.replace(
            report.message, reporter=dataclasses.replace(report.message.reporter, email=RCPT)))
        sender = EmailReplySender(store, EmailReplyOptions(host="127.0.0.1", port=smtp.port,
                                                           from_address="1022@1022.hochiminhcity.gov.vn"))
        try:
            await sender.send_reply(report, "Cảm ơn bạn, phản ánh đã được chuyển đến UBND quận 7.")
        finally:
            sender.close()
    rows = await store.fetchall("SELECT id, status FROM reports ORDER BY id")
    assert [r["status"] for r in rows] == ["received", "ignored"]
    echoed = await store.get_report(rows[1]["id"])
    assert echoed is not None and "auto_reply" in echoed.message.flags
    assert echoed.message.text == "Cảm ơn bạn, phản ánh đã được chuyển đến UBND quận 7."
    sent = await store.fetchall("SELECT data FROM events WHERE kind='email_reply_sent' AND report_id=?", (report.id,))
    assert len(sent) == 1


async def test_reply_sender_maps_a_dead_relay_to_transient(store: Store) -> None:
    from channels.email_reply import EmailReplySender
    from config.channels import EmailReplyOptions
    from ingest.errors import PermanentError, TransientError
    from ingest.records import InboundMessage, Reporter
    from ingest.store import StoredReport

    msg = InboundMessage(channel="email", channel_instance="m", idempotency_key="<a@b>",
                         received_at="2025-03-10T08:00:00+07:00", text="t", reporter=Reporter(email="a@b.vn"))
    sender = EmailReplySender(store, EmailReplyOptions(host="127.0.0.1", port=1, from_address="x@1022.test",
                                                       timeout_seconds=2))
    try:
        with pytest.raises(TransientError):
            await sender.send_reply(StoredReport(id=1, message=msg, status="received", classification=None,
                                                 incident_id=None), "hi")
        flagged = StoredReport(id=1, message=dataclasses.replace(msg, flags=("auto_reply",)), status="ignored",
                               classification=None, incident_id=None)
        with pytest.raises(PermanentError):
            await sender.send_reply(flagged, "never sent")
    finally:
        sender.close()


async def test_connections_past_the_cap_get_421_and_a_freed_slot_serves_again(listener: Factory,
                                                                              store: Store) -> None:
    async with listener(max_connections=2) as smtp:
        held = []
        for _ in range(2):  # two clients that connect and sit idle
            reader, writer = await asyncio.open_connection("127.0.0.1", smtp.port)
            assert (await reader.readline()).startswith(b"220")
            held.append(writer)
        with pytest.raises(smtplib.SMTPConnectError) as busy:
            await asyncio.to_thread(send, smtp.port, mail())
        assert busy.value.smtp_code == 421
        held[0].close()
        await held[0].wait_closed()
        for _ in range(50):  # the listener sees the close on its next loop turn
            if smtp.sessions[0] < 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.to_thread(send, smtp.port, mail())
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 1
        held[1].close()
        await held[1].wait_closed()


async def test_slow_mails_do_not_hold_the_threads_the_rest_of_intake_uses(store: Store,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A mail of short quoted lines parses slowly (about 0.3 s a megabyte). Before: eight at once took every thread
    # of the default executor, and a to_thread call of Open311 intake or a blob write waited seconds behind them.
    # Here the parses are held (each waits for the test before it runs, on whatever thread intake gave it) and the
    # default executor has one thread: while they wait, a to_thread call must still run. Were a parse on the
    # default executor, that call would never run; the deadline only ends the wait for it.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    release, parsing = threading.Event(), []
    real_parse = email_intake.parse_email

    def held_parse(*args: Any, **kwargs: Any) -> Any:
        parsing.append(threading.current_thread().name)
        release.wait()
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(email_intake, "parse_email", held_parse)
    # The parses wait for the test, so their own time limit must not end them first on a slow machine.
    intake = EmailIntake(store, "mailbox", ParseLimits(time_limit=3600))
    large = [b"From: a@example.org\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\nMessage-ID: <s%d@x>\r\n\r\n"
             % i + b"> x\r\n" * 20_000 for i in range(8)]  # past INLINE_PARSE_BYTES: parsed on a thread
    mails = [asyncio.create_task(intake.accept(raw)) for raw in large]
    try:
        for _ in range(GIVE_UP_SECONDS * 100):
            if parsing:
                break
            await asyncio.sleep(0.01)
        assert parsing, "no mail was parsed"
        try:
            await asyncio.wait_for(asyncio.to_thread(lambda: None), GIVE_UP_SECONDS)
        except TimeoutError:
            pytest.fail(f"the default executor ran nothing in {GIVE_UP_SECONDS} s while mails were parsed: {parsing}")
    finally:
        release.set()
    outcomes = await asyncio.gather(*mails)
    assert all(o.report_id is not None for o in outcomes), outcomes
