"""After d056bab a dispatch job queued for an absorbed incident opens the kept incident's case; the kept incident's
dispatch_report_id still named its own (waiting, then duplicate) report, so a split could move the case's real
report away (a second case for it) while keeping the wrong one. Dispatch now tells dedupe which report carries the
case, through the dedupe queue."""
from __future__ import annotations

import numpy as np

from dedupe.matcher import IncidentMatcher
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
