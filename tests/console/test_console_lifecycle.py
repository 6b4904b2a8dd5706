"""The console's side of the lifecycle: an agency records its result with photos uploaded from the answer form
(a resolved infrastructure case needs one), and the City Office's staff (`vp-ubnd`) forward a category 3-4 case
to an agency (Art. 7.3), through the same case book as the agency API."""
from __future__ import annotations

import io
import json

import aiohttp
from PIL import Image

from console.auth import create_user

from .conftest import PASSWORD, Browser, Server, seed_case


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


async def upload(b: Browser, path: str, fields: dict[str, str], files: list[tuple[str, bytes]]) -> int:
    form = aiohttp.FormData()
    for k, v in {**fields, "csrf": b.csrf}.items():
        form.add_field(k, v)
    for name, data in files:
        form.add_field("photo", data, filename=name, content_type="image/jpeg")
    async with b.session.post(b.base + path, data=form, allow_redirects=False) as resp:
        return resp.status


async def test_agency_uploads_site_photos_with_its_result(server: Server) -> None:
    case = await seed_case(server, text="Bể ống nước đường Hai Bà Trưng", incident="INC-000001", agency="sawaco")
    b = Browser(server.url)
    try:
        await b.login("sawaco")
        status, page = await b.get(f"/console/cases/{case}")
        assert 'type="file" name="photo"' in page and 'enctype="multipart/form-data"' in page
        assert await upload(b, f"/console/cases/{case}/answer", {"kind": "resolved", "note": "Xong"}, []) == 409
        assert await upload(b, f"/console/cases/{case}/answer", {"kind": "resolved"},
                            [("x.jpg", b"not an image at all")]) == 400
        assert await upload(b, f"/console/cases/{case}/answer", {"kind": "resolved", "note": "Đã thay ống"},
                            [("hien-truong.jpg", jpeg())]) == 303
        row = await server.store.fetchone("SELECT state FROM cases WHERE id=?", (case,))
        assert row["state"] == "resolved"
        answer = await server.store.fetchone("SELECT json_extract(data, '$.photos') AS p FROM answers"
                                             " WHERE case_id=? AND kind='resolved'", (case,))
        (sha,) = json.loads(answer["p"])
        assert server.store.blobs.get(sha) == jpeg()
        # The agency and operators see the evidence on the case page, served only as a photo of this case.
        status, page = await b.get(f"/console/cases/{case}")
        assert f"/console/cases/{case}/photos/{sha}" in page
        async with b.session.get(f"{b.base}/console/cases/{case}/photos/{sha}") as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            assert await resp.read() == jpeg()
        stranger = server.store.blobs.put(b"\xff\xd8\xff another case's photo")
        async with b.session.get(f"{b.base}/console/cases/{case}/photos/{stranger}") as resp:
            assert resp.status == 404
    finally:
        await b.close()
    await create_user(server.store, "evnhcmc", "agency", PASSWORD, agency="evnhcmc")
    other = Browser(server.url)
    try:
        await other.login("evnhcmc")
        async with other.session.get(f"{other.base}/console/cases/{case}/photos/{sha}") as resp:
            assert resp.status == 404  # another agency's case: the same 404 as a missing one
    finally:
        await other.close()


async def test_city_office_staff_forward_a_suggestion_to_an_agency(server: Server) -> None:
    await create_user(server.store, "vp-ubnd", "agency", PASSWORD, agency="vp-ubnd")
    case = await seed_case(server, text="Đề xuất làm thêm làn xe đạp trên đường Lê Duẩn", incident="INC-000001",
                           agency="vp-ubnd", topic="suggestion")
    office, sawaco = Browser(server.url), Browser(server.url)
    try:
        await office.login("vp-ubnd")
        status, page = await office.get(f"/console/cases/{case}")
        assert status == 200 and 'name="agency"' in page
        status, _, _ = await office.post(f"/console/cases/{case}/answer", {"kind": "reassigned", "agency": "so-gtvt"})
        assert status == 303
        row = await server.store.fetchone("SELECT agency FROM cases WHERE id=?", (case,))
        assert row["agency"] == "so-gtvt"
        review = await server.store.fetchone("SELECT state FROM deadlines WHERE case_id=? AND kind='review'", (case,))
        assert review["state"] == "met"
        # Other agencies' staff cannot forward.
        other = await seed_case(server, text="Ống nước bể", incident="INC-000002", agency="sawaco")
        await sawaco.login("sawaco")
        assert (await sawaco.post(f"/console/cases/{other}/answer",
                                  {"kind": "reassigned", "agency": "so-gtvt"}))[0] == 400
    finally:
        await office.close()
        await sawaco.close()
