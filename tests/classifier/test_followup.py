"""A reporter writing again on the same chat or app within 48 hours of their open report: the message joins that
report's timeline instead of opening a new report (ingest/followup.py, applied by the classify stage before it
classifies); another sender, another channel, a closed report or an older one: a new report."""
from __future__ import annotations

from pathlib import Path

from classifier.service import ClassifyStage
from config.loader import validate
from ingest.app import AppContext
from ingest.clock import FakeClock, iso
from ingest.http import make_app
from ingest.records import Attachment, Classification, InboundMessage, Place, Reporter
from ingest.store import Store
from ingest.worker import StageWorker, WorkerSettings
from config.directory import load_directory
from tests import seed

HOUR = 3600.0


async def submit(store: Store, channel: str, text: str, **reporter: str) -> int:
    n = (await store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"]
    msg = InboundMessage(channel=channel, channel_instance=channel, idempotency_key=f"f{n}",
                         received_at=iso(store.clock.now()), text=text, reporter=Reporter(**reporter),
                         attachments=(Attachment(sha256="ab" * 32, content_type="image/jpeg", size=10),)
                         if "ảnh" in text else ())
    return (await store.submit(msg, text.encode(), "text/plain")).report_id


async def classified(store: Store, report_id: int, status: str) -> None:
    """What the classify stage makes of the sender's first message (its own writes, tests/seed.py): an open report,
    routed on to dedupe or waiting for an operator."""
    await seed.classify(store, report_id, Classification(status=status, topic="drainage", category="infrastructure",
                                                         agency="thoat-nuoc", confidence=0.9,
                                                         place=Place(district="quan-1")))


async def test_follow_ups_join_the_open_report_of_the_same_sender(tmp_path: Path) -> None:
    clock = FakeClock(1_790_000_000.0)
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", clock=clock)
    try:
        ctx = AppContext(settings=validate({}, {}), directory=load_directory(), store=store, clock=clock,
                         http=make_app(1 << 20))
        stage = ClassifyStage.__new__(ClassifyStage)  # no model needed: follow-ups are decided before it
        stage.ctx, stage._prepared, stage._vectors = ctx, {}, {}
        worker = StageWorker(store, "classify", stage.handle)
        first = await submit(store, "telegram", "Cống nghẹt trước chợ Bến Thành", reply_to="chat-1")
        await classified(store, first, "routed")
        app_first = await submit(store, "app", "Đèn đường tắt", reply_to="device-9", phone="0901234567")
        await classified(store, app_first, "review")

        clock.advance(20 * HOUR)
        follow = await submit(store, "telegram", "Gửi thêm ảnh nè", reply_to="chat-1")
        by_device = await submit(store, "app", "Vẫn chưa sáng", reply_to="device-9")
        assert await worker.run_once() == 2
        for rid, earlier in ((follow, first), (by_device, app_first)):
            assert (await store.get_report(rid)).status == "follow_up"
            event = await store.fetchone("SELECT data FROM events WHERE report_id=? AND kind='reporter_follow_up'"
                                         " AND json_extract(data, '$.follow_up_report_id')=?", (earlier, rid))
            assert event is not None
        row = await store.fetchone("SELECT json_extract(data, '$.attachments') AS a FROM events"
                                   " WHERE kind='reporter_follow_up' AND report_id=?", (first,))
        assert "ab" * 32 in row["a"]
        notify = await store.fetchall("SELECT payload FROM jobs WHERE stage='notify' AND report_id=?", (follow,))
        assert len(notify) == 1 and '"follow_up"' in notify[0]["payload"]

        # The reporter's phone number is a claim anyone can type into the app or the portal's form: from another
        # device, or from the form (no device at all), it is a new report, never a note and photos on theirs.
        for device in ("device-other", None):
            by_phone = await submit(store, "app", "Gửi thêm ảnh: không có sự cố nào cả", phone="0901234567",
                                    **({"reply_to": device} if device else {}))
            assert await stage._follow_up(await store.get_report(by_phone)) is None, device
        # Another chat, or past 48 hours, or a closed report: classified as a new report (the model is needed).
        other = await submit(store, "telegram", "Cây đổ", reply_to="chat-2")
        clock.advance(30 * HOUR)
        late = await submit(store, "telegram", "Cống lại nghẹt", reply_to="chat-1")
        for rid in (other, late):
            assert await stage._follow_up(await store.get_report(rid)) is None
    finally:
        await store.close()


async def test_follow_ups_in_one_committed_batch_see_the_messages_before_them(tmp_path: Path) -> None:
    """The classify stage commits a batch at once: a message whose sender's earlier message in the same batch
    became a follow-up joins the report that one joined, as if each message had been committed in turn."""
    clock = FakeClock(1_790_000_000.0)
    store = await Store.open(tmp_path / "s.sqlite3", tmp_path / "blobs", clock=clock)
    try:
        ctx = AppContext(settings=validate({}, {}), directory=load_directory(), store=store, clock=clock,
                         http=make_app(1 << 20))
        stage = ClassifyStage.__new__(ClassifyStage)  # no model needed: both are follow-ups
        stage.ctx, stage._prepared, stage._vectors = ctx, {}, {}
        worker = StageWorker(store, "classify", stage.handle, WorkerSettings(batch=8, group_commit=True))
        first = await submit(store, "telegram", "Cống nghẹt trước chợ Bến Thành", reply_to="chat-1")
        await classified(store, first, "routed")
        clock.advance(HOUR)
        second = await submit(store, "telegram", "Gửi thêm ảnh nè", reply_to="chat-1")
        clock.advance(60)
        third = await submit(store, "telegram", "Nước tràn vào nhà rồi", reply_to="chat-1")
        assert await worker.run_once() == 2
        for rid in (second, third):
            assert (await store.get_report(rid)).status == "follow_up"
            row = await store.fetchone("SELECT data FROM events WHERE report_id=? AND kind='joined_report'", (rid,))
            assert row is not None and f'"report_id": {first}' in row["data"]
    finally:
        await store.close()
