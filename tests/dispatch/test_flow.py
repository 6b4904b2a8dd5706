"""A case's life through the service: dispatch, agency answers over HTTP and email, re-routing, clocks,
the reporter's acknowledgement and result on their channel, ratings, confidentiality, route mode, the CLI."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from channels.email_reply import register_reply_sender
from config.channels import EmailReplyOptions
from config.loader import validate
from dispatch import service
from dispatch.answers import apply_email_reply
from dispatch.cli import dispatch_cli
from dispatch.clocks import overdue, tick
from dispatch.cases import public_ref
from dispatch.delivery import DeliverySender
from ingest.app import AppContext
from ingest.records import Candidate, Reporter
from ingest.store import Store, StoredReport
from ingest.worker import StageWorker
from tests.stores import stop_keeps_the_send_in_its_thread

from .conftest import SECRET_A, seed_report
from .test_delivery import smtp_sink  # noqa: F401  (the fixture: a loopback aiosmtpd relay)

TOKENS = {"agency.sawaco": "tok-sawaco-123", "agency.thoat-nuoc": "tok-thoat-nuoc-456",
          "agency.van-hanh-1022": "tok-operator-789"}


class RecordingReplies:
    """A ReplySender as the email/Messenger channels register it; records what the reporter would read."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def send_reply(self, report: StoredReport, text: str) -> None:
        self.sent.append((report.id, text))


def settings_for(receiver_url: str, sms_url: str | None = None, **agencies: Any) -> Any:
    hook = {"kind": "webhook", "name": "main", "url": receiver_url, "secrets": [SECRET_A], "allow_private": True,
            "timeout_seconds": 1.0}
    table = {"sawaco": {"targets": [hook], "reply_from": ["dieuhanh@sawaco.com.vn"]},
             "thoat-nuoc": {"targets": [dict(hook, name="tn")], "receives_confidential": True},
             "van-hanh-1022": {"targets": [{"kind": "email", "to": ["vanhanh@1022.example.vn"]}]}}
    table.update(agencies)
    raw = {"http": {"public_base_url": "https://1022.example.vn"},
           "dispatch": {"agencies": table,
                        "sms": {"url": sms_url, "token": "sms-token", "allow_private": True} if sms_url else {}},
           "secrets": dict(TOKENS)}
    return validate(raw, {})


# The dispatch services each test's context built, by context (the context has no slot for them).
SERVICES: dict[int, list[Any]] = {}


@pytest.fixture
async def app_ctx(dstore: Store, directory, receiver, sms_gateway) -> AsyncIterator[tuple[AppContext, str]]:
    app = web.Application()
    ctx = AppContext(settings=settings_for(receiver.url, sms_gateway.url), directory=directory, store=dstore,
                     clock=dstore.clock, http=app)
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


def workers(ctx: AppContext) -> dict[str, Any]:
    return {s.name: s for s in SERVICES[id(ctx)]}


async def pump(ctx: AppContext) -> None:
    """Run every stage of the dispatch component until nothing is left to do now."""
    svc = workers(ctx)
    for _ in range(10):
        n = await svc["dispatch"].worker.run_once() + await svc["dispatch-notify"].worker.run_once()
        n += await svc["dispatch-delivery"].run_once()
        if not n:
            return


async def dispatch_job(store: Store, report_id: int, incident: str) -> None:
    async with store.transaction() as tx:
        await tx.enqueue("dispatch", report_id, {"incident_id": incident})


async def answer(base: str, token: str | None, case_id: str, body: dict[str, Any], idem: str | None = None
                 ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if idem:
        headers["Idempotency-Key"] = idem
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/agency/cases/{case_id}/answers", json=body,
                                                    headers=headers) as resp:
        return resp.status, await resp.json()


async def test_case_lifecycle_every_reporter_gets_ack_or_result(app_ctx, receiver, sms_gateway):
    ctx, base = app_ctx
    store = ctx.store
    first = await seed_report(store, incident_id="INC-000001")
    await pump(ctx)
    case = await store.fetchone("SELECT * FROM cases")
    assert case["id"] == "CASE-000001" and case["agency"] == "sawaco"
    assert (await store.get_report(first)).status == "dispatched"
    assert len(receiver.accepted) == 1
    replies = ctx.replies.get("email").sent
    assert replies[0][0] == first and public_ref(case["token"]) in replies[0][1] and "CASE-000001" not in replies[0][1]
    # Each reporter's link carries their own token (their rating and dispute are theirs alone).
    links = {r["report_id"]: r["token"] for r in await store.fetchall("SELECT * FROM reporter_links")}
    assert f"https://1022.example.vn/cases/{links[first]}" in replies[0][1] and case["token"] not in replies[0][1]
    # Before the result there is nothing to rate.
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/cases/{links[first]}/rating",
                                                    json={"score": 5}) as resp:
        assert resp.status == 409

    # A second reporter of the same incident, by phone: joined by dedupe as a duplicate.
    second = await seed_report(store, incident_id="INC-000001", channel="phone",
                               reporter=Reporter(phone="0907654321"))
    status, body = await answer(base, TOKENS["agency.sawaco"], case["id"],
                                {"kind": "resolved", "note": "Đã thay đoạn ống bị vỡ", "photos": [
                                    {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}]})
    assert status == 201 and body["state"] == "resolved"
    await pump(ctx)
    assert (await store.get_report(second)).status == "closed"
    assert any(rid == first and "đã được" in text and "xử lý xong" in text for rid, text in replies)
    # The phone reporter is told by SMS that the report was known (dedupe's acknowledgement), then the result.
    ack, sms = sms_gateway.messages
    assert ack["to"] == "0907654321" and "đã được tiếp nhận trước đó" in ack["text"]
    links = {r["report_id"]: r["token"] for r in await store.fetchall("SELECT * FROM reporter_links")}
    assert sms["to"] == "0907654321" and "Đã thay đoạn ống bị vỡ" in sms["text"] and links[second] in sms["text"]
    assert "7 ngày" in sms["text"]  # how to dispute the result, and until when
    # Each reporter rates the handling once, through their own link's token.
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/api/v1/cases/{links[first]}/rating", json={"score": 6}) as resp:
            assert resp.status == 422
        async with s.post(f"{base}/api/v1/cases/{links[first]}/rating", json={"score": 4}) as resp:
            assert resp.status == 201
        async with s.post(f"{base}/api/v1/cases/{links[first]}/rating", json={"score": 1}) as resp:
            assert resp.status == 409  # one rating per reporter
        async with s.post(f"{base}/api/v1/cases/{links[second]}/rating", json={"score": 2}) as resp:
            assert resp.status == 201
        async with s.get(f"{base}/api/v1/cases/{links[second]}") as resp:
            public = await resp.json()
        async with s.get(f"{base}/cases/{links[second]}") as resp:
            page = await resp.text()
    assert public["state"] == "resolved" and "Nguyễn" not in json.dumps(public, ensure_ascii=False)
    assert "Đã xử lý xong" in page
    assert {r["report_id"]: r["score"] for r in await store.fetchall("SELECT * FROM ratings")} == {first: 4, second: 2}
    # Answers after closing are refused.
    status, _ = await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "verified"})
    assert status == 409


async def test_answer_api_authentication(app_ctx):
    ctx, base = app_ctx
    await seed_report(ctx.store, incident_id="INC-000001")
    await pump(ctx)
    assert (await answer(base, None, "CASE-000001", {"kind": "acknowledged"}))[0] == 401
    assert (await answer(base, "wrong", "CASE-000001", {"kind": "acknowledged"}))[0] == 401
    # Another agency's case answers exactly like a missing one: nothing tells a prober it exists.
    foreign = await answer(base, TOKENS["agency.thoat-nuoc"], "CASE-000001", {"kind": "acknowledged"})
    missing = await answer(base, TOKENS["agency.sawaco"], "CASE-999999", {"kind": "acknowledged"})
    assert foreign == missing == (404, {"error": "no such case"})
    # The operator unit's token is scoped like any agency's: no master key over others' cases.
    assert (await answer(base, TOKENS["agency.van-hanh-1022"], "CASE-000001", {"kind": "resolved"}))[0] == 404
    for token in (TOKENS["agency.thoat-nuoc"], TOKENS["agency.van-hanh-1022"]):
        async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/agency/cases/CASE-000001",
                                                       headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 404
    assert (await answer(base, TOKENS["agency.sawaco"], "CASE-000001", {"kind": "dance"}))[0] == 422
    ok = await answer(base, TOKENS["agency.sawaco"], "CASE-000001", {"kind": "acknowledged"}, idem="a1")
    again = await answer(base, TOKENS["agency.sawaco"], "CASE-000001", {"kind": "acknowledged"}, idem="a1")
    assert ok[0] == 201 and again[0] == 200 and again[1]["duplicate"]
    assert (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM answers"))["n"] == 1
    async with aiohttp.ClientSession() as s, s.get(f"{base}/api/v1/agency/cases",
                                                   headers={"Authorization": "Bearer tok-sawaco-123"}) as resp:
        listed = await resp.json()
    assert [c["case_id"] for c in listed["cases"]] == ["CASE-000001"]


async def test_an_idempotency_key_reused_for_another_answer_is_refused_not_answered_duplicate(app_ctx):
    # Red-team probe as a careless agency client: a key reused with another answer (resolved after acknowledged;
    # the same key on another case) got 200 "duplicate": the client believed the case resolved while nothing was
    # recorded, and the answer on the other case named CASE-000001. IETF Idempotency-Key draft: 422.
    ctx, base = app_ctx
    await seed_report(ctx.store, incident_id="INC-000001")
    await seed_report(ctx.store, incident_id="INC-000002")
    await pump(ctx)
    token = TOKENS["agency.sawaco"]
    assert (await answer(base, token, "CASE-000001", {"kind": "acknowledged"}, idem="k1"))[0] == 201
    resolved = await answer(base, token, "CASE-000001", {"kind": "resolved", "note": "Đã sửa xong"}, idem="k1")
    noted = await answer(base, token, "CASE-000001", {"kind": "acknowledged", "note": "đã nhận"}, idem="k1")
    other = await answer(base, token, "CASE-000002", {"kind": "acknowledged"}, idem="k1")
    assert [resolved[0], noted[0], other[0]] == [422, 422, 422], (resolved, noted, other)
    assert "Idempotency-Key" in resolved[1]["error"]
    # The same answer again is still the duplicate it was, and nothing was added.
    again = await answer(base, token, "CASE-000001", {"kind": "acknowledged"}, idem="k1")
    assert again[0] == 200 and again[1]["duplicate"]
    rows = await ctx.store.fetchall("SELECT case_id, kind FROM answers")
    assert [(r["case_id"], r["kind"]) for r in rows] == [("CASE-000001", "acknowledged")]


async def test_returned_case_is_rerouted_to_next_candidate_then_operators(app_ctx, receiver):
    ctx, base = app_ctx
    cands = (Candidate(topic="water_supply", agency="sawaco", score=0.6),
             Candidate(topic="drainage", agency="thoat-nuoc", score=0.3))
    await seed_report(ctx.store, incident_id="INC-000001", candidates=cands,
                      reporter=Reporter(name="Trần Thị Bảo Mật", phone="0911222333", confidential=True))
    await pump(ctx)
    first = next(iter(receiver.accepted.values()))["data"]
    assert first["reporter"] == {"confidential": True} and "0911222333" not in json.dumps(first)
    status, body = await answer(base, TOKENS["agency.sawaco"], "CASE-000001",
                                {"kind": "returned", "reason": "Cống thoát nước, không phải ống cấp nước"})
    assert status == 201 and body["agency"] == "thoat-nuoc"
    await pump(ctx)
    rerouted = [b["data"] for b in receiver.accepted.values() if b["type"] == "case.rerouted"]
    assert len(rerouted) == 1 and rerouted[0]["return_reason"].startswith("Cống thoát nước")
    # thoat-nuoc is authorised by config to see confidential reporters.
    assert rerouted[0]["reporter"]["phone"] == "0911222333"
    misroute = await ctx.store.fetchone("SELECT state FROM deadlines WHERE kind='return_misroute'")
    assert misroute["state"] == "met"
    status, body = await answer(base, TOKENS["agency.thoat-nuoc"], "CASE-000001",
                                {"kind": "returned", "reason": "Không thuộc thẩm quyền"})
    assert body["agency"] == "van-hanh-1022"
    guidance = await ctx.store.fetchone("SELECT due_at - started_at AS span FROM deadlines"
                                        " WHERE kind='operator_guidance' AND state='open'")
    assert guidance["span"] == 3600
    # The operator unit guides: it reassigns the case to a named agency.
    status, body = await answer(base, TOKENS["agency.van-hanh-1022"], "CASE-000001",
                                {"kind": "reassigned", "agency": "ubnd-quan-1"})
    assert status == 201 and body["agency"] == "ubnd-quan-1"
    assert (await ctx.store.fetchone("SELECT state FROM deadlines WHERE kind='operator_guidance'"))["state"] == "met"


async def test_clocks_warn_then_escalate_and_show_overdue(app_ctx):
    ctx, base = app_ctx
    store, clock = ctx.store, ctx.store.clock
    await seed_report(store, incident_id="INC-000001")
    await svc_dispatch(ctx)  # recorded but not delivered yet: the 5-minute forwarding clock runs
    clock.advance(60)
    # forward (6.2) and the agency's forwarding to its unit on the ground (7.1a): both 5 minutes, both warned
    # 5 minutes ahead = at once (min lead).
    assert (await tick(store)).warned == 2
    clock.advance(300)
    assert (await tick(store)).escalated == 2
    assert sorted(o.kind for o in await overdue(store)) == ["forward", "subordinate_forward"]
    await pump(ctx)  # delivered late: met_late, no longer overdue
    assert [o.kind for o in await overdue(store)] == ["subordinate_forward"]
    assert (await store.fetchone("SELECT state FROM deadlines WHERE kind='forward'"))["state"] == "met_late"
    # Site check (2 h) and fix (2 h): verified meets the site check; the fix clock escalates.
    await answer(base, TOKENS["agency.sawaco"], "CASE-000001", {"kind": "verified"})
    assert (await store.fetchone("SELECT state FROM deadlines WHERE kind='subordinate_forward'"))["state"] == "met_late"
    clock.advance(2 * 3600)
    result = await tick(store)
    assert result.escalated == 1
    assert [(o.case_id, o.kind) for o in await overdue(store)] == [("CASE-000001", "fix")]
    escalations = await store.fetchall("SELECT data FROM events WHERE kind='deadline_escalation'")
    assert sorted(json.loads(e["data"])["deadline"] for e in escalations) == ["fix", "forward", "subordinate_forward"]
    assert await tick(store) == type(result)(0, 0)  # each fires once
    code = await dispatch_cli(store, ctx.settings, ["overdue"])
    assert code == 0


async def svc_dispatch(ctx: AppContext) -> None:
    assert await workers(ctx)["dispatch"].worker.run_once() == 1


async def test_email_reply_from_the_agency_applies_the_answer(app_ctx):
    ctx, _ = app_ctx
    await seed_report(ctx.store, incident_id="INC-000001")
    await pump(ctx)
    row = await ctx.store.fetchone("SELECT msg_id FROM deliveries")
    kwargs = dict(subject="Re: phản ánh", in_reply_to=f"<{row['msg_id']}@1022.tphcm.gov.vn>",
                  body="Đã rào chắn tạm, đặt biển báo.\n\n> nội dung cũ", message_id="<r1@sawaco>",
                  sender_auth="pass")
    stranger = await apply_email_reply(ctx.store, ctx.settings, from_addr="ke-la@example.com", **kwargs)
    assert stranger.status == "unverified" and stranger.detail == "sender_not_agency_address"
    # The operator unit's mailbox is no master key: sawaco's case needs sawaco's address.
    op = await apply_email_reply(ctx.store, ctx.settings, from_addr="vanhanh@1022.example.vn", **kwargs)
    assert op.status == "unverified" and op.detail == "sender_not_agency_address"
    unauthenticated = await apply_email_reply(ctx.store, ctx.settings, from_addr="dieuhanh@sawaco.com.vn",
                                              **{**kwargs, "sender_auth": "none"})
    assert unauthenticated.status == "unverified" and unauthenticated.detail == "sender_not_authenticated"
    ok = await apply_email_reply(ctx.store, ctx.settings, from_addr="dieuhanh@sawaco.com.vn", **kwargs)
    assert ok.status == "applied" and ok.kind == "safety_measures"
    again = await apply_email_reply(ctx.store, ctx.settings, from_addr="dieuhanh@sawaco.com.vn", **kwargs)
    assert again.status == "duplicate"
    fix = await ctx.store.fetchone("SELECT due_at - started_at AS span FROM deadlines WHERE kind='fix'")
    assert fix["span"] == 8 * 3600
    none = await apply_email_reply(ctx.store, ctx.settings, from_addr="dieuhanh@sawaco.com.vn",
                                   subject="hello", body="Đã xử lý xong", sender_auth="pass")
    assert none.status == "unmatched"


async def test_english_report_gets_english_messages(app_ctx):
    ctx, _ = app_ctx
    await seed_report(ctx.store, incident_id="INC-000001", language="en",
                      text="Burst water pipe on Le Loi street, water everywhere.")
    await pump(ctx)
    ((_, text),) = ctx.replies.get("email").sent
    case = await ctx.store.fetchone("SELECT token FROM cases WHERE id='CASE-000001'")
    # The reporter reads the case's public reference, not the sequential internal id.
    assert text.startswith(f"HCMC 1022 portal: we have received your report (ref. {public_ref(case['token'])})")
    assert "CASE-000001" not in text
    assert "Saigon Water" in text or "Water" in text


async def test_dispatch_is_idempotent_and_outbox_is_atomic_with_the_case(app_ctx):
    ctx, _ = app_ctx
    rid = await seed_report(ctx.store, incident_id="INC-000001")  # dedupe queued its dispatch job
    other = await seed_report(ctx.store, incident_id="INC-000001")  # a duplicate, acknowledged by dedupe
    # Replayed dispatch jobs: the first report's twice more, and one for the duplicate.
    await dispatch_job(ctx.store, rid, "INC-000001")
    await dispatch_job(ctx.store, rid, "INC-000001")
    await dispatch_job(ctx.store, other, "INC-000001")
    await workers(ctx)["dispatch"].worker.run_once()
    assert (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM cases"))["n"] == 1
    assert (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM deliveries"))["n"] == 1
    assert (await ctx.store.get_report(other)).status == "duplicate"
    notify = [(r["report_id"], json.loads(r["payload"])["template"]) for r in
              await ctx.store.fetchall("SELECT report_id, payload FROM jobs WHERE stage='notify' ORDER BY id")]
    assert [t for r, t in notify if r == rid] == ["ack"]  # one case, one acknowledgement
    assert {t for r, t in notify if r == other} == {"duplicate_ack"}


async def test_route_mode_records_cases_and_sends_nothing(dstore, directory, receiver):
    app = web.Application()
    ctx = AppContext(settings=settings_for(receiver.url), directory=directory, store=dstore, clock=dstore.clock,
                     http=app, route_mode=True)
    services = service.build(ctx)
    assert [s.name for s in services] == ["dispatch"]
    await seed_report(dstore, incident_id="INC-000001")
    assert await services[0].worker.run_once() == 1
    assert (await dstore.fetchone("SELECT state FROM deliveries"))["state"] == "pending"
    assert receiver.requests == []


async def test_unreachable_reporter_is_recorded_not_failed(dstore, directory, receiver):
    ctx = AppContext(settings=settings_for(receiver.url), directory=directory, store=dstore, clock=dstore.clock,
                     http=web.Application())
    svc = {s.name: s for s in service.build(ctx)}
    rid = await seed_report(dstore, incident_id="INC-000001", channel="app", reporter=Reporter())
    await svc["dispatch"].worker.run_once()
    await svc["dispatch-notify"].worker.run_once()
    await svc["dispatch-delivery"].close()
    row = await dstore.fetchone("SELECT state, channel FROM notifications")
    assert row["state"] == "unreachable"
    assert (await dstore.get_report(rid)).status == "dispatched"


async def test_cli_lists_and_replays_dead_deliveries(dstore, directory, receiver, capsys):
    receiver.script = ["400"]
    settings = settings_for(receiver.url)
    ctx = AppContext(settings=settings, directory=directory, store=dstore, clock=dstore.clock,
                     http=web.Application())
    svc = {s.name: s for s in service.build(ctx)}
    await seed_report(dstore, incident_id="INC-000001")
    await svc["dispatch"].worker.run_once()
    await svc["dispatch-delivery"].run_once()
    assert await dispatch_cli(dstore, settings, ["deliveries", "--dead"]) == 0
    assert "HTTP 400" in capsys.readouterr().out
    assert await dispatch_cli(dstore, settings, ["replay-deliveries"]) == 0
    await svc["dispatch-delivery"].run_once()
    await svc["dispatch-delivery"].close()
    assert (await dstore.fetchone("SELECT state FROM deliveries"))["state"] == "delivered"
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1


async def test_rejected_report_told_the_reason_in_english_by_sms(dstore, directory, receiver, sms_gateway):
    ctx = AppContext(settings=settings_for(receiver.url, sms_gateway.url), directory=directory, store=dstore,
                     clock=dstore.clock, http=web.Application())
    svc = {s.name: s for s in service.build(ctx)}
    # The classify stage queued the notice with its reason; the same job once more, as a replay would.
    rid = await seed_report(dstore, incident_id=None, channel="sms", language="en", status="rejected",
                            reporter=Reporter(phone="0912345678"), reason="abusive language")
    async with dstore.transaction() as tx:
        await tx.enqueue("notify", rid, {"template": "rejected", "reason": "abusive language"})
    await svc["dispatch-notify"].worker.run_once()
    await svc["dispatch-notify"].notifier.sms.close()
    await svc["dispatch-delivery"].close()
    (msg,) = sms_gateway.messages  # the repeated job sent nothing twice
    assert msg["to"] == "0912345678"
    assert msg["text"] == "HCMC 1022 portal: we cannot accept your message. Reason: abusive language."


async def test_a_notify_worker_stopped_mid_reply_waits_for_its_smtp_thread_and_the_reply_goes_once(
        dstore, directory, receiver, smtp_sink):
    """A stop (a reload, a shutdown) while the relay holds a reply to an email reporter (its DATA taken, the 250
    not yet read): the reply's smtplib thread cannot be cancelled and goes on sending. The notify job is not given
    back meanwhile (given back, a reloaded worker or another instance could lease it and send the citizen the same
    reply at the same time): it stays leased, another worker finds nothing to do, and once the relay answers the
    reply is recorded sent, the job done, and the mail went once in all."""
    sink, port = smtp_sink
    ctx = AppContext(settings=settings_for(receiver.url), directory=directory, store=dstore, clock=dstore.clock,
                     http=web.Application())
    register_reply_sender(ctx, EmailReplyOptions(host="127.0.0.1", port=port, from_address="1022@1022.test"))
    svc = {s.name: s for s in service.build(ctx)}
    # The classify stage queued the notice with its reason (tests/seed.py, by its own code).
    rid = await seed_report(dstore, incident_id=None, status="rejected", reason="abusive language")
    worker = svc["dispatch-notify"].worker
    other = StageWorker(dstore, "notify", svc["dispatch-notify"].notifier.handle, worker.settings)

    await stop_keeps_the_send_in_its_thread(dstore, "notify", worker.run_once, other.run_once, sink)
    assert await other.run_once() == 0
    row = await dstore.fetchone("SELECT state, channel FROM notifications WHERE report_id=?", (rid,))
    assert (row["state"], row["channel"]) == ("sent", "email")
    assert len(await dstore.fetchall("SELECT 1 FROM events WHERE report_id=? AND kind='email_reply_sent'",
                                     (rid,))) == 1
    assert len(sink.messages) == 1
    ctx.replies.get("email").close()
    await svc["dispatch-delivery"].close()
