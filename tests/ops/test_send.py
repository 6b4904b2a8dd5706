"""The weekly report by email to a real SMTP server on loopback (aiosmtpd), once per week, retried on 4xx,
given up on 5xx; the SMS summary through the dispatch SMS gateway client to a loopback gateway; the ops service
sending on its own schedule."""
from __future__ import annotations

import asyncio
import csv
import email
import io
import re
from dataclasses import dataclass, field
from email import policy

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from config.dispatch import DispatchConfig
from dispatch.notify import SmsGateway
from ingest import worker
from ops.service import ReportSender, build

LEADER = "giamdoc@sogtvt.hochiminhcity.gov.vn"


@dataclass
class Sink:
    """Collects messages; `refuse` answers RCPT for an address, `fail_data` the next DATA commands."""

    envelopes: list[Envelope] = field(default_factory=list)
    fail_data: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    port: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fail_data:
            return self.fail_data.pop(0)
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
async def sink():
    handler = Sink()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(handler, hostname="sink.test"),
                                                            "127.0.0.1", 0)
    handler.port = server.sockets[0].getsockname()[1]
    yield handler
    server.close()
    await server.wait_closed()


def ops_config(sink: Sink, **extra) -> dict:
    return {"weekly_send": True, "smtp": {"host": "127.0.0.1", "port": sink.port, "from_addr": "baocao@1022.test",
                                          "timeout_seconds": 10},
            "agencies": {"so-gtvt": {"leadership_email": [LEADER]}}, **extra}


async def sends(store) -> list[dict]:
    return [dict(r) for r in await store.fetchall("SELECT * FROM ops_report_sends ORDER BY id")]


async def test_weekly_email_arrives_once_with_inline_charts_and_the_csv(filled, context_for, sink) -> None:
    sender = ReportSender(context_for(filled.store, filled.clock, ops=ops_config(sink)))
    assert await sender.send_due() == 1
    (envelope,) = sink.envelopes
    assert envelope.mail_from == "baocao@1022.test" and envelope.rcpt_tos == [LEADER]
    msg = email.message_from_bytes(envelope.original_content, policy=policy.default)
    assert msg["Subject"] == "Báo cáo tuần 21/09/2026 - 27/09/2026 - Sở Giao thông vận tải"
    assert msg["Message-ID"] == "<weekly-2026-09-21-so-gtvt@1022.tphcm.gov.vn>"

    html = msg.get_body(("html",)).get_content()
    cids = re.findall(r'src="cid:([^"]+)"', html)
    assert len(cids) == 2
    images = {part["Content-ID"].strip().strip("<>"): part.get_content() for part in msg.walk()
              if part.get_content_type() == "image/png"}
    assert set(cids) == set(images) and all(png.startswith(b"\x89PNG") for png in images.values())
    assert "tiep nhan 4" in msg.get_body(("plain",)).get_content()

    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "weekly-2026-09-21-so-gtvt.csv"
    (row,) = csv.DictReader(io.StringIO(attachment.get_payload(decode=True).decode("utf-8-sig")))
    assert (row["agency"], row["received"], row["handled"], row["answered"], row["on_time"], row["late"]) == \
        ("so-gtvt", "4", "3", "2", "2", "4")

    # Idempotent: the next check, or a restarted daemon, does not send the same week again.
    assert await ReportSender(context_for(filled.store, filled.clock, ops=ops_config(sink))).send_due() == 0
    assert len(sink.envelopes) == 1
    (row,) = await sends(filled.store)
    assert (row["state"], row["attempts"], row["channel"]) == ("sent", 1, "email")


async def test_nothing_is_sent_before_the_send_hour(filled, context_for, sink) -> None:
    sender = ReportSender(context_for(filled.store, filled.clock, ops=ops_config(sink, weekly_send_hour=9)))
    assert await sender.send_due() == 0 and sink.envelopes == []  # Monday 08:00
    filled.clock.advance(3600)
    assert await sender.send_due() == 1


async def test_a_4xx_is_retried_and_a_5xx_gives_up(filled, context_for, sink) -> None:
    cfg = ops_config(sink)
    cfg["agencies"]["cay-xanh"] = {"leadership_email": ["lanhdao@cayxanh.hochiminhcity.gov.vn"]}
    sink.refuse = {"lanhdao@cayxanh.hochiminhcity.gov.vn": "550 5.1.1 mailbox unknown"}
    sink.fail_data = ["451 4.3.0 try again later"]  # so-gtvt's first attempt
    sender = ReportSender(context_for(filled.store, filled.clock, ops=cfg))
    assert await sender.send_due() == 0
    rows = {r["agency"]: r for r in await sends(filled.store)}
    assert (rows["cay-xanh"]["state"], rows["so-gtvt"]["state"]) == ("failed", "pending")
    assert "PermanentError" in rows["cay-xanh"]["last_error"] and "451" in rows["so-gtvt"]["last_error"]
    assert await sender.send_due() == 1
    rows = {r["agency"]: r for r in await sends(filled.store)}
    assert (rows["so-gtvt"]["state"], rows["so-gtvt"]["attempts"]) == ("sent", 2)
    assert (rows["cay-xanh"]["state"], rows["cay-xanh"]["attempts"]) == ("failed", 1)
    assert [e.rcpt_tos for e in sink.envelopes] == [[LEADER]]


@pytest.fixture
async def sms_gateway_server():
    """A loopback HTTP SMS gateway recording what it is asked to send."""
    received: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer gw-token"
        received.append(await request.json())
        return web.json_response({"status": "queued"})

    app = web.Application()
    app.router.add_post("/send", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/send", received
    await runner.cleanup()


async def test_the_sms_summary_goes_through_the_dispatch_sms_gateway_once(filled, context_for, sink,
                                                                          sms_gateway_server) -> None:
    url, received = sms_gateway_server
    cfg = ops_config(sink)
    cfg["agencies"]["so-gtvt"]["leadership_phone"] = ["+84903000111"]
    ctx = context_for(filled.store, filled.clock, ops=cfg)
    sender = ReportSender(ctx)
    assert await sender.send_due() == 1  # no gateway published yet: the email only, the SMS waits
    gateway = SmsGateway(DispatchConfig.model_validate(
        {"sms": {"url": url, "token": "gw-token", "allow_private": True}}))
    ctx.published.sms_gateway = gateway
    try:
        assert await sender.send_due() == 1
        assert await sender.send_due() == 0
    finally:
        await gateway.close()
    (body,) = received
    assert body["to"] == "+84903000111" and body["id"] == "weekly-2026-09-21-so-gtvt.sms:+84903000111"
    assert body["text"].startswith("1022 TPHCM tuan 21/09-27/09, so-gtvt: tiep nhan 4") and len(body["text"]) <= 160


async def test_the_ops_service_sends_on_its_own_and_unhooks_on_stop(filled, context_for, sink) -> None:
    ctx = context_for(filled.store, filled.clock, ops=ops_config(sink))
    (service,) = build(ctx)
    observers = len(worker.JOB_OBSERVERS)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(30):
            while not sink.envelopes:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(sink.envelopes) == 1
    assert len(worker.JOB_OBSERVERS) == observers - 1


async def test_batch_route_mode_builds_nothing(filled, context_for, sink) -> None:
    ctx = context_for(filled.store, filled.clock, ops=ops_config(sink))
    ctx.route_mode = True
    observers = len(worker.JOB_OBSERVERS)
    assert build(ctx) == [] and len(worker.JOB_OBSERVERS) == observers
    assert not [r for r in ctx.http.router.routes() if r.resource and r.resource.canonical == "/metrics"]


async def test_an_intake_process_sends_no_report_its_workers_do(filled, context_for, sink) -> None:
    """On SQLite every lease is held in each process: the intake process of `serve` (or of `--role intake`) beside
    the workers one must leave the leadership reports to it, or leadership gets each report twice."""
    ctx = context_for(filled.store, filled.clock, ops=ops_config(sink))
    ctx.role = "intake"
    (service,) = build(ctx)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.sleep(2)  # the service checks at once, then every check_interval_seconds
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.envelopes == []
