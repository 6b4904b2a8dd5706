"""An agency answers a case by replying to the dispatch email, through the real SMTP listener (smtplib on
loopback), wired as the daemon wires it: channels first, then dispatch registers the `agency_email_reply` hook.

The reply becomes the case's answer; the mail itself is kept, flagged and never classified as a new report; a
redelivered mail applies nothing twice; a reply from an address the agency did not declare is not applied.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.policy
import json
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import config.loader as config_loader
from channels.registry import build_channels
from channels.smtp import SmtpService
from config.directory import load_directory
from config.dispatch import dispatch_settings
from dispatch.delivery import build_email
from dispatch.service import build as build_dispatch
from ingest.app import AppContext
from ingest.records import Classification, InboundMessage, Place, Reporter, to_json
from ingest.store import Store
from run_daemon import collect_migrations, make_context

MAILBOX = "tra-loi-1022@tphcm.gov.vn"
AGENCY_ADDR = "dieuhanh@sawaco.com.vn"  # declared in reply_from
AGENCY_BOX = "hopthu@sawaco.com.vn"  # the email target; its address may answer too
CASE_ID = "CASE-000001"
SUBJECT = f"Re: [1022 #{CASE_ID}] Cấp nước - Quận 1"

CONFIG = f"""
[[channels]]
kind = "smtp"
name = "mail-smtp"
host = "127.0.0.1"
port = 0
recipients = ["phananh@1022.hochiminhcity.gov.vn", "{MAILBOX}"]

[dispatch.smtp]
reply_to = "{MAILBOX}"

[dispatch.agencies.sawaco]
reply_from = ["{AGENCY_ADDR}"]

[[dispatch.agencies.sawaco.targets]]
kind = "email"
name = "mailbox"
to = ["{AGENCY_BOX}"]
"""


@pytest.fixture
async def daemon_parts(tmp_path: Path) -> AsyncIterator[tuple[AppContext, SmtpService, Any]]:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "s.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n' + CONFIG,
                    encoding="utf-8")
    settings = config_loader.load(path)
    store = await Store.open(settings.store.path, settings.store.blob_dir, migrations=collect_migrations())
    ctx = make_context(settings, load_directory(settings.data.agencies), store)
    (smtp,) = build_channels(ctx)
    assert isinstance(smtp, SmtpService)
    dispatch_services = build_dispatch(ctx)
    task = asyncio.create_task(smtp.run())
    await asyncio.wait_for(smtp.started.wait(), 10)
    try:
        yield ctx, smtp, dispatch_services[0].worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def open_case(ctx: AppContext, dispatch_worker: Any) -> int:
    """A classified water report, dispatched by the real dispatch stage to SAWACO: case CASE-000001."""
    store = ctx.store
    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key="r1",
                         received_at="2026-09-07T09:00:00+07:00",
                         text="Ống nước bể trên đường Lê Lợi, Quận 1, nước tràn ra đường.",
                         reporter=Reporter(name="Nguyễn Văn An", phone="0901234567"))
    result = await store.submit(msg, msg.text.encode(), "text/plain")
    cls = Classification(status="route", topic="water_supply", category="infrastructure", agency="sawaco",
                         confidence=0.9, place=Place(district="quan-1", street="le loi"))
    async with store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='routed', topic='water_supply', category='infrastructure',"
                         " agency='sawaco', district='quan-1', classification=?, incident_id='INC-000001'"
                         " WHERE id=?", (to_json(cls), result.report_id))
        await tx.execute("DELETE FROM jobs WHERE report_id=?", (result.report_id,))
        await tx.enqueue("dispatch", result.report_id, {"incident_id": "INC-000001"})
    assert await dispatch_worker.run_once() == 1
    case = await store.fetchone("SELECT id, state FROM cases")
    assert (case["id"], case["state"]) == (CASE_ID, "forwarded")
    return result.report_id


async def dispatch_email(ctx: AppContext) -> EmailMessage:
    """The email the delivery sender would send SAWACO for the case (same builder, same outbox row)."""
    cfg = dispatch_settings(ctx.settings)
    row = await ctx.store.fetchone("SELECT msg_id, payload FROM deliveries WHERE case_id=?", (CASE_ID,))
    return build_email(cfg, cfg.agencies["sawaco"].targets[0], row["msg_id"], json.loads(row["payload"]), [])


def reply(sender: str, body: str, message_id: str, *, subject: str = SUBJECT, in_reply_to: str | None = None
          ) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def send(port: int, raw: bytes, sender: str) -> str:
    """Send over SMTP on loopback; returns the server's final reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        code, _ = client.rcpt(MAILBOX)
        assert code == 250
        code, text = client.data(raw)
        assert code == 250, text
        return text.decode()


async def mail_report(store: Store, message_id: str) -> Any:
    return await store.fetchone("SELECT id, status, record FROM reports WHERE channel='email' AND idem_key=?",
                                (message_id,))


async def test_agency_reply_by_email_answers_the_case_once(daemon_parts: tuple[AppContext, SmtpService, Any]
                                                           ) -> None:
    ctx, smtp, dispatch_worker = daemon_parts
    store = ctx.store
    report_id = await open_case(ctx, dispatch_worker)
    assert smtp.port

    async def answers() -> list[tuple[str, str, str]]:
        rows = await store.fetchall("SELECT agency, kind, source FROM answers WHERE case_id=? ORDER BY id", (CASE_ID,))
        return [(r["agency"], r["kind"], r["source"]) for r in rows]

    # 1. Someone who is not the agency replies on the thread: nothing is applied to the case.
    await asyncio.to_thread(send, smtp.port, reply(
        "Kẻ Mạo Danh <attacker@example.com>", "Phản ánh sai, không có sự việc.", "<x1@example.com>"),
        "attacker@example.com")
    assert await answers() == []
    assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (CASE_ID,)))["state"] == "forwarded"

    # 2. The agency acknowledges (its client kept In-Reply-To but rewrote the subject), and its mail server
    #    delivers the same mail twice: one answer.
    dispatch_mail = await dispatch_email(ctx)
    assert dispatch_mail["Reply-To"] == MAILBOX and dispatch_mail["Subject"].startswith(f"[1022 #{CASE_ID}]")
    ack = reply(f"Điều hành SAWACO <{AGENCY_ADDR}>", "Đã tiếp nhận, sẽ cử đội kiểm tra.", "<a1@sawaco.com.vn>",
                subject="TL: ống nước bể Lê Lợi", in_reply_to=dispatch_mail["Message-ID"])
    for _ in range(2):
        await asyncio.to_thread(send, smtp.port, ack, AGENCY_ADDR)
    assert await answers() == [("sawaco", "acknowledged", "email")]
    assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (CASE_ID,)))["state"] == "acknowledged"

    # 3. The result, from the agency's mailbox address, quoting the dispatch mail (whose own words are ignored).
    body = ("Đã khắc phục xong, đã thay đoạn ống bị vỡ.\n\nVào 09:05 ngày 07/09/2026, 1022 đã viết:\n"
            "> Phản ánh CASE-000001 ... Trả lời: KHÔNG THUỘC THẨM QUYỀN")
    resolved = reply(f"Hộp thư SAWACO <{AGENCY_BOX}>", body, "<a2@sawaco.com.vn>",
                     subject="Re: " + dispatch_mail["Subject"])
    for _ in range(2):
        await asyncio.to_thread(send, smtp.port, resolved, AGENCY_BOX)
    assert await answers() == [("sawaco", "acknowledged", "email"), ("sawaco", "resolved", "email")]
    case = await store.fetchone("SELECT state, closed_at, result FROM cases WHERE id=?", (CASE_ID,))
    assert case["state"] == "resolved" and case["closed_at"] is not None
    assert "thay đoạn ống" in case["result"]
    # The reporter is told once, however often the mail came.
    notify = await store.fetchall("SELECT payload FROM jobs WHERE stage='notify' AND report_id=?", (report_id,))
    assert [json.loads(r["payload"])["template"] for r in notify].count("result") == 1

    # 4. Every mail is kept (once per Message-ID) and flagged; none became a report to classify.
    for message_id, flag in (("<a1@sawaco.com.vn>", "agency_answer"), ("<a2@sawaco.com.vn>", "agency_answer"),
                             ("<x1@example.com>", None)):
        row = await mail_report(store, message_id)
        assert row is not None and row["status"] == "ignored", message_id
        if flag:
            assert flag in json.loads(row["record"])["flags"]
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports WHERE channel='email'"))["n"] == 3
    classify = await store.fetchone("SELECT COUNT(*) AS n FROM jobs j JOIN reports r ON r.id=j.report_id"
                                    " WHERE j.stage='classify' AND r.channel='email'")
    assert classify["n"] == 0
