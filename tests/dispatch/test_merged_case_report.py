"""After d056bab a dispatch job queued for an absorbed incident opens the kept incident's case; the kept incident's
dispatch_report_id still named its own (waiting, then duplicate) report, so a split could move the case's real
report away (a second case for it) while keeping the wrong one. Dispatch now tells dedupe which report carries the
case, through the dedupe queue."""
from __future__ import annotations

import numpy as np
import pytest

from dedupe.matcher import IncidentMatcher
from ingest.queue import decode_payload
from .test_flow import app_ctx, pump  # noqa: F401
from .test_lifecycle import classified_report, dedupe


async def test_the_kept_incidents_dispatch_report_is_its_cases_report(app_ctx):  # noqa: F811
    from dedupe.operations import merge

    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    a = np.random.default_rng(96).standard_normal(384).astype(np.float32)
    b = np.random.default_rng(95).standard_normal(384).astype(np.float32)
    first = await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=a, street="hai ba trung")
    second = await classified_report(store, "Hẻm 12 Nguyễn Trãi quận 1 vỡ ống nước", base=b, street="nguyen trai")
    await dedupe(store, matcher)  # INC-000001 (first), INC-000002 (second): both dispatch jobs waiting
    await merge(store, "INC-000002", "INC-000001", actor="op-lan")  # first's job is queued ahead of second's
    await pump(ctx)
    await dedupe(store, matcher)  # what dispatch told dedupe
    case = await store.fetchone("SELECT report_id, incident_id FROM cases")
    inc = await store.fetchone("SELECT dispatch_report_id FROM incidents WHERE id='INC-000002'")
    assert case["incident_id"] == "INC-000002"
    assert inc["dispatch_report_id"] == case["report_id"], (first, second)


async def _delay(store, ids: list[int], seconds: float) -> None:
    """Jobs `ids` due `seconds` later (a failed first attempt waiting for its retry, another instance's lag)."""
    async with store.transaction() as tx:
        for job_id in ids:
            await tx.execute("UPDATE jobs SET available_at=available_at+? WHERE id=?", (seconds, job_id))


@pytest.mark.parametrize("dispatch_order", ["queued", "reversed"])
async def test_after_a_second_merge_the_case_ends_on_the_kept_incident_whatever_order_the_jobs_run_in(
        app_ctx, dispatch_order):  # noqa: F811
    """INC-000001 (its case) merged into INC-000002, then INC-000002 into INC-000003 (both without a case: their
    reports held for review). The two merge jobs of dispatch may run in either order (a retry, another instance):
    either way the case moves to INC-000003, where its report is. Before, the second merge's job run first found no
    case on INC-000002 yet and did nothing, and the first's then moved the case onto INC-000002, merged away: the
    case ran on where no report is, and INC-000003 named a case report with no case.
    The case report jobs dispatch queues for dedupe carry no version and need none: every one queued for an incident
    still open names the report of the one case it can hold (cases.incident_id is unique, a case leaves an incident
    only when that one is merged away), so they leave the same in any order, and again when one is replayed."""
    from dedupe.operations import merge

    ctx, _ = app_ctx
    store = ctx.store
    matcher = IncidentMatcher(store)
    rng = np.random.default_rng(7)
    bases = [rng.standard_normal(384).astype(np.float32) for _ in range(3)]
    first = await classified_report(store, "Đường Hai Bà Trưng quận 1 mất nước từ sáng", base=bases[0],
                                    street="hai ba trung")
    await dedupe(store, matcher)
    await pump(ctx)  # CASE-000001 on INC-000001
    await classified_report(store, "Hẻm 12 Nguyễn Trãi quận 1 vỡ ống nước", base=bases[1], street="nguyen trai",
                            status="review")
    await classified_report(store, "Chợ Bến Thành quận 1 nước yếu cả tuần", base=bases[2], street="le loi",
                            status="review")
    await dedupe(store, matcher)  # INC-000002, INC-000003: no case, their reports in review
    await merge(store, "INC-000002", "INC-000001", actor="op-lan")
    await merge(store, "INC-000003", "INC-000002", actor="op-lan")
    merges = [r["id"] for r in await store.fetchall("SELECT id FROM jobs WHERE stage='dispatch' AND state='ready'"
                                                    " ORDER BY id")]
    assert len(merges) == 2
    if dispatch_order == "reversed":
        await _delay(store, merges[:1], 60)
    await pump(ctx)
    ctx.clock.advance(61)
    await pump(ctx)
    case = await store.fetchone("SELECT id, incident_id, report_id, state FROM cases")
    assert (case["id"], case["incident_id"], case["report_id"], case["state"]) == (
        "CASE-000001", "INC-000003", first, "forwarded")
    told = [(decode_payload("dedupe", r["payload"]), r["report_id"]) for r in await store.fetchall(
        "SELECT payload, report_id FROM jobs WHERE stage='dedupe' AND state='ready' ORDER BY id")]
    still_open = {r["id"] for r in await store.fetchall("SELECT id FROM incidents WHERE state='open'")}
    assert [(p.incident_id, rid) for p, rid in told if p.incident_id in still_open] == [("INC-000003", first)]
    assert all(p.case_report and rid == first for p, rid in told)
    await dedupe(store, matcher)
    async with store.transaction() as tx:  # one of them again (a replay, a retry after its commit was lost)
        await tx.enqueue("dedupe", first, told[-1][0])
    await dedupe(store, matcher)
    inc = await store.fetchone("SELECT state, dispatch_report_id FROM incidents WHERE id='INC-000003'")
    assert (inc["state"], inc["dispatch_report_id"]) == ("open", first)
