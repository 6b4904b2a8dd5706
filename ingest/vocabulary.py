"""The texts people read for every report status and case state, in Vietnamese and English: one catalogue.

The states themselves belong to their stages (`ingest.records.REPORT_STATES`, `dispatch.policy.CASE_STATES`);
this module only says how each reads. It lives in ingest, the one package every stage and view may import,
so the public views (ingest/public.py), dispatch's agency pages, ops reports, the console and the portal's
catalogue all read the same words. tests/test_vocabulary.py checks every state has its text.
"""
from __future__ import annotations

# Report status -> what the public reads (only the statuses a public view can show; hidden ones never appear).
REPORT_STATUS_TEXTS: dict[str, dict[str, str]] = {
    "received": {"vi": "Đã tiếp nhận", "en": "Received"},
    "review": {"vi": "Đang phân loại", "en": "Being classified"},
    "routed": {"vi": "Đã phân loại", "en": "Classified"},
    "duplicate": {"vi": "Đã tiếp nhận (trùng sự việc đang xử lý)",
                  "en": "Received (same incident as one being handled)"},
    "dispatched": {"vi": "Đã chuyển đơn vị xử lý", "en": "Forwarded to the agency"},
    "closed": {"vi": "Đã xử lý xong", "en": "Handled"},
    "out_of_scope": {"vi": "Không thuộc phạm vi tiếp nhận", "en": "Outside what the portal handles"},
}
# Case state -> what the public reads; more precise than the report's status once a case exists.
CASE_STATE_TEXTS: dict[str, dict[str, str]] = {
    "forwarded": {"vi": "Đã chuyển đơn vị xử lý", "en": "Forwarded to the agency"},
    "acknowledged": {"vi": "Đơn vị đã tiếp nhận", "en": "Acknowledged by the agency"},
    "verified": {"vi": "Đã xác minh", "en": "Checked on site"},
    "safety_done": {"vi": "Đã có biện pháp an toàn tạm thời", "en": "Temporary safety measures in place"},
    "in_progress": {"vi": "Đang xử lý", "en": "Being handled"},
    "resolved": {"vi": "Đã xử lý xong", "en": "Resolved"},
    # A report the agency found untrue on site (REGULATION 7.1: "false report", closed within 1 hour).
    "closed_false": {"vi": "Đã đóng: phản ánh không đúng sự thật", "en": "Closed: the report was untrue"},
    "refused": {"vi": "Đã đóng: không thuộc phạm vi tiếp nhận", "en": "Closed: outside what the portal handles"},
    "merged": {"vi": "Đã gộp vào phản ánh khác cùng sự việc", "en": "Merged into another report of the same incident"},
}
# A state a public view does not know (a new one, or none yet).
UNKNOWN_STATE_TEXT: dict[str, str] = {"vi": "Đang xử lý", "en": "Being handled"}
# What a channel answers once a report is stored (the Open311 notice, the portal's receipt).
RECEIVED_NOTICE: dict[str, str] = {"vi": "Đã tiếp nhận phản ánh", "en": "Report received"}

# Short Vietnamese labels for tables and charts in the operators' and agencies' periodic reports (ops/).
CASE_STATE_LABELS: dict[str, str] = {
    "forwarded": "đã chuyển", "acknowledged": "đã tiếp nhận", "verified": "đã kiểm tra", "safety_done": "đã rào chắn",
    "in_progress": "đang xử lý", "resolved": "đã xử lý xong", "closed_false": "không đúng sự việc",
    "refused": "không thuộc phạm vi", "merged": "đã gộp",
}
REPORT_STATUS_LABELS: dict[str, str] = {
    "review": "chờ phân loại", "routed": "đã phân loại", "duplicate": "trùng vụ việc", "dispatched": "đã chuyển",
    "closed": "đã đóng", "failed": "lỗi xử lý",
}

# Notes a public view shows instead of a report's content.
CONFIDENTIAL_NOTE = {"vi": "Nội dung được bảo mật theo yêu cầu của người phản ánh.",
                     "en": "The content is confidential at the reporter's request."}
PENDING_NOTE = {"vi": "Phản ánh đang được phân loại; nội dung sẽ được công bố sau khi kiểm duyệt.",
                "en": "The report is being classified; its content is published once checked."}
OUT_OF_SCOPE_NOTE = {"vi": "Nội dung không thuộc phạm vi tiếp nhận của Cổng 1022; người phản ánh đã được hướng dẫn.",
                     "en": "The content is outside what the 1022 portal handles; the reporter was advised."}

# The regulation's clocks (dispatch.policy.CLOCK_KINDS) as people read them: agencies' escalation digests and the
# operators' and agencies' periodic reports.
CLOCK_TEXTS: dict[str, dict[str, str]] = {
    "forward": {"vi": "Chuyển xử lý (5 phút)", "en": "Forward to the agency (5 minutes)"},
    "acknowledge": {"vi": "Báo đã tiếp nhận cho người phản ánh (5 phút)",
                    "en": "Tell the reporter it is received (5 minutes)"},
    "operator_guidance": {"vi": "Hướng dẫn của đơn vị vận hành (1 giờ)", "en": "Operator unit's guidance (1 hour)"},
    "duplicate_notice": {"vi": "Báo người phản ánh trùng sự việc (5 phút)",
                         "en": "Tell the reporter of a known incident (5 minutes)"},
    "subordinate_forward": {"vi": "Chuyển đơn vị trực thuộc (5 phút)",
                            "en": "Forward to a subordinate unit (5 minutes)"},
    "site_check": {"vi": "Kiểm tra hiện trường (2 giờ)", "en": "Check on site (2 hours)"},
    "close_false": {"vi": "Đóng phản ánh không đúng (1 giờ)", "en": "Close a false report (1 hour)"},
    "safety_measures": {"vi": "Biện pháp an toàn tạm thời (2 giờ)", "en": "Temporary safety measures (2 hours)"},
    "fix": {"vi": "Khắc phục sự cố (2 giờ / 8 giờ)", "en": "Fix the incident (2 hours / 8 hours)"},
    "return_misroute": {"vi": "Trả lại do không thuộc thẩm quyền", "en": "Return a case that is not the agency's"},
    "answer": {"vi": "Trả lời kết quả (5 ngày làm việc / 10-15 ngày)",
               "en": "Answer with the result (5 working days / 10-15 days)"},
    "completion": {"vi": "Hoàn thành theo thời gian cam kết", "en": "Complete by the committed time"},
    "review": {"vi": "Văn phòng UBND TP xem xét, chuyển (1 ngày làm việc)",
               "en": "City Office review and forward (1 working day)"},
}
# How close a clock is to its deadline, in an escalation.
ALERT_LEVEL_TEXTS: dict[str, dict[str, str]] = {
    "warning": {"vi": "sắp đến hạn", "en": "due soon"},
    "breach": {"vi": "đã quá hạn", "en": "overdue"},
}
# "Reported again N days after it was closed as ...", for operators and the agency.
RECURRENCE_TEXT: dict[str, str] = {"vi": "phản ánh lại {days} ngày sau khi sự việc được đóng ({how})",
                                   "en": "reported again {days} {day_word} after it was closed as {how}"}
# A case's reference inside a reporter's message, when there is one.
CASE_REFERENCE: dict[str, str] = {"vi": " (mã {case_id})", "en": " (ref. {case_id})"}
# How a closed case ended, in "reported again N days after it was closed as ...".
CLOSED_AS_TEXTS: dict[str, dict[str, str]] = {
    "resolved": {"vi": "đã xử lý xong", "en": "resolved"},
    "closed_false": {"vi": "phản ánh không đúng", "en": "a false report"},
    "refused": {"vi": "không thuộc phạm vi tiếp nhận", "en": "refused"},
}

# -- what reporters and agencies read from dispatch (dispatch/messages.py fills them in) --------------------
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

REPORTER_TEMPLATES["follow_up"] = {
    "vi": "Cổng 1022 TP.HCM đã bổ sung tin nhắn của Ông/Bà vào phản ánh Ông/Bà đã gửi trước đó (số {report_ref}).",
    "en": "HCMC 1022 portal: your message was added to the report you sent earlier (no. {report_ref}).",
}

# A ward/commune committee of the 2025 map, named with the old ward and district people know beside the new
# name: "Ủy ban nhân dân Phường Bình Tiên (P.7, Q.6 cũ)".
UNIT_COMMITTEE = {"vi": "Ủy ban nhân dân {label}", "en": "the People's Committee of {label}"}

DEFAULT_REASON = {
    "rejected": {"vi": "nội dung không phù hợp với quy định của Cổng 1022",
                 "en": "the content is outside the portal's rules"},
    "out_of_scope": {"vi": "", "en": ""},
}

ANSWER_HELP_VI = (
    "Trả lời email này (giữ nguyên tiêu đề) với một trong các từ khóa ở dòng đầu: ĐÃ TIẾP NHẬN; XÁC MINH ĐÚNG; "
    "PHẢN ÁNH SAI; ĐÃ RÀO CHẮN TẠM; ĐANG XỬ LÝ, DỰ KIẾN HOÀN THÀNH <ngày giờ>; BÁO CÁO TIẾN ĐỘ; ĐÃ XỬ LÝ XONG "
    "(kèm ảnh); KHÔNG THUỘC THẨM QUYỀN: <lý do>."
)
# What an agency reads in a case email and in the escalations of its clocks (dispatch/messages.py).
AGENCY_TEXTS: dict[str, dict[str, str]] = {
    "case_head": {"vi": "Phản ánh {case_id} ({kind})", "en": "Report {case_id} ({kind})"},
    "kind_new": {"vi": "mới", "en": "new"},
    "kind_rerouted": {"vi": "chuyển lại", "en": "re-routed"},
    "topic": {"vi": "Lĩnh vực: {topic}", "en": "Topic: {topic}"},
    "district": {"vi": "Địa bàn: {district}", "en": "District: {district}"},
    "unknown_district": {"vi": "chưa xác định", "en": "not known"},
    "place": {"vi": "Địa điểm: {place}", "en": "Place: {place}"},
    "unknown_place": {"vi": "không rõ", "en": "unknown"},
    "received_at": {"vi": "Thời điểm tiếp nhận: {at}", "en": "Received at: {at}"},
    "channel": {"vi": "Kênh: {channel}", "en": "Channel: {channel}"},
    "content": {"vi": "Nội dung:", "en": "Content:"},
    "reporter": {"vi": "Người phản ánh: {reporter}", "en": "Reporter: {reporter}"},
    "confidential_reporter": {"vi": "được bảo mật theo yêu cầu", "en": "kept confidential at their request"},
    "anonymous_reporter": {"vi": "không để lại thông tin", "en": "left no contact"},
    "returned_because": {"vi": "Đơn vị trước trả lại với lý do: {reason}",
                         "en": "The previous agency returned it because: {reason}"},
    "recurrence": {"vi": "Tái diễn: {summary} (sự việc {incident_id}, hồ sơ {case_id}).",
                   "en": "Recurrence: {summary} (incident {incident_id}, case {case_id})."},
    "deadlines": {"vi": "Thời hạn:", "en": "Deadlines:"},
    "answer_at": {"vi": "Trả lời qua API: {url}", "en": "Answer through the API: {url}"},
    "disputed": {"vi": "Phản ánh {case_id}: người phản ánh không đồng ý với kết quả xử lý ({at}).",
                 "en": "Report {case_id}: the reporter disputes the result ({at})."},
    "dispute_text": {"vi": "Ý kiến: {text}", "en": "Their words: {text}"},
    "previous_result": {"vi": "Kết quả đã báo trước đó: {result}", "en": "The result reported before: {result}"},
    "reopened": {"vi": "Hồ sơ được mở lại; thời hạn mới:", "en": "The case is reopened; new deadlines:"},
    "merged": {"vi": "Phản ánh {case_id} đã được gộp vào hồ sơ {into} (cùng sự việc).",
               "en": "Report {case_id} was merged into case {into} (the same incident)."},
    "merged_closed": {"vi": "Hồ sơ này được đóng; Quý đơn vị không cần xử lý riêng hồ sơ này.",
                      "en": "This case is closed; it needs no handling of its own."},
    "digest_subject": {"vi": "[1022] {agency}: {count} thời hạn {level}",
                       "en": "[1022] {agency}: {count} deadlines {level}"},
    "digest_greeting": {"vi": "Kính gửi {agency},", "en": "To {agency},"},
    "digest_intro": {"vi": "Các phản ánh sau có thời hạn xử lý {level} theo Quyết định 4874/QĐ-UBND:",
                     "en": "These reports have deadlines {level} under Decision 4874/QD-UBND:"},
    "digest_line": {"vi": "- {ref}: {clock}, hạn {due}", "en": "- {ref}: {clock}, due {due}"},
    "report_number": {"vi": "phản ánh số {report_id}", "en": "report no. {report_id}"},
    "digest_close": {"vi": "Đề nghị Quý đơn vị khẩn trương xử lý và cập nhật kết quả trên hệ thống.",
                     "en": "Please handle them promptly and record the results in the system."},
    "sms": {"vi": "[1022] {agency}: {count} thời hạn {level}: {refs}{more}.",
            "en": "[1022] {agency}: {count} deadlines {level}: {refs}{more}."},
    "sms_more": {"vi": " và {count} hồ sơ khác", "en": " and {count} more"},
}

# -- the periodic reports' charts, titles and mail (ops/report_render.py); the tables read the labels above ----
OPS_TEXTS: dict[str, dict[str, str]] = {
    "received": {"vi": "Tiếp nhận", "en": "Received"},
    "handled": {"vi": "Đã xử lý", "en": "Handled"},
    "answered": {"vi": "Đã trả lời", "en": "Answered"},
    "returned": {"vi": "Trả lại", "en": "Returned"},
    "cases": {"vi": "Vụ việc", "en": "Cases"},
    "volume_title": {"vi": "Tiếp nhận, xử lý, trả lời trong tuần", "en": "Received, handled, answered this week"},
    "on_time": {"vi": "Đúng hạn", "en": "On time"},
    "late": {"vi": "Trễ hạn", "en": "Late"},
    "deadline_count": {"vi": "Số thời hạn", "en": "Deadlines"},
    "score": {"vi": "Điểm", "en": "Score"},
    "weekly_title": {"vi": "Báo cáo tuần {period} - {agency}", "en": "Weekly report {period} - {agency}"},
    "quarterly_title": {"vi": "Báo cáo quý {period} - Cổng 1022 TP.HCM",
                        "en": "Quarterly report {period} - HCMC 1022 portal"},
    "on_time_rate": {"vi": "tỷ lệ đúng hạn", "en": "on-time rate"},
    "answer_rate": {"vi": "tỷ lệ trả lời", "en": "answer rate"},
    "satisfaction": {"vi": "mức hài lòng", "en": "satisfaction"},
    "details_attached": {"vi": "Báo cáo chi tiết ở phần HTML và tệp CSV đính kèm.",
                         "en": "The full report is in the HTML part and the attached CSV files."},
    # A strftime format: the time a report was made.
    "generated_at": {"vi": "%H:%M ngày %d/%m/%Y", "en": "%H:%M on %d/%m/%Y"},
}


def ops_text(key: str, language: str = "vi", **fields: object) -> str:
    """A periodic report's text, filled in (the reports go to Vietnamese agencies unless asked otherwise)."""
    return OPS_TEXTS[key][language].format(**fields) if fields else OPS_TEXTS[key][language]


# -- what the chat channels say to a reporter (channels/telegram_dialogue.py, channels/place_question.py) -----
CHAT_TEXTS: dict[str, dict[str, str]] = {
    "greeting": {"vi": "Xin chào! Đây là kênh tiếp nhận phản ánh của Cổng 1022 TP.HCM. "
                       "Hãy mô tả sự việc, kèm ảnh và vị trí nếu có.",
                 "en": "Hello! This is the HCMC 1022 portal's channel for reports. "
                       "Describe what happened, with photos and the location if you can."},
    "ask_text": {"vi": "Bạn vui lòng mô tả ngắn gọn sự việc cần phản ánh.",
                 "en": "Please describe briefly what you are reporting."},
    # With the bot's button to share a location.
    "ask_place_button": {"vi": "Sự việc xảy ra ở đâu? Bấm nút «Gửi vị trí» hoặc nhập địa chỉ (số nhà, đường, "
                               "phường, quận). Gõ «bỏ qua» nếu không rõ.",
                         "en": "Where is it? Press «Send location» or type the address (number, street, ward, "
                               "district). Type «skip» if you do not know."},
    # Any chat channel, without a button.
    "ask_place": {"vi": "Sự việc xảy ra ở đâu? Bạn vui lòng nhập địa chỉ (số nhà, đường, phường, quận) hoặc gửi "
                        "vị trí. Gõ «bỏ qua» nếu không rõ.",
                  "en": "Where is it? Please type the address (number, street, ward, district) or send the "
                        "location. Type «skip» if you do not know."},
    "ask_phone": {"vi": "Bạn vui lòng để lại số điện thoại để cơ quan chức năng liên hệ khi cần: bấm nút "
                        "«Chia sẻ số điện thoại» hoặc nhập số. Gõ «bỏ qua» nếu không muốn cung cấp.",
                  "en": "Please leave a phone number the agency can call if needed: press «Share phone number» "
                        "or type it. Type «skip» if you prefer not to."},
    "bad_phone": {"vi": "Số điện thoại chưa đúng (ví dụ 0903 123 456).",
                  "en": "That phone number does not look right (e.g. 0903 123 456)."},
    # The 2025 map: an old district alone or a split old ward names several wards/communes; the bot asks which.
    "ask_unit": {"vi": "Địa chỉ này nay thuộc một trong các phường/xã: {units}. Sự việc ở phường/xã nào? "
                       "Gõ «bỏ qua» nếu không rõ.",
                 "en": "This address is now in one of these wards/communes: {units}. Which one is it? "
                       "Type «skip» if you do not know."},
    "photo_too_large": {"vi": "Ảnh quá lớn nên không nhận được; bạn có thể gửi ảnh nhỏ hơn.",
                        "en": "The photo is too large to receive; you can send a smaller one."},
    "confirm": {"vi": "Đã tiếp nhận phản ánh của bạn. Cổng 1022 sẽ chuyển đến cơ quan có thẩm quyền "
                      "và báo kết quả qua Telegram.",
                "en": "Your report is received. The 1022 portal will forward it to the competent agency "
                      "and tell you the result on Telegram."},
    # The line the answer to the place question is filed under, in the report's text.
    "place_label": {"vi": "Địa điểm", "en": "Place"},
    "button_location": {"vi": "📍 Gửi vị trí", "en": "📍 Send location"},
    "button_phone": {"vi": "📞 Chia sẻ số điện thoại", "en": "📞 Share phone number"},
    "button_skip": {"vi": "Bỏ qua", "en": "Skip"},
    # The subject of an email answer to a reporter whose own message had none.
    "email_subject": {"vi": "Cổng 1022 TP.HCM: phản ánh của bạn {token}",
                      "en": "HCMC 1022 portal: your report {token}"},
}

# -- the Open311 service discovery document (console/public.py) ----------------------------------------------
DISCOVERY_TEXTS: dict[str, dict[str, str]] = {
    "contact": {"vi": "Cổng 1022 TP. Hồ Chí Minh: {base}/", "en": "Ho Chi Minh City 1022 portal: {base}/"},
    "key_service": {"vi": "Không cần khóa để đọc; ứng dụng gửi phản ánh dùng khóa do Tổng đài 1022 cấp.",
                    "en": "Reading needs no key; apps that submit reports use a key issued by the 1022 call centre."},
}

# -- the operators' alerts (events of kind 'alert', data["alert"]; raised by dispatch and dedupe) ---------------
# What the console's alerts page calls each; its keys are every kind raised (tests/test_vocabulary.py checks the
# sources), and ops/metrics.py lists each with 0 so an alerting rule never waits for a series to appear.
OPERATOR_ALERT_TEXTS: dict[str, dict[str, str]] = {
    "delivery_dead": {"vi": "Không gửi được hồ sơ cho đơn vị", "en": "A case could not be delivered to the agency"},
    "endpoint_disabled": {"vi": "Địa chỉ nhận hồ sơ của đơn vị đã ngừng (410)",
                          "en": "The agency's endpoint is gone (410)"},
    "no_targets": {"vi": "Đơn vị chưa có địa chỉ nhận hồ sơ", "en": "The agency has no dispatch target"},
    "escalation_dead": {"vi": "Không gửi được thông báo quá hạn", "en": "An overdue digest could not be sent"},
    "incident_state_dead": {"vi": "Sự việc không còn theo tình trạng hồ sơ",
                            "en": "The incident no longer follows its case's state"},
    "case_report_dead": {"vi": "Không ghi được phản ánh chính của hồ sơ vào sự việc",
                         "en": "The incident could not take its case's report"},
}


def alert_text(kind: str, language: str = "vi") -> str:
    """An alert's name for people; a kind this build does not know (a newer build's) reads as itself."""
    return OPERATOR_ALERT_TEXTS[kind][language] if kind in OPERATOR_ALERT_TEXTS else kind


# -- what the operator console answers (console/views.py) ----------------------------------------------------
CONSOLE_TEXTS: dict[str, dict[str, str]] = {
    "session_expired": {"vi": "Phiên đăng nhập đã hết hạn.", "en": "The session has expired."},
    "bad_csrf": {"vi": "Yêu cầu không hợp lệ (mã CSRF sai). Vui lòng tải lại trang.",
                 "en": "Invalid request (wrong CSRF token). Please reload the page."},
    "forbidden_page": {"vi": "Tài khoản không có quyền xem trang này.", "en": "This account may not see this page."},
    "bad_login_session": {"vi": "Phiên đăng nhập không hợp lệ, vui lòng thử lại.",
                          "en": "Invalid login session, please try again."},
    "login_throttled": {"vi": "Quá nhiều lần đăng nhập sai, vui lòng thử lại sau.",
                        "en": "Too many failed logins, please try again later."},
    "bad_login": {"vi": "Sai tên đăng nhập hoặc mật khẩu.", "en": "Wrong user name or password."},
    "login_busy": {"vi": "Hệ thống đang bận, vui lòng đăng nhập lại sau ít giây.",
                   "en": "The system is busy, please log in again in a few seconds."},
    "no_report": {"vi": "Không có phản ánh này.", "en": "No such report."},
    "bad_reject_reason": {"vi": "Lý do từ chối không hợp lệ.", "en": "Invalid reason for rejecting."},
    "choose_topic_or_agency": {"vi": "Chọn lĩnh vực hoặc đơn vị xử lý.", "en": "Choose a topic or an agency."},
    "already_decided": {"vi": "Phản ánh {report_id} đã được xử lý.", "en": "Report {report_id} was already decided."},
    "cannot_decide": {"vi": "Không thể quyết định: {exc}", "en": "Cannot decide: {exc}"},
    "no_incident": {"vi": "Không có sự việc này.", "en": "No such incident."},
    "cannot_merge": {"vi": "Không gộp được: {exc}", "en": "Cannot merge: {exc}"},
    "bad_report_id": {"vi": "Mã phản ánh không hợp lệ.", "en": "Invalid report number."},
    "cannot_split": {"vi": "Không tách được: {exc}", "en": "Cannot split: {exc}"},
    "no_case_here": {"vi": "Không có hồ sơ này, hoặc hồ sơ không thuộc đơn vị của bạn.",
                     "en": "No such case, or the case is not your agency's."},
    "no_photo": {"vi": "Không có ảnh này.", "en": "No such photo."},
    "bad_replay": {"vi": "Chọn công việc hoặc loại công việc cần chạy lại.",
                   "en": "Choose the jobs, or the kind of jobs, to run again."},
    "bad_answer_kind": {"vi": "Loại cập nhật không hợp lệ.", "en": "Invalid kind of update."},
    "bad_expected_time": {"vi": "Thời gian dự kiến không hợp lệ.", "en": "Invalid expected time."},
    "return_needs_reason": {"vi": "Trả lại hồ sơ cần nêu lý do.", "en": "Returning a case needs a reason."},
    "choose_agency": {"vi": "Chọn đơn vị nhận hồ sơ.", "en": "Choose the agency that receives the case."},
    "photo_too_large": {"vi": "Ảnh quá lớn (tối đa 10 MB).", "en": "The photo is too large (10 MB at most)."},
    "not_a_photo": {"vi": "Tệp tải lên không phải ảnh (JPEG, PNG, WebP).",
                    "en": "The uploaded file is not a photo (JPEG, PNG, WebP)."},
    "no_case": {"vi": "Không có hồ sơ này.", "en": "No such case."},
    "not_allowed": {"vi": "Không được phép: {exc}", "en": "Not allowed: {exc}"},
    "cannot_apply": {"vi": "Không áp dụng được: {exc}", "en": "Cannot apply: {exc}"},
    "channel_who": {"vi": "kênh {channel}", "en": "channel {channel}"},
    "photo_count": {"vi": " ({n} ảnh)", "en": " ({n} photos)"},
    "no_report_here": {"vi": "Không có phản ánh này, hoặc phản ánh không thuộc đơn vị của bạn.",
                       "en": "No such report, or the report is not your agency's."},
}


def console_text(key: str, language: str = "vi", **fields: object) -> str:
    """A console message, filled in; the console is in Vietnamese unless a view asks for English."""
    return CONSOLE_TEXTS[key][language].format(**fields) if fields else CONSOLE_TEXTS[key][language]


# -- the reporter's lookup page served by dispatch's API (dispatch/api.py) -----------------------------------
LOOKUP_TEXTS: dict[str, dict[str, str]] = {
    "report": {"vi": "Phản ánh", "en": "Report"},
    "topic": {"vi": "Lĩnh vực:", "en": "Topic:"},
    "agency": {"vi": "Đơn vị xử lý:", "en": "Agency:"},
    "state": {"vi": "Tình trạng:", "en": "Status:"},
    "rating": {"vi": "Mức độ hài lòng:", "en": "How satisfied are you:"},
    "send_rating": {"vi": "Gửi đánh giá", "en": "Send the rating"},
    "not_found": {"vi": "Không tìm thấy phản ánh.", "en": "No such report."},
    "not_rateable": {"vi": "Phản ánh chưa có kết quả hoặc Ông/Bà đã đánh giá.",
                     "en": "The report has no result yet, or you have already rated it."},
    "pick_stars": {"vi": "Vui lòng chọn từ 1 đến 5 sao.", "en": "Please choose from 1 to 5 stars."},
    "thanks": {"vi": "Cảm ơn Ông/Bà đã đánh giá.", "en": "Thank you for your rating."},
}
