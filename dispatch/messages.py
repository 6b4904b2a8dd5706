"""Texts: what reporters read (Vietnamese, or English when they wrote in English) and what agencies receive.

Pure rendering; no personal data of a confidential reporter is put into an agency rendering unless the
caller passes it (dispatch/cases.py decides that from config, Art. 9).
"""
from __future__ import annotations

import html
from typing import Any

from ingest.clock import iso

REPORTER_TEMPLATES: dict[str, dict[str, str]] = {
    "ack": {
        "vi": "Cổng 1022 TP.HCM đã tiếp nhận phản ánh của Ông/Bà (mã {case_id}) và chuyển đến {agency} để xử lý. "
              "Theo dõi kết quả tại: {link}",
        "en": "HCMC 1022 portal: we have received your report (ref. {case_id}) and forwarded it to {agency}. "
              "Follow its progress at: {link}",
    },
    "duplicate_ack": {
        "vi": "Cổng 1022 TP.HCM đã ghi nhận phản ánh của Ông/Bà. Sự việc này đã được tiếp nhận trước đó và đang được "
              "xử lý{case_part}. Cảm ơn Ông/Bà đã thông tin.",
        "en": "HCMC 1022 portal: thank you, your report is recorded. This issue was already reported and is being "
              "handled{case_part}.",
    },
    "rejected": {
        "vi": "Cổng 1022 TP.HCM không tiếp nhận nội dung Ông/Bà gửi. Lý do: {reason}.",
        "en": "HCMC 1022 portal: we cannot accept your message. Reason: {reason}.",
    },
    "out_of_scope": {
        "vi": "Cổng 1022 TP.HCM không giải quyết khiếu nại, tố cáo. {reason} Ông/Bà vui lòng gửi đến cơ quan có "
              "thẩm quyền theo quy định của Luật Khiếu nại, Luật Tố cáo.",
        "en": "HCMC 1022 portal: complaints and denunciations are not handled here. {reason} Please send them to "
              "the competent authority under the Law on Complaints and the Law on Denunciations.",
    },
    "resolved": {
        "vi": "Phản ánh mã {case_id} của Ông/Bà đã được {agency} xử lý xong. {result}Xem kết quả và đánh giá mức độ "
              "hài lòng (1-5 sao) tại: {link}",
        "en": "Your report {case_id} has been resolved by {agency}. {result}See the result and rate the handling "
              "(1-5 stars) at: {link}",
    },
    "closed_false": {
        "vi": "Phản ánh mã {case_id}: {agency} đã kiểm tra và không ghi nhận sự việc như nội dung phản ánh. {result}"
              "Xem chi tiết và đánh giá tại: {link}",
        "en": "Report {case_id}: {agency} checked on site and did not find the reported issue. {result}"
              "Details and rating at: {link}",
    },
}

# What a reporter's report looks like before an operator has classified it (Art. 6: acknowledged within 5 min).
REPORTER_TEMPLATES["received"] = {
    "vi": "Cổng 1022 TP.HCM đã tiếp nhận phản ánh của Ông/Bà. Phản ánh đang được phân loại để chuyển đến đơn vị có "
          "thẩm quyền xử lý; Ông/Bà sẽ nhận được mã theo dõi khi phản ánh được chuyển đi.",
    "en": "HCMC 1022 portal: we have received your report. It is being classified for the competent agency; you will "
          "receive a reference to follow it once it is forwarded.",
}
REPORTER_TEMPLATES["refused"] = {
    "vi": "Phản ánh mã {case_id} không thuộc phạm vi tiếp nhận của Cổng 1022 TP.HCM. {result}Xem chi tiết tại: {link}",
    "en": "Report {case_id} is outside what the HCMC 1022 portal handles. {result}Details at: {link}",
}

REPORTER_TEMPLATES["dispute_ack"] = {
    "vi": "Cổng 1022 TP.HCM đã ghi nhận ý kiến của Ông/Bà về kết quả xử lý phản ánh mã {case_id}. Phản ánh đã được "
          "chuyển lại cho {agency} để xử lý tiếp. Theo dõi tại: {link}",
    "en": "HCMC 1022 portal: we have recorded that you dispute the result of report {case_id}. It has been sent back "
          "to {agency} for further handling. Follow it at: {link}",
}
# Said after every result: how to dispute it (Art. 7.4), on the reporter's own channel or the lookup page.
DISPUTE_HINT = {
    "vi": " Nếu sự việc chưa được xử lý, Ông/Bà trả lời tin nhắn này (ví dụ: \"chưa xử lý\") hoặc bấm \"Không đồng ý "
          "với kết quả\" trên trang theo dõi trong vòng {days} ngày.",
    "en": " If it is not fixed, reply to this message (e.g. \"not fixed\") or use \"Dispute the result\" on the "
          "lookup page within {days} days.",
}
# What in a reporter's reply after a result says it is not fixed (folded: no diacritics, lower case).
DISPUTE_PHRASES = ("chua xu ly", "chua duoc xu ly", "chua khac phuc", "van con", "van chua", "van bi", "chua sua",
                   "khong dong y", "khong dung su that", "khong hai long voi ket qua", "van y nguyen", "lai bi",
                   "not fixed", "still broken", "still there", "dispute", "not resolved")


REPORTER_TEMPLATES["follow_up"] = {
    "vi": "Cổng 1022 TP.HCM đã bổ sung tin nhắn của Ông/Bà vào phản ánh Ông/Bà đã gửi trước đó (số {report_ref}).",
    "en": "HCMC 1022 portal: your message was added to the report you sent earlier (no. {report_ref}).",
}


CLOSED_AS = {"resolved": {"vi": "đã xử lý xong", "en": "resolved"},
             "closed_false": {"vi": "phản ánh không đúng", "en": "a false report"},
             "refused": {"vi": "không thuộc phạm vi tiếp nhận", "en": "refused"}}


# The regulation's clocks as people read them (escalation digests, the console).
CLOCK_LABELS_VI = {
    "forward": "Chuyển xử lý (5 phút)",
    "acknowledge": "Báo đã tiếp nhận cho người phản ánh (5 phút)",
    "operator_guidance": "Hướng dẫn của đơn vị vận hành (1 giờ)",
    "duplicate_notice": "Báo người phản ánh trùng sự việc (5 phút)",
    "subordinate_forward": "Chuyển đơn vị trực thuộc (5 phút)",
    "site_check": "Kiểm tra hiện trường (2 giờ)",
    "close_false": "Đóng phản ánh không đúng (1 giờ)",
    "safety_measures": "Biện pháp an toàn tạm thời (2 giờ)",
    "fix": "Khắc phục sự cố (2 giờ / 8 giờ)",
    "return_misroute": "Trả lại do không thuộc thẩm quyền",
    "answer": "Trả lời kết quả",
    "completion": "Hoàn thành theo thời gian cam kết",
    "review": "Văn phòng UBND TP xem xét, chuyển (1 ngày làm việc)",
}
LEVEL_VI = {"warning": "sắp đến hạn", "breach": "đã quá hạn"}


def escalation_digest(agency_name: str, level: str, items: list[dict[str, Any]]) -> tuple[str, str]:
    """Subject and text of one digest to an agency's contacts: every clock of theirs at this level."""
    label = LEVEL_VI.get(level, level)
    subject = f"[1022] {agency_name}: {len(items)} thời hạn {label}"
    lines = [f"Kính gửi {agency_name},", "",
             f"Các phản ánh sau có thời hạn xử lý {label} theo Quyết định 4874/QĐ-UBND:", ""]
    for item in items:
        ref = item.get("case_id") or f"phản ánh số {item.get('report_id')}"
        lines.append(f"- {ref}: {CLOCK_LABELS_VI.get(item['kind'], item['kind'])}, hạn {iso(item['due_at'])}")
    lines += ["", "Đề nghị Quý đơn vị khẩn trương xử lý và cập nhật kết quả trên hệ thống."]
    return subject, "\n".join(lines)


def escalation_sms(agency_name: str, level: str, items: list[dict[str, Any]]) -> str:
    refs = ", ".join(str(i.get("case_id") or i.get("report_id")) for i in items[:5])
    more = f" và {len(items) - 5} hồ sơ khác" if len(items) > 5 else ""
    return f"[1022] {agency_name}: {len(items)} thời hạn {LEVEL_VI.get(level, level)}: {refs}{more}."


def recurrence_text(days: int, closed_as: str, language: str) -> str:
    """"Reported again 3 days after it was closed as resolved", for operators and the agency."""
    how = CLOSED_AS.get(closed_as, CLOSED_AS["resolved"])
    if language == "en":
        return f"reported again {days} day{'s' if days != 1 else ''} after it was closed as {how['en']}"
    return f"phản ánh lại {days} ngày sau khi sự việc được đóng ({how['vi']})"

# A ward/commune committee of the 2025 map, named with the old ward and district people know beside the new
# name: "Ủy ban nhân dân Phường Bình Tiên (P.7, Q.6 cũ)".
UNIT_COMMITTEE = {"vi": "Ủy ban nhân dân {label}", "en": "the People's Committee of {label}"}


def unit_committee_name(label: str, language: str) -> str:
    return UNIT_COMMITTEE["en" if language == "en" else "vi"].format(label=label)


DEFAULT_REASON = {
    "rejected": {"vi": "nội dung không phù hợp với quy định của Cổng 1022",
                 "en": "the content is outside the portal's rules"},
    "out_of_scope": {"vi": "", "en": ""},
}


def reporter_text(template: str, language: str, **fields: Any) -> str:
    lang = "en" if language == "en" else "vi"
    body = REPORTER_TEMPLATES[template][lang]
    if template in DEFAULT_REASON and not fields.get("reason"):
        fields["reason"] = DEFAULT_REASON[template][lang]
    reason = str(fields.get("reason") or "").strip()
    if template == "out_of_scope" and reason and not reason.endswith((".", "!", "?")):
        reason += "."
    fields["reason"] = reason.rstrip(".") if template == "rejected" else reason
    result = str(fields.get("result") or "").strip()
    if result and not result.endswith((".", "!", "?")):
        result += "."
    fields["result"] = f"{result} " if result else ""
    case_id = fields.get("case_id")
    if lang == "vi":
        fields["case_part"] = f" (mã {case_id})" if case_id else ""
    else:
        fields["case_part"] = f" (ref. {case_id})" if case_id else ""
    text = body.format_map({k: ("" if v is None else v) for k, v in fields.items()})
    if template in ("resolved", "closed_false") and fields.get("dispute_days"):
        text += DISPUTE_HINT[lang].format(days=f"{fields['dispute_days']:g}")
    return " ".join(text.split())


ANSWER_HELP_VI = (
    "Trả lời email này (giữ nguyên tiêu đề) với một trong các từ khóa ở dòng đầu: ĐÃ TIẾP NHẬN; XÁC MINH ĐÚNG; "
    "PHẢN ÁNH SAI; ĐÃ RÀO CHẮN TẠM; ĐANG XỬ LÝ, DỰ KIẾN HOÀN THÀNH <ngày giờ>; BÁO CÁO TIẾN ĐỘ; ĐÃ XỬ LÝ XONG "
    "(kèm ảnh); KHÔNG THUỘC THẨM QUYỀN: <lý do>."
)


def agency_text(payload: dict[str, Any]) -> str:
    d = payload["data"]
    if payload["type"] == "case.disputed":
        dispute = d.get("dispute") or {}
        previous = dispute.get("previous") or {}
        head = [f"Phản ánh {d['case_id']}: người phản ánh không đồng ý với kết quả xử lý ({dispute.get('at', '')}).",
                f"Ý kiến: {dispute.get('text', '')}",
                f"Kết quả đã báo trước đó: {previous.get('result') or '—'}", "", "Hồ sơ được mở lại; thời hạn mới:"]
        head += [f"- {x['kind']}: {x['due_at']}" for x in d.get("deadlines") or []]
        return "\n".join(head + ["", f"Trả lời qua API: {d['answer_url']}", ANSWER_HELP_VI])
    if payload["type"] == "case.merged":
        return "\n".join([f"Phản ánh {d['case_id']} đã được gộp vào hồ sơ {d.get('merged_into_case')} (cùng sự việc).",
                          "Hồ sơ này được đóng; Quý đơn vị không cần xử lý riêng hồ sơ này.", "",
                          f"Lĩnh vực: {d['topic_name']}", f"Địa bàn: {d.get('district_name') or 'chưa xác định'}"])
    lines = [
        f"Phản ánh {d['case_id']} ({'chuyển lại' if payload['type'] == 'case.rerouted' else 'mới'})",
        f"Lĩnh vực: {d['topic_name']}",
        f"Địa bàn: {d.get('district_name') or 'chưa xác định'}",
        f"Địa điểm: {_place_line(d.get('place') or {})}",
        f"Thời điểm tiếp nhận: {d['received_at']}",
        f"Kênh: {d['channel']}",
        "",
        "Nội dung:",
        d["text"],
        "",
        f"Người phản ánh: {_reporter_line(d.get('reporter') or {})}",
    ]
    if d.get("return_reason"):
        lines += ["", f"Đơn vị trước trả lại với lý do: {d['return_reason']}"]
    if d.get("recurrence"):
        r = d["recurrence"]
        lines += ["", f"Tái diễn: {r['summary_vi']} (sự việc {r['incident_id']}, hồ sơ {r.get('case_id') or '—'})."]
    if d.get("deadlines"):
        lines += ["", "Thời hạn:"] + [f"- {x['kind']}: {x['due_at']}" for x in d["deadlines"]]
    lines += ["", f"Trả lời qua API: {d['answer_url']}", ANSWER_HELP_VI]
    return "\n".join(lines)


def agency_html(payload: dict[str, Any]) -> str:
    text = agency_text(payload)
    paragraphs = "".join(f"<p>{html.escape(block).replace(chr(10), '<br>')}</p>" for block in text.split("\n\n"))
    return f"<!doctype html><html><body>{paragraphs}</body></html>"


def is_dispute(folded_text: str) -> bool:
    """Whether a reporter's reply (folded) after a result says it is not fixed."""
    return any(p in folded_text for p in DISPUTE_PHRASES)


def agency_subject(payload: dict[str, Any]) -> str:
    d = payload["data"]
    where = f" - {d['district_name']}" if d.get("district_name") else ""
    return f"[1022 #{d['case_id']}] {d['topic_name']}{where}"


def _place_line(place: dict[str, Any]) -> str:
    parts = [place.get("house_number"), place.get("street"), place.get("landmark"), place.get("ward")]
    line = ", ".join(str(p) for p in parts if p)
    if place.get("lat") is not None and place.get("lon") is not None:
        line += f" ({place['lat']:.6f}, {place['lon']:.6f})"
    return line or "không rõ"


def _reporter_line(reporter: dict[str, Any]) -> str:
    if reporter.get("confidential"):
        return "được bảo mật theo yêu cầu"
    parts = [reporter.get("name"), reporter.get("phone"), reporter.get("email"), reporter.get("address")]
    return ", ".join(str(p) for p in parts if p) or "không để lại thông tin"


def when(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)
