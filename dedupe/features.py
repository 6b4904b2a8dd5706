"""Feature extraction: what the incident policy knows about a report, read from its stored row.

A report's view (`policy.ReportView`) is made from the typed records the earlier stages stored (the inbound
message and the classification, decoded by `ingest.records.from_json`), the word and place features of its
text, and its embedding. `WindowFeatures` is the compact form the matcher keeps for every report of its window.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ingest.records import Classification, InboundMessage, Place, from_json

from . import policy
from .index import decode_vector
from .text import TextFeatures, extract

# What a report row gives the view: the typed records, the stage's topic and district, the stored vector.
VIEW_COLUMNS = "r.id, r.received_at, r.record, r.classification, r.topic, r.district, e.dim, e.vector"


def text_features(text: str) -> TextFeatures:
    """The word and place features of a report's text: the one place dedupe reads addresses out of text
    (dedupe/text.py today), so a shared address parser replaces one call."""
    return extract(text)


def classification_parts(classification: str | dict[str, Any]) -> tuple[Place, str | None, frozenset[str]]:
    """The classification's place, topic and alternative topics (policy.alt_topics_of its candidates; none for
    an operator's decision, which is certain)."""
    cls = from_json(Classification, classification)
    alts = (policy.alt_topics_of(cls.topic, ((c.topic, c.score) for c in cls.candidates))
            if cls.model_version != "operator" else frozenset())
    return cls.place or Place(), cls.topic, alts


def view_from_row(row: Any, with_vector: bool = True) -> policy.ReportView:
    """The policy's view of a report from a row of VIEW_COLUMNS."""
    message = from_json(InboundMessage, row["record"])
    place = Place()
    topic, district = row["topic"], row["district"]
    alts: frozenset[str] = frozenset()
    if row["classification"]:
        place, cls_topic, cls_alts = classification_parts(row["classification"])
        if topic is None or topic == cls_topic:
            alts = cls_alts  # the classifier's alternatives hold only for the classifier's own topic
        topic = topic or cls_topic
        district = district or place.district
    if place.lat is None and message.lat is not None:
        # The reporter's GPS fix, when the classifier kept no coordinates.
        place = Place(district=place.district, ward=place.ward, street=place.street, landmark=place.landmark,
                      house_number=place.house_number, lat=message.lat, lon=message.lon,
                      source=place.source or "gps")
    vector = decode_vector(row["vector"], row["dim"]) if with_vector and row["vector"] is not None else None
    text = " ".join(x for x in (message.subject, message.text) if x)
    return policy.ReportView(report_id=row["id"], received_at=row["received_at"], topic=topic, district=district,
                             text=text_features(text), place=place, vector=vector, alt_topics=alts)


async def load_view(reader: Any, report_id: int) -> policy.ReportView | None:
    """One report's view, read through `reader` (the store, or a transaction: anything with `fetchone`)."""
    row = await reader.fetchone(
        f"SELECT {VIEW_COLUMNS} FROM reports r LEFT JOIN embeddings e ON e.report_id = r.id WHERE r.id = ?",
        (report_id,))
    return view_from_row(row) if row is not None else None


_EMPTY: tuple[Any, ...] = ()


class WindowFeatures:
    """What the window keeps of one report for the policy, compactly: interned word strings in tuples (a
    frozenset per report costs ~2 KB; 140,000 of them would not fit), the tokens as one string, the vector
    stays in the index. `view()` turns it back into the policy's ReportView for the few candidates judged."""

    __slots__ = ("received_at", "topic", "alt_topics", "district", "place", "tokens", "grams", "numbers", "streets",
                 "ptoks", "alleys", "street_names")

    def __init__(self, view: policy.ReportView, intern: dict[str, str]) -> None:
        self.received_at = view.received_at
        self.topic = view.topic
        self.alt_topics = view.alt_topics
        self.district = view.district
        self.place = view.place
        # Tokens never contain a space (the tokenizer splits on it), so one joined string round-trips.
        self.tokens = " ".join(view.text.tokens)
        self.grams = tuple(intern.setdefault(g, g) for g in view.text.grams)
        self.numbers = tuple(view.text.numbers)
        self.streets = view.text.streets
        # Derived once here rather than per candidate per match (the batch screen reads them for every hit):
        # the place tokens that join the word overlap, the alley numbers, every street name (text and place).
        self.ptoks = tuple(intern.setdefault(g, g) for g in view.place_tokens()) or _EMPTY
        self.alleys = tuple(policy.alleys_of(view.text.numbers, view.place.house_number)) or _EMPTY
        self.street_names = tuple(policy.street_names(view)) or _EMPTY

    def view(self, report_id: int, vector: np.ndarray | None) -> policy.ReportView:
        text = TextFeatures(tokens=tuple(self.tokens.split(" ")) if self.tokens else (),
                            grams=frozenset(self.grams), numbers=frozenset(self.numbers), streets=self.streets)
        return policy.ReportView(report_id=report_id, received_at=self.received_at, topic=self.topic,
                                 district=self.district, text=text, place=self.place, vector=vector,
                                 alt_topics=self.alt_topics)

    def _key(self) -> tuple[Any, ...]:
        return (self.received_at, self.topic, self.alt_topics, self.district, self.place, self.tokens,
                frozenset(self.grams), frozenset(self.numbers), self.streets)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WindowFeatures) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

