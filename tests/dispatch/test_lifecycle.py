"""The incident's life with its case (Art. 6.4, 7.4): reports while the case is open join it; the incident closes
when the case closes; the same place and problem reported after that opens a new incident and case, linked to
the old one as a recurrence that the agency and operators see. Dedupe and dispatch on one real store, agency
answers over the real HTTP API, time moved by the fake clock."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from classifier.review.decisions import decide, review_queue
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage
from dispatch.cases import public_ref
from ingest.clock import iso
from ingest.records import Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from ingest.worker import StageWorker
from tests import seed

from .test_flow import TOKENS, answer, app_ctx, pump  # noqa: F401  (app_ctx is a fixture)

DAY = 86400.0
BASE = np.random.default_rng(11).standard_normal(384).astype(np.float32)


def _vec(seed: int, base: np.ndarray = BASE) -> np.ndarray:
    v = base + 0.02 * np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


_keys = iter(range(1, 10_000))


async def classified_report(store: Store, text: str, *, status: str = "routed", channel: str = "email",
                            base: np.ndarray = BASE, street: str = "le loi", topic: str = "water_supply",
                            category: str = "infrastructure", agency: str = "sawaco") -> int:
    """What the classify stage leaves behind for a report on Lê Lợi, a water-main one unless told (its own writes,
    tests/seed.py): columns, vector, a dedupe job."""
    n = next(_keys)
    msg = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"lc{n}",
                         received_at=iso(store.clock.now()), text=text,
                         reporter=Reporter(name="Lê Thị Hoa", phone=f"09011100{n:02d}", email=f"hoa{n}@example.vn"))
    rid = await seed.submit(store, msg)
    cls = Classification(status=status, topic=topic, category=category, agency=agency,
                         confidence=0.95, place=Place(district="quan-1", street=street))
    await seed.classify(store, rid, cls, _vec(n, base))  # its dedupe job waits
    return rid


async def dedupe(store: Store, matcher: IncidentMatcher) -> None:
    worker = StageWorker(store, STAGE, DedupeStage(store, matcher).handle)
    while await worker.run_once():
        pass


async def water_case(ctx, matcher: IncidentMatcher) -> tuple[int, Any]:
    """The first report of the water-main leak on Lê Lợi, routed to its case: (report, case row)."""
    first = await classified_report(ctx.store, "Ống nước bể trước số 20 Lê Lợi quận 1, nước tràn ra đường")
    await dedupe(ctx.store, matcher)
    await pump(ctx)
    return first, await ctx.store.fetchone("SELECT * FROM cases")


async def held_for_review_with_a_case(ctx, matcher: IncidentMatcher, text: str) -> int:
    """A water-main report with its case, and a report (`text`) held for review that joined its incident."""
    await classified_report(ctx.store, "Ống nước bể trước số 20 Lê Lợi quận 1, nước tràn ra đường")
    held = await classified_report(ctx.store, text, status="review")
    await dedupe(ctx.store, matcher)
    await pump(ctx)
    return held


async def test_incident_closes_with_its_case_and_a_later_report_is_a_recurrence(app_ctx, receiver):  # noqa: F811
    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    first, case = await water_case(ctx, matcher)
    assert case["incident_id"] == "INC-000001"

    # While the case is open, another report of the same leak joins it (a duplicate, nothing dispatched).
    ctx.clock.advance(3600)
    joined = await classified_report(store, "Lê Lợi quận 1 trước nhà số 20 bể ống nước, nước chảy lênh láng")
    await dedupe(store, matcher)
    await pump(ctx)
    assert (await store.get_report(joined)).incident_id == "INC-000001"
    assert (await store.get_report(joined)).status == "duplicate"
    assert len(await store.fetchall("SELECT id FROM cases")) == 1

    status, _ = await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "resolved", "note": "Đã thay ống",
                             "photos": [{"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}]})
    assert status == 201
    await pump(ctx)
    await dedupe(store, matcher)  # the incident is dedupe's: it closes from dedupe's queue, after the case
    inc = await store.fetchone("SELECT state, closed_as FROM incidents WHERE id='INC-000001'")
    assert (inc["state"], inc["closed_as"]) == ("closed", "resolved")
    assert {(await store.get_report(r)).status for r in (first, joined)} == {"closed"}

    # Three days later the same leak is reported again: a new incident, a new case, linked as a recurrence.
    ctx.clock.advance(3 * DAY)
    again = await classified_report(store, "Ống nước trước số 20 Lê Lợi quận 1 lại bể, nước tràn ra đường")
    await dedupe(store, matcher)
    await pump(ctx)
    report = await store.get_report(again)
    assert report.incident_id == "INC-000002" and report.status == "dispatched"
    inc2 = await store.fetchone("SELECT recurrence_of FROM incidents WHERE id='INC-000002'")
    assert inc2["recurrence_of"] == "INC-000001"
    case2 = await store.fetchone("SELECT * FROM cases WHERE incident_id='INC-000002'")
    assert case2["state"] == "forwarded" and case2["agency"] == "sawaco"
    # The agency sees it in the delivery...
    created = [b["data"] for b in receiver.accepted.values() if b["data"]["case_id"] == case2["id"]]
    assert created and created[0]["recurrence"]["incident_id"] == "INC-000001"
    assert created[0]["recurrence"]["days_after_close"] == 3
    assert created[0]["recurrence"]["summary_en"] == "reported again 3 days after it was closed as resolved"
    # ...operators in the report's timeline, and the reporter is told it was forwarded, not "being handled".
    events = await store.fetchall("SELECT kind, data FROM events WHERE report_id=? AND kind='case_created'", (again,))
    assert json.loads(events[0]["data"])["recurrence_of"] == "INC-000001"
    sent = ctx.replies.get("email").sent
    assert any(rid == again and public_ref(case2["token"]) in text for rid, text in sent)
    assert not any(rid == again and "đang được xử lý" in text for rid, text in sent)

    # A further report while the new case is open joins the new incident, not the closed one.
    ctx.clock.advance(3600)
    fourth = await classified_report(store, "Số 20 Lê Lợi quận 1 ống nước bể lại, nước ngập lề đường")
    await dedupe(store, matcher)
    assert (await store.get_report(fourth)).incident_id == "INC-000002"


async def test_a_report_in_review_is_acknowledged_and_shares_the_result_if_the_case_closed_meanwhile(
        app_ctx):  # noqa: F811
    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    held = await held_for_review_with_a_case(ctx, matcher, "Lê Lợi q1 số 20 bể ống nước")
    # Art. 6: acknowledged within minutes although no operator has classified it yet.
    assert any(rid == held and "đang được phân loại" in text for rid, text in ctx.replies.get("email").sent)
    case = await store.fetchone("SELECT * FROM cases")
    assert (await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "false_report"}))[0] == 201
    await pump(ctx)
    await dedupe(store, matcher)
    # The case's closing does not decide for the operator: the report is still theirs to review, unanswered.
    assert (await store.get_report(held)).status == "review"
    assert held in [item.report_id for item in await review_queue(store)]
    assert not any(rid == held and "không ghi nhận" in text for rid, text in ctx.replies.get("email").sent)
    # The operator then confirms the routing (the review stage's own decision): it shares the closed result.
    await decide(store, ctx.directory, held, actor="op.lan", topic="water_supply")
    await dedupe(store, matcher)
    await pump(ctx)
    assert (await store.get_report(held)).status == "closed"
    assert any(rid == held and "không ghi nhận" in text for rid, text in ctx.replies.get("email").sent)


async def test_a_report_that_joins_as_its_case_closes_shares_the_result(app_ctx):  # noqa: F811
    """Dedupe closes the incident from its queue, after the reports queued before the case closed: such a report
    joins the incident while its case is already closed. Its reporter is not left a duplicate of a case that no
    longer runs: they get the result like every reporter of the incident."""
    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    await classified_report(store, "Ống nước bể trước số 20 Lê Lợi quận 1, nước tràn ra đường")
    await dedupe(store, matcher)
    await pump(ctx)
    case = await store.fetchone("SELECT * FROM cases")
    ctx.clock.advance(3600)
    late = await classified_report(store, "Lê Lợi quận 1 trước nhà số 20 bể ống nước, nước chảy lênh láng")
    # Its dedupe job waits while the agency's answer closes the case (and queues the incident's closing after it).
    assert (await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "false_report"}))[0] == 201
    await dedupe(store, matcher)
    await pump(ctx)
    report = await store.get_report(late)
    assert report.incident_id == "INC-000001" and report.status == "closed"
    assert (await store.fetchone("SELECT state FROM incidents WHERE id='INC-000001'"))["state"] == "closed"
    assert any(rid == late and "không ghi nhận" in text for rid, text in ctx.replies.get("email").sent)


async def test_a_report_queued_before_a_disputes_reopening_joins_the_reopened_incident(app_ctx):  # noqa: F811
    """The reporter disputes the result while another report of the same leak waits in dedupe's queue ahead of the
    incident's reopening: it must join the reopened case, not open a recurrence (a second case at the same agency
    for the same leak)."""
    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    first, case = await water_case(ctx, matcher)
    assert (await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "resolved", "note": "Đã thay ống",
            "photos": [{"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}]}))[0] == 201
    await pump(ctx)
    await dedupe(store, matcher)
    ctx.clock.advance(3600)
    waiting = await classified_report(store, "Lê Lợi quận 1 trước nhà số 20 bể ống nước, nước chảy lênh láng")
    await ctx.published.case_dispute(report_id=first, case_id=case["id"], reason="Ống nước vẫn còn bể")
    await dedupe(store, matcher)
    await pump(ctx)
    report = await store.get_report(waiting)
    assert (report.incident_id, report.status) == ("INC-000001", "duplicate")
    assert [r["id"] for r in await store.fetchall("SELECT id FROM cases")] == [case["id"]]
    assert (await store.fetchone("SELECT state FROM incidents WHERE id='INC-000001'"))["state"] == "open"
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM incidents"))["n"] == 1


async def test_a_report_the_operator_finds_about_something_else_leaves_the_incident_it_joined_in_review(
        app_ctx):  # noqa: F811
    """Held for review, a report joins the incident the model's topic points to. The operator decides it is about
    another problem: it must reach that problem's agency, not wait as a duplicate of a case that is not about it."""
    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    held = await held_for_review_with_a_case(ctx, matcher, "Lê Lợi q1 số 20 quán karaoke hát tới 2 giờ sáng")
    assert (await store.get_report(held)).incident_id == "INC-000001"
    decided = await decide(store, ctx.directory, held, actor="op.lan", topic="noise")
    await dedupe(store, matcher)
    await pump(ctx)
    report = await store.get_report(held)
    assert report.incident_id == "INC-000002" and report.status == "dispatched"
    case = await store.fetchone("SELECT * FROM cases WHERE incident_id='INC-000002'")
    assert (case["topic"], case["agency"]) == ("noise", decided.agency) and decided.agency != "sawaco"
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM incident_reports WHERE incident_id='INC-000001'"))["n"] == 1


async def test_a_replayed_dispatch_job_never_attaches_its_report_to_a_closed_case(app_ctx):  # noqa: F811
    """A report's dispatch job dies; an operator merges an incident with a case into its incident, the case is
    resolved and the report told the result; then the dead job is replayed. Dispatch finds the incident's case
    closed: the report must stay closed with the result it has, not be told it is a duplicate being handled."""
    from dedupe.operations import merge

    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    other = np.random.default_rng(97).standard_normal(384).astype(np.float32)
    stranded = await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=other,
                                       street="hai ba trung")
    await dedupe(store, matcher)
    (job,) = await store.queue.lease("dispatch", 1, 60)  # its dispatch job fails for good
    assert await store.queue.fail(job, "database is locked", retry_in=0, dead=True)
    _, case = await water_case(ctx, matcher)
    await merge(store, "INC-000001", case["incident_id"], actor="op-lan")
    await pump(ctx)
    assert (await store.fetchone("SELECT incident_id FROM cases"))["incident_id"] == "INC-000001"
    assert (await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "false_report"}))[0] == 201
    await pump(ctx)
    await dedupe(store, matcher)
    assert (await store.get_report(stranded)).status == "closed"
    told = [text for rid, text in ctx.replies.get("email").sent if rid == stranded]
    assert any("không ghi nhận" in text for text in told)

    assert await store.queue.replay("dispatch") == 1
    await pump(ctx)
    assert (await store.get_report(stranded)).status == "closed"
    assert [text for rid, text in ctx.replies.get("email").sent if rid == stranded] == told
    assert [r["id"] for r in await store.fetchall("SELECT id FROM cases")] == [case["id"]]


async def test_a_report_alone_in_the_incident_it_opened_in_review_joins_the_open_incident_of_its_real_problem(
        app_ctx):  # noqa: F811
    """A karaoke complaint the model took for a water leak opens its own incident while it waits for review; an
    incident of that karaoke is already open with its case. The operator's topic sends it there (a duplicate, no
    second case at the ward), and the incident it leaves empty is retired into that one, never open again."""
    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    noise = np.random.default_rng(96).standard_normal(384).astype(np.float32)
    await classified_report(store, "Quán karaoke số 20 Lê Lợi quận 1 hát ồn ào tới 2 giờ sáng", base=noise,
                            topic="noise", category="civic", agency="ubnd-quan-1")
    held = await classified_report(store, "Lê Lợi q1 số 20 quán karaoke hát tới 2 giờ sáng", base=noise,
                                   status="review")
    await dedupe(store, matcher)
    await pump(ctx)
    assert (await store.get_report(held)).incident_id == "INC-000002"
    await decide(store, ctx.directory, held, actor="op.lan", topic="noise")
    await dedupe(store, matcher)
    await pump(ctx)
    report = await store.get_report(held)
    assert (report.incident_id, report.status) == ("INC-000001", "duplicate")
    assert [r["incident_id"] for r in await store.fetchall("SELECT incident_id FROM cases")] == ["INC-000001"]
    left = await store.fetchone("SELECT * FROM incidents WHERE id='INC-000002'")
    assert (left["state"], left["merged_into"], left["first_report_id"]) == ("merged", "INC-000001", held)


async def test_the_next_report_of_a_reclassified_reports_problem_joins_the_incident_it_opened(app_ctx):  # noqa: F811
    """A karaoke complaint the model took for a water leak, reclassified in review, opens its incident under the
    operator's topic. The live window must hold it under that topic too (as one rebuilt from the store does): the
    next report of the karaoke joins that incident instead of opening a second case at the ward."""
    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    noise = np.random.default_rng(96).standard_normal(384).astype(np.float32)
    held = await classified_report(store, "Lê Lợi q1 số 20 quán karaoke hát tới 2 giờ sáng", base=noise,
                                   status="review")  # the model: water_supply
    await dedupe(store, matcher)
    await pump(ctx)
    await decide(store, ctx.directory, held, actor="op.lan", topic="noise")
    await dedupe(store, matcher)
    await pump(ctx)
    opened = (await store.get_report(held)).incident_id
    ctx.clock.advance(600)
    later = await classified_report(store, "Quán karaoke số 20 Lê Lợi quận 1 hát ồn ào tới 2 giờ sáng", base=noise,
                                    topic="noise", category="civic", agency="ubnd-quan-1")
    await dedupe(store, matcher)
    await pump(ctx)
    assert (await store.get_report(later)).incident_id == opened
    assert len(await store.fetchall("SELECT id FROM cases")) == 1


async def test_a_split_cannot_take_the_report_that_opened_the_incidents_case(app_ctx):  # noqa: F811
    """The case carries its first report (its text, place and reporter go to the agency). Split off into a new
    incident, that report would open a second case while still being the first one's: the operator splits the
    other reports off instead, and nothing changes."""
    from dedupe.operations import IncidentError, split

    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    first, case = await water_case(ctx, matcher)
    ctx.clock.advance(3600)
    joined = await classified_report(store, "Lê Lợi quận 1 trước nhà số 20 bể ống nước, nước chảy lênh láng")
    await dedupe(store, matcher)
    with pytest.raises(IncidentError, match="opened"):
        await split(store, "INC-000001", [first], actor="op-lan")
    await pump(ctx)
    assert [(r["id"], r["report_id"]) for r in await store.fetchall("SELECT id, report_id FROM cases")] == [
        (case["id"], first)]
    assert {(await store.get_report(r)).incident_id for r in (first, joined)} == {"INC-000001"}
    # The other way round is the same partition, and the part that leaves gets its own case.
    assert await split(store, "INC-000001", [joined], actor="op-lan") == "INC-000002"
    await pump(ctx)
    assert [r["report_id"] for r in await store.fetchall("SELECT report_id FROM cases ORDER BY id")] == [first, joined]


async def test_merge_closes_the_absorbed_case_and_tells_its_agency(app_ctx, receiver):  # noqa: F811
    from dedupe.operations import merge

    ctx, base = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    await classified_report(store, "Ống nước bể trước số 20 Lê Lợi quận 1, nước tràn ra đường")
    other = np.random.default_rng(99).standard_normal(384).astype(np.float32)
    await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=other, street="hai ba trung")
    await dedupe(store, matcher)
    await pump(ctx)
    cases = {r["incident_id"]: r for r in await store.fetchall("SELECT * FROM cases")}
    assert set(cases) == {"INC-000001", "INC-000002"}

    await merge(store, "INC-000001", "INC-000002", actor="op-lan")
    await pump(ctx)
    absorbed = await store.fetchone("SELECT * FROM cases WHERE incident_id='INC-000002'")
    assert absorbed["state"] == "merged" and absorbed["closed_at"] is not None
    assert not await store.fetchall("SELECT id FROM deadlines WHERE case_id=? AND state IN ('open','missed')",
                                    (absorbed["id"],))
    told = [b["data"] for b in receiver.accepted.values() if b["type"] == "case.merged"]
    assert [(d["case_id"], d["merged_into_case"]) for d in told] == [(absorbed["id"], cases["INC-000001"]["id"])]
    # The agency can no longer answer the merged case; the kept one carries on.
    assert (await answer(base, TOKENS["agency.sawaco"], absorbed["id"], {"kind": "verified"}))[0] == 409
    kept = await store.fetchone("SELECT state FROM cases WHERE incident_id='INC-000001'")
    assert kept["state"] == "forwarded"


async def test_merge_moves_the_case_when_the_kept_incident_has_none(app_ctx):  # noqa: F811
    from dedupe.operations import merge

    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    other = np.random.default_rng(98).standard_normal(384).astype(np.float32)
    await classified_report(store, "Lê Lợi q1 số 20 bể ống nước", status="review")
    await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=other, street="hai ba trung")
    await dedupe(store, matcher)
    await pump(ctx)
    assert [r["incident_id"] for r in await store.fetchall("SELECT incident_id FROM cases")] == ["INC-000002"]
    await merge(store, "INC-000001", "INC-000002", actor="op-lan")
    await pump(ctx)
    case = await store.fetchone("SELECT * FROM cases")
    assert case["incident_id"] == "INC-000001" and case["state"] == "forwarded"


async def test_a_dispatch_job_follows_its_report_into_the_incident_it_was_merged_into(app_ctx, receiver):  # noqa: F811
    """A report opens an incident; before its dispatch job runs, an operator merges that incident into one that
    has a case (then, for a second report, into one that has none). The job must open nothing on the merged,
    retired incident: the report is a duplicate of the kept incident's case, or opens that incident's case."""
    from dedupe.operations import merge

    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    _, case = await water_case(ctx, matcher)
    other = np.random.default_rng(96).standard_normal(384).astype(np.float32)
    late = await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=other,
                                   street="hai ba trung")
    await dedupe(store, matcher)  # INC-000002, its dispatch job waiting
    await merge(store, case["incident_id"], "INC-000002", actor="op-lan")
    await pump(ctx)
    assert [(r["id"], r["incident_id"], r["state"]) for r in await store.fetchall("SELECT * FROM cases")] == [
        (case["id"], case["incident_id"], "forwarded")]
    assert (await store.get_report(late)).status == "duplicate"
    created = [b["data"]["case_id"] for b in receiver.accepted.values() if b["type"] == "case.created"]
    assert created == [case["id"]] and not [b for b in receiver.accepted.values() if b["type"] == "case.merged"]

    third = np.random.default_rng(95).standard_normal(384).astype(np.float32)
    alone = await classified_report(store, "Hẻm 12 Nguyễn Trãi quận 1 vỡ ống nước", base=third, street="nguyen trai")
    fourth = np.random.default_rng(94).standard_normal(384).astype(np.float32)
    await classified_report(store, "Lý Tự Trọng quận 1 nước yếu cả tuần", base=fourth, street="ly tu trong",
                            status="review")
    await dedupe(store, matcher)  # INC-000003 (alone, its dispatch job waiting), INC-000004 (no case: in review)
    await merge(store, "INC-000004", "INC-000003", actor="op-lan")
    await pump(ctx)
    opened = await store.fetchone("SELECT * FROM cases WHERE report_id=?", (alone,))
    assert (opened["incident_id"], opened["state"]) == ("INC-000004", "forwarded")
    assert await store.fetchone("SELECT id FROM cases WHERE incident_id='INC-000003'") is None


async def test_a_reporter_disputes_the_result_on_their_channel_or_the_lookup_page(app_ctx, receiver):  # noqa: F811
    import aiohttp

    from .conftest import seed_report

    ctx, base = app_ctx
    store = ctx.store
    first = await seed_report(store, incident_id="INC-000001")
    await pump(ctx)
    second = await seed_report(store, incident_id="INC-000001", channel="phone",
                               reporter=Reporter(phone="0907000222"))
    case = await store.fetchone("SELECT * FROM cases")
    photo = [{"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}]

    async def resolve() -> None:
        status, _ = await answer(base, TOKENS["agency.sawaco"], case["id"], {"kind": "resolved", "note": "Đã sửa",
                                                                            "photos": photo})
        assert status == 201
        await pump(ctx)

    from ingest.jobs import REPORTER_FOLLOW_UP, ReporterFollowUpJob
    from ingest.queue import decode_payload

    from .test_flow import workers

    async def follow_up(*, report_id: int, text: str, channel: str, proven: bool = True) -> str:
        """As the email channel hands a reporter's reply to dispatch: a job, applied by dispatch's worker."""
        async with store.transaction() as tx:
            await tx.enqueue(REPORTER_FOLLOW_UP, report_id, ReporterFollowUpJob(text=text, channel=channel,
                                                                                proven=proven))
        before = (await store.fetchone("SELECT COUNT(*) AS n FROM disputes"))["n"]
        assert await workers(ctx)["dispatch-reporter-follow-ups"].worker.run_once() == 1
        after = (await store.fetchone("SELECT COUNT(*) AS n FROM disputes"))["n"]
        return "disputed" if after > before else "noted"

    # Nothing to dispute before the result.
    assert await follow_up(report_id=first, text="Vẫn chưa xử lý", channel="email") == "noted"
    await resolve()
    # A thank-you on the reporter's channel is a note; "still not fixed" within 7 days is a dispute.
    assert await follow_up(report_id=first, text="Cảm ơn nhiều!", channel="email") == "noted"
    ctx.clock.advance(2 * DAY)
    # A reply tied to the report by claims alone (a From and a subject's number: channels/email_intake.py) is a
    # note, whatever it says.
    assert await follow_up(report_id=first, text="Ống nước vẫn còn bể, chưa xử lý gì cả", channel="email",
                           proven=False) == "noted"
    assert await follow_up(report_id=first, text="Ống nước vẫn còn bể, chưa xử lý gì cả", channel="email") \
        == "disputed"
    reopened = await store.fetchone("SELECT * FROM cases WHERE id=?", (case["id"],))
    assert (reopened["state"], reopened["agency"], reopened["closed_at"]) == ("forwarded", "sawaco", None)
    # Each change of the case tells dedupe its state version, one more each time: the closing 1, the reopening 2.
    changes = [decode_payload("dedupe", r["payload"]) for r in await store.fetchall(
        "SELECT payload FROM jobs WHERE stage='dedupe' AND subject IN ('close:INC-000001', 'reopen:INC-000001')"
        " ORDER BY id")]
    assert [(c.incident_state, c.version) for c in changes] == [("closed", 1), ("open", 2)]
    assert reopened["state_version"] == 2
    # The incident is dedupe's: it reopens from dedupe's queue, after the closing the resolution queued.
    await dedupe(store, IncidentMatcher(store))
    assert (await store.fetchone("SELECT state FROM incidents WHERE id='INC-000001'"))["state"] == "open"
    # Each report waits as before the closing: the case's own forwarded, the other a duplicate of it (not a
    # second report forwarded to the agency).
    assert [(await store.get_report(r)).status for r in (first, second)] == ["dispatched", "duplicate"]
    # The agency gets the case back with the dispute attached, and a new answer clock runs from now.
    await pump(ctx)
    disputed = [b["data"] for b in receiver.accepted.values() if b["type"] == "case.disputed"]
    assert len(disputed) == 1 and "vẫn còn bể" in disputed[0]["dispute"]["text"]
    assert disputed[0]["dispute"]["previous"]["result"] == "Đã sửa"
    fix = await store.fetchone("SELECT * FROM deadlines WHERE case_id=? AND kind='fix' AND state='open'",
                               (case["id"],))
    assert fix["started_at"] == ctx.clock.now() and fix["due_at"] - fix["started_at"] == 2 * 3600
    assert any(rid == first and "không đồng ý" not in text and "chuyển lại" in text
               for rid, text in ctx.replies.get("email").sent)

    # The second reporter disputes the next result on the lookup page, with their own token.
    await resolve()
    links = {r["report_id"]: r["token"] for r in await store.fetchall("SELECT * FROM reporter_links")}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/api/v1/cases/{links[second]}/dispute", json={"reason": ""}) as resp:
            assert resp.status == 422
        async with s.post(f"{base}/api/v1/cases/{links[second]}/dispute",
                          json={"reason": "Nước vẫn rò rỉ"}) as resp:
            assert resp.status == 201
    assert (await store.fetchone("SELECT state FROM cases"))["state"] == "forwarded"
    disputes = await store.fetchall("SELECT report_id, source FROM disputes ORDER BY id")
    assert [(d["report_id"], d["source"]) for d in disputes] == [(first, "email"), (second, "lookup")]
    # More than 7 days after the result it can no longer be disputed.
    await resolve()
    ctx.clock.advance(8 * DAY)
    async with aiohttp.ClientSession() as s, s.post(f"{base}/api/v1/cases/{links[second]}/dispute",
                                                    json={"reason": "Lại hỏng"}) as resp:
        assert resp.status == 409
    assert await follow_up(report_id=first, text="Vẫn chưa xử lý", channel="email") == "noted"


async def test_a_not_fixed_message_on_the_same_chat_after_the_result_disputes_it(app_ctx, receiver):  # noqa: F811
    """Art. 7.4 on chat: the reporter writes "still not fixed" to the bot after the result; the case goes back to
    the same agency and the message joins their report. A thank-you, or another chat, is a new report."""
    from classifier.service import ClassifyStage

    from .conftest import seed_report

    ctx, base = app_ctx
    store = ctx.store
    first = await seed_report(store, incident_id="INC-000001", channel="telegram",
                              reporter=Reporter(name="Trần Bình", reply_to="chat-77"))
    await pump(ctx)
    case = await store.fetchone("SELECT * FROM cases WHERE incident_id='INC-000001'")
    status, _ = await answer(base, TOKENS["agency.sawaco"], case["id"], {
        "kind": "resolved", "note": "Đã sửa", "photos": [{"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}]})
    assert status == 201
    await pump(ctx)
    assert (await store.get_report(first)).status == "closed"

    stage = ClassifyStage.__new__(ClassifyStage)  # follow-ups and disputes are decided before the model
    stage.ctx, stage._prepared, stage._vectors = ctx, {}, {}

    async def chat(text: str, chat_id: str = "chat-77") -> int:
        msg = InboundMessage(channel="telegram", channel_instance="telegram", idempotency_key=f"d{text}{chat_id}",
                             received_at=iso(store.clock.now()), text=text, reporter=Reporter(reply_to=chat_id))
        return (await store.submit(msg, text.encode(), "text/plain")).report_id

    ctx.clock.advance(DAY)
    thanks = await chat("Cảm ơn các anh nhiều nha")
    stranger = await chat("ong nuoc van chua sua", chat_id="chat-99")
    for rid in (thanks, stranger):
        assert await stage._follow_up(await store.get_report(rid)) is None  # classified as a new report
    assert (await store.fetchone("SELECT state FROM cases WHERE id=?", (case["id"],)))["state"] == "resolved"
    for rid in (thanks, stranger):  # what the classifier made of them, by its own writes: no problem to handle
        await seed.classify(store, rid, Classification(status="out_of_scope", topic="complaint_denunciation",
                                                       category="out_of_scope", agency=None, confidence=0.9))

    ctx.clock.advance(DAY)
    dispute = await chat("ong nuoc van chua sua, nuoc van tran ra duong")
    writes = await stage._follow_up(await store.get_report(dispute))
    assert writes is not None
    async with store.transaction() as tx:
        await writes(tx)
    reopened = await store.fetchone("SELECT * FROM cases WHERE id=?", (case["id"],))
    assert (reopened["state"], reopened["agency"], reopened["closed_at"]) == ("forwarded", "sawaco", None)
    assert (await store.get_report(dispute)).status == "follow_up"
    row = await store.fetchone("SELECT source, text FROM disputes WHERE case_id=?", (case["id"],))
    assert row["source"] == "telegram" and "van chua sua" in row["text"]
    await pump(ctx)
    disputed = [b["data"] for b in receiver.accepted.values() if b["type"] == "case.disputed"]
    assert len(disputed) == 1 and "van chua sua" in disputed[0]["dispute"]["text"]
