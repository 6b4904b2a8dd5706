"""The regulation's pure rules: working days across Tết, clocks per category, answers, re-routing, email replies."""
from __future__ import annotations

from datetime import datetime

import pytest

from dispatch import policy
from dispatch.answers import parse_email_reply
from dispatch.calendar import load_calendar
from dispatch.messages import reporter_text
from ingest.clock import VN_TZ

CAL = load_calendar()
WARN = policy.WarnPolicy()


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=VN_TZ).timestamp()


def test_one_working_day_from_friday_ends_monday():
    assert CAL.add_working_days(ts(2026, 9, 11, 10), 1) == ts(2026, 9, 14, 10)


def test_working_days_skip_national_day_and_tet():
    # Friday 28/08/2026 10:00 + 1 working day: Monday 31/08 is swapped off (worked on 22/08) and 1 and 2 September
    # are National Day, so Thursday 3/9.
    assert CAL.add_working_days(ts(2026, 8, 28, 10), 1) == ts(2026, 9, 3, 10)
    # Forwarded on Friday 13/02/2026, the last working day before Tết Bính Ngọ: 5 working days end 27/02.
    assert CAL.add_working_days(ts(2026, 2, 13, 15), 5) == ts(2026, 2, 27, 15)


def test_make_up_saturday_counts_and_extra_holidays_are_added():
    assert CAL.is_working_day(datetime(2026, 1, 10).date())
    extra = load_calendar(extra_holidays=["2026-09-08"])
    assert extra.add_working_days(ts(2026, 9, 7, 9), 1) == ts(2026, 9, 9, 9)


def test_clocks_started_per_category():
    at = ts(2026, 9, 7, 9)
    infra = {d.kind: d.due_at - at for d in policy.agency_deadlines(category="infrastructure", agency="sawaco",
                                                                     at=at, calendar=CAL, warn=WARN)}
    assert infra == {"subordinate_forward": 300, "site_check": 7200, "fix": 7200}
    civic = policy.agency_deadlines(category="civic", agency="ubnd-quan-1", at=at, calendar=CAL, warn=WARN)
    assert [(d.kind, d.due_at) for d in civic] == [("answer", ts(2026, 9, 14, 9))]
    # 7.3: the City Office reviews and forwards within 1 working day; the agency it forwards to has 10 days.
    office = {d.kind: d.due_at for d in policy.agency_deadlines(category="suggestion", agency="vp-ubnd", at=at,
                                                                calendar=CAL, warn=WARN)}
    assert office == {"review": ts(2026, 9, 8, 9)}
    sugg = {d.kind: d.due_at for d in policy.agency_deadlines(category="suggestion", agency="so-gtvt", at=at,
                                                              calendar=CAL, warn=WARN)}
    assert sugg == {"answer": at + 10 * 86400}
    op = policy.agency_deadlines(category="civic", agency=policy.OPERATOR_UNIT, at=at, calendar=CAL, warn=WARN)
    assert [(d.kind, d.due_at - at) for d in op] == [("operator_guidance", 3600)]
    # 6.3: no handler found at classification: the operator unit's hour runs from receipt.
    op = policy.agency_deadlines(category="civic", agency=policy.OPERATOR_UNIT, at=at, calendar=CAL, warn=WARN,
                                 received_at=at - 600)
    assert [(d.kind, d.due_at - at) for d in op] == [("operator_guidance", 3000)]
    assert all(d.started_at < d.warn_at < d.due_at for d in civic + op)


def view(**kw) -> policy.CaseView:
    base = dict(id="CASE-1", category="infrastructure", agency="sawaco", state="forwarded",
                forwarded_at=ts(2026, 9, 7, 9))
    base.update(kw)
    return policy.CaseView(**base)


def test_safety_measures_give_eight_hours_to_fix():
    effect = policy.answer_effect(view(), "safety_measures", {}, ts(2026, 9, 7, 10), CAL, WARN)
    assert effect.reschedule == {"fix": ts(2026, 9, 7, 17)} and "site_check" in effect.meets


def test_false_report_after_an_hour_is_judged_late():
    on_time = policy.answer_effect(view(), "false_report", {}, ts(2026, 9, 7, 9, 50), CAL, WARN)
    late = policy.answer_effect(view(), "false_report", {}, ts(2026, 9, 7, 10, 30), CAL, WARN)
    assert on_time.closes and on_time.judged[0].met
    assert not late.judged[0].met


def test_closed_case_refuses_answers_and_in_progress_needs_a_date():
    with pytest.raises(policy.AnswerRejected):
        policy.answer_effect(view(state="resolved"), "verified", {}, ts(2026, 9, 7, 10), CAL, WARN)
    with pytest.raises(policy.AnswerRejected):
        policy.answer_effect(view(), "in_progress", {}, ts(2026, 9, 7, 10), CAL, WARN)
    eff = policy.answer_effect(view(), "in_progress", {"expected_completion": ts(2026, 9, 8, 9)},
                               ts(2026, 9, 7, 10), CAL, WARN)
    assert "fix" in eff.meets and eff.new_deadlines[0].kind == "completion"


def test_next_agency_skips_tried_agencies_then_falls_back_to_operators():
    cands = [{"topic": "water_supply", "agency": "sawaco", "score": 0.7},
             {"topic": "drainage", "agency": "thoat-nuoc", "score": 0.2},
             {"topic": "waste", "agency": "district", "score": 0.1}]
    assert policy.next_agency(cands, ["sawaco"]) == "thoat-nuoc"
    assert policy.next_agency(cands, ["sawaco", "thoat-nuoc"], lambda t: "ubnd-quan-1") == "ubnd-quan-1"
    assert policy.next_agency(cands, ["sawaco", "thoat-nuoc", "ubnd-quan-1"], lambda t: "ubnd-quan-1") \
        == policy.OPERATOR_UNIT


@pytest.mark.parametrize("body,kind", [
    ("Đã xử lý xong, gửi kèm ảnh hiện trường.", "resolved"),
    ("da xu ly xong", "resolved"),
    ("Đã tiếp nhận.", "acknowledged"),
    ("Phản ánh sai, không có sự việc.", "false_report"),
    ("Đã rào chắn tạm và đặt biển báo.", "safety_measures"),
    ("Đang xử lý, dự kiến hoàn thành 16:30 ngày 08/09/2026.", "in_progress"),
    ("Not ours: this is a private water line.", "returned"),
    ("Cảm ơn.\n\n> Đã xử lý xong", None),
])
def test_parse_email_reply_keywords(body, kind):
    parsed = parse_email_reply("Re: [1022 #CASE-000007] Cấp nước - Quận 1", None, [], body)
    assert parsed.case_id == "CASE-000007"
    assert parsed.kind == kind


def test_parse_email_reply_expected_time_reason_and_thread():
    p = parse_email_reply("Re: case", "<msg_ab12@1022.tphcm.gov.vn>", [],
                          "Đang xử lý, dự kiến hoàn thành 16:30 ngày 08/09/2026")
    assert p.case_id is None and p.msg_ids == ("msg_ab12",)
    assert p.data["expected_completion"] == ts(2026, 9, 8, 16, 30)
    r = parse_email_reply("[1022 #CASE-1]", None, [], "KHÔNG THUỘC THẨM QUYỀN: tuyến ống do khu công nghiệp quản lý")
    assert r.kind == "returned" and r.data["reason"] == "tuyến ống do khu công nghiệp quản lý"


def test_reporter_texts_in_vietnamese_and_english():
    vi = reporter_text("ack", "vi", case_id="CASE-1", agency="Tổng công ty Cấp nước Sài Gòn", link="https://x/c/t")
    en = reporter_text("ack", "en", case_id="CASE-1", agency="Saigon Water Corporation", link="https://x/c/t")
    assert vi.startswith("Cổng 1022 TP.HCM đã tiếp nhận phản ánh") and "https://x/c/t" in vi
    assert en.startswith("HCMC 1022 portal: we have received your report")
    assert "{" not in reporter_text("duplicate_ack", "vi") and "Lý do" in reporter_text("rejected", "vi")
