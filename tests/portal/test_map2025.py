"""The public list on the 2025 map: it filters by new unit (`?ward=<slug>`, as in route output) and shows the new
unit with the old names people know beside it; on the 2023 map there is no unit filter."""
from __future__ import annotations

import aiohttp

from config.directory import load_directory
from ingest.clock import iso
from ingest.records import Classification, InboundMessage, Place, to_json

from .conftest import Server


async def _seed(server: Server, text: str, agency: str, place: Place) -> int:
    store = server.store
    msg = InboundMessage(channel="app", channel_instance="app", idempotency_key=text,
                         received_at=iso(store.clock.now()), text=text)
    rid = (await store.submit(msg, text.encode(), "text/plain")).report_id
    cls = Classification(status="route", topic="waste", category="civic", agency=agency, confidence=0.95,
                         place=place)
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM jobs WHERE report_id=?", (rid,))
        await tx.execute("UPDATE reports SET status='routed', topic='waste', category='civic', agency=?, district=?,"
                         " confidence=0.95, classification=? WHERE id=?", (agency, place.district, to_json(cls), rid))
    return rid


async def test_public_list_filters_by_new_unit_and_shows_old_names(server: Server) -> None:
    server.ctx.directory = load_directory(None, "2025")
    here = await _seed(server, "rác chất đống ở P.7 Q.6", "ubnd-binh-tien",
                       Place(district="quan-6", ward="Phường 7", unit="binh-tien", source="text",
                             unit_label="Phường Bình Tiên (P.7, Q.6 cũ)"))
    elsewhere = await _seed(server, "rác ở phường An Đông", "ubnd-an-dong",
                            Place(district="quan-5", unit="an-dong", source="text",
                                  unit_label="Phường An Đông (Q.5 cũ)"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/public?ward=binh-tien") as resp:
            page = await resp.text()
            assert resp.status == 200
        async with http.get(f"{server.url}/public") as resp:
            everything = await resp.text()
    assert f"/public/{here}" in page and f"/public/{elsewhere}" not in page
    assert f"/public/{elsewhere}" in everything
    # The filter lists the 168 units with their former districts; each report shows its unit with old names.
    assert 'name="ward"' in page and "Phường Bình Tiên (Quận 6 cũ)" in page
    assert page.count("<option value=") >= 168
    assert "Phường Bình Tiên (P.7, Q.6 cũ)" in page


async def test_public_list_on_the_2023_map_has_no_unit_filter(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/public") as resp:
            assert resp.status == 200
            assert 'name="ward"' not in await resp.text()
