"""The 2025 map on the operators' pages and in messages: the review page offers the candidate units of an undecided
report; the reporter's acknowledgement and the public address name the unit the way people know the place.
(The public list's unit filter is tested with the portal, which serves it: tests/portal/test_map2025.py.)"""
from __future__ import annotations

import json
from ingest.jobs import NotifyJob
from config.directory import load_directory
from dispatch.messages import reporter_text, unit_committee_name
from ingest.public import public_address
from ingest.records import Candidate, Place

from .conftest import Browser, Server, seed_case, seed_report

async def test_review_page_offers_the_candidate_units(server: Server, browser: Browser) -> None:
    server.ctx.directory = load_directory(None, "2025")
    rid = await seed_report(server.store, text="Quận 6 có người xây nhà lấn hẻm", status="review",
                            topic="illegal_construction", agency="van-hanh-1022", district="quan-6",
                            candidates=(Candidate(topic="illegal_construction", agency="van-hanh-1022", score=0.9),),
                            place=Place(district="quan-6", unit_candidates=("binh-tien", "binh-tay"), source="text"))
    await browser.login("operator")
    status, body = await browser.get(f"/console/review/{rid}")
    assert status == 200
    assert 'value="ubnd-binh-tien"' in body and "Phường Bình Tây (Quận 6 cũ)" in body
    status, _, _ = await browser.post(f"/console/review/{rid}/decide",
                                   {"topic": "illegal_construction", "agency": "ubnd-binh-tien"})
    row = await server.store.fetchone("SELECT status, agency FROM reports WHERE id=?", (rid,))
    assert row["agency"] == "ubnd-binh-tien", (status, dict(row))


def test_labels_in_messages_and_public_address() -> None:
    d = load_directory(None, "2025")
    ack = reporter_text("ack", "vi", case_id="C1", link="https://x", result=None,
                        agency=unit_committee_name("Phường Bình Tiên (P.7, Q.6 cũ)", "vi"))
    assert "chuyển đến Ủy ban nhân dân Phường Bình Tiên (P.7, Q.6 cũ) để xử lý" in ack
    assert public_address({"place": {"street": "hau giang", "unit_label": "Phường Bình Tiên (P.7, Q.6 cũ)",
                                     "district": "quan-6"}}, d) == "hau giang, Phường Bình Tiên (P.7, Q.6 cũ)"
    # Without a unit (2023 map) the address is as before.
    assert public_address({"place": {"ward": "Phường 7", "district": "quan-6"}}, d) == "Phường 7, Quận 6"


def test_the_acknowledgement_names_the_unit_committee_with_the_old_names() -> None:
    from types import SimpleNamespace

    from config.dispatch import DispatchConfig
    from dispatch.notify import Notifier
    from ingest.app import ReplyRegistry

    d = load_directory(None, "2025")
    notifier = Notifier(None, d, DispatchConfig(), ReplyRegistry(), "https://1022.example.vn", 5)  # type: ignore[arg-type]
    place = {"district": "quan-6", "unit": "binh-tien", "unit_label": "Phường Bình Tiên (P.7, Q.6 cũ)"}
    report = SimpleNamespace(classification={"language": "vi", "place": place})
    case = {"id": "C-1", "token": "t", "result": None, "agency": "ubnd-binh-tien", "language": "vi", "state": "new"}
    ack = notifier.render("ack", NotifyJob(template="ack"), report, case)  # type: ignore[arg-type]
    assert "chuyển đến Ủy ban nhân dân Phường Bình Tiên (P.7, Q.6 cũ) để xử lý" in ack
    # Reassigned to another unit's committee: that committee's own name, not this label.
    other = notifier.render("ack", NotifyJob(template="ack"), report, {**case, "agency": "ubnd-an-dong"})  # type: ignore[arg-type]
    assert "Ủy ban nhân dân Phường An Đông" in other and "P.7" not in other
    # A city-wide agency keeps its name.
    assert "SAWACO" in notifier.render("ack", NotifyJob(template="ack"), report, {**case, "agency": "sawaco"})  # type: ignore[arg-type]


async def test_case_page_shows_the_unit_with_the_old_names(server: Server, browser: Browser) -> None:
    case = await seed_case(server, text="bể ống nước trước nhà, P.7 Q.6", incident="INC-000001", agency="sawaco",
                           place=Place(district="quan-6", ward="Phường 7", unit="binh-tien", source="text",
                                       unit_label="Phường Bình Tiên (P.7, Q.6 cũ)"))
    await browser.login("operator")
    status, body = await browser.get(f"/console/cases/{case}")
    assert status == 200 and "<strong>Phường Bình Tiên (P.7, Q.6 cũ)</strong>" in body
    # The agency's dispatch names the place the same way (payload and email subject).
    from dispatch.messages import agency_subject, agency_text

    row = await server.store.fetchone("SELECT payload FROM deliveries WHERE case_id=?", (case,))
    payload = json.loads(row["payload"])
    assert payload["data"]["district_name"] == "Phường Bình Tiên (P.7, Q.6 cũ)"
    assert agency_subject(payload).endswith(" - Phường Bình Tiên (P.7, Q.6 cũ)")
    assert "Địa bàn: Phường Bình Tiên (P.7, Q.6 cũ)" in agency_text(payload)
