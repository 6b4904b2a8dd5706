"""The call-centre transcript folder: maildir hand-off, JSON and text formats, done/ and rejected/ with reasons."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from channels.transcripts import TranscriptFolder
from channels.transcripts_parse import parse_transcript
from config.channels import ChannelEntry, TranscriptOptions
from config.directory import load_directory
from config.schema import Settings
from ingest.app import AppContext
from ingest.http import make_app
from ingest.store import Store

JSON_TRANSCRIPT = {
    "call_id": "CALL-2026-0901-0042",
    "received_at": "2026-09-01T08:15:00+07:00",
    "reporter": {"name": "Lê Văn Cường", "phone": "0903 123 456", "email": "cuong@example.vn",
                 "address": "45 Nguyễn Trãi, Quận 5", "confidential": True},
    "text": "Người dân báo  cây xanh ngã chắn ngang đường Nguyễn Trãi,\n  xe không qua được.",
    "lat": 10.7545,
    "lon": 106.6671,
}

TEXT_TRANSCRIPT = """Call-ID: CALL-0043
Received-At: 2026-09-01T09:00:00+07:00
Name: Phạm Thị Dung
Phone: +84 90 312 3457
Email: dung@example.vn
Address: 12 Lê Lợi, Quận 1
Confidential: có
Agent: tổng đài viên 07
Lat: 10.7769
Lon: 106.7009

Tổng đài viên: Xin chào, 1022 nghe.
Người gọi: Đèn đường trước nhà tôi tắt cả tuần nay rồi.
"""


@pytest.fixture
def folder(store: Store, tmp_path: Path) -> TranscriptFolder:
    ctx = AppContext(settings=Settings(), directory=load_directory(None), store=store, clock=store.clock,
                     http=make_app(1024))
    options = TranscriptOptions(folder=tmp_path / "call-centre", poll_seconds=0.05, max_bytes=4096)
    return TranscriptFolder(ctx, ChannelEntry(kind="transcripts", name="call-centre"), options)


def drop(folder: TranscriptFolder, name: str, data: bytes) -> Path:
    """Write as the call-centre software must: into tmp/, then an atomic rename into new/."""
    tmp = folder.root / "tmp" / name
    tmp.write_bytes(data)
    os.replace(tmp, folder.root / "new" / name)
    return folder.root / "new" / name


def names(folder: TranscriptFolder, sub: str) -> list[str]:
    return sorted(p.name for p in (folder.root / sub).iterdir())


async def reports(store: Store) -> list[dict]:
    return [dict(r) for r in await store.fetchall("SELECT id, channel, external_id, raw, raw_type, record FROM reports")]


async def test_json_transcript_is_stored_then_moved_to_done(folder: TranscriptFolder, store: Store) -> None:
    raw = json.dumps(JSON_TRANSCRIPT, ensure_ascii=False).encode()
    drop(folder, "call-0042.json", raw)
    assert await folder.scan_once() == 1
    assert names(folder, "new") == [] and names(folder, "done") == ["call-0042.json"]
    (row,) = await reports(store)
    assert row["raw"] == raw and row["raw_type"] == "application/json" and row["channel"] == "phone"
    msg = (await store.get_report(row["id"])).message
    assert msg.external_id == "CALL-2026-0901-0042" and msg.received_at == "2026-09-01T08:15:00+07:00"
    assert msg.text == "Người dân báo cây xanh ngã chắn ngang đường Nguyễn Trãi,\nxe không qua được."
    assert msg.reporter.name == "Lê Văn Cường" and msg.reporter.confidential
    assert (msg.lat, msg.lon) == (10.7545, 106.6671)
    jobs = await store.fetchall("SELECT stage FROM jobs")
    assert [j["stage"] for j in jobs] == ["classify"]


async def test_text_transcript_headers_and_body(folder: TranscriptFolder, store: Store) -> None:
    drop(folder, "call-0043.txt", TEXT_TRANSCRIPT.encode())
    await folder.scan_once()
    assert names(folder, "done") == ["call-0043.txt"]
    (row,) = await reports(store)
    assert row["raw_type"] == "text/plain"
    msg = (await store.get_report(row["id"])).message
    assert msg.external_id == "CALL-0043"
    assert msg.received_at == "2026-09-01T09:00:00+07:00"
    assert msg.reporter.name == "Phạm Thị Dung" and msg.reporter.phone == "+84 90 312 3457"
    assert msg.reporter.email == "dung@example.vn" and msg.reporter.address == "12 Lê Lợi, Quận 1"
    assert msg.reporter.confidential
    assert (msg.lat, msg.lon) == (10.7769, 106.7009)
    assert msg.text.startswith("Tổng đài viên: Xin chào, 1022 nghe.\nNgười gọi: Đèn đường")
    assert "Agent" not in msg.text and "Call-ID" not in msg.text


async def test_text_without_header_is_all_transcript(folder: TranscriptFolder, store: Store) -> None:
    body = "Người gọi: nước cống tràn lên đường: hẻm 51 Ba Vân.\n\nCảm ơn."
    drop(folder, "bare.txt", ("\ufeff" + body).encode())  # a BOM from a Windows editor
    await folder.scan_once()
    (row,) = await reports(store)
    msg = (await store.get_report(row["id"])).message
    assert msg.text == "Người gọi: nước cống tràn lên đường: hẻm 51 Ba Vân.\nCảm ơn."
    assert msg.external_id == "bare.txt"


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("broken.json", b'{"text": "thi\xe1\xba\xbfu', "malformed JSON"),
    ("broken2.json", '{"text": "thiếu dấu đóng"'.encode(), "malformed JSON"),
    ("list.json", b'{"text": "x", "reporter": ["a"]}', "reporter must be an object"),
    ("empty.json", b'{"call_id": "C1", "text": "   "}', "no text"),
    ("when.txt", "Received-At: hôm qua\n\nCây ngã.".encode(), "received_at is not an ISO 8601 time"),
    ("where.json", b'{"text": "x", "lat": "north"}', "lat and lon must be numbers"),
    ("latin1.txt", "Cây ngã ở Quận 5".encode("utf-8").decode("utf-8").encode("cp1258", errors="replace") + b"\xe3\xe2", "not valid UTF-8"),
    ("huge.txt", ("Cây ngã. " * 1000).encode(), "over the limit of 4096"),
])
async def test_invalid_files_go_to_rejected_with_an_error_file(folder: TranscriptFolder, store: Store, name: str,
                                                              data: bytes, reason: str) -> None:
    drop(folder, name, data)
    await folder.scan_once()
    assert names(folder, "new") == [] and names(folder, "done") == []
    assert names(folder, "rejected") == sorted([name, name + ".error"])
    assert (folder.root / "rejected" / name).read_bytes() == data  # kept verbatim
    assert reason in (folder.root / "rejected" / (name + ".error")).read_text(encoding="utf-8")
    assert await reports(store) == []
    row = await store.fetchone("SELECT raw, reason FROM quarantine")
    assert row["raw"] == data and reason in row["reason"]


async def test_a_rejected_transcripts_log_line_holds_no_phone_or_email(folder: TranscriptFolder, store: Store,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The reason quotes the file: a Received-At holding the caller's number and mailbox reached the log as typed.
    The log line says why, redacted; the operators' quarantine row and .error file keep the reason whole."""
    data = "Received-At: 0903 123 456 cuong@example.vn\n\nCây ngã chắn đường.".encode()
    drop(folder, "swapped.txt", data)
    with caplog.at_level(logging.INFO):
        await folder.scan_once()
    (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "swapped.txt" in line and "received_at is not an ISO 8601 time" in line
    for personal in ("0903 123 456", "903123456", "cuong@example.vn"):
        assert personal not in caplog.text
    row = await store.fetchone("SELECT reason FROM quarantine")
    assert "0903 123 456" in row["reason"]  # for the operators, as before


async def test_crash_between_commit_and_move_is_not_a_duplicate(folder: TranscriptFolder, store: Store) -> None:
    raw = json.dumps(JSON_TRANSCRIPT, ensure_ascii=False).encode()
    path = drop(folder, "call-0042.json", raw)
    # The previous process committed the report and died before moving the file.
    msg = parse_transcript(raw, filename=path.name, channel_instance="call-centre",
                           default_received_at="2026-09-01T10:00:00+07:00")
    first = await store.submit(msg, raw, "application/json")
    await folder.scan_once()
    assert names(folder, "done") == ["call-0042.json"] and names(folder, "new") == []
    rows = await reports(store)
    assert [r["id"] for r in rows] == [first.report_id]
    assert len(await store.fetchall("SELECT id FROM jobs")) == 1


async def test_same_name_twice_keeps_both_files(folder: TranscriptFolder, store: Store) -> None:
    drop(folder, "call.txt", "Cây ngã đường Lê Lợi.".encode())
    await folder.scan_once()
    drop(folder, "call.txt", "Đèn tắt đường Hai Bà Trưng.".encode())
    await folder.scan_once()
    assert len(names(folder, "done")) == 2
    assert len(await reports(store)) == 2


async def test_files_still_being_written_are_not_read(folder: TranscriptFolder, store: Store) -> None:
    (folder.root / "tmp" / "half.json").write_bytes('{"text": "đang ghi'.encode())
    (folder.root / "new" / ".hidden.json").write_bytes(b"{}")
    assert await folder.scan_once() == 0
    assert await reports(store) == []


async def test_storage_outage_keeps_the_file_and_the_channel_running(folder: TranscriptFolder, store: Store) -> None:
    side = sqlite3.connect(store.path)
    side.execute("CREATE TRIGGER refuse BEFORE INSERT ON reports BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    side.commit()
    drop(folder, "call.txt", "Cây ngã đường Lê Lợi.".encode())
    task = asyncio.create_task(folder.run())
    try:
        await asyncio.sleep(0.3)
        assert not task.done(), "a storage outage must not stop the channel"
        assert names(folder, "new") == ["call.txt"]  # neither done nor rejected: retried later
        assert names(folder, "rejected") == []
        side.execute("DROP TRIGGER refuse")
        side.commit()
        for _ in range(100):
            if names(folder, "done"):
                break
            await asyncio.sleep(0.05)
        assert names(folder, "done") == ["call.txt"]
        assert len(await reports(store)) == 1
    finally:
        side.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(("value", "confidential"), [
    ("có", True), ("Có ", True), ("on", True), ("x", True), ("1", True), ("không", False), ("khong", False),
    ("no", False), ("0", False), ("", False), ("co\u0301", True), ("kho\u0302ng", False)])  # decomposed marks too
def test_the_confidential_header_as_agents_type_it(value: str, confidential: bool) -> None:
    # Red-team probe as a careless agent: "Confidential: on" or "x" (ticked) was read as not confidential, and the
    # call's content and place were published.
    raw = TEXT_TRANSCRIPT.replace("Confidential: có", f"Confidential: {value}").encode()
    msg = parse_transcript(raw, filename="c.txt", channel_instance="call-centre",
                           default_received_at="2026-09-01T09:00:00+07:00")
    assert msg.reporter.confidential is confidential


@pytest.mark.parametrize("value", ["ture", "maybe", "chưa rõ"])
def test_a_confidential_header_that_is_neither_yes_nor_no_is_refused_not_read_as_no(value: str) -> None:
    from channels.transcripts_parse import TranscriptError

    raw = TEXT_TRANSCRIPT.replace("Confidential: có", f"Confidential: {value}").encode()
    with pytest.raises(TranscriptError, match="confidential"):
        parse_transcript(raw, filename="c.txt", channel_instance="call-centre",
                         default_received_at="2026-09-01T09:00:00+07:00")
