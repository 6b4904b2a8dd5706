"""Review that teaches, end to end: operators' decisions on a handful of reports change how the next similar
report is routed once the background retrain has swapped the model in. An agency-only correction never
teaches the model's old topic."""
from __future__ import annotations

import asyncio
import json

import pytest

from classifier.review import decisions as review
from classifier.routing.policy import operator_decision, training_label
from classifier.schema import MIGRATIONS
from classifier.service import ClassifyStage
from classifier.training.trainer import Router
from config.directory import load_directory
from config.schema import ClassifierConfig, Settings
from ingest.app import AppContext
from ingest.records import Candidate, Classification, InboundMessage, Place, Reporter
from ingest.store import Store

# Traffic signs are the road authority's (Khu Quản lý giao thông đô thị): a routing the seed reports barely show.
TAUGHT = [
    "Biển báo cấm dừng đỗ trên đường Nguyễn Thị Minh Khai bị cây che khuất hoàn toàn, tài xế không thấy",
    "bien bao toc do o duong Pham Van Dong bi nga nam duoi dat tu tuan truoc",
    "Biển chỉ dẫn ở ngã ba Cát Lái bị xe tông cong queo, chữ mờ hết không đọc được",
    "biển báo giao thông đầu cầu Kênh Tẻ bị ai đó tháo mất, xe tải cứ chạy vào đường cấm",
    "Biển báo hạn chế tải trọng cầu Bình Lợi bị dán quảng cáo che kín",
]
NEXT = "bien bao cam re trai o nga tu Cong Hoa bi gio quat nghieng, tai xe khong nhin thay"
ROAD = "khu-qlgt-do-thi"


def msg(key: str, text: str) -> InboundMessage:
    return InboundMessage(channel="sms", channel_instance="t", idempotency_key=key,
                          received_at="2026-10-01T08:00:00+07:00", text=text, reporter=Reporter(phone="0900000000"))


@pytest.fixture(scope="module")
def small_router(embedder):
    """A router trained on the seed reports alone (fast to retrain), every report held for review so that
    operators decide them; cached under var/models like the daemon's own models."""
    from tests.classifier.conftest import CACHE

    settings = Settings(classifier=ClassifierConfig(backend="e5-converted", cache_dir=CACHE, synthetic_weight=0,
                                                    review_threshold=0.999, retrain_min_decisions=5))
    router = Router(settings, load_directory(), embedder)
    router.load()
    return router


async def classify(stage: ClassifyStage, store: Store, key: str, text: str) -> dict:
    rid = (await store.submit(msg(key, text), b"raw", "text/plain")).report_id
    while await stage.worker.run_once():
        pass
    return dict(await store.fetchone("SELECT * FROM reports WHERE id=?", (rid,)))


def test_operators_decisions_reroute_the_next_similar_report(tmp_path, small_router):
    asyncio.run(_teach(tmp_path, small_router))


async def _teach(tmp_path, router: Router) -> None:
    from aiohttp import web

    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", migrations={"classifier": MIGRATIONS})
    try:
        ctx = AppContext(settings=router.settings, directory=router.directory, store=store, clock=store.clock,
                         http=web.Application())
        stage = ClassifyStage(ctx, router)
        await stage.start()
        before = await classify(stage, store, "next-before", NEXT)
        assert before["agency"] != ROAD  # what the model did before anyone taught it
        old_version = router.model_version
        taught = [await classify(stage, store, f"t{i}", text) for i, text in enumerate(TAUGHT)]
        assert all(r["status"] == "review" for r in taught)
        wrong = [r for r in taught if r["agency"] != ROAD]
        assert wrong, "the model already knew: nothing to teach"
        for i, r in enumerate(taught):
            if i % 2 == 0:  # some operators pick the agency only, the others the topic
                await review.decide(store, router.directory, r["id"], actor="op-lan", agency=ROAD)
            else:
                await review.decide(store, router.directory, r["id"], actor="op-minh", topic="road_damage")
        labels = await store.fetchall("SELECT report_id, topic, previous_topic FROM review_decisions ORDER BY id")
        # An agency-only decision records the topic that agency implies, never the model's old one.
        assert [row["topic"] for row in labels] == ["road_damage"] * len(TAUGHT)
        assert any(row["previous_topic"] != "road_damage" for row in labels)

        # The background retrainer: the decisions are enough to retrain; the new model is swapped in.
        seen = await review.maybe_retrain(store, router, router.settings.classifier.retrain_min_decisions, 0)
        assert seen == len(TAUGHT) and router.model_version != old_version
        after = await classify(stage, store, "next-after", NEXT)
        assert (after["topic"], after["agency"]) == ("road_damage", ROAD)
        assert json.loads(after["classification"])["model_version"] == router.model_version
    finally:
        await store.close()


def test_an_agency_only_decision_teaches_no_topic_it_cannot_know():
    directory = load_directory()
    previous = Classification(status="review", topic="trees", category="infrastructure", agency="cay-xanh",
                              confidence=0.5, place=Place(district="quan-1"),
                              candidates=(Candidate(topic="trees", agency="cay-xanh", score=0.5),))
    # The district committee handles four topics; none of the model's candidates leads there.
    result = operator_decision(directory, previous, agency="ubnd-quan-1")
    assert result.agency == "ubnd-quan-1"
    assert training_label(directory, result, topic=None) is None
    # One topic only reaches the water company: that is what the decision says.
    water = operator_decision(directory, previous, agency="sawaco")
    assert water.topic == "water_supply" and training_label(directory, water, topic=None) == "water_supply"
    # A candidate of the model that leads to the chosen agency is the topic it implies.
    previous = Classification(status="review", topic="trees", category="infrastructure", agency="cay-xanh",
                              confidence=0.5, place=Place(district="quan-1"),
                              candidates=(Candidate(topic="trees", agency="cay-xanh", score=0.5),
                                          Candidate(topic="waste", agency="ubnd-quan-1", score=0.3)))
    waste = operator_decision(directory, previous, agency="ubnd-quan-1")
    assert waste.topic == "waste" and training_label(directory, waste, topic=None) == "waste"
