"""The pure parts of the Telegram channel: update parsing and the place/phone dialogue."""
from __future__ import annotations

from typing import Any

import pytest

from channels.telegram_dialogue import ASK_PHONE, ASK_PLACE, ASK_TEXT, BAD_PHONE, CONFIRM, GREETING, has_place, step
from channels.telegram_parse import BadUpdate, bot_id_from_token, parse_update, secret_token_ok


def update(uid: int, **message: Any) -> dict[str, Any]:
    return {"update_id": uid, "message": {"message_id": uid, "date": 1_790_000_000,
                                          "chat": {"id": 9, "type": "private"},
                                          "from": {"id": 9, "is_bot": False, "first_name": "Minh", "last_name": "Lê"},
                                          **message}}


def run(*updates: dict[str, Any]) -> tuple[Any, list[str]]:
    draft, said = None, []
    for i, u in enumerate(updates):
        inp = parse_update(u, max_photo_bytes=1000)
        assert inp is not None
        outcome = step(draft, inp, u, now=1_790_000_000.0 + i)
        draft = outcome.draft
        said += [r.text for r in outcome.replies]
    return draft, said


@pytest.mark.parametrize("text, expected", [
    ("Ống nước vỡ trước nhà 83/16/4 Nguyễn Văn Linh", True),
    ("Kẹt xe ở ngã tư Hàng Xanh", True),
    ("Rác ở đường Lê Văn Sỹ, quận 3", True),
    ("Karaoke ồn ào tại hẻm 12 Trần Hưng Đạo", True),
    ("Ngập nước khu vực P.15 Q.Bình Thạnh", True),
    ("Có người đổ trộm xà bần ra lề đường ban đêm", False),
    ("Quán ăn lấn chiếm vỉa hè", False),
    ("Chó thả rông cắn người", False),
    ("Xả rác bừa bãi", False),
])
def test_place_detection(text: str, expected: bool) -> None:
    assert has_place(text) is expected


def test_complete_first_message_is_filed_at_once() -> None:
    draft, said = run(update(1, text="Cây đổ ở đường Nguyễn Huệ quận 1, gọi 0903123456"))
    assert draft.state == "complete" and said == [CONFIRM] and draft.phone == "0903123456"


def test_photo_only_asks_for_a_description_then_place_then_phone() -> None:
    photo = [{"file_id": "f", "file_unique_id": "u", "width": 10, "height": 10, "file_size": 500}]
    draft, said = run(update(1, photo=photo), update(2, text="Bãi rác tự phát"),
                      update(3, venue={"location": {"latitude": 10.8, "longitude": 106.7},
                                       "title": "Chợ Bà Chiểu", "address": "Bạch Đằng"}),
                      update(4, text="không nhớ số"), update(5, text="số tôi là 0912 345 678"))
    assert said == [ASK_TEXT, ASK_PLACE, ASK_PHONE, BAD_PHONE, CONFIRM]
    assert draft.text == "Bãi rác tự phát\nkhông nhớ số"  # an answer that is not a phone is kept, not dropped
    assert (draft.lat, draft.address, draft.phone) == (10.8, "Chợ Bà Chiểu, Bạch Đằng", "0912345678")
    assert draft.first_update_id == 1 and len(draft.updates) == 5


def test_start_greets_without_a_draft_and_skip_skips() -> None:
    inp = parse_update(update(1, text="/start"), max_photo_bytes=10)
    outcome = step(None, inp, {}, now=0.0)
    assert outcome.draft is None and outcome.replies[0].text == GREETING
    draft, said = run(update(1, text="Mất nắp hố ga"), update(2, text="Bỏ qua"), update(3, text="bỏ qua."))
    assert draft.state == "complete" and said == [ASK_PLACE, ASK_PHONE, CONFIRM]
    assert draft.skipped == ("place", "phone")


def test_parse_rejects_what_it_cannot_read_and_ignores_non_reports() -> None:
    with pytest.raises(BadUpdate):
        parse_update({"message": {}}, max_photo_bytes=1)
    with pytest.raises(BadUpdate):
        parse_update(update(1, location={"latitude": 200, "longitude": 0}), max_photo_bytes=1)
    assert parse_update({"update_id": 2, "edited_message": {}}, max_photo_bytes=1) is None
    group = update(3, text="hi")
    group["message"]["chat"]["type"] = "group"
    assert parse_update(group, max_photo_bytes=1) is None
    inp = parse_update(update(4, contact={"phone_number": "+84903000111", "first_name": "M"}), max_photo_bytes=1)
    assert inp.phone == "0903000111" and inp.user_name == "Minh Lê"


def test_tokens_and_secret_header() -> None:
    assert bot_id_from_token("123:abc") == "123"
    with pytest.raises(ValueError):
        bot_id_from_token("nocolon")
    assert secret_token_ok("s3", "s3") and not secret_token_ok("s4", "s3") and not secret_token_ok(None, "s3")
