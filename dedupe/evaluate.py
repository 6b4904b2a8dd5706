"""Pairwise precision, recall and F1 of incident grouping (pure), defined as ../shared/tools/score_route.py does.

Two reports pair when they share an incident id; a report without a predicted incident pairs with nobody.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def _pairs(groups: Counter[Hashable]) -> int:
    return sum(n * (n - 1) // 2 for n in groups.values())


def pairwise_scores(gold_ids: Sequence[Hashable], pred_ids: Sequence[Hashable | None]) -> dict[str, float]:
    """gold_ids[i] and pred_ids[i] are report i's gold and predicted incident ids (None: no incident)."""
    if len(gold_ids) != len(pred_ids):
        raise ValueError("gold and predicted lists differ in length")
    # A missing prediction is a singleton, exactly like score_route.py's ('solo', i).
    pred = [p if p is not None else ("solo", i) for i, p in enumerate(pred_ids)]
    gold_pairs = _pairs(Counter(gold_ids))
    pred_pairs = _pairs(Counter(pred))
    both = _pairs(Counter(zip(gold_ids, pred)))
    precision = both / max(1, pred_pairs)
    recall = both / max(1, gold_pairs)
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    return {"incident_p": precision, "incident_r": recall, "incident_f1": f1,
            "gold_pairs": float(gold_pairs), "pred_pairs": float(pred_pairs), "true_pairs": float(both)}
