"""Incident decisions when reports are not matched in arrival order, and when several instances share one
PostgreSQL store (issue 20): each instance has its own window, so what another instance decided must reach it
from the store, and two instances deciding about one place at once must not each open an incident."""
from __future__ import annotations

from dedupe import schema
from dedupe.matcher import IncidentMatcher
from dedupe.service import STAGE, DedupeStage
from ingest.clock import FakeClock
from ingest.worker import StageWorker, WorkerSettings
from tests.dedupe.test_stage import HOUR, T0, _classified, _vec
from tests.stores import AnyStore, StoreFactory, store_factory  # noqa: F401  (the parametrised fixture)

TEXT = "Cống thoát nước đường Ngô Gia Tự bị rác bít kín, mưa xuống là ngập nửa bánh xe"


async def _drain(store: AnyStore, matcher: IncidentMatcher, batch: int = 16) -> None:
    worker = StageWorker(store, STAGE, DedupeStage(store, matcher).handle, WorkerSettings(batch=batch))
    while await worker.run_once():
        pass


async def test_a_report_matched_after_a_later_report_of_its_incident_joins_it(store_factory: StoreFactory) -> None:
    # The later report was classified first (by the faster instance, or the earlier one's job came back only
    # when a killed instance's lease expired): the earlier report, matched second, must find it.
    store = await store_factory.open(FakeClock(T0 + 2 * HOUR), {"dedupe": schema.MIGRATIONS})
    base = _vec(1)
    later = await _classified(store, "later", T0 + 0.5 * HOUR, TEXT, topic="drainage", district="quan-5",
                              vector=base, street="ngo gia tu")
    earlier = await _classified(store, "earlier", T0, TEXT, topic="drainage", district="quan-5",
                                vector=_vec(2, base, 0.02), street="ngo gia tu")
    await _drain(store, IncidentMatcher(store), batch=1)
    first, second = [await store.get_report(i) for i in (later, earlier)]
    assert first is not None and second is not None
    assert first.incident_id == second.incident_id == "INC-000001"
    assert second.status == "duplicate"
