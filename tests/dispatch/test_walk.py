"""One report walked through every article, on the real HTTP API (the app channel's Open311 intake, the agency
answer API, the reporters' lookup API) and the real store, with a fake clock: receipt and acknowledgement while
held for review (6.2, 6.3), the operator's decision and forwarding (6.2), a second reporter of the same incident
(6.4), the agency's handling of a complex infrastructure incident (7.1, 7.1a, 7.1b), the result with a photo and
the reporters told (7.4), one rating each, a dispute that reopens the case, the result again, a recurrence after
the incident closed, and the escalation digest when nobody answers it. (7.2 and 7.3 are walked in
test_clocks.py.) Only the classifier is stood in for: its decision is written as the classify stage writes it."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from channels.registry import build_channels
from classifier.review.decisions import decide
from config.loader import validate
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage
from dispatch import service
from dispatch.clocks import overdue, tick
from dispatch.delivery import DeliverySender
from ingest.app import AppContext
from ingest.records import Classification, Place
from ingest.store import Store
from ingest.worker import StageWorker
from tests import seed as seed_stages

from .conftest import SECRET_A

HOUR, DAY, MINUTE = 3600.0, 86400.0, 60.0
TOKEN = "tok-sawaco-walk"
PHOTO = {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}
BASE = np.random.default_rng(5).standard_normal(384).astype(np.float32)


# The dispatch services each test's context built, by context (the context has no slot for them).
SERVICES: dict[int, list[Any]] = {}


@pytest.fixture
async def daemon(dstore: Store, directory, receiver, sms_gateway) -> AsyncIterator[tuple[AppContext, str]]:
    hook = {"kind": "webhook", "name": "main", "url": receiver.url, "secrets": [SECRET_A], "allow_private": True,
            "timeout_seconds": 1.0}
    raw = {"http": {"public_base_url": "https://1022.example.vn"},
           "channels": [{"kind": "open311", "name": "app"}],
           "dispatch": {"agencies": {"sawaco": {"targets": [hook], "escalation": {"sms": ["0909000999"]}},
                                     "van-hanh-1022": {"targets": [dict(hook, name="op")]}},
                        "sms": {"url": sms_gateway.url, "token": "sms-token", "allow_private": True}},
           "secrets": {"agency.sawaco": TOKEN}}
    app = web.Application()
    ctx = AppContext(settings=validate(raw, {}), directory=directory, store=dstore, clock=dstore.clock, http=app)
    build_channels(ctx)
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


async def pump(ctx: AppContext, matcher: IncidentMatcher) -> None:
    dedupe = StageWorker(ctx.store, STAGE, DedupeStage(ctx.store, matcher).handle)
    for _ in range(10):
        n = await dedupe.run_once() + await svc(ctx, "dispatch").worker.run_once()
        n += await svc(ctx, "dispatch-notify").worker.run_once() + await svc(ctx, "dispatch-delivery").run_once()
        if not n:
            return


async def report(http: aiohttp.ClientSession, base: str, text: str, phone: str, device: str) -> int:
    async with http.post(f"{base}/open311/v2/requests.json", json={
            "service_code": "water_supply", "description": text, "address_string": "20 Lê Lợi, Quận 1",
            "phone": phone, "device_id": device}) as resp:
        assert resp.status == 201, await resp.text()
        return int((await resp.json())[0]["service_request_id"])


async def classify(store: Store, rid: int, *, review: bool = False, seed: int = 0) -> None:
    """What the classify stage writes, by its own code (tests/seed.py): the decision, the vector, the next job."""
    cls = Classification(status="review" if review else "routed", topic="water_supply", category="infrastructure",
                         agency="sawaco", confidence=0.6 if review else 0.97,
                         place=Place(district="quan-1", street="le loi", house_number="20"))
    vec = BASE + 0.02 * np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    await seed_stages.classify(store, rid, cls, (vec / np.linalg.norm(vec)).astype(np.float32))


async def answer(http: aiohttp.ClientSession, base: str, case_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(f"{base}/api/v1/agency/cases/{case_id}/answers", json=body,
                         headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        return resp.status, await resp.json()


async def clocks(store: Store, case_id: str | None = None, report_id: int | None = None) -> dict[str, str]:
    rows = await store.fetchall("SELECT kind, state FROM deadlines WHERE case_id IS ? OR report_id IS ? ORDER BY id",
                                (case_id, report_id))
    return {r["kind"]: r["state"] for r in rows}


def texts_to(sms_gateway: Any, phone: str) -> list[str]:
    return [m["text"] for m in sms_gateway.messages if m["to"] == phone]


async def test_one_report_through_every_article(daemon, receiver, sms_gateway):
    ctx, base = daemon
    store, clock = ctx.store, ctx.clock
    matcher = IncidentMatcher(store)
    async with aiohttp.ClientSession() as http:
        # Art. 6.1-6.2: received on the app; the classifier is unsure, so it waits for an operator. The reporter
        # is told at once, and the operator unit's hour runs from receipt (6.3).
        a = await report(http, base, "Ống nước bể trước nhà số 20 Lê Lợi, nước tràn ra đường", "0901000001", "dev-a")
        await classify(store, a, review=True, seed=1)
        clock.advance(MINUTE)
        await pump(ctx, matcher)
        assert "đang được phân loại" in texts_to(sms_gateway, "0901000001")[0]
        assert await clocks(store, report_id=a) == {"acknowledge": "met", "operator_guidance": "open"}

        # 6.3: the operator routes it 20 minutes after receipt: the case is forwarded (6.2) and delivered.
        clock.advance(19 * MINUTE)
        await decide(store, ctx.directory, a, actor="op.lan", topic="water_supply")
        await pump(ctx, matcher)
        case = await store.fetchone("SELECT * FROM cases")
        case_id = case["id"]
        assert (case["agency"], case["state"]) == ("sawaco", "forwarded")
        states = await clocks(store, case_id=case_id)
        assert states["operator_guidance"] == "met" and states["forward"] == "met_late"  # 20 min > 5 min
        assert [b["type"] for b in receiver.accepted.values()] == ["case.created"]

        # 6.4: the same leak from another reporter: recorded, not forwarded again, told within 5 minutes.
        b = await report(http, base, "Lê Lợi quận 1 số 20 bể ống nước chảy lênh láng", "0901000002", "dev-b")
        await classify(store, b, seed=2)
        clock.advance(2 * MINUTE)
        await pump(ctx, matcher)
        assert (await store.get_report(b)).status == "duplicate"
        assert "đã được tiếp nhận trước đó" in texts_to(sms_gateway, "0901000002")[0]
        assert (await clocks(store, report_id=b))["duplicate_notice"] == "met"
        assert len(receiver.accepted) == 1

        # 7.1a, 7.1b: the agency passes it on at once, finds a complex incident, cordons it off in time, and
        # records an expected completion time (the fix clock is met by that, a completion clock starts).
        assert (await answer(http, base, case_id, {"kind": "acknowledged"}))[0] == 201
        clock.advance(40 * MINUTE)
        assert (await answer(http, base, case_id, {"kind": "verified", "complex": True}))[0] == 201
        clock.advance(30 * MINUTE)
        assert (await answer(http, base, case_id, {"kind": "safety_measures"}))[0] == 201
        status, _ = await answer(http, base, case_id, {"kind": "in_progress",
                                                       "expected_completion": "2026-09-07T17:00:00+07:00"})
        assert status == 201
        states = await clocks(store, case_id=case_id)
        assert {k: states[k] for k in ("subordinate_forward", "site_check", "safety_measures", "fix")} == \
            {"subordinate_forward": "met", "site_check": "met", "safety_measures": "met", "fix": "met"}
        assert states["completion"] == "open"

        # 7.1, 7.4: the result needs a photo of the site; with it the case and the incident close and both
        # reporters get the result with their own link.
        assert (await answer(http, base, case_id, {"kind": "resolved", "note": "Đã thay ống"}))[0] == 409
        status, _ = await answer(http, base, case_id, {"kind": "resolved", "note": "Đã thay ống", "photos": [PHOTO]})
        assert status == 201
        await pump(ctx, matcher)
        assert (await store.fetchone("SELECT state FROM incidents"))["state"] == "closed"
        links = {r["report_id"]: r["token"] for r in await store.fetchall("SELECT * FROM reporter_links")}
        for rid, phone in ((a, "0901000001"), (b, "0901000002")):
            result = texts_to(sms_gateway, phone)[-1]
            assert "Đã thay ống" in result and links[rid] in result

        # 7.4: one rating each, only theirs.
        for rid, score in ((a, 5), (b, 2)):
            async with http.post(f"{base}/api/v1/cases/{links[rid]}/rating", json={"score": score}) as resp:
                assert resp.status == 201
        async with http.post(f"{base}/api/v1/cases/{links[b]}/rating", json={"score": 1}) as resp:
            assert resp.status == 409

        # The second reporter disputes the result two days later: the case reopens at the same agency with a new
        # clock and the dispute attached; the agency resolves it again.
        clock.advance(2 * DAY)
        async with http.post(f"{base}/api/v1/cases/{links[b]}/dispute", json={"reason": "Nước vẫn rò rỉ"}) as resp:
            assert resp.status == 201
        await pump(ctx, matcher)
        disputed = [x["data"] for x in receiver.accepted.values() if x["type"] == "case.disputed"]
        assert disputed[0]["dispute"]["text"] == "Nước vẫn rò rỉ" and disputed[0]["agency"] == "sawaco"
        assert (await store.fetchone("SELECT state FROM incidents"))["state"] == "open"
        status, _ = await answer(http, base, case_id, {"kind": "resolved", "note": "Đã xử lý rò rỉ",
                                                       "photos": [PHOTO]})
        assert status == 201
        await pump(ctx, matcher)

        # Three days after the closure the leak is back: a new incident and case, linked as a recurrence.
        clock.advance(3 * DAY)
        c = await report(http, base, "Ống nước số 20 Lê Lợi quận 1 lại bể, nước tràn ra đường", "0901000003", "dev-c")
        await classify(store, c, seed=3)
        await pump(ctx, matcher)
        new_case = await store.fetchone("SELECT * FROM cases WHERE id!=?", (case_id,))
        recurrence = [x["data"]["recurrence"] for x in receiver.accepted.values()
                      if x["data"]["case_id"] == new_case["id"]][0]
        assert recurrence["case_id"] == case_id and recurrence["days_after_close"] == 3

        # Nobody answers the new case: its clocks escalate to the agency's contacts (one SMS digest per level).
        clock.advance(3 * HOUR)
        await tick(store, svc(ctx, "dispatch-clocks").cfg)
        await svc(ctx, "dispatch-escalations").run_once()
        digests = texts_to(sms_gateway, "0909000999")
        assert len(digests) == 1 and new_case["id"] in digests[0] and "quá hạn" in digests[0]
        assert {o.kind for o in await overdue(store)} >= {"site_check", "fix", "subordinate_forward"}
        # The whole history is on the first report's timeline.
        kinds = [r["kind"] for r in await store.fetchall("SELECT kind FROM events WHERE report_id=? ORDER BY id", (a,))]
        for kind in ("incident", "case_created", "agency_answer", "case_closed", "rating"):
            assert kind in kinds, kinds
        assert json.loads((await store.fetchone("SELECT data FROM events WHERE kind='case_disputed'"))["data"])[
            "previous"]["result"] == "Đã thay ống"
