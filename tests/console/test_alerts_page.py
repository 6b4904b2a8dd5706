"""The console's alerts page (/console/alerts): every operator alert, newest first and paged, also one attached to no
report (a dead delivery or digest without a case), which no case timeline shows; its case linked when there is one,
its details without personal data (ingest.pii.redact_ids, as a timeline's); for operators and admins only."""
from __future__ import annotations

import re

from config.console import console_settings
from ingest.vocabulary import OPERATOR_ALERT_TEXTS

from .conftest import Browser, Server, seed_case

MAILBOX = "tiepnhan.sawaco@example.vn"


def rows(page: str) -> list[str]:
    """The alerts table's rows, newest first, header left out."""
    table = page.split('id="alerts"')[1].split("</table>")[0]
    return re.findall(r"<tr><td>.*?</tr>", table, re.S)


async def test_an_alert_without_a_report_is_listed_newest_first_beside_one_of_a_case(
        server: Server, browser: Browser) -> None:
    """A digest given up that carried no case's clock (dispatch/clocks.py `_row_given_up` with report None) was shown
    nowhere; an agency without a dispatch target alerts on its case (dispatch/cases.py), linked to the case page."""
    store = server.store
    # cay-xanh has no target in the console tests' config: the real dispatch stage makes its case and alerts.
    case = await seed_case(server, text="Cây đổ chắn ngang đường Lê Lợi", incident="INC-000001", agency="cay-xanh")
    store.clock.advance(60)
    async with store.transaction() as tx:
        await tx.event(None, "alert", "dispatch",
                       {"alert": "escalation_dead", "escalation_id": 7, "agency": "sawaco", "level": "breach",
                        "channel": "sms", "deadlines": ["fix"], "error": "SMS gateway: HTTP 400"})
    await browser.login("operator")
    status, page = await browser.get("/console/alerts")
    assert status == 200
    newest, older = rows(page)
    assert OPERATOR_ALERT_TEXTS["escalation_dead"]["vi"] in newest
    assert "escalation_id=7" in newest and "channel=sms" in newest and "/console/cases/" not in newest
    assert OPERATOR_ALERT_TEXTS["no_targets"]["vi"] in older
    assert f'<a href="/console/cases/{case}">{case}</a>' in older and "agency=cay-xanh" in older
    assert '<a href="/console/alerts">Cảnh báo</a>' in page  # in the console's navigation

    # Paged as the case list is: a page's worth more, and the first two are on the next page.
    size = console_settings(server.ctx.settings).page_size
    async with store.transaction() as tx:
        for n in range(size):
            store.clock.advance(1)
            await tx.event(None, "alert", "dispatch", {"alert": "delivery_dead", "msg_id": f"msg_{n}"})
    status, page = await browser.get("/console/alerts")
    assert status == 200 and len(rows(page)) == size and "?page=2" in page
    assert f"msg_id=msg_{size - 1}" in rows(page)[0]
    status, page = await browser.get("/console/alerts?page=2")
    assert status == 200 and [OPERATOR_ALERT_TEXTS[k]["vi"] in r for k, r in
                              zip(("escalation_dead", "no_targets"), rows(page))] == [True, True]


async def test_personal_data_in_an_alerts_details_is_not_on_the_alerts_page(server: Server, browser: Browser) -> None:
    """An alert's details quote an endpoint named by its mailbox and a peer's answer that can name a reporter: shown
    redacted, the daemon's own case number readable."""
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001")
    async with server.store.transaction() as tx:
        await tx.event(None, "alert", "dispatch",
                       {"alert": "delivery_dead", "case_id": case, "agency": "sawaco", "target": MAILBOX,
                        "msg_id": "msg_1", "error": "550 <an.nguyen@example.vn>: gọi 0901234567, CCCD 079203005678"})
    await browser.login("admin")
    status, page = await browser.get("/console/alerts")
    assert status == 200
    (row,) = rows(page)
    for personal in (MAILBOX, "tiepnhan", "an.nguyen@example.vn", "0901234567", "079203005678"):
        assert personal not in page
    assert "[email ẩn]" in row and f"case_id={case}" in row and f'href="/console/cases/{case}"' in row
    assert OPERATOR_ALERT_TEXTS["delivery_dead"]["vi"] in row


async def test_agency_staff_are_refused_the_alerts_page_and_a_visitor_is_sent_to_log_in(
        server: Server, browser: Browser) -> None:
    """An alert names other agencies' endpoints and cases: agency staff neither see the link nor the page."""
    async with server.store.transaction() as tx:
        await tx.event(None, "alert", "dispatch", {"alert": "no_targets", "agency": "thoat-nuoc"})
    status, _ = await browser.get("/console/alerts")
    assert status == 303  # not logged in: to the login form, and back here after it
    async with browser.session.get(server.url + "/console/alerts", allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/console/login?next=%2Fconsole%2Falerts"
    await browser.login("sawaco")
    status, page = await browser.get("/console/alerts")
    assert status == 403 and "thoat-nuoc" not in page
    status, page = await browser.get("/console/cases")
    assert status == 200 and "/console/alerts" not in page


async def test_an_alerts_digest_and_job_ids_stay_readable_past_four_digits(server: Server, browser: Browser) -> None:
    """escalation_id and job_id are the daemon's row ids, which staff look up (replay --job, the escalations table):
    from 5 digits on they read "[ẩn]" as a hidden ID number. They stay; a phone or ID number in the error does not."""
    async with server.store.transaction() as tx:
        await tx.event(None, "alert", "dispatch",
                       {"alert": "escalation_dead", "escalation_id": 12345, "agency": "sawaco", "channel": "sms",
                        "error": "SMS gateway: HTTP 400 for 0901234567"})
        await tx.event(None, "alert", "dedupe",
                       {"alert": "incident_state_dead", "incident_id": "INC-000001", "change": "close",
                        "job_id": 1234567, "error": "PermanentError: CCCD 079203005678 in job 7654321"})
    await browser.login("operator")
    status, page = await browser.get("/console/alerts")
    assert status == 200
    newest, older = rows(page)
    assert "job_id=1234567" in newest and "escalation_id=12345" in older
    for personal in ("0901234567", "079203005678", "7654321"):  # free text keeps its redaction, numbers and all
        assert personal not in page
