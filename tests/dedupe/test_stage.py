"""The dedupe stage end to end on a real store: dispatch for the first report, duplicate_ack for the next,
the window index rebuilt equal to the grown one, expiry, and operators' merge/split decisions."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dedupe import schema
from dedupe.evaluate import pairwise_scores
from dedupe.features import load_view
from dedupe.index import VectorWindow
from dedupe.matcher import IncidentMatcher
from dedupe.operations import incident_cli, merge, split
from dedupe.service import STAGE, DedupeStage
from ingest.queue import decode_payload
from ingest.clock import FakeClock, iso
from ingest.records import Candidate, Classification, InboundMessage, Place, to_json
from ingest.store import Store
from ingest.worker import StageWorker
from config.schema import Settings

T0 = 1_790_000_000.0
HOUR = 3600.0


async def _store(tmp_path: Path, clock: FakeClock) -> Store:
    return await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", clock=clock,
                            migrations={"dedupe": schema.MIGRATIONS})


def _vec(seed: int, base: np.ndarray | None = None, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(384).astype(np.float32) if base is None else base + noise * rng.standard_normal(384)
    return (v / np.linalg.norm(v)).astype(np.float32)


async def _classified(store: Store, key: str, at: float, text: str, *, topic: str, district: str | None,
                      vector: np.ndarray, status: str = "routed", street: str | None = None,
                      candidates: tuple[Candidate, ...] = ()) -> int:
    """What the classify stage leaves behind: status, columns, classification JSON, vector, a dedupe job."""
    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key=key, received_at=iso(at), text=text)
    rid = (await store.submit(msg, text.encode(), "text/plain")).report_id
    cls = Classification(status="route" if status == "routed" else status, topic=topic, category="infrastructure",
                         agency="thoat-nuoc", confidence=0.9, place=Place(district=district, street=street),
                         candidates=candidates)
    async with store.transaction() as tx:
        await tx.execute("UPDATE jobs SET state='done' WHERE report_id=? AND stage='classify'", (rid,))
        await tx.execute("UPDATE reports SET status=?, topic=?, district=?, classification=? WHERE id=?",
                         (status, topic, district, to_json(cls), rid))
        await tx.execute("INSERT INTO embeddings VALUES (?,?,?,?)", (rid, "e5", 384, vector.tobytes()))
        await tx.enqueue(STAGE, rid)
    return rid


async def _drain(store: Store, matcher: IncidentMatcher) -> None:
    worker = StageWorker(store, STAGE, DedupeStage(store, matcher).handle)
    while await worker.run_once():
        pass


async def _jobs(store: Store, rid: int) -> list[tuple[str, dict]]:
    """The dispatch and notify jobs queued for a report, each payload as its record's fields that are set."""
    rows = await store.fetchall("SELECT stage, payload FROM jobs WHERE report_id=? AND stage IN ('dispatch','notify')"
                                " ORDER BY id", (rid,))
    return [(r["stage"], {k: v for k, v in asdict(decode_payload(r["stage"], r["payload"])).items() if v is not None})
            for r in rows]


async def _flood_reports(store: Store) -> tuple[int, int, int]:
    base = _vec(1)
    first = await _classified(store, "a", T0, "Đường Nguyễn Hữu Cảnh ngập sâu 50cm đoạn gần chân cầu Thủ Thiêm",
                              topic="drainage", district="binh-thanh", vector=base, street="nguyen huu canh")
    second = await _classified(store, "b", T0 + 0.5 * HOUR, "Nguyen Huu Canh doan chan cau Thu Thiem ngap toi yen xe",
                               topic="drainage", district="binh-thanh", vector=_vec(2, base, 0.02),
                               street="nguyen huu canh")
    other = await _classified(store, "c", T0 + HOUR, "Đường Điện Biên Phủ gần Hàng Xanh đèn đường tắt hết",
                              topic="street_lighting", district="binh-thanh", vector=_vec(3, base, 0.05),
                              street="dien bien phu")
    return first, second, other


async def test_first_report_is_dispatched_and_the_next_is_a_duplicate(tmp_path: Path) -> None:
    store = await _store(tmp_path, FakeClock(T0 + 2 * HOUR))
    try:
        first, second, other = await _flood_reports(store)
        await _drain(store, IncidentMatcher(store))
        r1, r2, r3 = [await store.get_report(i) for i in (first, second, other)]
        assert r1 and r2 and r3
        assert r1.incident_id == "INC-000001" and r1.status == "routed"
        assert await _jobs(store, first) == [("dispatch", {"incident_id": "INC-000001"})]
        assert r2.incident_id == "INC-000001" and r2.status == "duplicate"
        assert await _jobs(store, second) == [("notify", {"template": "duplicate_ack", "incident_id": "INC-000001"})]
        # Same district, another street and problem: its own incident, dispatched.
        assert r3.incident_id == "INC-000002"
        assert await _jobs(store, other) == [("dispatch", {"incident_id": "INC-000002"})]
    finally:
        await store.close()


async def test_a_report_the_classifier_hesitated_on_joins_a_report_of_its_second_topic(tmp_path: Path) -> None:
    # The first report went to review torn between encroachment and waste; the second, confidently waste, is
    # the same heap of rubbish. It must be searched for in the encroachment block and join that incident; an
    # encroachment report of the same place that never hesitated stays apart from a later noise report.
    store = await _store(tmp_path, FakeClock(T0 + 2 * HOUR))
    try:
        base = _vec(7)
        first = await _classified(
            store, "a", T0, "Vỉa hè Lê Văn Sỹ trước số 212 bị đổ rác thành đống, người đi bộ phải xuống lòng đường",
            topic="sidewalk_encroachment", district="quan-3", vector=base, status="review", street="le van sy",
            candidates=(Candidate(topic="sidewalk_encroachment", agency=None, score=0.48),
                        Candidate(topic="waste", agency=None, score=0.41)))
        second = await _classified(
            store, "b", T0 + 0.5 * HOUR, "Dong rac to tren via he Le Van Sy truoc nha 212 boc mui, lan het loi di",
            topic="waste", district="quan-3", vector=_vec(8, base, 0.02), street="le van sy",
            candidates=(Candidate(topic="waste", agency=None, score=0.93),))
        third = await _classified(
            store, "c", T0 + HOUR, "Le Van Sy truoc nha 212 quan nhau hat karaoke on ao, via he bi lan",
            topic="noise", district="quan-3", vector=_vec(9, base, 0.02), street="le van sy",
            candidates=(Candidate(topic="noise", agency=None, score=0.95),))
        await _drain(store, IncidentMatcher(store))
        r1, r2, r3 = [await store.get_report(i) for i in (first, second, third)]
        assert r1 and r2 and r3
        assert r1.incident_id == r2.incident_id == "INC-000001"
        # The routed report joined an incident whose first report is still in review: it triggers the dispatch.
        assert await _jobs(store, second) == [("dispatch", {"incident_id": "INC-000001"})]
        assert r3.incident_id == "INC-000002"
    finally:
        await store.close()


async def test_review_report_gets_an_incident_and_after_review_dispatches_it(tmp_path: Path) -> None:
    store = await _store(tmp_path, FakeClock(T0 + 2 * HOUR))
    try:
        base = _vec(1)
        first = await _classified(store, "a", T0, "Cây đổ chắn ngang đường Võ Văn Tần gần Trương Định",
                                  topic="trees", district="quan-3", vector=base, status="review")
        matcher = IncidentMatcher(store)
        await _drain(store, matcher)
        r1 = await store.get_report(first)
        assert r1 and r1.status == "review" and r1.incident_id == "INC-000001"
        # Acknowledged at once (Art. 6), nothing dispatched while an operator has yet to decide.
        assert await _jobs(store, first) == [("notify", {"template": "received"})]
        # A routed report of the same incident arrives while the first still waits: it opens the case.
        second = await _classified(store, "b", T0 + HOUR, "Cay do chan ngang duong Vo Van Tan gan Truong Dinh",
                                   topic="trees", district="quan-3", vector=_vec(2, base, 0.02))
        await _drain(store, matcher)
        assert await _jobs(store, second) == [("dispatch", {"incident_id": "INC-000001"})]
        # The operator approves the first report: the incident already has its case -> duplicate + ack.
        async with store.transaction() as tx:
            await tx.execute("UPDATE reports SET status='routed' WHERE id=?", (first,))
            await tx.enqueue(STAGE, first, {"after_review": True})
        await _drain(store, matcher)
        r1 = await store.get_report(first)
        assert r1 and r1.status == "duplicate" and r1.incident_id == "INC-000001"
        assert await _jobs(store, first) == [("notify", {"template": "received"}),
                                            ("notify", {"template": "duplicate_ack", "incident_id": "INC-000001"})]
    finally:
        await store.close()


async def test_rebuilt_window_equals_the_grown_one_and_later_matches_still_join(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 2 * HOUR)
    store = await _store(tmp_path, clock)
    try:
        await _flood_reports(store)
        grown = IncidentMatcher(store)
        await _drain(store, grown)
        rebuilt = IncidentMatcher(store)
        assert await rebuilt.rebuild() == 3
        assert grown.index is not None and rebuilt.index is not None
        assert rebuilt.index.report_ids() == grown.index.report_ids() == {1, 2, 3}
        q = _vec(4, _vec(1), 0.02)
        assert ([h.report_id for h in rebuilt.index.search(q, "binh-thanh", 5, T0 + 3 * HOUR)]
                == [h.report_id for h in grown.index.search(q, "binh-thanh", 5, T0 + 3 * HOUR)])
        assert rebuilt._df == grown._df
        # After a restart (the rebuilt matcher) a new report of the flood still joins it.
        late = await _classified(store, "d", T0 + 3 * HOUR, "Nguyễn Hữu Cảnh chân cầu Thủ Thiêm vẫn ngập, xe chết máy",
                                 topic="drainage", district="binh-thanh", vector=q)
        await _drain(store, rebuilt)
        r = await store.get_report(late)
        assert r and r.incident_id == "INC-000001" and r.status == "duplicate"
    finally:
        await store.close()


def test_window_expires_whole_days_and_never_returns_old_reports() -> None:
    window = VectorWindow(384, window_days=7)
    v = _vec(1)
    window.add(1, T0, "quan-1", v)
    window.add(2, T0 + 3 * 86400, "quan-1", v)
    assert {h.report_id for h in window.search(v, "quan-1", 10, T0 + 3 * 86400)} == {1, 2}
    # Eight days on, report 1 is out of the window even before its day is dropped.
    assert {h.report_id for h in window.search(v, "quan-1", 10, T0 + 8 * 86400)} == {2}
    window.add(3, T0 + 9 * 86400, "quan-1", v)
    assert window.expire() == 1 and len(window) == 2
    assert window.add(4, T0, "quan-1", v) is False  # older than the window: refused
    # Another district's reports are not searched; reports with no district are.
    window.add(5, T0 + 9 * 86400, "quan-3", v)
    window.add(6, T0 + 9 * 86400, None, v)
    assert {h.report_id for h in window.search(v, "quan-1", 10, T0 + 9 * 86400)} == {2, 3, 6}


async def test_merge_and_split_are_recorded_and_the_split_part_is_dispatched(tmp_path: Path, capsys) -> None:
    clock = FakeClock(T0 + 2 * HOUR)
    store = await _store(tmp_path, clock)
    try:
        first, second, other = await _flood_reports(store)
        await _drain(store, IncidentMatcher(store))
        assert await merge(store, "INC-000001", "INC-000002", actor="op-lan") == 1
        r3 = await store.get_report(other)
        assert r3 and r3.incident_id == "INC-000001"
        new_id = await split(store, "INC-000001", [other], actor="op-minh")
        assert new_id == "INC-000003"
        r3 = await store.get_report(other)
        assert r3 and r3.incident_id == "INC-000003" and r3.status == "routed"
        assert (await _jobs(store, other))[-1] == ("dispatch", {"incident_id": "INC-000003"})
        decisions = await store.fetchall("SELECT kind, actor, source, target, report_ids FROM incident_decisions"
                                         " ORDER BY id")
        assert [tuple(d) for d in decisions] == [("merge", "op-lan", "INC-000002", "INC-000001", f"[{other}]"),
                                                 ("split", "op-minh", "INC-000001", "INC-000003", f"[{other}]")]
        settings = Settings()
        assert await incident_cli(store, settings, ["show", "INC-000001"]) == 0
        out = capsys.readouterr().out
        assert "merge by op-lan" in out and "split by op-minh" in out
        assert await incident_cli(store, settings, ["split", "INC-000003", "--reports", str(other),
                                                    "--actor", "x"]) == 1  # cannot empty an incident
        assert await incident_cli(store, settings, ["merge", "INC-000001", "INC-000002", "--actor", "x"]) == 1
    finally:
        await store.close()


def test_pairwise_scores_match_the_scoring_tool_definition() -> None:
    s = pairwise_scores(["a", "a", "a", "b", "c"], ["X", "X", None, "Y", "Y"])
    # gold pairs: (0,1),(0,2),(1,2); predicted: (0,1),(3,4); one true pair
    assert (s["incident_p"], s["incident_r"]) == (0.5, 1 / 3)
    assert abs(s["incident_f1"] - 0.4) < 1e-9


async def test_window_features_after_a_rebuild_equal_the_ones_kept_while_matching(tmp_path: Path) -> None:
    """A restart must not change what later reports are compared with: the compact per-report features,
    word counts and vectors rebuilt from the store (in chunks, vectors in bulk) equal the incrementally grown ones,
    including across an expired day and a report with a GPS fix."""
    clock = FakeClock(T0 + 10 * 86400)
    store = await _store(tmp_path, clock)
    try:
        base = _vec(1)
        await _flood_reports(store)
        # Nine days later (the first days fall out of a 7-day window) more reports, one on a known street.
        for n, (text, topic, district) in enumerate([
                ("Cây đổ đè dây điện hẻm 25 đường Lê Văn Sỹ phường 13", "trees", "quan-3"),
                ("Rác ùn ứ đầu hẻm 83/16/4 Nguyễn Văn Linh", "waste", None),
                ("Le Van Sy hem 25 cay do de day dien", "trees", "quan-3")]):
            # Received out of id order (an email read late), so chunks cannot page by id alone.
            at = T0 + 9 * 86400 + (1, 0, 2)[n] * HOUR
            await _classified(store, f"late{n}", at, text, topic=topic, district=district,
                              vector=_vec(10 + n, base, 0.3), street="le van sy" if topic == "trees" else None)
        grown = IncidentMatcher(store)
        await _drain(store, grown)
        rebuilt = IncidentMatcher(store)
        # Chunks of two rows, so the keyset paging and the bulk add are exercised across chunk edges.
        assert await rebuilt.rebuild(chunk=2) == 3  # the window holds only the last three reports
        assert grown.index is not None and rebuilt.index is not None
        assert rebuilt.index.report_ids() == grown.index.report_ids() == {4, 5, 6}
        assert rebuilt._features.keys() == grown._features.keys() == {4, 5, 6}
        for rid in (4, 5, 6):
            assert rebuilt._features[rid] == grown._features[rid]
            np.testing.assert_array_equal(rebuilt.index.vector_of(rid), grown.index.vector_of(rid))
            # The view a candidate is judged from equals the one loaded straight from the store.
            stored = await load_view(store, rid)
            judged = rebuilt._features[rid].view(rid, rebuilt.index.vector_of(rid))
            assert stored is not None and judged.vector is not None and stored.vector is not None
            assert (judged.received_at, judged.topic, judged.district, judged.place, judged.text) == (
                stored.received_at, stored.topic, stored.district, stored.place, stored.text)
            np.testing.assert_array_equal(judged.vector, stored.vector)
        assert +rebuilt._df == +grown._df and rebuilt._n_docs == grown._n_docs == 3
        assert rebuilt._docs_by_day == +grown._docs_by_day
        # The third late report joined the first (same alley, same street): both matchers agree on it.
        r = await store.get_report(6)
        assert r and r.incident_id == (await store.get_report(4)).incident_id  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_a_report_whose_best_match_is_closed_joins_another_open_incident_or_opens_one(tmp_path: Path) -> None:
    """The store is read only for the policy's winner; when the winner's incident is closed, the stage falls
    back to the candidates whose incidents are open, as if it had read them all."""
    store = await _store(tmp_path, FakeClock(T0 + 5 * HOUR))
    try:
        first, second, _ = await _flood_reports(store)
        matcher = IncidentMatcher(store)
        await _drain(store, matcher)
        # An operator splits the second report off into its own incident, then the first one's case closes.
        assert await split(store, "INC-000001", [second], actor="op-lan") == "INC-000003"
        async with store.transaction() as tx:
            await tx.execute("UPDATE incidents SET state='closed' WHERE id='INC-000001'")
        # A copy of the first report: the first is the most probable match, but only the second is open.
        again = await _classified(store, "e", T0 + 2 * HOUR, "Đường Nguyễn Hữu Cảnh ngập sâu 50cm đoạn gần chân cầu"
                                  " Thủ Thiêm", topic="drainage", district="binh-thanh", vector=_vec(1),
                                  street="nguyen huu canh")
        await _drain(store, matcher)
        r = await store.get_report(again)
        assert r and r.incident_id == "INC-000003" and r.status == "duplicate"
        # Once no incident of the flood is open, the next report opens a new one and is dispatched.
        async with store.transaction() as tx:
            await tx.execute("UPDATE incidents SET state='closed' WHERE id='INC-000003'")
        later = await _classified(store, "f", T0 + 3 * HOUR, "Nguyễn Hữu Cảnh chân cầu Thủ Thiêm vẫn ngập sâu",
                                  topic="drainage", district="binh-thanh", vector=_vec(5, _vec(1), 0.02),
                                  street="nguyen huu canh")
        await _drain(store, matcher)
        r = await store.get_report(later)
        assert r and r.incident_id == "INC-000004"
        # ...linked to the closed incident it repeats, which dispatch keeps on the new case.
        assert await _jobs(store, later) == [("dispatch", {"incident_id": "INC-000004", "recurrence_of": "INC-000001"})]
    finally:
        await store.close()


def test_window_searches_only_the_topics_asked_for_and_expiry_compacts_rows_in_place() -> None:
    window = VectorWindow(384, window_days=7)
    v = _vec(1)
    window.add(1, T0, "quan-1", _vec(2, v, 0.01), "drainage")
    window.add(2, T0 + 86400, "quan-1", _vec(3, v, 0.06), "drainage")
    window.add(3, T0 + 86400, "quan-1", v, "noise")
    window.add(4, T0 + 2 * 86400, "quan-1", _vec(4, v, 0.02), None)
    at = T0 + 2 * 86400
    assert [h.report_id for h in window.search(v, "quan-1", 10, at)] == [3, 1, 4, 2]
    assert [h.report_id for h in window.search(v, "quan-1", 10, at, topics={"drainage", None})] == [1, 4, 2]
    assert window.search(v, "quan-1", 10, at, topics={"trees"}) == []
    assert window.topics() == {"drainage", "noise", None}
    # Report 1's day leaves the window: its row goes, the rows after it move up and still map to their vectors.
    window.add(5, T0 + 7.5 * 86400, "quan-1", v, "drainage")
    assert window.expire() == 1 and window.vector_of(1) is None
    np.testing.assert_array_equal(window.vector_of(2), _vec(3, v, 0.06))
    np.testing.assert_array_equal(window.vector_of(5), v)
    assert [h.report_id for h in window.search(v, "quan-1", 2, T0 + 7.5 * 86400, topics={"drainage"})] == [5, 2]


def test_window_top_k_breaks_ties_by_report_id_at_the_cut() -> None:
    """Equal vectors score equal: the k returned are the lowest ids whatever order faiss kept them in."""
    window = VectorWindow(384, window_days=7)
    v = _vec(1)
    for rid in (9, 3, 7, 1, 8, 2):
        window.add(rid, T0 + rid, "quan-1", v, "trees")
    window.add(20, T0 - 1, "quan-1", _vec(7), "trees")
    assert [h.report_id for h in window.search(v, "quan-1", 3, T0 + 100)] == [1, 2, 3]
    # The edge of the window falls inside the block: rows before it are left out, the cut still by id.
    assert [h.report_id for h in window.search(v, "quan-1", 3, T0 + 3 + 7 * 86400)] == [3, 7, 8]
