"""The case timeline (console/queries.py) is read by every staff member and by the agency's staff: an agency
endpoint named by an e-mail address, and the personal data an event's details can quote (a dead letter's error, an
alert's target), are shown as the dead-letter page shows them (ingest/queue.py shown_to_admins); the daemon's own
ids stay readable."""
from __future__ import annotations

import json

from console.queries import _compact
from ingest.clock import iso

from .conftest import Browser, Server, seed_case

MAILBOX = "tiepnhan.sawaco@example.vn"


async def test_the_case_timeline_hides_an_endpoints_address_and_personal_data_in_event_details(
        server: Server, browser: Browser) -> None:
    store = server.store
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001")
    (report,) = [r["report_id"] for r in await store.fetchall("SELECT report_id FROM cases WHERE id=?", (case,))]
    async with store.transaction() as tx:
        # One delivery delivered, one dead: both endpoints named by a mailbox.
        await tx.execute("UPDATE deliveries SET target=?, state='delivered', delivered_at=?, attempts=1"
                         " WHERE case_id=?", (MAILBOX, store.clock.now(), case))
        await tx.execute(
            "INSERT INTO deliveries(msg_id, case_id, agency, target, kind, event, payload, state, attempts, next_at,"
            " deadline_at, created_at, updated_at) VALUES ('msg_x',?,'sawaco',?,'email','case.updated','{}','dead',"
            "3,?,?,?,?)", (case, MAILBOX, *[store.clock.now()] * 4))
        await tx.event(report, "dead_letter", "system",
                       {"stage": "notify", "error": "rejected: 0901234567 an@example.vn chat 6012345678",
                        "previous_status": "routed"})
        await tx.event(report, "alert", "dispatch", {"alert": "delivery_dead", "case_id": case, "agency": "sawaco",
                                                     "target": MAILBOX, "error": "HTTP 400"})
    await browser.login("operator")
    status, page = await browser.get(f"/console/cases/{case}")
    timeline = page.split('id="timeline"')[1]
    assert status == 200 and "delivery dead" in timeline and "dead_letter" in timeline
    for personal in (MAILBOX, "tiepnhan", "0901234567", "an@example.vn", "6012345678"):
        assert personal not in page
    assert "sawaco/[email ẩn]" in timeline and "stage=notify" in timeline and "rejected:" in timeline
    assert f"case_id={case}" in timeline  # the daemon's own ids are no personal data


def test_the_daemons_own_numbers_and_times_in_event_details_stay_readable() -> None:
    """A deadline's due time (an epoch number), a move's incidents and a merge's case are the daemon's own: hidden,
    staff could not tell when a deadline falls or which incident a move points to. A phone beside them is hidden."""
    detail = _compact(json.dumps({"due_at": 1765100000.5, "from": "INC-000001", "to": "INC-000012",
                                  "into": "CASE-000034", "reply_to": "0901234567"}))
    assert f"due_at={iso(1765100000.5)}" in detail
    assert "from=INC-000001" in detail and "to=INC-000012" in detail and "into=CASE-000034" in detail
    assert "0901234567" not in detail and "reply_to=" in detail


async def test_an_agencys_answer_note_on_the_case_timeline_hides_phones_emails_and_id_numbers(
        server: Server, browser: Browser) -> None:
    """An agency's answer note is free text its staff type: it can quote the reporter's phone, e-mail or ID number
    (it was shown as typed to every staff member who opens the case). The case and incident numbers it names stay
    readable."""
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001")
    note = ("Đã gọi 0901234567, email an.nguyen@example.vn, CCCD 079203005678; trùng INC-000001 và "
            f"{case}, hồ sơ 000123")
    await browser.login("sawaco")
    status, _, _ = await browser.post(f"/console/cases/{case}/answer", {"kind": "acknowledged", "note": note})
    assert status == 303
    await browser.login("operator")
    status, page = await browser.get(f"/console/cases/{case}")
    timeline = page.split('id="timeline"')[1]
    assert status == 200 and "answer: acknowledged" in timeline and "Đã gọi" in timeline
    for personal in ("0901234567", "an.nguyen@example.vn", "079203005678", "000123"):
        assert personal not in page
    assert "trùng INC-000001 và " + case in timeline
