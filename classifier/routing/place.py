"""The classifier's gazetteer: its data files loaded into the base's address reader (ingest/addresses.py).

The gazetteer is data (classifier/data/gazetteer.json + the directory's district aliases and ward names); district
polygons come from classifier/data/hcmc-district-boundaries.json. Reading a report's words is the reader's job
(ingest.addresses.find_place), the same one dedupe and the channels use.
"""
from __future__ import annotations

import json
from pathlib import Path

from config.directory import Directory
from ingest.addresses import Gazetteer, build_gazetteer

DATA = Path(__file__).parent.parent / "data"
GAZETTEER_PATH = DATA / "gazetteer.json"
BOUNDARIES_PATH = DATA / "hcmc-district-boundaries.json"


def load_gazetteer(directory: Directory, path: Path | None = None,
                   boundaries: Path | None = BOUNDARIES_PATH) -> Gazetteer:
    data = json.loads((path or GAZETTEER_PATH).read_text(encoding="utf-8"))
    polygons = json.loads(Path(boundaries).read_text(encoding="utf-8")) if boundaries else None
    return build_gazetteer(directory, data, polygons)
