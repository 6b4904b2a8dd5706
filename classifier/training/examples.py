"""A training example and the refusal reasons: what the review decisions and the console use of the trainer, apart
from it so that a process that never trains (intake, where operators decide reviews) does not import the model's
libraries (scikit-learn, SciPy) for them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from config.directory import BUNDLED


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    topic: str
    weight: float = 1.0
    source: str = "seed"  # seed, description, review
    ref: str | None = None  # seed id or report id


def reject_reasons(agencies_path: Path | None) -> dict[str, str]:
    """Reasons told to reporters, per refused topic, from the directory file (admins edit them there)."""
    try:
        data = json.loads(Path(agencies_path or BUNDLED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {t["id"]: t["reject_reason_vi"] for t in data.get("topics", []) if t.get("reject_reason_vi")}
