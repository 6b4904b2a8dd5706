"""An agency answers a case by replying to the dispatch email, through the real SMTP listener (smtplib on
loopback), wired as the daemon wires it: the channel stores the mail and queues an `agency_email_reply` job in the
same transaction; dispatch's worker applies it (`Stages.replies` runs that worker, as the daemon does).

The reply becomes the case's answer; the mail itself is kept, flagged and never classified as a new report; a
redelivered mail applies nothing twice. Then the attacker's side: a forged From or Reply-To, a guessed case
reference, another agency's (or the operator unit's) address, a missing, failed or forged
Authentication-Results, a token replayed on another case: each becomes a note for operators, never a change.
"""
from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels.registry import build_channels
from channels.smtp import SmtpService
from config.dispatch import dispatch_settings
from dispatch.delivery import build_email
from dispatch.service import build as build_dispatch
from ingest.app import AppContext
from ingest.records import Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from tests import seed
from tests.inprocess import open_context

MAILBOX = "tra-loi-1022@tphcm.gov.vn"
AGENCY_ADDR = "dieuhanh@sawaco.com.vn"  # declared in reply_from
AGENCY_BOX = "hopthu@sawaco.com.vn"  # the email target; its address may answer too
OTHER_AGENCY = "phongkt@thoatnuoc.hcm.gov.vn"  # thoat-nuoc: a real agency, but not the case's
OPERATOR_BOX = "vanhanh@1022.hochiminhcity.gov.vn"  # the operator unit: no master key over others' cases
CASE_ID = "CASE-000001"
RELAY = "mx.tphcm.gov.vn"  # our inbound relay: its Authentication-Results are trusted
SUBJECT = f"Re: [1022 #{CASE_ID}] Cấp nước - Quận 1"

CONFIG = f"""
[[channels]]
kind = "smtp"
name = "mail-smtp"
host = "127.0.0.1"
port = 0
recipients = ["phananh@1022.hochiminhcity.gov.vn", "{MAILBOX}"]
trusted_authserv_ids = ["{RELAY}"]

[dispatch.smtp]
reply_to = "{MAILBOX}"

[dispatch.agencies.sawaco]
reply_from = ["{AGENCY_ADDR}"]

[[dispatch.agencies.sawaco.targets]]
kind = "email"
name = "mailbox"
to = ["{AGENCY_BOX}"]

[[dispatch.agencies.thoat-nuoc.targets]]
kind = "email"
to = ["{OTHER_AGENCY}"]

[[dispatch.agencies.van-hanh-1022.targets]]
kind = "email"
to = ["{OPERATOR_BOX}"]
"""


class Stages:
    """The dispatch workers these tests drive: the `dispatch` stage, and the job applying agencies' replies."""

    def __init__(self, services: list[Any]) -> None:
        named = {s.name: s for s in services}
        self.dispatch = named["dispatch"].worker
        self.agency_replies = named["dispatch-agency-replies"].worker

    async def run_once(self) -> int:
        return int(await self.dispatch.run_once())

    async def replies(self) -> int:
        """Apply every queued agency reply (the daemon's worker does it as soon as the mail is committed)."""
        total = 0
        while n := await self.agency_replies.run_once():
            total += n
        return total


@contextlib.asynccontextmanager
async def running(tmp_path: Path, config: str) -> AsyncIterator[tuple[AppContext, list[SmtpService], Stages]]:
    """The daemon's SMTP listeners (every smtp channel of `config`, listening) and its dispatch stages."""
    ctx = await open_context(tmp_path, config)
    listeners = build_channels(ctx)
    assert listeners and all(isinstance(s, SmtpService) for s in listeners)
    dispatch_services = build_dispatch(ctx)
    tasks = [asyncio.create_task(s.run()) for s in listeners]
    try:
        for s in listeners:
            await asyncio.wait_for(s.started.wait(), 10)
        yield ctx, listeners, Stages(dispatch_services)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await ctx.store.close()


@pytest.fixture
async def daemon_parts(tmp_path: Path) -> AsyncIterator[tuple[AppContext, SmtpService, Stages]]:
    async with running(tmp_path, CONFIG) as (ctx, (smtp,), stages):
        yield ctx, smtp, stages


async def open_case(ctx: AppContext, dispatch_worker: Any, n: int = 1) -> int:
    """A classified water report, dispatched by the real dispatch stage to SAWACO: case CASE-00000n."""
    store = ctx.store
    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key=f"r{n}",
                         received_at="2026-09-07T09:00:00+07:00",
                         text=f"Ống nước bể trên đường Lê Lợi số {n}, Quận 1, nước tràn ra đường.",
                         reporter=Reporter(name="Nguyễn Văn An", phone="0901234567"))
    result = await store.submit(msg, msg.text.encode(), "text/plain")
    cls = Classification(status="routed", topic="water_supply", category="infrastructure", agency="sawaco",
                         confidence=0.9, place=Place(district="quan-1", street="le loi"))
    assert await seed.route(store, result.report_id, cls) == f"INC-00000{n}"  # the stages' own writes
    assert await dispatch_worker.run_once() == 1
    case = await store.fetchone("SELECT id, state FROM cases WHERE report_id=?", (result.report_id,))
    assert (case["id"], case["state"]) == (f"CASE-00000{n}", "forwarded")
    return result.report_id


async def dispatch_email(ctx: AppContext, case_id: str = CASE_ID) -> EmailMessage:
    """The email the delivery sender would send SAWACO for the case (same builder, same outbox row)."""
    cfg = dispatch_settings(ctx.settings)
    row = await ctx.store.fetchone("SELECT msg_id, payload FROM deliveries WHERE case_id=?", (case_id,))
    return build_email(cfg, cfg.agencies["sawaco"].targets[0], row["msg_id"], json.loads(row["payload"]), [])


def passed(domain: str, relay: str = RELAY) -> str:
    """The Authentication-Results our relay writes for a mail that passed SPF, DKIM and DMARC for `domain`."""
    return (f"{relay}; spf=pass smtp.mailfrom={domain}; dkim=pass header.d={domain} header.s=s1;"
            f" dmarc=pass (p=reject) header.from={domain}")


def reply(sender: str, body: str, message_id: str, *, subject: str = SUBJECT, in_reply_to: str | None = None,
          auth: list[str] | None = None, reply_to: str | None = None, photo: bytes | None = None) -> bytes:
    msg = EmailMessage()
    if auth is None:  # by default, what our relay says about the From domain: passed
        auth = [passed(sender.rpartition("@")[2].strip(">"))]
    for value in auth:
        msg["Authentication-Results"] = value
    msg["From"] = sender
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["To"] = MAILBOX
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg.set_content(body)
    if photo is not None:
        msg.add_attachment(photo, maintype="image", subtype="jpeg", filename="hien-truong.jpg")
    return msg.as_bytes(policy=email.policy.SMTP)


def send(port: int, raw: bytes, sender: str, rcpt: str = MAILBOX) -> str:
    """Send over SMTP on loopback; returns the server's final reply to DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        code, _ = client.rcpt(rcpt)
        assert code == 250
        code, text = client.data(raw)
        assert code == 250, text
        return text.decode()


async def mail_report(store: Store, message_id: str) -> Any:
    return await store.fetchone("SELECT id, status, record FROM reports WHERE channel='email' AND idem_key=?",
                                (message_id,))


async def checked(store: Store, report_id: int) -> list[str]:
    """Dispatch's verdicts on a stored mail (applied, duplicate, unverified, rejected, unmatched)."""
    rows = await store.fetchall("SELECT data FROM events WHERE report_id=? AND kind='agency_reply_checked'"
                                " ORDER BY id", (report_id,))
    return [json.loads(r["data"])["status"] for r in rows]


async def test_agency_reply_by_email_answers_the_case_once(daemon_parts: tuple[AppContext, SmtpService, Stages]
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
    assert await dispatch_worker.replies() == 1
    assert await answers() == []
    assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (CASE_ID,)))["state"] == "forwarded"

    # 2. The agency acknowledges (its client kept In-Reply-To but rewrote the subject), and its mail server
    #    delivers the same mail twice: one answer.
    dispatch_mail = await dispatch_email(ctx)
    assert dispatch_mail["Subject"].startswith(f"[1022 #{CASE_ID}]")
    ack = reply(f"Điều hành SAWACO <{AGENCY_ADDR}>", "Đã tiếp nhận, sẽ cử đội kiểm tra.", "<a1@sawaco.com.vn>",
                subject="TL: ống nước bể Lê Lợi", in_reply_to=dispatch_mail["Message-ID"])
    for _ in range(2):
        await asyncio.to_thread(send, smtp.port, ack, AGENCY_ADDR)
    assert await dispatch_worker.replies() == 1  # the second delivery is the same mail: no second job
    assert await answers() == [("sawaco", "acknowledged", "email")]
    assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (CASE_ID,)))["state"] == "acknowledged"

    # 3. The result, from the agency's mailbox address, quoting the dispatch mail (whose own words are ignored).
    #    Its client dropped In-Reply-To: the reply address (Reply-To box+token) is the proof.
    reply_address = dispatch_mail["Reply-To"]
    assert reply_address.startswith(MAILBOX.split("@")[0] + "+msg_")
    body = ("Đã khắc phục xong, đã thay đoạn ống bị vỡ.\n\nVào 09:05 ngày 07/09/2026, 1022 đã viết:\n"
            "> Phản ánh CASE-000001 ... Trả lời: KHÔNG THUỘC THẨM QUYỀN")
    # A resolved infrastructure case carries a photo of the site (Art. 7.1).
    resolved = reply(f"Hộp thư SAWACO <{AGENCY_BOX}>", body, "<a2@sawaco.com.vn>",
                     subject="Re: " + dispatch_mail["Subject"], photo=b"\xff\xd8\xff\xe0 site photo")
    for _ in range(2):
        await asyncio.to_thread(send, smtp.port, resolved, AGENCY_BOX, reply_address)
    assert await dispatch_worker.replies() == 1
    assert await answers() == [("sawaco", "acknowledged", "email"), ("sawaco", "resolved", "email")]
    case = await store.fetchone("SELECT state, closed_at, result FROM cases WHERE id=?", (CASE_ID,))
    assert case["state"] == "resolved" and case["closed_at"] is not None
    assert "thay đoạn ống" in case["result"]
    # The reporter is told once, however often the mail came.
    notify = await store.fetchall("SELECT payload FROM jobs WHERE stage='notify' AND report_id=?", (report_id,))
    assert [json.loads(r["payload"])["template"] for r in notify].count("result") == 1

    # 4. Every mail is kept (once per Message-ID) and flagged; none became a report to classify. Dispatch's
    #    verdict on each is on the mail's own timeline.
    for message_id, verdict in (("<a1@sawaco.com.vn>", "applied"), ("<a2@sawaco.com.vn>", "applied"),
                                ("<x1@example.com>", "unverified")):
        row = await mail_report(store, message_id)
        assert row is not None and row["status"] == "ignored", message_id
        assert "agency_answer" in json.loads(row["record"])["flags"]
        assert await checked(store, row["id"]) == [verdict], message_id
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports WHERE channel='email'"))["n"] == 3
    classify = await store.fetchone("SELECT COUNT(*) AS n FROM jobs j JOIN reports r ON r.id=j.report_id"
                                    " WHERE j.stage='classify' AND r.channel='email'")
    assert classify["n"] == 0


async def test_a_mail_naming_no_dispatch_of_ours_is_an_ordinary_report(
        daemon_parts: tuple[AppContext, SmtpService, Stages]) -> None:
    """A citizen's mail that merely looks like an answer (a case reference that does not exist, a made-up reply
    token) is held for dispatch, found to name none of our dispatches, and classified like any other report."""
    ctx, smtp, stages = daemon_parts
    store = ctx.store
    await open_case(ctx, stages)
    for n, (subject, rcpt) in enumerate(((f"Re: [1022 #CASE-999999] ống nước", MAILBOX),
                                         ("Ống nước", MAILBOX.replace("@", "+msg_00000000000000000000abcd@")))):
        raw = reply("Nguyễn Thị Bình <binh@example.vn>", "Ống nước bể trước nhà 5 Lê Lợi, Quận 1.",
                    f"<citizen{n}@example.vn>", subject=subject)
        await asyncio.to_thread(send, smtp.port, raw, "binh@example.vn", rcpt)
    assert await stages.replies() == 2
    for n in range(2):
        row = await mail_report(store, f"<citizen{n}@example.vn>")
        assert row["status"] == "received" and await checked(store, row["id"]) == ["unmatched"]
        job = await store.fetchone("SELECT state FROM jobs WHERE stage='classify' AND report_id=?", (row["id"],))
        assert job is not None and job["state"] == "ready"
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM answers"))["n"] == 0


# -- the attacker's side ---------------------------------------------------------------------------------

SPOOFED_BODY = "Đã xử lý xong. Hoàn tiền: gọi 0900000000 hoặc truy cập http://evil.example/refund"


def attacks(token_ref: str, reply_box: str) -> list[tuple[str, bytes, str, str, str]]:
    """(name, raw mail, envelope sender, RCPT TO, the reason the note must give). `token_ref` is the real
    dispatch Message-ID and `reply_box` the real reply address: some variants assume they leaked, to show
    that the token alone is not enough either."""
    agency = f"Điều hành SAWACO <{AGENCY_ADDR}>"
    evil_pass = f"mx.evil.example; spf=pass smtp.mailfrom=sawaco.com.vn; dkim=pass header.d=sawaco.com.vn;" \
                f" dmarc=pass header.from=sawaco.com.vn"
    return [
        # The report's attack: forged From, the guessable subject reference, no token.
        ("from_spoof_guessed_ref", reply(agency, SPOOFED_BODY, "<e1@evil.example>", subject=SUBJECT,
                                         auth=[f"{RELAY}; spf=fail smtp.mailfrom=evil.example; dmarc=fail"
                                               f" header.from=sawaco.com.vn"]),
         "bounce@evil.example", MAILBOX, "no_reply_token"),
        # The same with our relay's verdict missing entirely (mail that bypassed the relay).
        ("from_spoof_no_auth", reply(agency, SPOOFED_BODY, "<e2@evil.example>", auth=[]),
         "x@evil.example", MAILBOX, "no_reply_token"),
        # Reply-To is the agency's address, From is the attacker's: Reply-To never counts as the sender.
        ("reply_to_only", reply("Kẻ gian <kegian@evil.example>", SPOOFED_BODY, "<e3@evil.example>",
                                reply_to=AGENCY_ADDR, in_reply_to=token_ref),
         "kegian@evil.example", MAILBOX, "sender_not_agency_address"),
        # A guessed token in the reply address: not a dispatch of ours.
        ("guessed_token", reply(agency, SPOOFED_BODY, "<e4@evil.example>"),
         AGENCY_ADDR, MAILBOX.replace("@", "+msg_000000000000000000000001@"), "no_reply_token"),
        # Another agency's authenticated address with the real (leaked) token.
        ("other_agency_address", reply(f"Thoát nước <{OTHER_AGENCY}>", SPOOFED_BODY, "<e5@thoatnuoc.hcm.gov.vn>",
                                       in_reply_to=token_ref),
         OTHER_AGENCY, MAILBOX, "sender_not_agency_address"),
        # The operator unit's mailbox is no master key.
        ("operator_unit_address", reply(f"Vận hành <{OPERATOR_BOX}>", SPOOFED_BODY,
                                        "<e6@1022.hochiminhcity.gov.vn>", in_reply_to=token_ref),
         OPERATOR_BOX, MAILBOX, "sender_not_agency_address"),
        # The agency's From and the real token, but no verdict from our relay at all.
        ("missing_auth_results", reply(agency, SPOOFED_BODY, "<e7@evil.example>", auth=[]),
         AGENCY_ADDR, reply_box, "sender_not_authenticated"),
        # Our relay says it failed.
        ("failed_auth", reply(agency, SPOOFED_BODY, "<e8@evil.example>",
                              auth=[f"{RELAY}; spf=softfail smtp.mailfrom=sawaco.com.vn; dkim=none;"
                                    f" dmarc=fail header.from=sawaco.com.vn"]),
         AGENCY_ADDR, reply_box, "sender_authentication_failed"),
        # A pass written by someone else's authserv-id (the attacker's own server) is no evidence.
        ("forged_auth_untrusted_id", reply(agency, SPOOFED_BODY, "<e9@evil.example>", auth=[evil_pass],
                                           in_reply_to=token_ref),
         AGENCY_ADDR, MAILBOX, "sender_not_authenticated"),
        # Our relay's pass, but for the attacker's own domain (DKIM/SPF not aligned with From).
        ("unaligned_pass", reply(agency, SPOOFED_BODY, "<e10@evil.example>", in_reply_to=token_ref,
                                 auth=[f"{RELAY}; spf=pass smtp.mailfrom=evil.example; dkim=pass"
                                       f" header.d=evil.example"]),
         AGENCY_ADDR, MAILBOX, "sender_authentication_failed"),
    ]


async def notes(store: Store) -> dict[str | None, list[str]]:
    rows = await store.fetchall("SELECT data FROM events WHERE kind='agency_answer_unverified'")
    return {json.loads(r["data"])["message_id"]: json.loads(r["data"])["reasons"] for r in rows}


async def test_forged_agency_answers_become_notes_never_changes(daemon_parts: tuple[AppContext, SmtpService, Stages]
                                                                ) -> None:
    ctx, smtp, dispatch_worker = daemon_parts
    store = ctx.store
    await open_case(ctx, dispatch_worker)
    await open_case(ctx, dispatch_worker, 2)
    dispatch_mail = await dispatch_email(ctx)
    token_ref, reply_box = dispatch_mail["Message-ID"], dispatch_mail["Reply-To"]
    for name, raw, env_from, rcpt, reason in attacks(token_ref, reply_box):
        answer = await asyncio.to_thread(send, smtp.port, raw, env_from, rcpt)
        assert answer.startswith("2.0.0"), (name, answer)
        assert await dispatch_worker.replies() == 1, name
        states = {r["id"]: r["state"] for r in await store.fetchall("SELECT id, state FROM cases")}
        assert states == {CASE_ID: "forwarded", "CASE-000002": "forwarded"}, name
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM answers"))["n"] == 0, name
        message_id = email.message_from_bytes(raw)["Message-ID"]
        assert reason in (await notes(store)).get(message_id, []), (name, await notes(store))
        row = await mail_report(store, message_id)
        assert row["status"] == "ignored" and await checked(store, row["id"]) == ["unverified"], name
    # Nothing was sent to any reporter, and the notes are on the case's timeline in the console.
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE stage='notify'"
                                 " AND json_extract(payload, '$.template')='result'"))["n"] == 0
    from console.queries import case_timeline
    case = await store.fetchone("SELECT * FROM cases WHERE id=?", (CASE_ID,))
    shown = [t for t in await case_timeline(store, case) if t.what == "agency_answer_unverified"]
    assert len(shown) == len(attacks(token_ref, reply_box))

    # A token of CASE-000001 replayed on CASE-000002 (by the real, authenticated agency): a note on 000002.
    replay = reply(f"SAWACO <{AGENCY_ADDR}>", "Đã xử lý xong.", "<r2@sawaco.com.vn>",
                   subject="Re: [1022 #CASE-000002] Cấp nước", in_reply_to=token_ref)
    await asyncio.to_thread(send, smtp.port, replay, AGENCY_ADDR)
    await dispatch_worker.replies()
    assert (await notes(store))["<r2@sawaco.com.vn>"] == ["token_of_another_case"]
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM answers"))["n"] == 0

    # The control: the real agency, its real token, our relay's pass -> applied (so the checks above, not a
    # broken setup, stopped the forgeries). The swaks client this time.
    good = reply(f"SAWACO <{AGENCY_ADDR}>", "Đã tiếp nhận.", "<ok@sawaco.com.vn>", subject="TL: ống nước")
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{smtp.port}", "--from", AGENCY_ADDR, "--to", reply_box,
        "--data", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(good.replace(b"\r\n", b"\n")), 60)
    assert proc.returncode == 0, out.decode()
    assert await dispatch_worker.replies() == 1
    rows = await store.fetchall("SELECT case_id, agency, kind FROM answers")
    assert [(r["case_id"], r["agency"], r["kind"]) for r in rows] == [(CASE_ID, "sawaco", "acknowledged")]


# The same listener, twice: as the daemon runs by default (our relay on this host, loopback trusted), and with
# our relay on another host (192.0.2.25), so that this test's client, on loopback, is just someone who can connect.
OUTSIDE_CONFIG = CONFIG + f"""
[[channels]]
kind = "smtp"
name = "mail-relay-elsewhere"
host = "127.0.0.1"
port = 0
recipients = ["{MAILBOX}"]
trusted_authserv_ids = ["{RELAY}"]
trusted_relays = ["192.0.2.25/32", "2001:db8::25"]
"""


async def test_our_relays_verdict_from_a_peer_that_is_not_our_relay_is_no_verdict(tmp_path: Path) -> None:
    """The attacker holds everything but the relay: the real reply token (a leaked Reply-To), the agency's From,
    and a header under our relay's authserv-id saying pass. Connecting straight to the listener, that header is
    their own writing: the answer is a note, the case does not move. The same mail handed over by our relay
    (a trusted peer) is applied, so the peer alone made the difference."""
    async with running(tmp_path, OUTSIDE_CONFIG) as (ctx, (default, elsewhere), stages):
        store = ctx.store
        assert [s.name for s in (default, elsewhere)] == ["mail-smtp", "mail-relay-elsewhere"]
        await open_case(ctx, stages)
        reply_box = (await dispatch_email(ctx))["Reply-To"]
        forged = reply(f"SAWACO <{AGENCY_ADDR}>", SPOOFED_BODY, "<p1@evil.example>", subject="TL: ống nước",
                       photo=b"\xff\xd8\xff\xe0 any photo")  # a resolved infrastructure case needs one
        # our relay's id, and a pass aligned with From
        assert email.message_from_bytes(forged)["Authentication-Results"].startswith(f"{RELAY}; spf=pass")
        answer = await asyncio.to_thread(send, elsewhere.port, forged, AGENCY_ADDR, reply_box)
        assert answer.startswith("2.0.0")
        assert await stages.replies() == 1
        assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (CASE_ID,)))["state"] == "forwarded"
        assert (await store.fetchone("SELECT COUNT(*) AS n FROM answers"))["n"] == 0
        assert (await notes(store))["<p1@evil.example>"] == ["sender_not_authenticated"]
        row = await mail_report(store, "<p1@evil.example>")
        assert row["status"] == "ignored" and await checked(store, row["id"]) == ["unverified"]
        job = await store.fetchone("SELECT payload FROM jobs WHERE stage='agency_email_reply' AND report_id=?",
                                   (row["id"],))
        assert json.loads(job["payload"])["sender_auth"] == "none"

        # The control: the same mail, from a peer in the default trusted_relays (loopback), is the agency's answer.
        relayed = forged.replace(b"<p1@evil.example>", b"<p2@sawaco.com.vn>")
        await asyncio.to_thread(send, default.port, relayed, AGENCY_ADDR, reply_box)
        assert await stages.replies() == 1
        rows = await store.fetchall("SELECT case_id, agency, kind FROM answers")
        assert [(r["case_id"], r["agency"], r["kind"]) for r in rows] == [(CASE_ID, "sawaco", "resolved")]


@pytest.mark.system("dovecot")
async def test_the_same_rule_on_the_imap_path(daemon_parts: tuple[AppContext, SmtpService, Stages]) -> None:
    """The agency's mailbox server (Dovecot here) stamps its own verdict; the poller sees only headers, so the
    token comes from the address the mail was delivered to (To / Delivered-To), never from the subject."""
    import shutil

    from tests.channels.dovecot import Dovecot, make_root
    from tests.net import free_port

    from channels.email_intake import EmailIntake, limits_from
    from channels.imap import ImapService
    from config.channels import ImapOptions

    ctx, _, dispatch_worker = daemon_parts
    store = ctx.store
    await open_case(ctx, dispatch_worker)
    reply_box = (await dispatch_email(ctx))["Reply-To"]
    imap_relay = "imap.tphcm.gov.vn"
    forged = reply(f"SAWACO <{AGENCY_ADDR}>", SPOOFED_BODY, "<i1@evil.example>",
                   auth=[f"{imap_relay}; spf=fail smtp.mailfrom=sawaco.com.vn; dmarc=fail header.from=sawaco.com.vn"])
    real = reply(f"SAWACO <{AGENCY_ADDR}>", "Đã tiếp nhận.", "<i2@sawaco.com.vn>", subject="TL: ống nước",
                 auth=[passed("sawaco.com.vn", imap_relay)])
    real = real.replace(f"To: {MAILBOX}".encode(), f"To: {reply_box}".encode(), 1)
    server = Dovecot(root=make_root(), port=free_port())
    server.start()
    try:
        await asyncio.to_thread(server.deliver, forged, real)
        opts = ImapOptions(host="127.0.0.1", port=server.port, ssl=False, username=server.user,
                           password=server.password, idle=False, poll_seconds=0.2, timeout_seconds=10,
                           trusted_authserv_ids=[imap_relay])
        intake = EmailIntake(store, "mailbox-2", limits_from(opts), trusted_authserv_ids=opts.trusted_authserv_ids)
        service = ImapService("mailbox-2", store, intake, opts, ctx.clock)
        task = asyncio.create_task(service.run())
        try:
            for _ in range(400):
                if (await store.fetchone("SELECT COUNT(*) AS n FROM reports WHERE channel='email'"))["n"] == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 15)
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    assert await dispatch_worker.replies() == 2
    rows = await store.fetchall("SELECT agency, kind, source FROM answers")
    assert [(r["agency"], r["kind"], r["source"]) for r in rows] == [("sawaco", "acknowledged", "email")]
    assert (await notes(store))["<i1@evil.example>"] == ["no_reply_token", "sender_authentication_failed"]
