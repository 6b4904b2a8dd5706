"""On the 2025 map the Telegram bot asks which ward/commune when the words name several (an old district alone, a
split old ward), once; the answer joins the report's address. The question's candidates come from the
classifier's real resolver (Router.unit_candidates, published in ctx.published by the classifier on that map)."""
from __future__ import annotations

from typing import Any

import pytest

from channels.telegram_dialogue import ASK_PHONE, CONFIRM, step, to_inbound
from channels.telegram_parse import parse_update
from classifier.training.trainer import Router
from config.directory import load_directory
from config.schema import DataConfig, Settings


def update(uid: int, **message: Any) -> dict[str, Any]:
    return {"update_id": uid, "message": {"message_id": uid, "date": 1_790_000_000,
                                          "chat": {"id": 9, "type": "private"},
                                          "from": {"id": 9, "is_bot": False, "first_name": "Minh"}, **message}}


@pytest.fixture(scope="module")
def candidates():
    settings = Settings(data=DataConfig(structure="2025"))
    router = Router(settings, load_directory(None, "2025"), embedder=None)  # type: ignore[arg-type]  # no model needed
    return router.unit_candidates


def run(unit_candidates, *updates: dict[str, Any]) -> tuple[Any, list[str]]:
    draft, said = None, []
    for i, u in enumerate(updates):
        inp = parse_update(u, max_photo_bytes=1000)
        assert inp is not None
        outcome = step(draft, inp, u, now=1_790_000_000.0 + i, unit_candidates=unit_candidates)
        draft, said = outcome.draft, said + [r.text for r in outcome.replies]
    return draft, said


def test_an_old_district_alone_makes_the_bot_ask_which_unit(candidates) -> None:
    draft, said = run(candidates,
                      update(1, text="Quận 6 có người xây nhà lấn hẻm, sđt 0903123456"),
                      update(2, text="phường Bình Tiên"))
    assert "Phường Bình Tiên (Quận 6 cũ)" in said[0] and "Phường Phú Lâm (Quận 6 cũ)" in said[0]
    assert said[-1] == CONFIRM and draft.state == "complete"
    message = to_inbound(draft, bot_id="1", instance="tg")
    assert "Địa điểm: phường Bình Tiên" in message.text


def test_a_decided_unit_is_not_asked_and_an_unhelpful_answer_is_asked_once(candidates) -> None:
    _, said = run(candidates, update(1, text="Rác ở P.7 Q.6, sđt 0903123456"))
    assert said == [CONFIRM]
    draft, said = run(candidates, update(1, text="Gò Vấp cúp nước"), update(2, text="không nhớ tên mới"))
    assert "Phường Hạnh Thông (Quận Gò Vấp cũ)" in said[0]
    assert said[1] == ASK_PHONE  # the unit question is not repeated: an operator picks it


def test_the_2023_map_never_asks() -> None:
    _, said = run(None, update(1, text="Quận 6 có người xây nhà lấn hẻm, sđt 0903123456"))
    assert said == [CONFIRM]
