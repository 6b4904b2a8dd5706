"""The Telegram channel against a fake Bot API on loopback: polling with our own offset, webhook, dialogue."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from channels import telegram
from channels.telegram_dialogue import ASK_PHONE, ASK_PLACE, CONFIRM
from config.channels import ChannelEntry, TelegramOptions
from config.directory import load_directory
from config.schema import Settings
from ingest.app import AppContext
from ingest.clock import FakeClock
from ingest.errors import PermanentError, TransientError
from ingest.jobs import TelegramSendJob
from ingest.store import Store, StoredReport
from tests.channels.fakes.fake_bot_api import FakeBotApi
from tests.stores import cancel_when, stop_as_the_lease_commits_gives_back

TOKEN = "7012345678:AAH-secret-part-of-the-token-xyz"
SECRET = "hook-secret-42"
FULL = "Ống nước vỡ trước nhà 83/16/4 Nguyễn Văn Linh, phường Tân Phong, quận 7. SĐT 0903 123 456"


@dataclass
class Env:
    tmp: Path
    api: FakeBotApi
    clock: FakeClock
    stores: list[Store]
    make: Callable[..., Any]

    async def open_store(self) -> Store:
        store = await Store.open(self.tmp / "db.sqlite3", self.tmp / "blobs", clock=self.clock,
                                 migrations={telegram.COMPONENT: telegram.MIGRATIONS})
        self.stores.append(store)
        return store


async def reports(store: Store) -> list[StoredReport]:
    rows = await store.fetchall("SELECT id FROM reports WHERE channel='telegram' ORDER BY id")
    return [await store.get_report(r["id"]) for r in rows]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    api = FakeBotApi(token=TOKEN)
    await api.start()
    clock = FakeClock(start=__import__("time").time())
    channels: list[telegram.TelegramChannel] = []

    def make(store: Store, http: web.Application | None = None, **opts: Any) -> telegram.TelegramChannel:
        options = TelegramOptions(bot_token=TOKEN, base_url=f"{api.base}/bot", base_file_url=f"{api.base}/file/bot",
                                  poll_timeout_seconds=0, max_photo_bytes=50_000, **opts)
        ctx = AppContext(settings=Settings(), directory=load_directory(), store=store, clock=clock,
                         http=http or web.Application())
        services = telegram.build(ctx, ChannelEntry(kind="telegram", name="bot"), options)
        channels.append(services[0])
        return services[0]

    e = Env(tmp_path, api, clock, [], make)
    yield e
    for ch in channels:
        await ch.close()
    for s in e.stores:
        await s.close()
    await api.stop()


async def test_polling_files_a_complete_message_and_confirms_the_offset_after_the_commit(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    uid = env.api.push_text(FULL)
    assert await ch.poll_once() == 1
    [report] = await reports(store)
    assert report.message.idempotency_key == f"7012345678:{uid}"
    assert report.message.reporter.phone == "0903123456" and report.message.reporter.reply_to == "555"
    assert await store.get_cursor(ch.cursor_name) == uid + 1
    # Telegram still holds the update until our next getUpdates confirms it with the stored offset.
    assert [u["update_id"] for u in env.api.updates] == [uid]
    assert await ch.poll_once() == 0
    assert env.api.get_updates_offsets == [None, uid + 1] and env.api.updates == []
    assert await ch.send_outbox() == 1
    assert env.api.sent[0]["text"] == CONFIRM and env.api.sent[0]["reply_markup"] == {"remove_keyboard": True}


async def test_dialogue_asks_for_place_then_phone_then_confirms(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    first = env.api.push_text("Có người đổ trộm xà bần ra lề đường ban đêm")
    await ch.poll_once()
    await ch.send_outbox()
    assert env.api.sent[-1]["text"] == ASK_PLACE
    assert env.api.sent[-1]["reply_markup"]["keyboard"][0][0]["request_location"] is True
    assert await reports(store) == []  # held as a draft, durably: nothing said is lost
    env.api.push_location(10.7626, 106.6602)
    await ch.poll_once()
    await ch.send_outbox()
    assert env.api.sent[-1]["text"] == ASK_PHONE
    assert env.api.sent[-1]["reply_markup"]["keyboard"][0][0]["request_contact"] is True
    env.api.push_contact("+84 903 555 111")
    await ch.poll_once()
    await ch.send_outbox()
    assert env.api.sent[-1]["text"] == CONFIRM
    [report] = await reports(store)
    m = report.message
    assert m.idempotency_key == f"7012345678:{first}"
    assert (m.lat, m.lon, m.reporter.phone) == (10.7626, 106.6602, "0903555111")
    assert "xà bần" in m.text
    raw = json.loads((await store.fetchone("SELECT raw FROM reports WHERE id=?", (report.id,)))["raw"])
    assert len(raw) == 3  # the three updates of the dialogue are the report's raw input
    assert await store.fetchone("SELECT id FROM telegram_drafts") is None


async def test_dialogue_takes_a_typed_address_and_a_skip(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text("Đèn tín hiệu giao thông bị tắt")
    env.api.push_text("Ngã tư Hàng Xanh")
    env.api.push_text("bỏ qua")
    await ch.poll_once()  # three answers in one getUpdates batch, applied in order
    await ch.send_outbox()
    assert [s["text"] for s in env.api.sent] == [ASK_PLACE, ASK_PHONE, CONFIRM]
    [report] = await reports(store)
    assert report.message.text.endswith("Địa điểm: Ngã tư Hàng Xanh") and report.message.reporter.phone is None


async def test_unanswered_dialogue_is_filed_after_the_timeout(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store, dialogue_timeout_seconds=600)
    await ch.ensure_initialized()
    env.api.push_text("Chó thả rông cắn người")
    await ch.poll_once()
    assert await ch.expire_drafts() == 0
    env.clock.advance(601)
    assert await ch.expire_drafts() == 1
    [report] = await reports(store)
    assert report.message.text == "Chó thả rông cắn người"


async def test_photo_is_downloaded_within_the_bound(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    jpeg = b"\xff\xd8\xff" + bytes(range(256)) * 40
    env.api.push_photo(jpeg, caption=FULL)
    env.api.push_photo(b"\xff\xd8" + b"z" * 60_000, caption=FULL.replace("0903 123 456", "0903 999 888"), chat_id=777)
    await ch.poll_once()
    first, second = await reports(store)
    [att] = first.message.attachments
    assert store.blobs.get(att.sha256) == jpeg and att.content_type == "image/jpeg"
    # Over max_photo_bytes: the largest size is skipped, the smaller preview that fits is kept.
    assert second.message.attachments[0].size == 50
    assert env.api.downloads == ["photos/file_1.jpg", "photos/file_2_s.jpg"]


async def test_crash_between_fetch_and_commit_refetches_and_stores_once(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text(FULL)
    env.api.push_photo(b"\xff\xd8photo", caption=FULL, chat_id=777)
    env.api.download_gate = asyncio.Event()
    task = asyncio.ensure_future(ch.poll_once())
    await asyncio.wait_for(env.api.download_started.wait(), 10)
    task.cancel()  # the process dies: updates fetched, nothing committed
    with pytest.raises(asyncio.CancelledError):
        await task
    await ch.close()
    await store.close()
    assert len(env.api.updates) == 2  # never confirmed to Telegram

    env.api.download_gate.set()
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    assert await ch.poll_once() == 2  # fetched again from the stored (absent) offset
    assert await ch.poll_once() == 0
    assert len(await reports(store)) == 2
    # And once more after a clean restart: the offset was stored with the reports.
    ch2 = env.make(store)
    await ch2.ensure_initialized()
    assert await ch2.poll_once() == 0
    assert len(await reports(store)) == 2


async def test_replayed_updates_are_applied_once(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text("Cống nghẹt bốc mùi")
    batch = list(env.api.updates)
    await ch.process(batch, cursor=None)
    await ch.process(batch, cursor=None)  # the same update again (webhook redelivery)
    row = await store.fetchone("SELECT data FROM telegram_drafts")
    assert json.loads(row["data"])["text"] == "Cống nghẹt bốc mùi"
    asked = await store.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE stage LIKE 'telegram_send:%'")
    assert asked["n"] == 1  # asked once


async def test_service_runs_polling_and_answers_until_cancelled(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    env.api.webhook = {"url": "https://old.example/hook"}  # left over: polling must remove it first
    task = asyncio.ensure_future(ch.run())
    env.api.push_text(FULL)
    for _ in range(200):
        if env.api.sent:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert env.api.webhook is None
    assert len(await reports(store)) == 1 and env.api.sent[0]["text"] == CONFIRM


async def test_webhook_checks_the_secret_token_and_files_once(env: Env) -> None:
    store = await env.open_store()
    app = web.Application()
    runner = web.AppRunner(app)
    ch = env.make(store, http=app, mode="webhook", webhook_secret=SECRET)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/telegram/bot"
    try:
        await ch.ensure_initialized()
        await ch.bot.set_webhook(url, secret_token=SECRET)
        async with aiohttp.ClientSession() as http:
            uid = env.api.push_text(FULL)
            body = json.dumps(env.api.updates[0])
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "guess"}):
                async with http.post(url, data=body, headers=headers) as resp:
                    assert resp.status == 401
            assert await reports(store) == []
            assert await env.api.deliver(http) == [200]
            # Telegram redelivers when unsure: the same update again changes nothing.
            env.api.updates.append(json.loads(body))
            assert await env.api.deliver(http) == [200]
            async with http.post(url, data=b"x" * 2_000_000, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as r:
                assert r.status == 413
            async with http.post(url, data=b"{oops", headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as r:
                assert r.status == 400 and "Traceback" not in await r.text()
        [report] = await reports(store)
        assert report.message.idempotency_key == f"7012345678:{uid}"
        reasons = [r["reason"] for r in await store.fetchall("SELECT reason FROM quarantine ORDER BY id")]
        assert reasons == ["missing secret token", "wrong secret token", "body larger than max_body_bytes",
                           "body is not JSON"]
    finally:
        await runner.cleanup()


async def test_replies_and_their_errors(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text(FULL, chat_id=4242)
    await ch.poll_once()
    [report] = await reports(store)
    sender = ch.ctx.replies.get("telegram")
    await sender.send_reply(report, "Phản ánh đã được chuyển đến UBND phường Tân Phong.")
    assert env.api.sent[-1]["chat_id"] == 4242
    env.api.flood_next = 9
    with pytest.raises(TransientError) as flood:
        await sender.send_reply(report, "x")
    assert flood.value.retry_after == 9
    env.api.blocked_chats.add(4242)
    with pytest.raises(PermanentError):
        await sender.send_reply(report, "x")


async def test_the_bot_token_never_reaches_the_log(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.NOTSET)  # as a careless DEBUG config would leave it
    logging.getLogger("telegram").setLevel(logging.NOTSET)
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_photo(b"\xff\xd8photo", caption=FULL)
    await ch.poll_once()
    await ch.send_outbox()
    await ch.bot.get_me()
    assert len(await reports(store)) == 1
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert TOKEN not in logged and TOKEN.split(":")[1] not in logged


async def test_a_rejected_token_stops_the_adapter_without_a_retry_loop(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    env.api.token = "7012345678:revoked-by-botfather"
    await asyncio.wait_for(ch.run(), 10)  # returns by itself: no hot loop against a revoked token
    assert ch.stopped_reason == "Telegram rejected the bot token"
    assert env.api.get_updates_offsets == []


def test_config_refuses_a_malformed_token_and_a_webhook_without_secret() -> None:
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="bot id"):
        TelegramOptions(bot_token="not-a-token")
    with pytest.raises(ValidationError, match="webhook_secret"):
        TelegramOptions(bot_token=TOKEN, mode="webhook")
    assert TOKEN not in repr(TelegramOptions(bot_token=TOKEN))


async def test_a_flooded_chat_reads_the_bots_messages_in_order_after_retry_after(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text("Đèn tín hiệu giao thông bị tắt")
    env.api.push_text("Ngã tư Hàng Xanh")
    env.api.push_text("bỏ qua")
    env.api.push_text("Cống nghẹt bốc mùi", chat_id=777)  # another chat is not held back
    await ch.poll_once()
    env.api.flood_next = 30
    await ch.send_outbox()
    assert [(s["chat_id"], s["text"]) for s in env.api.sent] == [(777, ASK_PLACE)]
    await ch.send_outbox()
    assert len(env.api.sent) == 1  # the first message waits for Retry-After, the later ones wait behind it
    env.clock.advance(29)
    await ch.send_outbox()
    assert len(env.api.sent) == 1
    env.clock.advance(1)
    await ch.send_outbox()
    assert [s["text"] for s in env.api.sent if s["chat_id"] == 555] == [ASK_PLACE, ASK_PHONE, CONFIRM]


async def test_a_message_telegram_refuses_is_a_dead_letter_and_replays(env: Env) -> None:
    store = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    chat = 6012345678  # a chat id is personal data: the administrators who read dead letters never see it
    env.api.blocked_chats.add(chat)
    env.api.push_text("Đèn tín hiệu giao thông bị tắt", chat_id=chat)
    env.api.push_text("Cống nghẹt", chat_id=777)
    await ch.poll_once()
    assert await ch.send_outbox() == 2
    assert [s["chat_id"] for s in env.api.sent] == [777]
    (dead,) = await store.queue.dead_letters(ch.send_kind)
    assert str(chat) not in (dead.subject or "") and "Forbidden" in (dead.last_error or "")
    # ...but the same chat always reads the same: its pseudonym finds every job of that chat, and only those.
    rows = await store.fetchall("SELECT subject FROM jobs WHERE stage=? ORDER BY id", (ch.send_kind,))
    assert dead.subject == ch.chat_subject(chat) != ch.chat_subject(777) == rows[1]["subject"]
    assert dead.subject.startswith("bot/chat-") and str(chat) not in json.dumps([dict(r) for r in rows])
    assert dead.payload.text == ASK_PLACE
    env.api.blocked_chats.clear()  # the reporter unblocked the bot
    assert await store.queue.replay(subject_prefix=dead.subject) == 1
    await ch.send_outbox()
    assert [(s["chat_id"], s["text"]) for s in env.api.sent] == [(777, ASK_PLACE), (chat, ASK_PLACE)]


async def test_the_old_outbox_moves_to_the_queue_in_order(env: Env) -> None:
    path = env.tmp / "db.sqlite3"
    old = await Store.open(path, env.tmp / "blobs", clock=env.clock,
                           migrations={telegram.COMPONENT: telegram.MIGRATIONS[:1]})
    async with old.transaction() as tx:
        for chat, text, keyboard in ((555, "một", "location"), (555, 'hai "trích"', None), (777, "ba", "remove")):
            await tx.execute("INSERT INTO telegram_outbox(instance, chat_id, text, keyboard, attempts, next_at,"
                             " created_at) VALUES ('bot', ?, ?, ?, 1, ?, ?)", (chat, text, keyboard,
                                                                               env.clock.now(), env.clock.now()))
    await old.close()
    store = await env.open_store()
    assert await store.fetchone("SELECT name FROM sqlite_master WHERE name='telegram_outbox'") is None
    ch = env.make(store)
    await ch._start()  # the moved messages' subjects named the chat: they are the chat's pseudonym from the start
    rows = await store.fetchall("SELECT subject FROM jobs WHERE stage=? ORDER BY id", (ch.send_kind,))
    assert [r["subject"] for r in rows] == [ch.chat_subject(555), ch.chat_subject(555), ch.chat_subject(777)]
    assert await ch.send_outbox() == 3
    assert [(s["chat_id"], s["text"]) for s in env.api.sent] == [(555, "một"), (555, 'hai "trích"'), (777, "ba")]
    assert env.api.sent[0]["reply_markup"]["keyboard"][0][0]["request_location"] is True


async def test_a_job_whose_payload_no_longer_decodes_does_not_stop_the_bot_starting(env: Env) -> None:
    """One message job of the bot whose payload lacks a field (written by another build, or edited by hand) is left
    as it is, for the dead-letter page; the bot still starts, renaming and sending the other chats' messages."""
    store = await env.open_store()
    ch = env.make(store)
    async with store.transaction() as tx:
        for chat in (555, 777):
            await tx.enqueue(ch.send_kind, None, TelegramSendJob(instance="bot", chat_id=chat, text=f"tin {chat}"),
                             subject=f"bot/{chat}")  # the subject as older builds named it: the chat id
        broken = await tx.enqueue(ch.send_kind, None, TelegramSendJob(instance="bot", chat_id=888, text="hỏng"),
                                  subject="bot/888")
        await tx.execute("UPDATE jobs SET state='dead', payload=? WHERE id=?",
                         (json.dumps({"instance": "bot", "text": "hỏng"}), broken))
    await ch._start()
    rows = await store.fetchall("SELECT id, subject FROM jobs WHERE stage=? ORDER BY id", (ch.send_kind,))
    assert [r["subject"] for r in rows] == [ch.chat_subject(555), ch.chat_subject(777), "bot/888"]
    assert await ch.send_outbox() == 2
    assert [(s["chat_id"], s["text"]) for s in env.api.sent] == [(555, "tin 555"), (777, "tin 777")]
    (dead,) = await store.queue.dead_letters(ch.send_kind)
    assert (dead.id, dead.payload) == (broken, None)


async def test_a_message_another_instance_is_still_sending_is_not_overtaken(env: Env) -> None:
    # Two intake instances of one bot on one store: the other one has leased the chat's first message and is
    # still sending it; this one must not send the chat's next message before it.
    store = await env.open_store()
    other = await env.open_store()
    ch = env.make(store)
    await ch.ensure_initialized()
    env.api.push_text("Đèn tín hiệu giao thông bị tắt")
    env.api.push_text("Ngã tư Hàng Xanh")
    await ch.poll_once()
    (in_flight,) = await other.queue.lease(ch.send_kind, 1, 60)  # the oldest: the chat's first question
    assert in_flight.payload.text == ASK_PLACE
    assert await ch.send_outbox() == 0
    assert env.api.sent == []
    assert await other.queue.finish(in_flight)  # the other instance has sent it
    env.clock.advance(telegram.ORDER_WAIT_SECONDS)
    assert await ch.send_outbox() == 1
    assert [s["text"] for s in env.api.sent] == [ASK_PHONE]


async def test_an_outbox_stopped_while_its_lease_commits_gives_the_messages_back(env: Env) -> None:
    """A stop that lands while the outbox's lease commits (the commit goes on whatever the cancellation does): the
    bot's messages it took are due again at once, not leased to nobody until their leases expire."""
    store = await env.open_store()
    ch = env.make(store)
    async with store.transaction() as tx:
        for chat in (555, 777):
            await tx.enqueue(ch.send_kind, None, TelegramSendJob(instance="bot", chat_id=chat, text=f"tin {chat}"),
                             subject=ch.chat_subject(chat))

    await stop_as_the_lease_commits_gives_back(store, ch.send_kind, ch.send_outbox, 2)
    assert env.api.sent == []


async def test_an_outbox_stopped_mid_send_gives_the_message_back_and_the_next_run_sends_it_once(env: Env) -> None:
    """A stop while the Bot API holds a sendMessage (Telegram took it, its answer not yet read by us): the message is
    due again at once, not leased to nobody for a minute, and the next run sends it once. The Bot API has no
    idempotency key, so the chat shows it twice, as it would when the lease expired, only sooner."""
    store = await env.open_store()
    ch = env.make(store)
    async with store.transaction() as tx:
        await tx.enqueue(ch.send_kind, None, TelegramSendJob(instance="bot", chat_id=555, text="tin 555"),
                         subject=ch.chat_subject(555))

    async def jobs() -> list[tuple[str, int, float | None]]:
        rows = await store.fetchall("SELECT state, attempts, lease_until FROM jobs WHERE stage=?", (ch.send_kind,))
        return [(r["state"], r["attempts"], r["lease_until"]) for r in rows]

    env.api.send_gate = asyncio.Event()
    try:
        await cancel_when(ch.send_outbox, env.api.send_taken)
        assert await jobs() == [("ready", 0, None)]
    finally:
        env.api.send_gate.set()  # the held request ends (a failing test ends at once, not at the fake's shutdown)
    assert await ch.send_outbox() == 1
    assert [state for state, _, _ in await jobs()] == ["done"]
    assert [(s["chat_id"], s["text"]) for s in env.api.sent] == [(555, "tin 555")] * 2  # the cut-off one, then one
    assert await ch.send_outbox() == 0
