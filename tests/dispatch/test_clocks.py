"""Every deadline of the regulation with its own clock (README "Deadlines"): for each, the event that starts it,
the one that stops it, its length and unit, judged on a fake clock through the real HTTP API and store; and the
escalation digests that tell the agencies' contacts and the operator unit (email on a real SMTP server on
loopback, SMS through the gateway fake), once per clock and level."""
from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP

from classifier.review.decisions import decide
from config.dispatch import DispatchConfig
from config.loader import validate
from dispatch import policy, service
from dispatch.clocks import EscalationSender, overdue, tick, write_digests
from dispatch.delivery import DeliverySender
from dispatch.notify import SmsGateway
from ingest.app import AppContext
from ingest.errors import PermanentError
from ingest.records import Reporter
from ingest.store import Store
from tests import seed
from tests.stores import stop_as_the_lease_commits_gives_back, stop_keeps_the_send_in_its_thread

from .conftest import SECRET_A, seed_report
from .test_flow import RecordingReplies, answer

HOUR, DAY, MINUTE = 3600.0, 86400.0, 60.0
TOKENS = {"agency.sawaco": "tok-sawaco", "agency.van-hanh-1022": "tok-op", "agency.vp-ubnd": "tok-office",
          "agency.so-gtvt": "tok-gtvt", "agency.ubnd-quan-1": "tok-q1"}
PHOTO = {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}


class Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        # When set, a message is taken (in `messages`) and its 250 held until the gate opens: a stop can land there.
        self.gate: asyncio.Event | None = None
        self.taken = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        for rcpt in envelope.rcpt_tos:
            msg["X-Rcpt"] = rcpt
        self.messages.append(msg)  # type: ignore[arg-type]
        if self.gate is not None:
            self.taken.set()
            await self.gate.wait()
        return "250 OK"


# The dispatch services each test's context built, by context (the context has no slot for them).
SERVICES: dict[int, list[Any]] = {}


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(sink, hostname="sink.test"), "127.0.0.1", 0)
    yield sink, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def world(dstore: Store, directory, receiver, sms_gateway, smtp) -> AsyncIterator[tuple[AppContext, str]]:
    sink, port = smtp
    hook = {"kind": "webhook", "name": "main", "url": receiver.url, "secrets": [SECRET_A], "allow_private": True,
            "timeout_seconds": 1.0}
    agencies = {a: {"targets": [dict(hook, name=a)]} for a in ("sawaco", "vp-ubnd", "so-gtvt", "ubnd-quan-1")}
    agencies["sawaco"]["escalation"] = {"email": ["lanhdao@sawaco.example.vn"], "sms": ["0909000111"]}
    agencies["van-hanh-1022"] = {"targets": [dict(hook, name="op")], "escalation": {"email": ["truc@1022.example.vn"]}}
    raw = {"http": {"public_base_url": "https://1022.example.vn"},
           "dispatch": {"agencies": agencies, "smtp": {"host": "127.0.0.1", "port": port},
                        "sms": {"url": sms_gateway.url, "token": "sms-token", "allow_private": True}},
           "secrets": dict(TOKENS)}
    app = web.Application()
    ctx = AppContext(settings=validate(raw, {}), directory=directory, store=dstore, clock=dstore.clock, http=app)
    ctx.replies.register("email", RecordingReplies())
    SERVICES[id(ctx)] = service.build(ctx)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield ctx, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()
    for svc in SERVICES[id(ctx)]:
        if isinstance(svc, DeliverySender):
            await svc.close()
        if hasattr(svc, "notifier"):
            await svc.notifier.sms.close()


def svc(ctx: AppContext, name: str) -> Any:
    return next(s for s in SERVICES[id(ctx)] if s.name == name)


async def pump(ctx: AppContext) -> None:
    for _ in range(10):
        n = await svc(ctx, "dispatch").worker.run_once() + await svc(ctx, "dispatch-notify").worker.run_once()
        n += await svc(ctx, "dispatch-delivery").run_once()
        if not n:
            return


async def clock_row(store: Store, kind: str, case_id: str | None = None) -> Any:
    sql = "SELECT * FROM deadlines WHERE kind=?" + (" AND case_id=?" if case_id else "") + " ORDER BY id DESC"
    return await store.fetchone(sql, (kind, case_id) if case_id else (kind,))


async def new_case(ctx: AppContext, incident: str, **kw: Any) -> str:
    await seed_report(ctx.store, incident_id=incident, **kw)  # dedupe queues the dispatch job
    await pump(ctx)
    return "CASE-" + incident.removeprefix("INC-")


def span(row: Any) -> float:
    return row["due_at"] - row["started_at"]


# -- Art. 6 -----------------------------------------------------------------------------------------
async def test_6_2_forward_and_acknowledge_five_minutes_from_receipt(world):
    ctx, _ = world
    case = await new_case(ctx, "INC-000001")
    fwd, ack = await clock_row(ctx.store, "forward", case), await clock_row(ctx.store, "acknowledge")
    assert span(fwd) == span(ack) == 5 * MINUTE and fwd["state"] == ack["state"] == "met"
    # A report whose acknowledgement goes out 10 minutes after receipt: judged late.
    rid = await seed_report(ctx.store, incident_id="INC-000002")
    ctx.clock.advance(10 * MINUTE)  # dedupe queued its dispatch job at once; dispatch runs it late
    await pump(ctx)
    late = await ctx.store.fetchone("SELECT state FROM deadlines WHERE kind='acknowledge' AND report_id=?", (rid,))
    assert late["state"] == "met_late"
    assert (await clock_row(ctx.store, "forward", "CASE-000002"))["state"] == "met_late"


async def test_6_3_operator_hour_runs_from_receipt_for_a_report_held_for_review(world):
    ctx, _ = world
    rid = await seed_report(ctx.store, incident_id="INC-000001", status="review")  # dedupe queued "received"
    ctx.clock.advance(2 * MINUTE)
    await pump(ctx)
    # Acknowledged within 5 minutes like any other report, and the operator unit's hour started at receipt.
    assert (await clock_row(ctx.store, "acknowledge"))["state"] == "met"
    guidance = await clock_row(ctx.store, "operator_guidance")
    assert guidance["case_id"] is None and guidance["started_at"] == ctx.clock.now() - 2 * MINUTE
    assert span(guidance) == HOUR
    ctx.clock.advance(HOUR)
    assert (await tick(ctx.store)).escalated == 1
    assert [(o.report_id, o.kind, o.level) for o in await overdue(ctx.store)] == [(rid, "operator_guidance", "breach")]
    # The operator decides: the report leaves review, its clock stops (late), the case gets it.
    await decide(ctx.store, ctx.directory, rid, actor="operator", topic="water_supply", agency="sawaco")
    assert await seed.group(ctx.store, rid, "INC-000001") == "INC-000001"  # dedupe sends it on to dispatch
    await pump(ctx)
    row = await ctx.store.fetchone("SELECT * FROM deadlines WHERE kind='operator_guidance' AND report_id=?", (rid,))
    assert row["state"] == "met_late" and row["case_id"] == "CASE-000001"


async def test_6_3_no_handler_found_operator_hour_from_receipt(world):
    ctx, _ = world
    await seed_report(ctx.store, incident_id="INC-000001", agency=None, topic="unknown", category="civic")
    ctx.clock.advance(20 * MINUTE)  # the case is recorded 20 minutes after receipt
    await pump(ctx)
    guidance = await clock_row(ctx.store, "operator_guidance", "CASE-000001")
    assert guidance["due_at"] - ctx.clock.now() == 40 * MINUTE


async def test_6_4_every_reporter_of_a_duplicate_told_within_five_minutes(world):
    ctx, _ = world
    await new_case(ctx, "INC-000001")
    dup = await seed_report(ctx.store, incident_id="INC-000001",
                            reporter=Reporter(email="b@example.vn"))
    ctx.clock.advance(7 * MINUTE)  # dedupe's acknowledgement goes out late
    await pump(ctx)
    row = await ctx.store.fetchone("SELECT * FROM deadlines WHERE kind='duplicate_notice' AND report_id=?", (dup,))
    assert span(row) == 5 * MINUTE and row["state"] == "met_late"


# -- Art. 7.1 ---------------------------------------------------------------------------------------
async def test_7_1a_forward_to_the_unit_on_the_ground_within_five_minutes(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    assert span(await clock_row(ctx.store, "subordinate_forward", case)) == 5 * MINUTE
    ctx.clock.advance(4 * MINUTE)
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "acknowledged"}))[0] == 201
    assert (await clock_row(ctx.store, "subordinate_forward", case))["state"] == "met"


async def test_7_1b_complex_incident_safety_measures_within_two_hours_then_eight_to_fix(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    ctx.clock.advance(30 * MINUTE)
    status, _ = await answer(base, TOKENS["agency.sawaco"], case, {"kind": "verified", "complex": True})
    assert status == 201
    safety = await clock_row(ctx.store, "safety_measures", case)
    assert span(safety) == 2 * HOUR and safety["state"] == "open"
    assert span(await clock_row(ctx.store, "fix", case)) == 8 * HOUR
    ctx.clock.advance(2 * HOUR)
    await tick(ctx.store)
    assert (await clock_row(ctx.store, "safety_measures", case))["state"] == "missed"
    await answer(base, TOKENS["agency.sawaco"], case, {"kind": "safety_measures"})
    assert (await clock_row(ctx.store, "safety_measures", case))["state"] == "met_late"
    # The result of a complex incident is recorded with photos of the site.
    status, body = await answer(base, TOKENS["agency.sawaco"], case, {"kind": "resolved", "note": "Xong"})
    assert status == 409 and "photo" in body["error"]
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "resolved", "photos": [PHOTO]}))[0] == 201
    assert (await clock_row(ctx.store, "fix", case))["state"] == "met"


async def test_7_1_site_check_fix_false_report_and_return(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    assert span(await clock_row(ctx.store, "site_check", case)) == span(await clock_row(ctx.store, "fix", case)) \
        == 2 * HOUR
    ctx.clock.advance(90 * MINUTE)
    await answer(base, TOKENS["agency.sawaco"], case, {"kind": "false_report"})
    close_false = await clock_row(ctx.store, "close_false", case)
    assert span(close_false) == HOUR and close_false["state"] == "met_late"
    returned = await new_case(ctx, "INC-000002")
    ctx.clock.advance(30 * MINUTE)
    status, body = await answer(base, TOKENS["agency.sawaco"], returned, {"kind": "returned", "reason": "Không phải"})
    assert status == 201 and body["agency"] == policy.OPERATOR_UNIT
    misroute = await clock_row(ctx.store, "return_misroute", returned)
    assert span(misroute) == HOUR and misroute["state"] == "met"


async def test_7_1d_not_an_incident_is_handled_like_category_2(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    status, body = await answer(base, TOKENS["agency.sawaco"], case, {"kind": "not_incident",
                                                                      "note": "Đề nghị lắp đồng hồ nước mới"})
    assert status == 201
    row = await ctx.store.fetchone("SELECT category FROM cases WHERE id=?", (case,))
    assert row["category"] == "civic"
    assert {r["kind"]: r["state"] for r in await ctx.store.fetchall(
        "SELECT kind, state FROM deadlines WHERE case_id=? AND kind IN ('site_check','fix')", (case,))} == \
        {"site_check": "met", "fix": "cancelled"}
    answer_clock = await clock_row(ctx.store, "answer", case)
    # Monday 09:00 + 5 working days = next Monday 09:00.
    assert answer_clock["state"] == "open" and span(answer_clock) == 7 * DAY


async def test_7_1e_dangerous_or_multi_agency_goes_to_the_operator_unit_which_coordinates(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    status, body = await answer(base, TOKENS["agency.sawaco"], case, {"kind": "coordination",
                                                                      "note": "Sụt lún lớn, cần nhiều đơn vị"})
    assert status == 201 and body["agency"] == policy.OPERATOR_UNIT
    row = await ctx.store.fetchone("SELECT coordination FROM cases WHERE id=?", (case,))
    assert row["coordination"] == 1
    assert span(await clock_row(ctx.store, "operator_guidance", case)) == HOUR


# -- Art. 7.2 -----------------------------------------------------------------------------------------
async def test_7_2_answer_in_five_working_days_or_a_progress_report_with_photos_and_a_date(world):
    ctx, base = world
    case = await new_case(ctx, "INC-000001", topic="waste", category="civic", agency="ubnd-quan-1")
    answer_clock = await clock_row(ctx.store, "answer", case)
    assert span(answer_clock) == 7 * DAY  # Monday 09:00 + 5 working days
    ctx.clock.advance(4 * DAY)
    committed = "2026-09-18T17:00:00+07:00"
    status, body = await answer(base, TOKENS["agency.ubnd-quan-1"], case,
                                {"kind": "progress_report", "expected_completion": committed})
    assert status == 409 and "photo" in body["error"]
    status, _ = await answer(base, TOKENS["agency.ubnd-quan-1"], case,
                             {"kind": "progress_report", "photos": [PHOTO]})
    assert status == 409  # no committed date
    status, _ = await answer(base, TOKENS["agency.ubnd-quan-1"], case,
                             {"kind": "progress_report", "photos": [PHOTO], "expected_completion": committed})
    assert status == 201
    assert (await clock_row(ctx.store, "answer", case))["state"] == "met"
    completion = await clock_row(ctx.store, "completion", case)
    assert completion["state"] == "open" and completion["due_at"] == 1789725600.0  # 18/09/2026 17:00


# -- Art. 7.3 -----------------------------------------------------------------------------------------
async def test_7_3_city_office_forwards_in_one_working_day_agency_answers_in_ten_or_fifteen(world, receiver):
    ctx, base = world
    # Friday 11/09 09:00: a suggestion reaches the City Office; one working day ends Monday 09:00.
    ctx.clock.advance(4 * DAY)
    case = await new_case(ctx, "INC-000001", topic="suggestion", category="suggestion", agency="vp-ubnd")
    review = await clock_row(ctx.store, "review", case)
    assert review["agency"] == "vp-ubnd" and span(review) == 3 * DAY
    ctx.clock.advance(2 * HOUR)
    # Only the City Office and the operator unit forward to a named agency.
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "reassigned", "agency": "so-gtvt"}))[0] == 404
    status, body = await answer(base, TOKENS["agency.vp-ubnd"], case, {"kind": "reassigned", "agency": "so-gtvt"})
    assert status == 201 and body["agency"] == "so-gtvt"
    assert (await clock_row(ctx.store, "review", case))["state"] == "met"
    ten = await clock_row(ctx.store, "answer", case)
    assert ten["agency"] == "so-gtvt" and span(ten) == 10 * DAY
    # Several agencies must coordinate: the open answer clock is extended to 15 days, and stays open.
    ctx.clock.advance(DAY)
    status, _ = await answer(base, TOKENS["agency.so-gtvt"], case, {"kind": "in_progress", "several_agencies": True,
                                                                     "expected_completion": "2026-10-05T17:00:00+07:00"})
    assert status == 201
    fifteen = await clock_row(ctx.store, "answer", case)
    assert fifteen["state"] == "open" and span(fifteen) == 15 * DAY
    # A returned case of category 3-4 goes back to the City Office for another review.
    status, body = await answer(base, TOKENS["agency.so-gtvt"], case, {"kind": "returned", "reason": "Thuộc Sở XD"})
    assert body["agency"] == "vp-ubnd"
    assert (await clock_row(ctx.store, "review", case))["state"] == "open"


# -- escalation that reaches people -------------------------------------------------------------------
async def test_warnings_and_breaches_reach_the_agency_and_the_operator_unit_as_one_digest_each(
        world, smtp, sms_gateway):
    ctx, base = world
    sink, _ = smtp
    cases = [await new_case(ctx, f"INC-{i + 1:06d}") for i in range(3)]
    for case in cases:
        await answer(base, TOKENS["agency.sawaco"], case, {"kind": "acknowledged"})
    ctx.clock.advance(100 * MINUTE)  # site check and fix (2 h) warned 24 min ahead
    result = await tick(ctx.store, svc(ctx, "dispatch-clocks").cfg)
    assert result.warned == 6
    sender = svc(ctx, "dispatch-escalations")
    await sender.run_once()
    # One email to the agency's leadership, one to the operator unit, one SMS: each lists all three cases.
    by_rcpt = {m["X-Rcpt"]: m for m in sink.messages}
    assert set(by_rcpt) == {"lanhdao@sawaco.example.vn", "truc@1022.example.vn"}
    for msg in by_rcpt.values():
        text = msg.get_content()
        assert all(c in text for c in cases) and "sắp đến hạn" in msg["Subject"]
        assert len(re.findall(r"Kiểm tra hiện trường", text)) == 3
    (sms,) = [m for m in sms_gateway.messages if m["to"] == "0909000111"]
    assert "6 thời hạn sắp đến hạn" in sms["text"]
    # Nothing new: nothing sent again. Past due: one breach digest per recipient.
    assert (await tick(ctx.store, sender.cfg)).digests == 0
    ctx.clock.advance(25 * MINUTE)
    assert (await tick(ctx.store, sender.cfg)).digests == 3
    await sender.run_once()
    assert len(sink.messages) == 4 and "đã quá hạn" in sink.messages[-1]["Subject"]
    assert (await tick(ctx.store, sender.cfg)).digests == 0
    # The console's overdue list shows the same clocks.
    assert sorted((o.case_id, o.kind) for o in await overdue(ctx.store, include_warnings=True)) == \
        sorted((c, k) for c in cases for k in ("site_check", "fix"))


async def test_a_digest_sender_stopped_while_its_lease_commits_gives_the_digests_back(dstore: Store, directory):
    """A stop that lands while the digest sender's lease commits (the commit goes on whatever the cancellation
    does): the digests it took are due again at once, not leased to nobody until their leases expire."""
    cfg = DispatchConfig.model_validate({"agencies": {"sawaco": {"escalation": {"email": ["lanhdao@sawaco.example.vn"],
                                                                                "sms": ["0909000111"]}}}})
    now = dstore.clock.now()
    async with dstore.transaction() as tx:  # what a tick writes for a missed clock
        assert await write_digests(tx, cfg, "breach", [{"case_id": None, "report_id": None, "agency": "sawaco",
                                                        "kind": "fix", "due_at": now}], now) == 2
    sender = EscalationSender(dstore, cfg, directory, sms=None)

    await stop_as_the_lease_commits_gives_back(dstore, "escalate", sender.run_once, 2)
    states = await dstore.fetchall("SELECT state FROM escalations")
    assert [r["state"] for r in states] == ["pending"] * 2


async def test_a_digest_sender_stopped_mid_send_waits_for_its_smtp_thread_and_the_digest_goes_once(
        dstore: Store, directory, smtp):
    """A stop while the relay holds the digest (its DATA taken, the 250 not yet read): smtplib's thread cannot be
    cancelled and goes on talking to the relay. The digest is not given back meanwhile (given back, the next sender,
    a reload's or another instance's, could lease it and send the same mail at the same time): it stays leased,
    another sender finds nothing to send, and once the relay answers it is recorded sent and goes once in all,
    under its Message-ID."""
    sink, port = smtp
    cfg = DispatchConfig.model_validate({"agencies": {"sawaco": {"escalation": {
                                             "email": ["lanhdao@sawaco.example.vn"]}}},
                                         "smtp": {"host": "127.0.0.1", "port": port}})
    now = dstore.clock.now()
    async with dstore.transaction() as tx:  # what a tick writes for a missed clock
        assert await write_digests(tx, cfg, "breach", [{"case_id": None, "report_id": None, "agency": "sawaco",
                                                        "kind": "fix", "due_at": now}], now) == 1
    sender = EscalationSender(dstore, cfg, directory, sms=None)
    other = EscalationSender(dstore, cfg, directory, sms=None)  # the next generation's, or another instance's

    await stop_keeps_the_send_in_its_thread(dstore, "escalate", sender.run_once, other.run_once, sink)
    (row,) = await dstore.fetchall("SELECT id, state, created_at FROM escalations")
    assert row["state"] == "sent"
    assert await other.run_once() == 0
    (mail,) = sink.messages
    assert mail["Message-ID"] == f"<1022.esc{row['id']}.{int(row['created_at'])}@1022.tphcm.gov.vn>"


async def test_a_digest_is_sent_under_one_key_by_sms_and_email_and_a_fresh_store_names_its_digests_anew(
        dstore: Store, directory, smtp, sms_gateway):
    """The SMS id (what the gateway drops repeats by) and the email's Message-ID are one key built from the row, its
    creation time included: a store started afresh, whose digest ids begin again at 1, does not send its first SMS
    under the id of an old one (before: `esc<id>`, which the gateway would drop as a repeat)."""
    sink, port = smtp
    cfg = DispatchConfig.model_validate({"agencies": {"sawaco": {"escalation": {"email": ["lanhdao@sawaco.example.vn"],
                                                                                "sms": ["0909000111"]}}},
                                         "smtp": {"host": "127.0.0.1", "port": port},
                                         "sms": {"url": sms_gateway.url, "token": "sms-token",
                                                 "allow_private": True}})
    gateway = SmsGateway(cfg)
    sender = EscalationSender(dstore, cfg, directory, sms=gateway)
    keys: list[tuple[str, str]] = []  # (SMS id, Message-ID) per store
    for fresh in (False, True):
        if fresh:  # the same ids again, as a store started afresh gives them, a day later
            async with dstore.transaction() as tx:
                await tx.execute("DELETE FROM jobs WHERE stage='escalate'")
                await tx.execute("DELETE FROM escalations")
            dstore.clock.advance(DAY)
        now = dstore.clock.now()
        async with dstore.transaction() as tx:
            assert await write_digests(tx, cfg, "breach", [{"case_id": None, "report_id": None, "agency": "sawaco",
                                                            "kind": "fix", "due_at": now}], now) == 2
        assert await sender.run_once() == 2
        rows = {r["channel"]: r for r in await dstore.fetchall("SELECT id, channel, created_at FROM escalations")}
        assert [rows["email"]["id"], rows["sms"]["id"]] == [1, 2]
        sms_id, message_id = sms_gateway.messages[-1]["id"], sink.messages[-1]["Message-ID"]
        assert sms_id == f"esc{rows['sms']['id']}.{int(rows['sms']['created_at'])}"  # before: esc2
        assert message_id == f"<1022.esc{rows['email']['id']}.{int(rows['email']['created_at'])}@1022.tphcm.gov.vn>"
        keys.append((sms_id, message_id))
    await gateway.close()
    (first_sms, first_mail), (again_sms, again_mail) = keys
    assert first_sms != again_sms and first_mail != again_mail


async def test_a_digest_that_cannot_be_sent_is_retried_then_kept(world, smtp, sms_gateway):
    ctx, base = world
    await new_case(ctx, "INC-000001")
    sms_gateway.status = 503
    ctx.clock.advance(3 * HOUR)
    sender = svc(ctx, "dispatch-escalations")
    await tick(ctx.store, sender.cfg)
    await sender.run_once()
    rows = {r["channel"]: r for r in await ctx.store.fetchall("SELECT * FROM escalations")}
    assert rows["sms"]["state"] == "pending" and rows["sms"]["next_at"] > ctx.clock.now()
    assert rows["email"]["state"] == "sent"
    sms_gateway.status = 200
    ctx.clock.advance(3600)
    await sender.run_once()
    assert (await ctx.store.fetchone("SELECT state FROM escalations WHERE channel='sms'"))["state"] == "sent"


async def test_a_digest_refused_for_good_is_a_dead_letter_and_replays(world, smtp, sms_gateway):
    ctx, base = world
    await new_case(ctx, "INC-000001")
    sms_gateway.status = 400  # the gateway refuses the message itself: no retry would help
    ctx.clock.advance(3 * HOUR)
    sender = svc(ctx, "dispatch-escalations")
    await tick(ctx.store, sender.cfg)
    await sender.run_once()
    sms = await ctx.store.fetchone("SELECT state, last_error FROM escalations WHERE channel='sms'")
    assert sms["state"] == "failed" and "400" in sms["last_error"]
    (dead,) = await ctx.store.queue.dead_letters("escalate")
    assert dead.subject.endswith("/sms") and dead.payload.escalation_id
    sms_gateway.status = 200
    assert await ctx.store.queue.replay("escalate") == 1
    await sender.run_once()
    assert (await ctx.store.fetchone("SELECT state FROM escalations WHERE channel='sms'"))["state"] == "sent"


async def test_a_digest_whose_job_does_not_decode_is_given_up_like_a_dead_one(world, smtp, sms_gateway):
    """Its lease buries the job without reading it (a payload a newer build wrote); the row it carried is its
    subject's (agency/channel) pending row no other job carries: failed, as a dead digest's is (it stayed 'pending'
    for good, never sent). The other digests go out; a replay that buries it again changes nothing more."""
    ctx, base = world
    await new_case(ctx, "INC-000001")
    ctx.clock.advance(3 * HOUR)
    sender = svc(ctx, "dispatch-escalations")
    await tick(ctx.store, sender.cfg)
    (broken,) = await ctx.store.fetchall("SELECT id FROM jobs WHERE stage='escalate' AND subject LIKE '%/sms'")
    async with ctx.store.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?",
                         ('{"type":"EscalateJob","schema_version":99,"escalation_id":1}', broken["id"]))
    await sender.run_once()
    rows = await ctx.store.fetchall("SELECT channel, state, last_error FROM escalations ORDER BY id")
    outcome = [(r["channel"], r["state"], r["last_error"]) for r in rows]
    assert outcome == [("email", "sent", None), ("sms", "failed", "gave up: payload does not decode"),
                       ("email", "sent", None)]  # the agency's leadership, its SMS, the operator unit
    (alert,) = [json.loads(r["data"]) for r in await ctx.store.fetchall("SELECT data FROM events WHERE kind='alert'")]
    assert (alert["alert"], alert["channel"]) == ("escalation_dead", "sms")  # as a dead digest alerts
    assert await ctx.store.queue.replay(ids=[broken["id"]]) == 1
    assert await sender.run_once() == 0
    rows = await ctx.store.fetchall("SELECT channel, state, last_error FROM escalations ORDER BY id")
    assert [(r["channel"], r["state"], r["last_error"]) for r in rows] == outcome
    assert [d.id for d in await ctx.store.queue.dead_letters("escalate")] == [broken["id"]]


class QuotingGateway(SmsGateway):
    """A gateway client whose refusal quotes the gateway's answer, as one talking to another provider might: the
    answer names a subscriber's number and the provider's mailbox."""

    async def send(self, to: str, text: str, message_id: str, now: float) -> None:
        raise PermanentError("SMS gateway: HTTP 400: thuê bao 0912345678 từ chối tin; hỏi hotro@sms.example.vn")


async def test_a_dead_digest_alerts_the_operators_on_its_cases_and_logs_no_personal_data(world, smtp, caplog):
    """A digest given up (refused for good here) told nobody of the clocks it carried: the row was 'failed' and a
    log line said so, with the gateway's answer as it came (a phone number, an e-mail). Now an `escalation_dead`
    alert on each of its cases' reports, on the console's case timeline beside a dead delivery's, and the log
    line redacted."""
    from console.queries import case_timeline

    ctx, base = world
    cases = [await new_case(ctx, f"INC-{i + 1:06d}") for i in range(2)]
    ctx.clock.advance(3 * HOUR)
    sender = svc(ctx, "dispatch-escalations")
    sender.sms = QuotingGateway(sender.cfg)
    await tick(ctx.store, sender.cfg)
    with caplog.at_level(logging.INFO):
        await sender.run_once()
    sms = await ctx.store.fetchone("SELECT id, state FROM escalations WHERE channel='sms'")
    assert sms["state"] == "failed"
    alerts = {r["report_id"]: json.loads(r["data"]) for r in await ctx.store.fetchall(
        "SELECT report_id, data FROM events WHERE kind='alert' ORDER BY id")}
    reports = {c: (await ctx.store.fetchone("SELECT report_id FROM cases WHERE id=?", (c,)))["report_id"]
               for c in cases}
    assert set(alerts) == set(reports.values())  # before: no alert
    for alert in alerts.values():
        assert (alert["alert"], alert["escalation_id"], alert["channel"], alert["agency"]) == \
            ("escalation_dead", sms["id"], "sms", "sawaco")
    case = await ctx.store.fetchone("SELECT * FROM cases WHERE id=?", (cases[0],))
    shown = [t for t in await case_timeline(ctx.store, case) if t.what == "alert"]
    assert len(shown) == 1 and "alert=escalation_dead" in shown[0].detail and "0912345678" not in shown[0].detail
    (line,) = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert f"escalation {sms['id']}" in line and "HTTP 400" in line
    for personal in ("0912345678", "hotro@sms.example.vn"):
        assert personal not in caplog.text  # before: the gateway's answer as it came


def test_readme_lists_every_clock_with_its_article_unit_and_length():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Deadlines"):]
    table = section[:section.index("\n\n", section.index("| Article"))]
    rows = {line.split("|")[2].strip(" `"): line for line in table.splitlines()
            if line.startswith("| ") and "`" in line}
    for rule in policy.CLOCKS:
        assert rule.kind in rows, rule.kind
        line = rows[rule.kind]
        assert rule.article in line and rule.unit in line and rule.length in line, line
    assert json.dumps(sorted(rows)) == json.dumps(sorted(policy.CLOCK_KINDS))


async def test_coordinated_case_lead_and_supporting_agencies_each_with_delivery_answers_and_clocks(world, receiver):
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "coordination"}))[1]["agency"] == \
        policy.OPERATOR_UNIT
    # The operator unit names the lead (holds the case, resolves it) and a supporting agency.
    status, body = await answer(base, TOKENS["agency.van-hanh-1022"], case,
                                {"kind": "reassigned", "agency": "sawaco", "supporting": ["ubnd-quan-1"]})
    assert status == 201 and body["agency"] == "sawaco"
    await pump(ctx)
    support = [b["data"] for b in receiver.accepted.values() if b["type"] == "case.support"]
    assert [(d["agency"], d["role"], d["lead_agency"]) for d in support] == [("ubnd-quan-1", "supporting", "sawaco")]
    own = {r["kind"]: r["state"] for r in await ctx.store.fetchall(
        "SELECT kind, state FROM deadlines WHERE case_id=? AND agency='ubnd-quan-1'", (case,))}
    assert own == {"subordinate_forward": "open", "site_check": "open", "fix": "open"}
    async with aiohttp_session() as http, http.get(f"{base}/api/v1/agency/cases",
                                                   headers={"Authorization": f"Bearer {TOKENS['agency.ubnd-quan-1']}"}
                                                   ) as resp:
        listed = (await resp.json())["cases"]
    assert [(c["case_id"], c["role"]) for c in listed] == [(case, "supporting")]
    # The supporter's answers move its own clocks and part, never the case's result.
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "acknowledged"}))[0] == 201
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "false_report"}))[0] == 409
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "resolved", "note": "Đã rào"}))[0] == 201
    part = await ctx.store.fetchone("SELECT state FROM case_supporters WHERE case_id=?", (case,))
    assert part["state"] == "done"
    own = {r["kind"]: r["state"] for r in await ctx.store.fetchall(
        "SELECT kind, state FROM deadlines WHERE case_id=? AND agency='ubnd-quan-1'", (case,))}
    assert own == {"subordinate_forward": "met", "site_check": "met", "fix": "met"}
    assert (await ctx.store.fetchone("SELECT state FROM cases WHERE id=?", (case,)))["state"] == "forwarded"
    # The lead's answer resolves the case.
    status, body = await answer(base, TOKENS["agency.sawaco"], case, {"kind": "resolved", "photos": [PHOTO]})
    assert status == 201 and body["state"] == "resolved"
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "verified"}))[0] == 404


async def test_a_dispute_of_a_coordinated_case_reaches_its_supporting_agencies(world, receiver):
    """The reporter says the coordinated case's result does not fix the problem: the case is open again at the lead
    and at every supporting agency that had not withdrawn, each told with the dispute and with new clocks."""
    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "coordination"}))[0] == 201
    assert (await answer(base, TOKENS["agency.van-hanh-1022"], case, {
        "kind": "reassigned", "agency": "sawaco", "supporting": ["ubnd-quan-1", "so-gtvt"]}))[0] == 201
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "resolved", "note": "Đã rào"}))[0] == 201
    assert (await answer(base, TOKENS["agency.so-gtvt"], case, {"kind": "returned", "reason": "không phải"}))[0] \
        == 201
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "resolved", "photos": [PHOTO]}))[0] == 201
    await pump(ctx)
    report = (await ctx.store.fetchone("SELECT report_id FROM cases WHERE id=?", (case,)))["report_id"]
    ctx.clock.advance(DAY)
    await ctx.published.case_dispute(report_id=report, case_id=case, reason="Vẫn còn ngập")
    await pump(ctx)
    disputed = {b["data"]["agency"]: b["data"] for b in receiver.accepted.values() if b["type"] == "case.disputed"}
    assert set(disputed) == {"sawaco", "ubnd-quan-1"}  # so-gtvt withdrew: not its problem
    assert (disputed["ubnd-quan-1"]["role"], disputed["ubnd-quan-1"]["lead_agency"]) == ("supporting", "sawaco")
    assert disputed["ubnd-quan-1"]["dispute"]["text"] == "Vẫn còn ngập"
    own = {r["kind"]: (r["state"], r["started_at"]) for r in await ctx.store.fetchall(
        "SELECT kind, state, started_at FROM deadlines WHERE case_id=? AND agency='ubnd-quan-1' AND state='open'",
        (case,))}
    assert own == {k: ("open", ctx.clock.now()) for k in ("subordinate_forward", "site_check", "fix")}
    async with aiohttp_session() as http, http.get(f"{base}/api/v1/agency/cases",
                                                   headers={"Authorization": f"Bearer {TOKENS['agency.ubnd-quan-1']}"}
                                                   ) as resp:
        assert [(c["case_id"], c["role"]) for c in (await resp.json())["cases"]] == [(case, "supporting")]
    assert (await answer(base, TOKENS["agency.ubnd-quan-1"], case, {"kind": "acknowledged"}))[0] == 201
    assert (await answer(base, TOKENS["agency.so-gtvt"], case, {"kind": "acknowledged"}))[0] == 404


async def test_a_dispute_reaches_the_lead_and_remaining_supporters_when_one_left_the_directory(world, receiver,
                                                                                               directory, monkeypatch):
    """A supporting agency of a coordinated case is gone from the directory (dissolved, the daemon restarted on the
    new one) when the reporter disputes the result: the dispute is not refused (a 500 on the lookup API; a follow-up
    job retried to its dead letter): it reaches the lead and the supporters still there, and the reporter is told."""
    from ingest.jobs import REPORTER_FOLLOW_UP, ReporterFollowUpJob

    ctx, base = world
    case = await new_case(ctx, "INC-000001")
    assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "coordination"}))[0] == 201
    assert (await answer(base, TOKENS["agency.van-hanh-1022"], case, {
        "kind": "reassigned", "agency": "sawaco", "supporting": ["ubnd-quan-1", "so-gtvt"]}))[0] == 201

    async def resolved() -> None:
        assert (await answer(base, TOKENS["agency.sawaco"], case, {"kind": "resolved", "photos": [PHOTO]}))[0] == 201
        await pump(ctx)
        receiver.accepted.clear()
        ctx.clock.advance(DAY)

    await resolved()
    monkeypatch.delitem(directory.agencies, "so-gtvt")
    row = await ctx.store.fetchone("SELECT report_id, token FROM cases WHERE id=?", (case,))
    async with aiohttp_session() as http, http.post(f"{base}/api/v1/cases/{row['token']}/dispute",
                                                    json={"reason": "Vẫn còn ngập"}) as resp:
        assert resp.status == 201
    await pump(ctx)
    disputed = {b["data"]["agency"] for b in receiver.accepted.values() if b["type"] == "case.disputed"}
    assert disputed == {"sawaco", "ubnd-quan-1"}
    # The same on the reporter's channel: the follow-up job disputes and is done, not retried.
    await resolved()
    async with ctx.store.transaction() as tx:
        await tx.enqueue(REPORTER_FOLLOW_UP, row["report_id"],
                         ReporterFollowUpJob(text="Vẫn chưa xử lý, vẫn còn ngập", channel="email"))
    assert await svc(ctx, "dispatch-reporter-follow-ups").worker.run_once() == 1
    job = await ctx.store.fetchone("SELECT state, last_error FROM jobs WHERE stage=?", (REPORTER_FOLLOW_UP,))
    assert (job["state"], job["last_error"]) == ("done", None)
    await pump(ctx)
    assert [r["source"] for r in await ctx.store.fetchall("SELECT source FROM disputes ORDER BY id")] == \
        ["lookup", "email"]
    disputed = {b["data"]["agency"] for b in receiver.accepted.values() if b["type"] == "case.disputed"}
    assert disputed == {"sawaco", "ubnd-quan-1"}
    acks = await ctx.store.fetchall("SELECT payload FROM jobs WHERE stage='notify' AND payload LIKE '%dispute_ack%'")
    assert len(acks) == 2


def aiohttp_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


async def test_digests_written_before_the_one_queue_are_sent_after_the_upgrade(tmp_path):
    """Escalation rows of the old sender (dispatch schema 4): pending ones get their job, given-up ones a dead
    letter; sent ones nothing."""
    from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
    from dispatch.schema import MIGRATIONS
    from ingest.clock import FakeClock
    from ingest.store import Store

    clock = FakeClock(1_790_000_000.0)
    old = {"dedupe": DEDUPE_MIGRATIONS, "dispatch": [m for m in MIGRATIONS if m[0] <= 4]}
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", clock=clock, migrations=old)
    async with store.transaction() as tx:
        for state, attempts in (("pending", 2), ("failed", 8), ("sent", 1)):
            await tx.execute("INSERT INTO escalations(agency, level, channel, recipient, items, state, attempts,"
                             " next_at, last_error, created_at) VALUES ('sawaco', 'breach', 'email', 'x@y.vn', '[]',"
                             " ?, ?, ?, 'relay down', ?)", (state, attempts, clock.now(), clock.now()))
    await store.close()
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", clock=clock,
                             migrations={"dedupe": DEDUPE_MIGRATIONS, "dispatch": MIGRATIONS})
    try:
        rows = await store.fetchall("SELECT state, attempts, subject, payload FROM jobs WHERE stage='escalate'"
                                    " ORDER BY id")
        assert [(r["state"], r["attempts"], r["subject"]) for r in rows] == [
            ("ready", 2, "sawaco/email"), ("dead", 8, "sawaco/email")]
        (job,) = await store.queue.lease("escalate", 5, 60)
        assert job.payload.escalation_id == 1 and job.attempts == 3
        assert [d.payload.escalation_id for d in await store.queue.dead_letters("escalate")] == [2]
    finally:
        await store.close()
