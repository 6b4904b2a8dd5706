"""One vocabulary: every state a stage owns has one text for people, and every view reads that same text."""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from dispatch import api as dispatch_api
from dispatch import messages
from dispatch.policy import CASE_STATES, CLOCK_KINDS
from ingest import public, vocabulary
from ingest.records import REPORT_STATES
from ops import report_render
from portal.catalogue import LANGUAGES, TEXTS


def test_every_case_state_has_a_text_in_every_language_and_a_short_label():
    assert set(vocabulary.CASE_STATE_TEXTS) == set(CASE_STATES)
    assert set(vocabulary.CASE_STATE_LABELS) == set(CASE_STATES)
    for state in CASE_STATES:
        assert all(vocabulary.CASE_STATE_TEXTS[state][lang] for lang in LANGUAGES), state


def test_every_public_report_status_has_a_text_and_hidden_ones_none():
    assert set(vocabulary.REPORT_STATUS_TEXTS) == set(REPORT_STATES) - public.HIDDEN_STATES
    assert set(vocabulary.REPORT_STATUS_LABELS) <= set(REPORT_STATES)


def test_every_view_reads_the_same_words():
    # The agency lookup page and the Open311/public views once disagreed on `closed_false`.
    assert dispatch_api.STATE_VI == public.CASE_STATE_VI
    assert dispatch_api.STATE_VI["closed_false"] == "Đã đóng: phản ánh không đúng sự thật"
    for state, texts in {**vocabulary.REPORT_STATUS_TEXTS, **vocabulary.CASE_STATE_TEXTS}.items():
        assert TEXTS[f"state.{state}"] == texts
    assert report_render.CASE_STATE_LABELS is vocabulary.CASE_STATE_LABELS


# -- no text written twice --------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("channels", "classifier", "config", "console", "dedupe", "dispatch", "ingest", "ops", "portal")
# The catalogues: the one place a text people read is written (the portal's page texts read state texts from
# ingest/vocabulary.py).
CATALOGUES = {"ingest/vocabulary.py", "portal/catalogue.py"}
VIETNAMESE = re.compile("[ăâđêôơưàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ]", re.IGNORECASE)


def vietnamese_texts(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant in Vietnamese of three words or more, docstrings and comments aside:
    a sentence someone reads, not a short label or a matching pattern."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and VIETNAMESE.search(node.value) and len(node.value.split()) >= 3):
            yield node.lineno, " ".join(node.value.split())


def code_texts() -> dict[str, list[str]]:
    """Vietnamese text -> the places outside the catalogues that write it."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name in CATALOGUES:
                continue
            for line, text in vietnamese_texts(path.read_text(encoding="utf-8")):
                found.setdefault(text, []).append(f"{name}:{line}")
    return found


def catalogue_texts() -> set[str]:
    found = set()
    for name in CATALOGUES:
        found |= {text for _, text in vietnamese_texts((REPO / name).read_text(encoding="utf-8"))}
    return found


def test_no_text_in_code_is_also_in_the_catalogue():
    """A text the catalogue has is read from it: a copy in code drifts (`closed_false` once read two ways)."""
    copies = {text: places for text, places in code_texts().items() if text in catalogue_texts()}
    assert copies == {}


def test_no_text_is_written_twice_in_code():
    twice = {text: places for text, places in code_texts().items() if len(places) > 1}
    assert twice == {}, "put the text in ingest/vocabulary.py and read it from there"


def test_the_duplicate_check_sees_a_copy():
    source = 'A = "Không có phản ánh này."\ndef f():\n    """Tài liệu không phải văn bản hiển thị."""\n    return "ok"\n'
    assert list(vietnamese_texts(source)) == [(1, "Không có phản ánh này.")]
    assert "Chuyển xử lý (5 phút)" in catalogue_texts()


def test_every_clock_and_console_text_in_both_languages():
    assert set(vocabulary.CLOCK_TEXTS) == set(CLOCK_KINDS)
    for table in (vocabulary.CLOCK_TEXTS, vocabulary.CONSOLE_TEXTS, vocabulary.LOOKUP_TEXTS,
                  vocabulary.REPORTER_TEMPLATES, vocabulary.CLOSED_AS_TEXTS, vocabulary.ALERT_LEVEL_TEXTS,
                  vocabulary.OPERATOR_ALERT_TEXTS):
        for key, texts in table.items():
            assert set(texts) == {"vi", "en"} and all(texts.values()), key
            # The same fields to fill in, whichever language the reader gets.
            assert set(re.findall(r"\{(\w+)\}", texts["vi"])) == set(re.findall(r"\{(\w+)\}", texts["en"])), key
    # The agencies' escalations and the periodic reports name a clock the same way.
    assert report_render.DEADLINE_LABELS == {kind: texts["vi"] for kind, texts in vocabulary.CLOCK_TEXTS.items()}
    assert messages.clock_text("forward") == vocabulary.CLOCK_TEXTS["forward"]["vi"]


def raised_alerts(source: str) -> set[str]:
    """The operator alert kinds a module raises: the "alert" value of each dict written in it (`{"alert": "x"}`, or
    one of two: `"x" if ... else "y"`)."""
    kinds: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and key.value == "alert":
                options = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
                kinds |= {o.value for o in options if isinstance(o, ast.Constant) and isinstance(o.value, str)}
    return kinds


def test_every_operator_alert_raised_has_a_name_for_the_console_and_a_zero_series():
    """The console's alerts page names each kind, and ops/metrics.py lists each with 0 so an alerting rule never
    waits for its series to appear: a new kind raised in a stage without its entry here has neither."""
    raised: set[str] = set()
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            raised |= raised_alerts(path.read_text(encoding="utf-8"))
    assert {"delivery_dead", "endpoint_disabled", "escalation_dead", "case_report_dead"} <= raised  # the scan works
    assert raised == set(vocabulary.OPERATOR_ALERT_TEXTS)
    assert vocabulary.alert_text("no_targets") == vocabulary.OPERATOR_ALERT_TEXTS["no_targets"]["vi"]
    assert vocabulary.alert_text("from_a_newer_build") == "from_a_newer_build"


def test_the_chat_channels_read_the_catalogue():
    from channels import place_question, telegram_dialogue

    assert telegram_dialogue.ASK_PHONE == vocabulary.CHAT_TEXTS["ask_phone"]["vi"]
    assert place_question.ASK_PLACE == vocabulary.CHAT_TEXTS["ask_place"]["vi"]
    for key, texts in vocabulary.CHAT_TEXTS.items():
        assert set(texts) == {"vi", "en"} and all(texts.values()), key
        assert set(re.findall(r"\{(\w+)\}", texts["vi"])) == set(re.findall(r"\{(\w+)\}", texts["en"])), key
