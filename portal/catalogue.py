"""Every text the web portal shows to people, in Vietnamese (the default) and English: one place to read and fix.

Templates and views ask `text(lang, key, **fields)`; a key missing in English falls back to Vietnamese, a key
missing everywhere is a programming error (KeyError), caught by the tests that render every page.
"""
from __future__ import annotations

from ingest import vocabulary

LANGUAGES = ("vi", "en")
DEFAULT_LANGUAGE = "vi"

TEXTS: dict[str, dict[str, str]] = {
    # -- layout
    "site_name": {"vi": "Cổng 1022 TP. Hồ Chí Minh", "en": "Ho Chi Minh City 1022 portal"},
    "skip": {"vi": "Bỏ qua, đến nội dung chính", "en": "Skip to main content"},
    "nav_label": {"vi": "Điều hướng chính", "en": "Main navigation"},
    "nav_report": {"vi": "Gửi phản ánh", "en": "Report a problem"},
    "nav_public": {"vi": "Phản ánh công khai", "en": "Public reports"},
    "switch_language": {"vi": "English", "en": "Tiếng Việt"},
    "footer": {"vi": "Cổng tiếp nhận, trả lời thông tin cho người dân, doanh nghiệp (Quyết định 4874/QĐ-UBND). "
                     "Thông tin cá nhân của người phản ánh không được công bố.",
               "en": "Portal for receiving and answering information from people and businesses (Decision "
                     "4874/QD-UBND). Reporters' personal information is never published."},
    # -- report form
    "form_title": {"vi": "Gửi phản ánh", "en": "Report a problem"},
    "form_intro": {"vi": "Phản ánh sự cố hạ tầng, trật tự đô thị, môi trường và các vấn đề đời sống tại TP. Hồ Chí "
                         "Minh. Chúng tôi chuyển phản ánh đến đơn vị có trách nhiệm xử lý.",
                   "en": "Report infrastructure failures, public order, environment and other everyday problems in Ho "
                         "Chi Minh City. We forward your report to the agency responsible."},
    "required_note": {"vi": "Ô có dấu * là bắt buộc.", "en": "Fields marked * are required."},
    "what_legend": {"vi": "Nội dung phản ánh", "en": "What is the problem?"},
    "description": {"vi": "Mô tả sự việc *", "en": "Description *"},
    "description_help": {"vi": "Điều gì đang xảy ra, từ khi nào, có nguy hiểm không.",
                         "en": "What is happening, since when, and whether it is dangerous."},
    "topic": {"vi": "Lĩnh vực (không bắt buộc)", "en": "Topic (optional)"},
    "topic_auto": {"vi": "Để hệ thống tự phân loại", "en": "Let the system decide"},
    "where_legend": {"vi": "Địa điểm", "en": "Where?"},
    "address_string": {"vi": "Địa chỉ hoặc tên đường, phường, quận", "en": "Address, or street, ward and district"},
    "address_help": {"vi": "Ví dụ: 12 Lê Lợi, phường Bến Nghé, Quận 1. Cần địa chỉ hoặc vị trí trên bản đồ.",
                     "en": "For example: 12 Lê Lợi, Bến Nghé ward, District 1. An address or a map position is "
                           "needed."},
    "map_label": {"vi": "Bản đồ: chạm để đặt vị trí sự việc", "en": "Map: tap to place the problem"},
    "use_location": {"vi": "Dùng vị trí của tôi", "en": "Use my location"},
    "locating": {"vi": "Đang xác định vị trí…", "en": "Finding your location…"},
    "location_failed": {"vi": "Không lấy được vị trí. Hãy chạm lên bản đồ hoặc nhập địa chỉ.",
                        "en": "Your location is not available. Tap the map or type an address."},
    "coordinates": {"vi": "Tọa độ (không bắt buộc)", "en": "Coordinates (optional)"},
    "lat": {"vi": "Vĩ độ", "en": "Latitude"},
    "long": {"vi": "Kinh độ", "en": "Longitude"},
    "photos_legend": {"vi": "Hình ảnh", "en": "Photos"},
    "media": {"vi": "Ảnh chụp hiện trường (tối đa {n} ảnh)", "en": "Photos of the site (up to {n})"},
    "media_help": {"vi": "Thông tin vị trí và thiết bị trong ảnh được xóa trước khi ảnh được hiển thị.",
                   "en": "Location and camera data inside photos are removed before any photo is shown."},
    "photo_preview": {"vi": "Ảnh đã chọn", "en": "Chosen photos"},
    "contact_legend": {"vi": "Thông tin liên hệ", "en": "Your contact details"},
    "contact_help": {"vi": "Để nhận kết quả xử lý. Không bao giờ được công bố.",
                     "en": "To receive the result. Never published."},
    "last_name": {"vi": "Họ", "en": "Last name"},
    "first_name": {"vi": "Tên", "en": "First name"},
    "phone": {"vi": "Số điện thoại", "en": "Phone number"},
    "email": {"vi": "Thư điện tử", "en": "Email"},
    "confidential": {"vi": "Đề nghị giữ bí mật thông tin người phản ánh",
                     "en": "Keep my identity confidential"},
    "confidential_help": {"vi": "Nội dung và vị trí sẽ không được công bố; chỉ cán bộ có thẩm quyền thấy thông tin "
                                "của bạn.",
                          "en": "The content and position will not be published; only authorised officials see "
                                "your details."},
    "honeypot": {"vi": "Để trống ô này", "en": "Leave this field empty"},
    "submit": {"vi": "Gửi phản ánh", "en": "Send report"},
    "sending": {"vi": "Đang gửi…", "en": "Sending…"},
    "errors_title": {"vi": "Chưa gửi được phản ánh. Vui lòng sửa các mục sau:",
                     "en": "The report was not sent yet. Please correct the following:"},
    # -- field errors: "<field>.<reason>" from channels/open311_parse.py, then generic ones
    "description.required": {"vi": "Vui lòng mô tả sự việc.", "en": "Please describe the problem."},
    "description.too_long": {"vi": "Mô tả quá dài; vui lòng rút gọn.", "en": "The description is too long."},
    "address_string.too_long": {"vi": "Địa chỉ quá dài; vui lòng rút gọn.", "en": "The address is too long."},
    "service_code.unknown": {"vi": "Lĩnh vực không hợp lệ; hãy chọn lại.", "en": "Unknown topic; please choose again."},
    "address_string.location_required": {
        "vi": "Vui lòng nhập địa chỉ hoặc chọn vị trí trên bản đồ.",
        "en": "Please type an address or place the problem on the map."},
    "lat.pair": {"vi": "Cần cả vĩ độ và kinh độ.", "en": "Both latitude and longitude are needed."},
    "lat.number": {"vi": "Vĩ độ phải là một số.", "en": "Latitude must be a number."},
    "lat.range": {"vi": "Vĩ độ không hợp lệ.", "en": "Latitude is out of range."},
    "long.number": {"vi": "Kinh độ phải là một số.", "en": "Longitude must be a number."},
    "long.range": {"vi": "Kinh độ không hợp lệ.", "en": "Longitude is out of range."},
    "media.too_many": {"vi": "Chỉ gửi được tối đa {n} ảnh.", "en": "At most {n} photos can be sent."},
    "media.not_image": {"vi": "Tệp đính kèm phải là ảnh.", "en": "Attachments must be photos."},
    "media.too_large": {"vi": "Mỗi ảnh tối đa {mb} MB; hãy chọn ảnh nhỏ hơn.",
                        "en": "Each photo may be at most {mb} MB; please choose a smaller one."},
    "media.reselect": {"vi": "Vì lý do an toàn, trình duyệt không giữ lại ảnh đã chọn: vui lòng chọn lại ảnh.",
                       "en": "For safety, browsers do not keep chosen photos: please choose them again."},
    "phone.invalid": {"vi": "Số điện thoại không hợp lệ (ví dụ: 0909 123 456).",
                      "en": "The phone number is not valid (for example 0909 123 456)."},
    "email.invalid": {"vi": "Địa chỉ thư điện tử không hợp lệ.", "en": "The email address is not valid."},
    "form.invalid": {"vi": "Không đọc được biểu mẫu; vui lòng thử lại.", "en": "The form could not be read; "
                     "please try again."},
    "form.expired": {"vi": "Phiên làm việc đã hết hạn. Nội dung của bạn vẫn còn: hãy bấm “Gửi phản ánh” lần nữa.",
                     "en": "The session expired. Your text is still here: press “Send report” again."},
    "form.already_sent": {"vi": "Biểu mẫu này đã được gửi trước đó với nội dung khác. Nội dung bạn vừa sửa vẫn còn "
                                "bên dưới: hãy kiểm tra rồi bấm “Gửi phản ánh” để gửi thành một phản ánh mới.",
                          "en": "This form was already sent with different content. What you changed is still below: "
                                "check it and press “Send report” to send it as a new report."},
    "form.too_large": {"vi": "Dữ liệu gửi lên quá lớn (tối đa {mb} MB). Hãy quay lại, bớt hoặc thu nhỏ ảnh rồi gửi "
                             "lại; nội dung đã nhập vẫn còn trên trang trước.",
                       "en": "What was sent is too large (at most {mb} MB). Go back, remove or shrink photos and "
                             "send again; your text is still on the previous page."},
    "go_back": {"vi": "Quay lại biểu mẫu", "en": "Back to the form"},
    "rate_limited": {"vi": "Bạn đã gửi nhiều lần trong thời gian ngắn. Vui lòng thử lại sau {seconds} giây; nội dung "
                           "đã nhập vẫn được giữ.",
                     "en": "You have sent several times in a short while. Please try again in {seconds} seconds; "
                           "your text is kept."},
    "unavailable": {"vi": "Hệ thống đang bận, chưa lưu được phản ánh. Vui lòng bấm gửi lại sau ít phút; nội dung vẫn "
                          "được giữ.",
                    "en": "The system is busy and could not store the report yet. Please send again in a few "
                          "minutes; your text is kept."},
    # -- receipt
    "receipt_title": vocabulary.RECEIVED_NOTICE,
    "receipt_number": {"vi": "Số phản ánh của bạn: {id}", "en": "Your report number: {id}"},
    "receipt_saved": {"vi": "Phản ánh đã được lưu và đang được phân loại để chuyển đơn vị xử lý.",
                      "en": "Your report is stored and is being classified to be forwarded to the agency."},
    "receipt_link": {"vi": "Đường dẫn riêng để theo dõi phản ánh (hãy lưu lại, không chia sẻ):",
                     "en": "Your private link to follow the report (keep it, do not share it):"},
    "receipt_open": {"vi": "Theo dõi phản ánh", "en": "Follow the report"},
    "receipt_new": {"vi": "Gửi phản ánh khác", "en": "Report another problem"},
    # -- lookup
    "lookup_title": {"vi": "Phản ánh số {id}", "en": "Report {id}"},
    "lookup_private": {"vi": "Trang riêng của người phản ánh: chỉ người có đường dẫn mới xem được.",
                       "en": "The reporter's private page: only people with this link can see it."},
    "not_found_title": {"vi": "Không tìm thấy", "en": "Not found"},
    "not_found": {"vi": "Không tìm thấy phản ánh. Hãy kiểm tra lại đường dẫn.",
                  "en": "No such report. Please check the link."},
    "status": {"vi": "Tình trạng", "en": "Status"},
    "received_at": {"vi": "Thời gian tiếp nhận", "en": "Received"},
    "topic_decided": {"vi": "Lĩnh vực", "en": "Topic"},
    "agency": {"vi": "Đơn vị xử lý", "en": "Agency"},
    "agency_pending": {"vi": "Đang phân loại", "en": "Being classified"},
    "deadline": {"vi": "Hạn xử lý", "en": "Deadline"},
    "expected": {"vi": "Dự kiến hoàn thành", "en": "Expected completion"},
    "place": {"vi": "Địa điểm", "en": "Place"},
    "your_report": {"vi": "Nội dung bạn đã gửi", "en": "What you sent"},
    "your_photos": {"vi": "Ảnh bạn đã gửi", "en": "Your photos"},
    "photo_alt": {"vi": "Ảnh {n} của phản ánh {id}", "en": "Photo {n} of report {id}"},
    "answer_photo_alt": {"vi": "Ảnh kết quả xử lý {n} của phản ánh {id}", "en": "Result photo {n} of report {id}"},
    "timeline": {"vi": "Các bước xử lý", "en": "Handling steps"},
    "when": {"vi": "Thời gian", "en": "When"},
    "step": {"vi": "Bước", "en": "Step"},
    "answer": {"vi": "Trả lời của đơn vị xử lý", "en": "The agency's answer"},
    "no_answer_yet": {"vi": "Chưa có kết quả xử lý.", "en": "No result yet."},
    "rating_title": {"vi": "Đánh giá mức độ hài lòng", "en": "Rate the handling"},
    "rating_legend": {"vi": "Bạn hài lòng với kết quả xử lý ở mức nào?",
                      "en": "How satisfied are you with the result?"},
    "rating_1": {"vi": "1 – Rất không hài lòng", "en": "1 – Very dissatisfied"},
    "rating_2": {"vi": "2 – Không hài lòng", "en": "2 – Dissatisfied"},
    "rating_3": {"vi": "3 – Bình thường", "en": "3 – Neutral"},
    "rating_4": {"vi": "4 – Hài lòng", "en": "4 – Satisfied"},
    "rating_5": {"vi": "5 – Rất hài lòng", "en": "5 – Very satisfied"},
    "rating_comment": {"vi": "Góp ý thêm (không bắt buộc)", "en": "Comment (optional)"},
    "rating_submit": {"vi": "Gửi đánh giá", "en": "Send rating"},
    "rating_thanks": {"vi": "Cảm ơn bạn đã đánh giá: {score}/5.", "en": "Thank you for your rating: {score}/5."},
    "score.required": {"vi": "Vui lòng chọn một mức từ 1 đến 5.", "en": "Please choose a level from 1 to 5."},
    "rating_unavailable": {"vi": "Chưa thể đánh giá lúc này.", "en": "Rating is not possible right now."},
    "dispute_title": {"vi": "Chưa đồng ý với kết quả?", "en": "Disagree with the result?"},
    "dispute_reason": {"vi": "Lý do", "en": "Reason"},
    "dispute_submit": {"vi": "Đề nghị xem xét lại", "en": "Ask for a review"},
    "dispute_reason_required": {"vi": "Vui lòng ghi lý do chưa đồng ý với kết quả.",
                                "en": "Please say why you disagree with the result."},
    "dispute_unavailable": {"vi": "Không thể đề nghị xem xét lại: chưa có kết quả, hoặc đã quá thời hạn đề nghị.",
                            "en": "A review cannot be asked for: there is no result yet, or the time allowed has "
                                  "passed."},
    "dispute_sent": {"vi": "Đã gửi đề nghị xem xét lại.", "en": "Your request for a review was sent."},
    # -- public pages
    "public_title": {"vi": "Phản ánh và kết quả xử lý", "en": "Reports and how they were handled"},
    "filters": {"vi": "Lọc danh sách", "en": "Filter the list"},
    "filter_status": {"vi": "Trạng thái", "en": "Status"},
    "filter_district": {"vi": "Quận/huyện", "en": "District"},
    "filter_ward": {"vi": "Phường/xã (từ 1/7/2025)", "en": "Ward/commune (since 1 July 2025)"},
    "unit_formerly": {"vi": "{unit} ({old} cũ)", "en": "{unit} (formerly {old})"},
    "filter_topic": {"vi": "Lĩnh vực", "en": "Topic"},
    "filter_agency": {"vi": "Đơn vị", "en": "Agency"},
    "all": {"vi": "Tất cả", "en": "All"},
    "filter_invalid": {"vi": "Bộ lọc không hợp lệ; hãy chọn lại.", "en": "The filter is not valid; please choose again."},
    "open": {"vi": "Đang xử lý", "en": "Open"},
    "closed": {"vi": "Đã xử lý", "en": "Closed"},
    "apply": {"vi": "Lọc", "en": "Apply"},
    "public_map": {"vi": "Bản đồ phản ánh (vị trí làm tròn khoảng 100 m)",
                   "en": "Map of reports (positions rounded to about 100 m)"},
    "no_reports": {"vi": "Chưa có phản ánh.", "en": "No reports yet."},
    "number": {"vi": "Mã", "en": "No."},
    "content": {"vi": "Nội dung", "en": "Content"},
    "prev": {"vi": "← Trang trước", "en": "← Previous page"},
    "next": {"vi": "Trang sau →", "en": "Next page →"},
    "page_n": {"vi": "Trang {n}", "en": "Page {n}"},
    "open_data": {"vi": "Dữ liệu mở", "en": "Open data"},
    "after_photos": {"vi": "Ảnh sau xử lý", "en": "Photos after handling"},
    "back_to_list": {"vi": "← Danh sách phản ánh", "en": "← All reports"},
    "public_one_title": {"vi": "Phản ánh {id}", "en": "Report {id}"},
    # -- handling steps (portal/timeline.py)
    "step.received": {"vi": "Tiếp nhận phản ánh", "en": "Report received"},
    "step.forwarded": {"vi": "Chuyển {agency} xử lý", "en": "Forwarded to {agency}"},
    "step.rerouted": {"vi": "Chuyển lại cho {agency}", "en": "Forwarded again, to {agency}"},
    "step.closed": {"vi": "Đóng hồ sơ: {state}", "en": "Case closed: {state}"},
    "step.escalated": {"vi": "Quá hạn xử lý, đã báo cáo ({agency})", "en": "Overdue, escalated ({agency})"},
    "step.notified": {"vi": "Đã thông báo cho người phản ánh", "en": "The reporter was informed"},
    "step.merged": {"vi": "Gộp vào sự việc đang xử lý", "en": "Joined an incident already being handled"},
    "step.rated": {"vi": "Người phản ánh đánh giá kết quả", "en": "The reporter rated the result"},
    "step.answer": {"vi": "Đơn vị xử lý cập nhật", "en": "The agency posted an update"},
    "answer.acknowledged": {"vi": "Đơn vị xử lý đã tiếp nhận", "en": "The agency acknowledged the case"},
    "answer.false_report": {"vi": "Đơn vị xác minh: phản ánh không đúng sự thật, đóng hồ sơ",
                            "en": "The agency found the report untrue and closed it"},
    "answer.verified": {"vi": "Đơn vị đã xác minh tại hiện trường", "en": "The agency checked the site"},
    "answer.safety_measures": {"vi": "Đã có biện pháp an toàn tạm thời (rào chắn, biển báo)",
                               "en": "Temporary safety measures are in place (barriers, signs)"},
    "answer.in_progress": {"vi": "Đang khắc phục", "en": "Being fixed"},
    "answer.progress_report": {"vi": "Báo cáo tiến độ", "en": "Progress report"},
    "answer.resolved": {"vi": "Đã xử lý xong", "en": "Resolved"},
    "answer.returned": {"vi": "Đơn vị trả lại: không thuộc thẩm quyền",
                        "en": "Returned by the agency: not its responsibility"},
    "answer.reassigned": {"vi": "Tổ vận hành chuyển đơn vị xử lý khác",
                          "en": "The operator unit assigned another agency"},
    "answer.refused": {"vi": "Tổ vận hành đóng hồ sơ: không thuộc phạm vi tiếp nhận",
                       "en": "The operator unit closed the case: outside what the portal handles"},
    "answer.not_incident": {"vi": "Đơn vị xác định đây là yêu cầu, không phải sự cố: xử lý trong 5 ngày làm việc",
                            "en": "The agency found a request, not a failure: handled within 5 working days"},
    "answer.coordination": {"vi": "Chuyển Tổ vận hành chủ trì phối hợp nhiều đơn vị",
                            "en": "Passed to the operator unit to coordinate several agencies"},
    "agency_generic": {"vi": "đơn vị xử lý", "en": "the agency"},
    # report/case states and the notes shown instead of content: one catalogue for every view (ingest/vocabulary.py)
    **{f"state.{state}": texts for state, texts in
       {**vocabulary.REPORT_STATUS_TEXTS, **vocabulary.CASE_STATE_TEXTS}.items()},
    "state.unknown": vocabulary.UNKNOWN_STATE_TEXT,
    "confidential_note": vocabulary.CONFIDENTIAL_NOTE,
    "pending_note": vocabulary.PENDING_NOTE,
    "out_of_scope_note": vocabulary.OUT_OF_SCOPE_NOTE,
}


def text(lang: str, key: str, **fields: object) -> str:
    entry = TEXTS[key]
    template = entry.get(lang) or entry[DEFAULT_LANGUAGE]
    return template.format(**fields) if fields else template


def field_error_key(field: str | None, reason: str) -> str:
    """The catalogue key of an intake error, falling back to a generic one for a reason the portal cannot name."""
    key = f"{field}.{reason}"
    return key if key in TEXTS else "form.invalid"
