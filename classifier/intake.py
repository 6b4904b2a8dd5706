"""What an intake-only process (`serve --role intake`, the intake side of `serve`) builds of the classifier: no
model, but the chat bots still ask for the place when the words and GPS give none, so the place finder is published
here too. Apart from classifier.service so that intake never imports the model's libraries (scikit-learn, SciPy:
~1.4 s and ~100 MB of a process that never classifies)."""
from __future__ import annotations

from ingest.app import AppContext, Service

from classifier.routing.places import Places


def build_places(ctx: AppContext) -> list[Service]:
    if ctx.settings.classifier.backend == "none":
        return []
    places = Places(ctx.directory)
    ctx.published.place_found = places.place_found
    ctx.published.unit_candidates = places.unit_candidates if ctx.directory.structure == "2025" else None
    return []
