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
