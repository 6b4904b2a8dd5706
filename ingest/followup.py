"""A reporter writing again: which earlier report of theirs a new message continues.

A message from the same reporter on the same channel within a window (`[dispatch.reporters] follow_up_hours`,
48 h) of a report of theirs that is still open joins that report's timeline instead of opening a new report:
on chat channels the sender is the chat id (Messenger PSID, Telegram chat: `reporter.reply_to`), on the app the
device id. Never the phone: it is a field anyone can type into the app or the portal's form, so a phone number
alone let whoever knew it add notes and photos to that reporter's open report (and hid their own message from
classification). The portal's form has no device id: each of its submissions is a report of its own. Email threads by its own headers (channels/email_intake.py), so it is not handled here.
Used by the classify stage before it classifies (the classifier imports ingest, never another stage).
"""
from __future__ import annotations

from typing import Any

from .records import InboundMessage
from .store import StoredReport, Tx

CHAT_CHANNELS = ("messenger", "telegram", "zalo")
APP_CHANNELS = ("app", "open311")
# An earlier report still waiting for, or under, handling.
OPEN_STATUSES = ("received", "review", "routed", "duplicate", "dispatched")
# An earlier report whose case has its result (the incident closed with it).
CLOSED_STATUSES = ("closed",)
FLAG = "reporter_follow_up"


def sender_keys(message: InboundMessage) -> list[tuple[str, str]]:
    """(field, value) pairs that identify the sender on this channel; empty when the channel has none."""
    r = message.reporter
    if message.channel in CHAT_CHANNELS and r.reply_to:
        return [("reply_to", r.reply_to)]
    if message.channel in APP_CHANNELS and r.reply_to:
        return [("reply_to", r.reply_to)]  # the app install's device id; never the phone (see above)
    return []


async def earlier_open_report(tx: Any, report: StoredReport, received_at: float, window_seconds: float
                              ) -> int | None:
    """The latest open report of the same sender on the same channel within the window before this one."""
    return await _latest_of_sender(tx, report, received_at, window_seconds, OPEN_STATUSES)


async def earlier_closed_report(tx: Any, report: StoredReport, received_at: float, window_seconds: float
                                ) -> int | None:
    """The latest report of the same sender on the same channel whose result came in the window before this one:
    a "still not fixed" message after the result may dispute it (Art. 7.4; dispatch decides whether it does)."""
    return await _latest_of_sender(tx, report, received_at, window_seconds, CLOSED_STATUSES, since="updated_at")


async def _latest_of_sender(tx: Any, report: StoredReport, received_at: float, window_seconds: float,
                            statuses: tuple[str, ...], since: str = "received_at") -> int | None:
    keys = sender_keys(report.message)
    if not keys or window_seconds <= 0:
        return None
    marks = ",".join("?" * len(statuses))
    match = " OR ".join(f"json_extract(record, '$.reporter.{field}')=?" for field, _ in keys)
    row = await tx.fetchone(
        f"SELECT id FROM reports WHERE channel=? AND id<? AND {since}>=? AND status IN ({marks})"
        f" AND ({match}) ORDER BY received_at DESC, id DESC LIMIT 1",
        (report.message.channel, report.id, received_at - window_seconds, *statuses, *(v for _, v in keys)))
    return int(row["id"]) if row is not None else None


async def join_timeline(tx: Tx, earlier: int, report: StoredReport) -> None:
    """Record `report` on `earlier`'s timeline (its text and attachments) and take it out of the pipeline."""
    now = tx.store.clock.now()
    msg = report.message
    await tx.execute("UPDATE reports SET status='follow_up', updated_at=? WHERE id=?", (now, report.id))
    await tx.event(earlier, FLAG, "reporter", {
        "follow_up_report_id": report.id, "channel": msg.channel, "text": msg.text[:4000],
        "attachments": [a.sha256 for a in msg.attachments]})
    await tx.event(report.id, "joined_report", "system", {"report_id": earlier})
