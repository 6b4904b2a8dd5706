"""Incident matching policy (pure): is this report the same real-world incident as an earlier one?

Embedding cosine alone sees the topic, not the place, so the decision combines four kinds of evidence:
- text: embedding cosine and the rarity-weighted overlap of the words both reports use (street names,
  landmarks, alley numbers are rare in the window; "ngập", "đề nghị" are not);
- place: district agreement, the classifier's canonical street / landmark / ward / house number (folded into
  the word overlap as high-weight tokens), alley and house numbers, GPS distance when both have it;
- time: the gap between the reports;
- topic: same topic, or topics one incident often spans (a fallen tree that cuts power lines).

A logistic model with a handful of weights (fit on the first half of the dev month, checked on the second,
see tests and the report) turns the evidence into a probability. A few rules express the hard negatives the
regulation's examples call for: far apart on the map, on two different streets (by the classifier's canonical
street), or more than MAX_GAP_DAYS apart.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ingest.records import Place

from .text import TextFeatures, same_street

MAX_GAP_DAYS = 10.0  # the same place and problem this much later is a new incident (a recurrence)
MAX_DISTANCE_KM = 1.5  # two GPS fixes further apart are two incidents, even on the same long street
# Topics one real incident often spans; each pair both ways.
_RELATED = (
    ("trees", "electricity"), ("trees", "street_lighting"), ("trees", "telecom_cable"), ("trees", "road_damage"),
    ("electricity", "street_lighting"), ("electricity", "telecom_cable"), ("street_lighting", "telecom_cable"),
    ("drainage", "water_supply"), ("drainage", "road_damage"), ("water_supply", "road_damage"),
    ("traffic_signal", "traffic_order"), ("traffic_order", "public_order"), ("traffic_order", "sidewalk_encroachment"),
    ("waste", "pollution"), ("waste", "drainage"), ("noise", "public_order"), ("noise", "illegal_construction"),
    ("food_safety", "healthcare"),
)
RELATED_TOPICS: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in _RELATED)
# The same pairs as a map topic -> its related topics: `old in RELATED_OF.get(new, ())` is
# `frozenset((new, old)) in RELATED_TOPICS` without building a set per candidate.
RELATED_OF: dict[str, frozenset[str]] = {
    t: frozenset(u for pair in _RELATED for u in pair if t in pair and u != t) for pair in _RELATED for t in pair}
# Topics the daemon never groups: each abusive message or suggestion stands alone.
UNGROUPED_TOPICS = frozenset({"abusive", "suggestion", "complaint_denunciation"})
# The classifier's topic is sometimes wrong where two topics are close (a blocked drain that floods the road:
# drainage or road_damage?), and two reports of one incident then get two topics the compatibility rule keeps
# apart. A report's topic for compatibility is therefore a small set: its top topic plus every candidate topic
# the classifier found at least this fraction as likely as the top one. A ratio, not an absolute score, so a
# confident report (top 0.95) keeps one topic and only a real tie between topics widens it.
ALT_TOPIC_RATIO = 0.5

# Logistic weights over PairEvidence.vector(), in FEATURE_NAMES order: an L2-regularised logistic regression
# (C=1) over every pair of dev reports 1-15 Sep within the window (gold topic/district, IDF over the dev set).
# The second half of the month (16-30 Sep) was held out: through the real stage it scores pairwise F1 0.967.
# Cosine comes out negative once word overlap and topic are in: among same-topic reports a high cosine mostly
# means "the same kind of problem", which the topic term already counts, while the rare shared words carry
# the place.
WEIGHTS: tuple[float, ...] = (-2.18, 0.98, 1.87, 2.10, 0.14, -4.07, -1.92, 0.21, -0.13, -0.01, -0.95)
BIAS = -3.45
DEFAULT_THRESHOLD = 0.5

MIN_WINDOW = 100  # smallest window whose word shares we trust (see rarity_from)
FIT_CORPUS = 700  # reports the weights were fit with; rarity is rescaled to that corpus size (see rarity_from)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportView:
    """What the policy knows about one report."""

    report_id: int
    received_at: float  # epoch seconds
    topic: str | None
    district: str | None
    text: TextFeatures
    place: Place = field(default_factory=Place)
    vector: np.ndarray | None = None  # L2-normalised
    # Other topics the classifier found nearly as likely (see ALT_TOPIC_RATIO): they widen topic
    # compatibility only; the "same topic" evidence keeps comparing the top topics, as the weights were fit.
    alt_topics: frozenset[str] = frozenset()

    def topic_set(self) -> frozenset[str | None]:
        return topic_set(self.topic, self.alt_topics)

    def place_tokens(self) -> frozenset[str]:
        """The classifier's canonical place parts as tokens that join the word overlap."""
        p = self.place
        out = set()
        if p.street:
            out.add(f"@street:{p.street}")
        if p.landmark:
            out.add(f"@landmark:{p.landmark}")
        if p.ward:
            out.add(f"@ward:{p.ward}")
        if p.house_number:
            out.add(f"@house:{p.street or ''}:{p.house_number}")
        return frozenset(out)

    def all_grams(self) -> frozenset[str]:
        return self.text.grams | self.place_tokens()


Rarity = Callable[[str], float]  # token -> inverse document frequency over the window


def rarity_from(doc_freq: Callable[[str], int], n_docs: int) -> Rarity:
    """Inverse document frequency of a token's share of the window, on the scale of the fit corpus.

    The weights were fit with IDF = log((N+1)/(df+0.5)) over N=700 reports. The live window holds anything
    from a handful to 140,000 reports, so we keep the token's document *share* df/N and express it as the
    count it would have in a FIT_CORPUS-sized corpus: the same share gives the same weight at any scale.
    A window of fewer than MIN_WINDOW reports (a fresh daemon) says little about which words are common,
    so its shares are taken over MIN_WINDOW reports: words seen there once or twice still count as rare.
    """
    n = window_size(n_docs)

    def rarity(gram: str) -> float:
        return idf(doc_freq(gram), n)

    return rarity


def window_size(n_docs: int) -> int:
    """The number of reports word shares are taken over (see rarity_from)."""
    return max(MIN_WINDOW, n_docs)


@dataclass(frozen=True, slots=True)
class PairEvidence:
    cosine: float
    overlap: float  # shared rarity mass / rarity mass of the shorter report
    shared: float  # shared rarity mass, absolute
    same_topic: bool
    related_topic: bool
    district_conflict: bool  # both districts known and different
    gap_hours: float
    number_match: bool  # a shared alley or house number
    number_conflict: bool  # both name alley numbers, none shared
    distance_km: float | None
    street_conflict: bool = False  # both name streets, and no street is named by both

    def features(self) -> dict[str, float]:
        """The model's inputs by name (see `feature_values`)."""
        return feature_values(cosine=self.cosine, overlap=self.overlap, shared=self.shared,
                              same_topic=float(self.same_topic), related_topic=float(self.related_topic),
                              district_conflict=float(self.district_conflict), gap_hours=self.gap_hours,
                              number_match=float(self.number_match), number_conflict=float(self.number_conflict),
                              distance=distance_feature(self.distance_km),
                              street_conflict=float(self.street_conflict))

    def vector(self) -> tuple[float, ...]:
        """The model's inputs in FEATURE_NAMES order."""
        return tuple(self.features().values())


FEATURE_NAMES = ("cosine", "overlap", "log_shared", "same_topic", "related_topic", "district_conflict",
                 "log_gap_hours", "number_match", "number_conflict", "distance_km", "street_conflict")
# The weights by feature name (the same numbers as WEIGHTS, which stays the ordered form the fit produces).
WEIGHT_OF: dict[str, float] = dict(zip(FEATURE_NAMES, WEIGHTS, strict=True))

# The scoring below is written once for one pair (Python floats: `evidence` / `probability`, the reference) and
# for many candidates at once (numpy float64 arrays: the matcher's batch screen). Each function only uses
# arithmetic that means the same on both, so the two paths cannot drift apart; `log` / `log1p` are passed in
# because math's and numpy's agree only to the last bit (the screen bounds that difference, see matcher).
Num = Any  # float, or a numpy float64 array of one value per candidate


def feature_values(*, cosine: Num, overlap: Num, shared: Num, same_topic: Num, related_topic: Num,
                   district_conflict: Num, gap_hours: Num, number_match: Num, number_conflict: Num, distance: Num,
                   street_conflict: Num, log1p: Callable[[Num], Num] = math.log1p) -> dict[str, Num]:
    """The model's inputs by name from the evidence (booleans as 0.0/1.0, `distance` from distance_feature)."""
    return {"cosine": cosine, "overlap": overlap, "log_shared": log1p(shared), "same_topic": same_topic,
            "related_topic": related_topic, "district_conflict": district_conflict,
            "log_gap_hours": log1p(gap_hours), "number_match": number_match, "number_conflict": number_conflict,
            "distance_km": distance, "street_conflict": street_conflict}


def distance_feature(km: float | None) -> float:
    """The distance input: capped at 3 km (beyond that the hard negative decides anyway), 0 without two fixes."""
    return min(km, 3.0) if km is not None else 0.0


def linear_score(features: Mapping[str, Num], weights: Sequence[float] | None = None,
                 bias: float | None = None) -> Num:
    """The logistic model's score: bias + sum of weight x input, summed in FEATURE_NAMES order."""
    w = WEIGHTS if weights is None else weights
    b = BIAS if bias is None else bias
    total: Num = 0
    for wi, name in zip(w, FEATURE_NAMES):
        total = total + wi * features[name]
    return b + total


def idf(doc_freq: Num, n: float, log: Callable[[Num], Num] = math.log) -> Num:
    """A word's rarity from its document count in a window of `n` reports (see rarity_from)."""
    return log((FIT_CORPUS + 1) / (FIT_CORPUS * doc_freq / n + 0.5))


def evidence(new: ReportView, old: ReportView, rarity: Rarity) -> PairEvidence:
    ga, gb = new.all_grams(), old.all_grams()
    shared_grams = ga & gb
    shared = sum(rarity(g) for g in shared_grams)
    mass = min(sum(rarity(g) for g in ga), sum(rarity(g) for g in gb))
    cosine = float(np.dot(new.vector, old.vector)) if new.vector is not None and old.vector is not None else 0.0
    number_match, number_conflict = number_evidence(alleys_of(new.text.numbers, new.place.house_number),
                                                    alleys_of(old.text.numbers, old.place.house_number))
    return PairEvidence(
        cosine=cosine,
        overlap=shared / mass if mass > 0 else 0.0,
        shared=shared,
        same_topic=same_topic(new.topic, old.topic),
        related_topic=related_topic(new.topic, old.topic),
        district_conflict=district_conflict(new.district, old.district),
        gap_hours=gap_hours(new.received_at, old.received_at),
        number_match=number_match,
        number_conflict=number_conflict,
        distance_km=distance_km(new.place, old.place),
        street_conflict=streets_conflict(street_names(new), street_names(old)),
    )


# The pieces of evidence one by one, on the parts of a report the matcher keeps for every report of its window
# (topic, district, time, alley numbers, street names), so its batch screen reads each as `evidence` does.
def same_topic(a: str | None, b: str | None) -> bool:
    return a is not None and a == b


def related_topic(a: str | None, b: str | None) -> bool:
    """Two topics one incident often spans (RELATED_TOPICS; a topic is not related to itself)."""
    return b in RELATED_OF.get(a, ()) if a is not None else False


def district_conflict(a: str | None, b: str | None) -> bool:
    """Both districts known and different."""
    return bool(a and b and a != b)


def gap_hours(a: float, b: float) -> float:
    return abs(a - b) / 3600.0


def number_evidence(a: Collection[str], b: Collection[str]) -> tuple[bool, bool]:
    """(a shared alley or house number, both name some and none is shared) for two reports' alleys_of."""
    if not a or not b:
        return False, False
    shared = not frozenset(a).isdisjoint(b)
    return shared, not shared


def streets_conflict(a: Sequence[tuple[str, ...]], b: Sequence[tuple[str, ...]]) -> bool:
    """Both name streets (street_names) and no street is named by both."""
    if not a or not b:
        return False
    return not any(same_street(x, y) for x in a for y in b)


def alleys_of(numbers: Iterable[str], house_number: str | None) -> frozenset[str]:
    """The alley and house numbers a report names (district and ward numbers are place, not alley)."""
    out = {n for n in numbers if not n.startswith(("quan ", "phuong "))}
    if house_number:
        out.add(house_number)
    return frozenset(out)


def street_names(view: ReportView) -> list[tuple[str, ...]]:
    """Every street a report names: read in its text, and the classifier's canonical street."""
    names = list(view.text.streets)
    if view.place.street:
        names.append(tuple(view.place.street.split()))
    return names


def hard_negative(new: ReportView, old: ReportView, ev: PairEvidence) -> str | None:
    """A reason the two reports can never be one incident, whatever the scores say."""
    if too_far_in_time(ev.gap_hours):
        return "too_far_apart_in_time"
    if too_far_on_map(ev.distance_km):
        return "too_far_apart_on_map"
    if new.topic in UNGROUPED_TOPICS or old.topic in UNGROUPED_TOPICS:
        return "ungrouped_topic"
    if not reports_compatible(new.topic, new.alt_topics, old.topic, old.alt_topics):
        return "unrelated_topic"
    if _on_other_streets(new, old):
        return "different_street"
    return None


def topics_compatible(a: str | None, b: str | None) -> bool:
    """Same topic, topics one incident often spans, or a topic not known yet (nothing to hold against it)."""
    return a is None or b is None or a == b or frozenset((a, b)) in RELATED_TOPICS


def belongs_after_review(topic: str | None, member_topics: Collection[str | None],
                         incident_topic: str | None = None) -> bool:
    """Whether a report an operator has just classified as `topic` still belongs with the other reports of the
    incident it joined while in review (their current topics): yes when its topic is compatible with one of
    theirs. Alone there (it opened the incident, under the model's topic `incident_topic`), it stays unless the
    operator's topic is another problem: matched afresh, it may join an open incident of that problem instead of
    opening a second case for it (a topic never grouped stays: nothing to join). The operator's topic alone
    counts, not the model's alternatives: the decision is what the report is about."""
    if not member_topics:
        return topic in UNGROUPED_TOPICS or topics_compatible(topic, incident_topic)
    if topic in UNGROUPED_TOPICS:
        return False
    return any(topics_compatible(topic, t) for t in member_topics)


def alt_topics_of(top: str | None, candidates: Iterable[tuple[str, float]]) -> frozenset[str]:
    """The candidate topics (topic, probability) at least ALT_TOPIC_RATIO as likely as the most likely one,
    other than `top` and never an ungrouped topic (a report that might be abusive groups by its other topics)."""
    cands = [(t, float(p)) for t, p in candidates]
    if top is None or not cands:
        return frozenset()
    best = max(p for _, p in cands)
    if best <= 0.0:
        return frozenset()
    return frozenset(t for t, p in cands
                     if t != top and t not in UNGROUPED_TOPICS and p >= ALT_TOPIC_RATIO * best)


def topic_set(top: str | None, alts: Iterable[str] = ()) -> frozenset[str | None]:
    """A report's topics for compatibility: the top topic and its alternatives (a set holding None: no topic)."""
    return frozenset((top, *alts)) if top is not None else frozenset((None,))


def topic_sets_compatible(a: frozenset[str | None], b: frozenset[str | None]) -> bool:
    """Some topic of one report and some topic of the other are compatible (topics_compatible)."""
    return any(topics_compatible(x, y) for x in a for y in b)


def reports_compatible(a: str | None, a_alts: frozenset[str], b: str | None, b_alts: frozenset[str]) -> bool:
    """topic_sets_compatible for two reports' top and alternative topics, without building the sets in the
    common case (compatible top topics, or no alternatives): the matcher asks this for every candidate."""
    if topics_compatible(a, b):
        return True
    if not a_alts and not b_alts:
        return False
    return topic_sets_compatible(topic_set(a, a_alts), topic_set(b, b_alts))


def groupable_topics(topic: str | None, known: Iterable[str | None], *, alts: Iterable[str] = (),
                     block_alts: Mapping[str | None, Collection[str]] | None = None) -> frozenset[str | None]:
    """The topics among `known` (None: a report without a topic) whose reports `hard_negative` would not reject
    for their topic alone when compared with a report of `topic` and alternative topics `alts`: the scope of a
    candidate search. `block_alts` gives, per top topic in the window, the alternative topics its reports
    carry (a block is in scope when its topic or one of those is compatible). Empty for a topic that is never
    grouped."""
    if topic in UNGROUPED_TOPICS:
        return frozenset()
    mine = topic_set(topic, alts)
    block_alts = block_alts or {}
    return frozenset(t for t in known if t not in UNGROUPED_TOPICS
                     and (topic_sets_compatible(mine, topic_set(t))
                          or (t is not None and topic_sets_compatible(mine, frozenset(block_alts.get(t, ()))))))


def too_far_in_time(hours: float) -> bool:
    return hours > MAX_GAP_DAYS * 24


def too_far_on_map(km: float | None) -> bool:
    return km is not None and km > MAX_DISTANCE_KM


def _on_other_streets(a: ReportView, b: ReportView) -> bool:
    sa, sb = a.place.street, b.place.street
    if not sa or not sb or sa == sb:
        return False
    return on_other_streets(sa, padded_text(a.text.tokens), sb, padded_text(b.text.tokens))


def padded_text(tokens: Iterable[str]) -> str:
    """A report's tokens as one string with a space at both ends, for whole-word searches of a street name."""
    return f" {' '.join(tokens)} "


def on_other_streets(street_a: str | None, text_a: str, street_b: str | None, text_b: str) -> bool:
    """The classifier put the two reports on two different streets and neither text (padded_text) names the
    other's street (an intersection report names both, so it still joins reports from either street)."""
    if not street_a or not street_b or street_a == street_b:
        return False
    return f" {street_b} " not in text_a and f" {street_a} " not in text_b


def probability(ev: PairEvidence, weights: Sequence[float] | None = None, bias: float | None = None) -> float:
    return sigmoid(linear_score(ev.features(), weights, bias))


def sigmoid(z: float) -> float:
    """The logistic of a score, clamped as `probability` does (monotone: a larger z never gives a smaller p)."""
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def finalists(z: np.ndarray, eps: float) -> list[int]:
    """Positions that may hold the most probable candidate when each z is known only within +-eps: every one
    whose best case reaches the worst case of the largest. Compared as probabilities, not scores, because the
    sigmoid saturates (two z far apart can give p = 1.0 both, and then the first in order wins)."""
    if len(z) == 0:
        return []
    if not (math.isfinite(eps) and np.isfinite(z).all()):
        return list(range(len(z)))  # no bound to trust (a vector beyond float range): judge them all
    low = float(z.max()) - eps
    if -49.0 < low < 20.0:
        # Away from the clamp and from saturation two scores more than 1e-6 apart give two different floats
        # (the sigmoid's slope there, p(1 - p), keeps their difference far above its rounding), so a plain
        # score cut is a superset of the probability comparison below, without a sigmoid per candidate.
        return np.flatnonzero(z + eps >= low - 1e-6).tolist()
    floor = sigmoid(low)
    return [i for i, zi in enumerate(z.tolist()) if sigmoid(zi + eps) >= floor]


def recurrence_probability(new: ReportView, old: ReportView, ev: PairEvidence) -> float | None:
    """How likely `new` reports the same place and problem as `old`, whose incident is already closed: the pair
    judged as if reported side by side (the days between them say when it came back, not whether it is the same
    thing). None when the pair can never be one problem (a hard negative other than time)."""
    if hard_negative(new, old, ev) is not None:
        return None
    return probability(replace(ev, gap_hours=0.0))


@dataclass(frozen=True, slots=True)
class Match:
    incident_id: str | None  # None: the report opens a new incident
    score: float
    matched_report: int | None
    reason: str  # why: "matched", "below_threshold", "no_candidates"
    # A new incident whose most probable earlier report belongs to an incident already closed: a recurrence.
    recurrence_of: str | None = None


def decide(new: ReportView, candidates: Iterable[tuple[ReportView, str]], rarity: Rarity,
           threshold: float = DEFAULT_THRESHOLD) -> Match:
    """Attach `new` to the incident of its most probable earlier report, if that is likely enough.

    Single linkage over reports (not incident centroids): a flood reported from both ends of a street joins
    through the reports in between, and each pair is judged on its own place evidence.
    """
    best: tuple[float, ReportView, str] | None = None
    seen = False
    for old, incident_id in candidates:
        if old.report_id == new.report_id:
            continue
        seen = True
        ev = evidence(new, old, rarity)
        if hard_negative(new, old, ev) is not None:
            continue
        p = probability(ev)
        if best is None or p > best[0]:
            best = (p, old, incident_id)
    if best is None:
        return Match(None, 0.0, None, "no_candidates" if not seen else "hard_negative")
    p, old, incident_id = best
    if p >= threshold:
        return Match(incident_id, p, old.report_id, "matched")
    return Match(None, p, old.report_id, "below_threshold")


def distance_km(a: Place, b: Place) -> float | None:
    """Between two GPS fixes; None unless both reports have one."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    # Equirectangular is plenty within one city.
    x = math.radians(b.lon - a.lon) * math.cos(math.radians((a.lat + b.lat) / 2))
    y = math.radians(b.lat - a.lat)
    return 6371.0 * math.hypot(x, y)
