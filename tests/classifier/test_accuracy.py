"""Regression guard: 5-fold cross-validated routing quality on the seed set (vectors cached on disk)."""
from __future__ import annotations

import json

import numpy as np

from classifier.evaluate import predict
from classifier.trainer import SEED_PATH


def test_cross_validated_routing_does_not_regress(settings, embedder):
    rows = [json.loads(line) for line in SEED_PATH.read_text(encoding="utf-8").splitlines() if line]
    preds = predict(rows, settings, cv=True, embedder=embedder)
    agency_ok = np.array([p.agency == p.expected["agency"] for p in preds])
    routed = np.array([p.status == "routed" for p in preds])
    abusive = [p for p in preds if p.expected["topic"] == "abusive"]
    # Measured 0.891 agency accuracy, 0.975 precision at 0.63 coverage, 0.96 abusive recall (Sep 2026).
    assert agency_ok.mean() >= 0.87
    assert agency_ok[routed].mean() >= 0.96 and routed.mean() >= 0.55
    assert sum(p.status == "rejected" for p in abusive) / len(abusive) >= 0.9
