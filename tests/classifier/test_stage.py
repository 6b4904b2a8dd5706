"""The classify stage end to end on a real store: vectors stored, statuses, next jobs; then operator review."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from classifier.review import decisions as review
from classifier.schema import MIGRATIONS
from classifier.service import ClassifyStage, classification_writes
from config.directory import load_directory
from ingest.app import AppContext
from ingest.jobs import DedupeJob
from ingest.queue import decode_payload
from ingest.records import Classification, InboundMessage, Reporter, from_json
from ingest.store import Store


@pytest.fixture
async def cstore(tmp_path):
    s = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", migrations={"classifier": MIGRATIONS})
    yield s
    await s.close()


def msg(key: str, text: str, **kw) -> InboundMessage:
    return InboundMessage(channel=kw.pop("channel", "sms"), channel_instance="t", idempotency_key=key,
                          received_at="2026-09-01T08:00:00+07:00", text=text, reporter=Reporter(phone="0900000000"),
                          **kw)


async def test_classify_stage_routes_screens_and_stores_vectors(cstore, settings, router):
    from aiohttp import web

    ctx = AppContext(settings=settings, directory=load_directory(), store=cstore, clock=cstore.clock,
                     http=web.Application())
    stage = ClassifyStage(ctx, router)
    await stage.start()
    ids = {}
    for key, text, extra in [
        ("water", "Bể ống nước trên đường Phạm Thế Hiển quận 8, nước phun mạnh tràn vào nhà dân", {}),
        ("waste", "Rác tồn đọng 4 ngày không ai thu gom ở hẻm 12 Quang Trung, phường 10, quận Gò Vấp, đổ tràn ra đường", {}),
        ("abuse", "tụi mày ngu như bò, đm cái tổng đài vô dụng", {}),
        ("gps", "Đèn đường không sáng cả tuần nay, tối om rất nguy hiểm", {"channel": "app", "lat": 10.761701,
                                                                          "lon": 106.668647}),
    ]:
        ids[key] = (await cstore.submit(msg(key, text, **extra), b"raw", "text/plain")).report_id
    while await stage.worker.run_once():
        pass
    rows = {r["id"]: r for r in await cstore.fetchall("SELECT * FROM reports")}
    water = rows[ids["water"]]
    assert water["agency"] == "sawaco" and water["status"] in ("routed", "review")
    assert water["district"] == "quan-8"
    cls = json.loads(water["classification"])
    assert cls["place"]["street"] == "pham the hien"
    waste = rows[ids["waste"]]
    assert waste["topic"] == "waste" and waste["agency"] == "ubnd-go-vap"
    assert rows[ids["abuse"]]["status"] == "rejected"
    assert rows[ids["gps"]]["district"] == "quan-10"
    # One L2-normalised float32 vector per report.
    embs = await cstore.fetchall("SELECT report_id, dim, vector FROM embeddings")
    assert len(embs) == 4
    for e in embs:
        v = np.frombuffer(e["vector"], np.float32)
        assert v.shape == (e["dim"],) and abs(float(np.linalg.norm(v)) - 1) < 1e-3
    jobs = {(j["stage"], j["report_id"]): json.loads(j["payload"])
            for j in await cstore.fetchall("SELECT * FROM jobs WHERE stage!='classify'")}
    assert ("dedupe", ids["water"]) in jobs
    assert jobs[("notify", ids["abuse"])]["template"] == "rejected"
    assert jobs[("notify", ids["abuse"])]["reason"]

    # A report dispatched without review is not the operators' to decide here (it was routed confidently).
    assert rows[ids["waste"]]["status"] == "routed"
    with pytest.raises(review.AlreadyDecided):
        await review.decide(cstore, ctx.directory, ids["waste"], actor="op-lan", topic="noise")
    # Operator review: the waste report, as if it had scored below the threshold; the decision is recorded with
    # who and when, and dedupe re-enqueued.
    waste = from_json(Classification, (await cstore.get_report(ids["waste"])).classification)
    async with cstore.transaction() as tx:  # the stage's own writes of that outcome
        await classification_writes(ids["waste"], dataclasses.replace(waste, status="review"), None, None, None)(tx)
    result = await review.decide(cstore, ctx.directory, ids["waste"], actor="op-lan", topic="illegal_construction")
    assert result.agency == "ubnd-go-vap" and result.status == "routed"
    dec = await cstore.fetchall("SELECT actor, at, topic FROM review_decisions WHERE report_id=?", (ids["waste"],))
    assert dec[0]["actor"] == "op-lan" and dec[0]["topic"] == "illegal_construction" and dec[0]["at"] > 0
    again = await cstore.fetchall("SELECT payload FROM jobs WHERE stage='dedupe' AND report_id=? ORDER BY id",
                                  (ids["waste"],))
    assert decode_payload("dedupe", again[-1]["payload"]) == DedupeJob(after_review=True)
    examples = await review.review_examples(cstore)
    assert [e.topic for e in examples] == ["illegal_construction"]
    info = await review.show(cstore, ids["water"])
    assert info["candidates"] and info["place"]["district"] == "quan-8"


async def test_review_cli_lists_shows_and_decides(cstore, settings, capsys):
    from ingest.records import Candidate, Place

    rid = (await cstore.submit(msg("r1", "có cái gì đó hư ở đầu hẻm"), b"raw", "text/plain")).report_id
    guess = Classification(status="review", topic="road_damage", category="infrastructure",
                           agency="khu-qlgt-do-thi", confidence=0.31, place=Place(),
                           candidates=(Candidate(topic="road_damage", agency="khu-qlgt-do-thi", score=0.31),))
    async with cstore.transaction() as tx:
        await classification_writes(rid, guess, None, None, None)(tx)
    assert await review.review_cli(cstore, settings, ["list"]) == 0
    assert "road_damage" in capsys.readouterr().out
    assert await review.review_cli(cstore, settings, ["decide", str(rid), "--reject", "abusive"]) != 0  # no actor
    assert await review.review_cli(cstore, settings, ["decide", str(rid), "--actor", "op-minh", "--reject",
                                                      "out_of_scope"]) == 0
    row = await cstore.fetchone("SELECT status FROM reports WHERE id=?", (rid,))
    assert row["status"] == "out_of_scope"
    notify = await cstore.fetchone("SELECT payload FROM jobs WHERE stage='notify' AND report_id=?", (rid,))
    assert json.loads(notify["payload"])["template"] == "out_of_scope"
    assert await review.review_cli(cstore, settings, ["list"]) == 0
    assert "empty" in capsys.readouterr().out


async def test_two_operators_deciding_the_same_report_at_once_dispatch_it_once(cstore, settings):
    from config.directory import load_directory
    from ingest.records import Candidate, Place

    rid = (await cstore.submit(msg("r2", "rác ở đầu hẻm 5 quận 3 chưa ai gom"), b"raw", "text/plain")).report_id
    guess = Classification(status="review", topic="waste", category="civic", agency="ubnd-quan-3", confidence=0.4,
                           place=Place(district="quan-3"),
                           candidates=(Candidate(topic="waste", agency="ubnd-quan-3", score=0.4),))
    async with cstore.transaction() as tx:
        await classification_writes(rid, guess, None, None, None)(tx)
    directory = load_directory(settings.data.agencies)
    outcomes = await asyncio.gather(
        review.decide(cstore, directory, rid, actor="op-lan", topic="waste"),
        review.decide(cstore, directory, rid, actor="op-minh", topic="noise"), return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, Classification)]
    lost = [o for o in outcomes if isinstance(o, review.AlreadyDecided)]
    assert len(won) == 1 and len(lost) == 1
    decisions = await cstore.fetchall("SELECT actor, topic FROM review_decisions WHERE report_id=?", (rid,))
    assert len(decisions) == 1 and decisions[0]["topic"] == won[0].topic
    jobs = await cstore.fetchall("SELECT payload FROM jobs WHERE stage='dedupe' AND report_id=?", (rid,))
    assert [decode_payload("dedupe", j["payload"]) for j in jobs].count(DedupeJob(after_review=True)) == 1
    # Later, from the command line: refused with the reason, nothing changes.
    assert await review.review_cli(cstore, settings, ["decide", str(rid), "--actor", "op-hoa", "--reject",
                                                      "abusive"]) == 1
    assert (await cstore.fetchone("SELECT topic FROM reports WHERE id=?", (rid,)))["topic"] == won[0].topic
