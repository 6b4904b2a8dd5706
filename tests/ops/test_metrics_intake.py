"""The intake guards in /metrics: bounded quarantine, records refused alone, a store outage, HTTP refusals."""
from __future__ import annotations

from ingest.limits import REFUSALS
from ingest.store import QuarantineLimits, Store
from ops.metrics import OpsMetrics


async def test_quarantine_bounds_and_refusals_are_exposed(store: Store) -> None:
    store.quarantine_limits = QuarantineLimits(head_bytes=10, max_bytes=25, max_rows=100)
    for i in range(4):
        await store.quarantine("app", b"%d" % i * 50, f"bad {i}")
    REFUSALS[("rate_limited", "ip")] += 1
    text = await OpsMetrics(store, cache_seconds=0).render()
    assert "hcmc1022_quarantine_rows 4.0" in text
    assert "hcmc1022_quarantine_head_bytes 20.0" in text
    assert 'hcmc1022_quarantine_evictions_total{kind="head"} 2.0' in text
    assert "hcmc1022_store_writes_failing 0.0" in text and "hcmc1022_records_refused_total 0.0" in text
    assert 'hcmc1022_http_refusals_total{key="ip",reason="rate_limited"}' in text
