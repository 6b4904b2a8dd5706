"""The matcher's batch screen must decide exactly as the policy judging every candidate in full (the reference
path, `IncidentMatcher.batch = False`): same incident, same matched report, same score to the bit, same reason,
on random windows built to produce near ties, saturated scores, GPS, streets, alleys and alternative topics."""
from __future__ import annotations

import random

import numpy as np

from dedupe import policy
from dedupe.matcher import IncidentMatcher
from dedupe.text import extract
from ingest.records import Place
from ingest.store import Store

T0 = 1_790_000_000.0
HOUR = 3600.0
STREETS = ["nguyen huu canh", "nguyen huu tho", "nguyen van linh", "le van sy", "vo van tan", "ba thang hai",
           "cach mang thang tam", "dien bien phu"]
PROBLEMS = ["ngap sau xe chet may", "cay do de day dien", "ho sut lon giua duong", "rac un u boc mui",
            "mat dien ca khu", "den duong hu toi om", "nuoc ri ri tu ong", "karaoke on ao ca dem"]
TOPICS = ["drainage", "trees", "electricity", "road_damage", "waste", "noise", "street_lighting", None]
DISTRICTS = ["quan-1", "quan-3", "binh-thanh", None]


def _text(rnd: random.Random) -> str:
    words = [rnd.choice(PROBLEMS)]
    shape = rnd.random()
    if shape < 0.4:
        words.append(f"duong {rnd.choice(STREETS)}")
    elif shape < 0.6:
        words.append(f"nga tu {rnd.choice(STREETS)} x {rnd.choice(STREETS)}")
    if rnd.random() < 0.5:
        words.append(f"hem {rnd.randint(1, 6)}")
    if rnd.random() < 0.2:
        words.append(f"so {rnd.randint(1, 3)}/{rnd.randint(1, 3)}")
    if rnd.random() < 0.3:
        words.append(f"phuong {rnd.randint(1, 4)}")
    rnd.shuffle(words)
    return " ".join(words)


def _view(rnd: random.Random, rng: np.random.Generator, rid: int, at: float, centers: np.ndarray,
          copy_of: policy.ReportView | None) -> policy.ReportView:
    if copy_of is not None and rnd.random() < 0.7:
        # A repeat: same text and place, a vector equal or very close (equal or saturated scores, ties by order).
        noise = rnd.choice([0.0, 0.0, 1e-4, 0.05])
        v = copy_of.vector + noise * rng.standard_normal(len(copy_of.vector)).astype(np.float32)
        return policy.ReportView(report_id=rid, received_at=at, topic=copy_of.topic, district=copy_of.district,
                                 text=copy_of.text, place=copy_of.place, vector=(v / np.linalg.norm(v)).astype(np.float32),
                                 alt_topics=copy_of.alt_topics)
    v = centers[rnd.randrange(len(centers))] + 0.3 * rng.standard_normal(centers.shape[1]).astype(np.float32)
    gps = rnd.random() < 0.3
    place = Place(street=rnd.choice(STREETS) if rnd.random() < 0.4 else None,
                  house_number=f"{rnd.randint(1, 3)}/{rnd.randint(1, 3)}" if rnd.random() < 0.2 else None,
                  ward=f"phuong-{rnd.randint(1, 3)}" if rnd.random() < 0.3 else None,
                  lat=10.77 + rnd.uniform(-0.02, 0.02) if gps else None,
                  lon=106.69 + rnd.uniform(-0.02, 0.02) if gps else None)
    topic = rnd.choice(TOPICS)
    alts = frozenset(rnd.sample([t for t in TOPICS if t and t != topic], 1)) if topic and rnd.random() < 0.2 \
        else frozenset()
    return policy.ReportView(report_id=rid, received_at=at, topic=topic, district=rnd.choice(DISTRICTS),
                             text=extract(_text(rnd)), place=place, vector=(v / np.linalg.norm(v)).astype(np.float32),
                             alt_topics=alts)


async def test_batch_screen_decides_as_the_policy_judging_every_candidate(store: Store) -> None:
    rnd = random.Random(11)
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((6, 64)).astype(np.float32)
    matcher = IncidentMatcher(store, window_days=7)
    views: list[policy.ReportView] = []
    outcomes: dict[str, int] = {}
    compared = 0
    skipped = 0  # first passes after which no survivor can be a recurrence (the store is not read for one)
    for rid in range(1, 901):
        at = T0 + rid * 0.25 * HOUR  # 900 reports over ~9 days: the first days leave the 7-day window
        view = _view(rnd, rng, rid, at, centers, rnd.choice(views) if views else None)
        if rid > 50:
            matcher.batch = True
            fast, found = matcher.first_pass(view)
            matcher.batch = False
            slow, _ = matcher.first_pass(view)
            assert fast == slow, (rid, fast, slow)
            outcomes[fast.reason] = outcomes.get(fast.reason, 0) + 1
            compared += 1
            if found is not None:
                # The second pass (the winner's incident closed): any subset of candidates in open incidents.
                survivors, cosines, rarity, ceiling = found
                # The recurrence ceiling bounds every survivor's recurrence score, as the policy computes it.
                assert ceiling is not None
                best_recurrence = max((p for p in (policy.recurrence_probability(view, old, policy.evidence(
                    view, old, rarity.__getitem__)) for old in (matcher._features[i].view(i, v) for i, v in zip(
                        survivors, matcher.index.vectors_of(survivors)))) if p is not None), default=0.0)
                assert best_recurrence <= policy.sigmoid(ceiling), (rid, best_recurrence, ceiling)
                skipped += policy.sigmoid(ceiling) < matcher.threshold
                incident_of = {i: f"INC-{i % 7}" for i in survivors if rnd.random() < 0.5}
                ids = [i for i in survivors if i in incident_of]
                matcher.batch = True
                fast = matcher._judge(view, ids, cosines, rarity, incident_of)
                matcher.batch = False
                assert fast == matcher._judge(view, ids, cosines, rarity, incident_of)
        matcher.remember(view)
        views.append(view)
    # The random window exercised every way a first pass ends, matches most of all.
    assert compared == 850
    assert outcomes.get("matched", 0) > 100 and outcomes.get("below_threshold", 0) > 100, outcomes
    assert 20 < skipped < compared, skipped


async def test_batch_screen_leaves_out_reports_the_classifier_put_on_another_street(store: Store) -> None:
    """The one hard negative the screen itself applies: same problem, same words, the classifier's street
    differs and neither text names the other's. Both paths then find only hard negatives."""
    v = np.ones(8, np.float32) / np.sqrt(8)
    matcher = IncidentMatcher(store, window_days=7)

    def report(rid: int, street: str) -> policy.ReportView:
        return policy.ReportView(report_id=rid, received_at=T0 + rid * HOUR, topic="drainage", district="quan-1",
                                 text=extract("ngap sau xe chet may hem 5"), place=Place(street=street), vector=v)

    matcher.remember(report(1, "le van sy"))
    matcher.remember(report(2, "le van sy"))
    for batch in (True, False):
        matcher.batch = batch
        assert matcher.first_pass(report(3, "vo van tan"))[0] == policy.Match(None, 0.0, None, "hard_negative")
        joined = matcher.first_pass(report(3, "le van sy"))[0]
        assert joined.reason == "matched" and joined.matched_report == 2  # the same words, an hour closer
