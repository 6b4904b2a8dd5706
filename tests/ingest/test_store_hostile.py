"""The store under bad records and storage faults: one record's failure stays its own; quarantine stays bounded."""
from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

from collections.abc import AsyncIterator

import pytest

from ingest.errors import RecordError, StorageError
from ingest.store import QuarantineLimits
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[AnyStore]:
    yield await store_factory.open()


async def test_one_unstorable_record_never_fails_its_group_commit(store: AnyStore, make_message) -> None:
    # A lone surrogate cannot be encoded for SQLite: that record alone is refused, its 44 neighbours are stored.
    good = [store.submit(make_message(f"g{i}"), b"r", "text/plain") for i in range(44)]
    bad = store.submit(replace(make_message("bad"), text="x \ud800"), b"r", "text/plain")
    outcomes = await asyncio.gather(*good[:20], bad, *good[20:], return_exceptions=True)
    assert isinstance(outcomes[20], RecordError) and not isinstance(outcomes[20], StorageError)
    stored = [o for i, o in enumerate(outcomes) if i != 20]
    assert all(not isinstance(o, BaseException) and o.created for o in stored), outcomes
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"] == 44
    assert (await store.fetchone("SELECT COUNT(*) AS n FROM jobs"))["n"] == 44
    assert store.records_refused == 1


async def test_a_bad_received_at_is_refused_alone(store: AnyStore, make_message) -> None:
    bad = replace(make_message("late"), received_at="not a time")
    outcomes = await asyncio.gather(store.submit(bad, b"r", "text/plain"),
                                    store.submit(make_message("ok"), b"r", "text/plain"), return_exceptions=True)
    assert isinstance(outcomes[0], RecordError) and outcomes[1].created


async def test_quarantine_keeps_a_head_and_the_hash(store: AnyStore) -> None:
    store.quarantine_limits = QuarantineLimits(head_bytes=100, max_bytes=10_000, max_rows=1000)
    raw = bytes(range(256)) * 40
    qid = await store.quarantine("app", raw, "bad body", {"status": 400})
    row = await store.fetchone("SELECT raw, sha256, size, meta, repeats FROM quarantine WHERE id=?", (qid,))
    assert row["raw"] == raw[:100] and row["size"] == len(raw)
    assert row["sha256"] == hashlib.sha256(raw).hexdigest()
    assert json.loads(row["meta"]) == {"status": 400, "sha256": row["sha256"], "size": len(raw), "truncated": True}
    # The same input refused again for the same reason counts on its row.
    assert await store.quarantine("app", raw, "bad body", {"status": 400}) == qid
    assert (await store.fetchone("SELECT repeats FROM quarantine WHERE id=?", (qid,)))["repeats"] == 2
    assert await store.quarantine("app", raw, "another reason") != qid


async def test_quarantine_total_is_capped_oldest_first(store: AnyStore) -> None:
    store.quarantine_limits = QuarantineLimits(head_bytes=1000, max_bytes=5000, max_rows=8)
    for i in range(20):
        await store.quarantine("app", b"%04d" % i * 250, f"reason {i}")
    rows = await store.fetchall("SELECT reason, length(raw) AS n, meta FROM quarantine ORDER BY id")
    assert len(rows) == 8 and rows[-1]["reason"] == "reason 19" and rows[0]["reason"] == "reason 12"
    assert sum(r["n"] for r in rows) <= 5000
    kept = [r for r in rows if r["n"]]
    assert [r["reason"] for r in kept] == [f"reason {i}" for i in range(15, 20)]
    assert all(json.loads(r["meta"]).get("head_evicted") for r in rows if not r["n"])
    assert store.quarantine_totals() == (8, 5000)
    assert store.quarantine_evicted == {"head": 15, "row": 12}


@pytest.mark.parametrize("reopen", [False, True])
async def test_quarantine_totals_survive_a_restart(store_factory: StoreFactory, reopen: bool) -> None:
    s = await store_factory.open()
    await s.quarantine("app", b"x" * 300, "r1")
    if reopen:
        await s.close()
        s = await store_factory.open()
    await s.quarantine("app", b"y" * 200, "r2")
    assert s.quarantine_totals() == (2, 500)


async def test_quarantine_keeps_a_refusal_whose_reason_and_meta_quote_bytes_that_are_not_unicode(
        store: AnyStore) -> None:
    # Red-team probe: a Content-Type header of bytes that are not UTF-8 (aiohttp hands them over as lone surrogates)
    # was quoted in the refusal's reason and meta; the quarantine row could not be encoded and the client got a 500
    # instead of its 415. What cannot be stored is kept as "?" (the raw bytes keep everything).
    reason = "unsupported content type '\xe9\udcff\udcfe': use form, JSON or multipart"
    qid = await store.quarantine("app", b"body \xff", reason, {"content_type": "\udcff\ud800", "note": "Quận 1"})
    again = await store.quarantine("app", b"body \xff", reason, {"content_type": "\udcff\ud800"})
    assert qid == again
    row = await store.fetchone("SELECT reason, meta, repeats, raw FROM quarantine WHERE id=?", (qid,))
    assert row["reason"] == "unsupported content type '\xe9??': use form, JSON or multipart"
    meta = json.loads(row["meta"])
    assert meta["content_type"] == "??" and meta["note"] == "Quận 1"
    assert row["repeats"] == 2 and bytes(row["raw"]) == b"body \xff"
