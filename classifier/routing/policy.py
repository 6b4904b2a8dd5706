"""Routing and screening policy: topic probabilities + place in, a Classification out. Pure.

- Topic + district -> agency through the directory (Art. 6): district-scoped topics go to `ubnd-<district>`,
  with no district known to the operator unit; suggestions and delayed directives to `vp-ubnd`.
- Abusive content is `rejected` with the reason the reporter is told (Art. 3.6); complaints and denunciations
  are `out_of_scope` with guidance where to go (Art. 1.1.c). Both are kept, never dropped. The words the
  regulation names ("khiếu nại", "tố cáo") are screened too: such a report is never dispatched automatically.
- Confidence is the probability mass of the chosen agency (topics sharing an agency agree on the routing);
  below the review threshold the report goes to operators with the best guess filled in.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from config.directory import Directory
from ingest.records import Candidate, Classification, Place
from ingest.text import fold, has_diacritics

from classifier.routing.screening import Screening

REJECTED_TOPIC = "abusive"
# With a complaint phrase in the text, the model needs only to rank the complaint topic as a serious candidate
# for the report to be refused automatically; below this it goes to review as a probable complaint.
COMPLAINT_SCREEN_MIN = 0.25
OUT_OF_SCOPE_TOPIC = "complaint_denunciation"

DEFAULT_REASONS = {
    REJECTED_TOPIC: "Nội dung có từ ngữ thô tục, xúc phạm; Cổng 1022 từ chối tiếp nhận theo Điều 3.6 Quy chế.",
    OUT_OF_SCOPE_TOPIC: ("Nội dung khiếu nại, tố cáo không thuộc phạm vi tiếp nhận của Cổng 1022 (Điều 1.1.c); "
                         "đề nghị gửi Ban Tiếp công dân Thành phố hoặc cơ quan có thẩm quyền."),
}


SCREENING_PATH = Path(__file__).parent.parent / "data" / "screening.json"
# For operators (never sent to the reporter): why a report with an ambiguous word waits for them.
# The embedding-only view must give `abusive` at least this for the model to reject a report on its own.
ABUSIVE_AS_WRITTEN_MIN = 0.5
MODEL_ONLY_NOTE = ("Bộ phân loại nghi nội dung thô tục, xúc phạm nhưng cách viết có dấu không xác nhận: "
                   "kiểm tra trước khi chuyển hoặc từ chối theo Điều 3.6.")
AMBIGUOUS_NOTE = ("Có từ có thể là từ thô tục hoặc là từ thường ({words}): kiểm tra nội dung trước khi chuyển "
                  "hoặc từ chối theo Điều 3.6.")


@lru_cache(maxsize=4)
def _complaint_terms(path: Path = SCREENING_PATH) -> tuple[str, ...]:
    return tuple(json.loads(path.read_text(encoding="utf-8")).get("complaint_terms", ()))


def _bounded(text: str) -> str:
    return " " + re.sub(r"[\W_]+", " ", text.lower()).strip() + " "


def complaint_terms_in(text: str) -> list[str]:
    """Complaint/denunciation phrases in the text, word-bounded. Text with diacritics is matched as written
    ("to cao" there means "big, tall"); text typed without them on the folded phrases."""
    if has_diacritics(text):
        words = _bounded(text)
        return [t for t in _complaint_terms() if f" {t} " in words]
    words = _bounded(fold(text))
    return [t for t in _complaint_terms() if f" {fold(t)} " in words]


def abusive_probability(classes: Sequence[str], written: Any, row: int) -> float | None:
    """P(abusive) for one report from the model's as-written view (`TopicModel.predict_views`), if it has one."""
    if written is None or REJECTED_TOPIC not in classes:
        return None
    return float(written[row][list(classes).index(REJECTED_TOPIC)])


def reason_for(topic: str, reasons: dict[str, str] | None = None) -> str | None:
    if reasons and topic in reasons:
        return reasons[topic]
    return DEFAULT_REASONS.get(topic)


def decide(directory: Directory, classes: Sequence[str], probabilities: Sequence[float], place: Place, *,
           review_threshold: float, reasons: dict[str, str] | None = None, model_version: str | None = None,
           language: str = "vi", top: int = 3, screening: Screening = Screening(),
           complaint: bool = False, safety: float | None = None,
           abusive_as_written: float | None = None) -> Classification:
    """The routing decision for one report from its topic probabilities and the place found.

    Screening (Art. 3.6) is decided here and only here (README, "Screening"): `screening` (from
    `screening.screen`) with a certain word (written with its diacritics, masked, or an abbreviation that is no
    ordinary word) rejects the report whatever it describes; so does the model, ranking `abusive` first with a
    confidence at the review threshold, when its view of the words as written agrees (`abusive_as_written`, the
    embedding-only sub-model's P(abusive), at least ABUSIVE_AS_WRITTEN_MIN; its folded lexical features alone
    cannot tell "đeo" from "đéo"); without that agreement the report goes to review. An ambiguous word (typed without diacritics, also an ordinary word or
    abbreviation: deo, cc, vl...) never rejects: a report that would have been dispatched goes to review with a
    note naming the words, and an operator decides. `complaint` (from
    `complaint_terms_in`) makes it out of scope when the model ranks the complaint topic first or gives it at
    least COMPLAINT_SCREEN_MIN, and sends it to review as a probable complaint otherwise ("I complained to the
    ward and the pipe is still broken" is a real report): never dispatched automatically. `safety` (from
    `TopicModel.predict`) is the probability that the chosen routing is right; it replaces the agency's
    probability mass as the confidence compared with the review threshold."""
    by_agency: dict[str | None, float] = {}
    candidates: list[Candidate] = []
    for topic, p in zip(classes, probabilities):
        if topic not in directory.topics:
            continue
        agency = directory.agency_for(topic, place.district, place.unit)
        # Refused topics have no agency; keep them apart from each other by their topic.
        key = agency if agency is not None else f"!{topic}"
        by_agency[key] = by_agency.get(key, 0.0) + float(p)
        candidates.append(Candidate(topic=topic, agency=agency, score=round(float(p), 4)))
    candidates.sort(key=lambda c: -c.score)
    best_key = max(by_agency, key=lambda k: by_agency[k])
    # The safety model's P(this routing is right), when given, is the confidence thresholded; else the mass.
    confidence = by_agency[best_key] if safety is None else float(safety)
    # The topic shown is the most likely topic that leads to the chosen agency.
    topic = next(c.topic for c in candidates
                 if (c.agency if c.agency is not None else f"!{c.topic}") == best_key)
    spec = directory.topics[topic]
    agency = directory.agency_for(topic, place.district, place.unit)
    note: str | None = None
    if screening.certain:
        topic, spec, agency, confidence = REJECTED_TOPIC, directory.topics[REJECTED_TOPIC], None, 1.0
        status, reason = "rejected", reason_for(REJECTED_TOPIC, reasons)
    elif complaint:
        spec, agency = directory.topics[OUT_OF_SCOPE_TOPIC], None
        p_complaint = sum(float(p) for t, p in zip(classes, probabilities) if t == OUT_OF_SCOPE_TOPIC)
        status = "out_of_scope" if topic == OUT_OF_SCOPE_TOPIC or p_complaint >= COMPLAINT_SCREEN_MIN else "review"
        topic, confidence = OUT_OF_SCOPE_TOPIC, p_complaint
        reason = reason_for(topic, reasons) if status == "out_of_scope" else None
    elif topic == REJECTED_TOPIC and confidence >= review_threshold:
        if screening.excused:  # the listed words are in an ordinary phrase: the model learnt them as abuse
            status, reason = "review", None
        elif abusive_as_written is None or abusive_as_written >= ABUSIVE_AS_WRITTEN_MIN:
            status, reason = "rejected", reason_for(topic, reasons)
        else:
            status, reason, note = "review", None, MODEL_ONLY_NOTE
    elif topic == OUT_OF_SCOPE_TOPIC and confidence >= review_threshold:
        status, reason = "out_of_scope", reason_for(topic, reasons)
    elif confidence >= review_threshold and not _unit_undecided(directory, spec.agency, place):
        status, reason = "routed", None
    else:
        status, reason = "review", None
    if screening.ambiguous and status in ("routed", "review"):
        status, note = "review", AMBIGUOUS_NOTE.format(words=", ".join(f"«{w}»" for w in screening.ambiguous))
    return Classification(status=status, topic=topic, category=spec.category, agency=agency,
                          confidence=round(confidence, 4), place=place, candidates=tuple(candidates[:top]),
                          reason=reason, model_version=model_version, language=language, note=note)


def _unit_undecided(directory: Directory, topic_agency: str | None, place: Place) -> bool:
    """On the 2025 map a local topic whose words name several candidate units (an old district alone, a split
    old ward) needs a person to pick the unit: never the operator unit by default, never a guess."""
    return (directory.structure == "2025" and topic_agency == "district" and place.unit is None
            and bool(place.unit_candidates))


def operator_decision(directory: Directory, previous: Classification, *, topic: str | None = None,
                      agency: str | None = None, reject: str | None = None,
                      reasons: dict[str, str] | None = None) -> Classification:
    """Apply an operator's review decision to a classification (pure; validation errors raise ValueError)."""
    if reject is not None:
        rtopic = OUT_OF_SCOPE_TOPIC if reject == "out_of_scope" else REJECTED_TOPIC
        status = "out_of_scope" if rtopic == OUT_OF_SCOPE_TOPIC else "rejected"
        return Classification(status=status, topic=rtopic, category=directory.topics[rtopic].category, agency=None,
                              confidence=1.0, place=previous.place, candidates=previous.candidates,
                              reason=reason_for(rtopic, reasons), model_version="operator",
                              language=previous.language)
    if topic is None and agency is not None:
        # The agency alone was corrected: the model's topic was wrong too unless it leads to that agency.
        topic = topic_for_agency(directory, previous, agency)
    new_topic = topic or previous.topic
    if new_topic not in directory.topics:
        raise ValueError(f"unknown topic {new_topic!r}")
    if new_topic in (REJECTED_TOPIC, OUT_OF_SCOPE_TOPIC):
        return operator_decision(directory, previous,
                                 reject="out_of_scope" if new_topic == OUT_OF_SCOPE_TOPIC else "abusive",
                                 reasons=reasons)
    new_agency = agency or directory.agency_for(new_topic, previous.place.district, previous.place.unit)
    if new_agency not in directory.agencies:
        raise ValueError(f"unknown agency {new_agency!r}")
    return Classification(status="routed", topic=new_topic, category=directory.topics[new_topic].category,
                          agency=new_agency, confidence=1.0, place=previous.place, candidates=previous.candidates,
                          reason=None, model_version="operator", language=previous.language)


def topic_for_agency(directory: Directory, previous: Classification, agency: str) -> str | None:
    """The topic an agency-only decision implies: the previous topic if it leads there, else the only topic that
    can reach that agency at this place, else the likeliest candidate that does; None when nothing does."""
    place = previous.place

    def reaches(t: str) -> bool:
        return directory.agency_for(t, place.district, place.unit) == agency

    if previous.topic in directory.topics and reaches(previous.topic):
        return previous.topic
    possible = [t for t in directory.topics if reaches(t)]
    if len(possible) == 1:
        return possible[0]
    return next((c.topic for c in previous.candidates if c.topic in possible), None)


def training_label(directory: Directory, result: Classification, *, topic: str | None) -> str | None:
    """The topic an operator's decision teaches the model: the one they chose, or the one the decided agency
    implies; None (no training example) when the routing they chose says nothing certain about the topic (an
    agency-only correction must never teach the model's old, wrong topic)."""
    if topic is not None or result.status in ("rejected", "out_of_scope"):
        return result.topic
    place = result.place
    return result.topic if directory.agency_for(result.topic, place.district, place.unit) == result.agency else None
