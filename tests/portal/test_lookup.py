"""The private lookup and the public pages over a real case: the deadline while the agency works, its answer and
after-photos (without metadata) once resolved, one rating per report with CSRF; a confidential report publishes
neither its content nor its photos."""
from __future__ import annotations

import base64
import re

import aiohttp

from .conftest import AGENCY_TOKEN, FormClient, Server, classify_and_dispatch, has_metadata, photo_with_gps
from .test_form import DESCRIPTION, report_fields


async def _answer(server: Server, case_id: str, kind: str, **extra: object) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/v1/agency/cases/{case_id}/answers",
                             headers={"Authorization": f"Bearer {AGENCY_TOKEN}"}, json={"kind": kind, **extra}) as resp:
            assert resp.status == 201, await resp.text()


async def _file(client: FormClient, **extra: str) -> tuple[str, str]:
    _, csrf, key = await client.form()
    _, _, location = await client.post("/report", report_fields(csrf, key, **extra))
    assert location is not None
    token = location.rsplit("/", 1)[1]
    return token, csrf


async def test_lookup_follows_the_case_and_takes_one_rating(server: Server, client: FormClient) -> None:
    token, csrf = await _file(client)
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    case_id = await classify_and_dispatch(server, row["id"])
    status, page = await client.get(f"/lookup/{token}")
    agency = server.ctx.directory.agencies["chieu-sang"].name_vi
    assert status == 200 and agency in page and 'id="deadline"' in page  # the open clock's due time
    assert "rating-form" not in page  # no rating before there is a result
    status, _, _ = await client.post(f"/lookup/{token}/rating", {"csrf": csrf, "score": "4"})
    assert status == 409 and not await server.store.fetchall("SELECT id FROM ratings")
    after = base64.b64encode(photo_with_gps(640, 480, (20, 140, 60))).decode()
    await _answer(server, case_id, "resolved", note="Đã thay bóng đèn.",
                  photos=[{"content_type": "image/jpeg", "data": after}])
    status, page = await client.get(f"/lookup/{token}")
    assert 'id="rating-form"' in page and "Đã thay bóng đèn." in page
    (src,) = re.findall(r'src="(/lookup/[^"]+/photos/[0-9a-f]{64})"', page.split('id="answer-photos"', 1)[1])[:1]
    async with client.session.get(server.url + src) as resp:
        assert resp.status == 200 and not has_metadata(await resp.read())
    # A forged or missing token, and a missing score, are refused with the page and a message.
    status, page, _ = await client.post(f"/lookup/{token}/rating", {"csrf": "forged", "score": "5"})
    assert status == 403 and "Phiên làm việc đã hết hạn" in page
    status, page, _ = await client.post(f"/lookup/{token}/rating", {"csrf": csrf, "score": "9"})
    assert status == 400 and "Vui lòng chọn một mức từ 1 đến 5." in page
    status, _, location = await client.post(f"/lookup/{token}/rating", {"csrf": csrf, "score": "2",
                                                                       "comment": "Đèn lại tắt sau 2 ngày"})
    assert status == 303 and location == f"/lookup/{token}#rating"
    status, page = await client.get(f"/lookup/{token}")
    assert "Cảm ơn bạn đã đánh giá: 2/5." in page and 'id="rating-form"' not in page
    status, _, _ = await client.post(f"/lookup/{token}/rating", {"csrf": csrf, "score": "5"})
    assert status == 409
    rows = await server.store.fetchall("SELECT case_id, score, comment FROM ratings")
    assert [tuple(r) for r in rows] == [(case_id, 2, "Đèn lại tắt sau 2 ngày")]

    # The public page shows the result and the after-photo, stripped, and nothing of the reporter.
    status, public = await client.get(f"/public/{row['id']}")
    assert status == 200 and "Đã thay bóng đèn." in public and "Đã xử lý xong" in public
    (photo,) = re.findall(r'src="(/public/\d+/photos/[0-9a-f]{64})"', public)
    async with client.session.get(server.url + photo) as resp:
        assert resp.status == 200 and not has_metadata(await resp.read())
    for secret in ("Canary", "0909 123 456", "canary@example.vn", "10.7741", token):
        assert secret not in public
    # A report's photos are reachable only through their own report: no blob by hash from another path.
    sha = photo.rsplit("/", 1)[1]
    async with client.session.get(f"{server.url}/public/{row['id'] + 1}/photos/{sha}") as resp:
        assert resp.status == 404


async def test_a_confidential_report_publishes_no_content_position_or_photo(server: Server,
                                                                          client: FormClient) -> None:
    token, _ = await _file(client, confidential="true")
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    case_id = await classify_and_dispatch(server, row["id"])
    after = base64.b64encode(photo_with_gps(320, 240)).decode()
    await _answer(server, case_id, "resolved", note="Đã sửa trước nhà chị Canary.",
                  photos=[{"content_type": "image/jpeg", "data": after}])
    status, public = await client.get(f"/public/{row['id']}")
    assert status == 200 and "bảo mật" in public
    assert DESCRIPTION not in public and "/photos/" not in public and "Canary" not in public
    status, listing = await client.get("/public")
    assert status == 200 and "data-lat" not in listing and DESCRIPTION not in listing
    # The reporter still sees everything on their private page.
    status, page = await client.get(f"/lookup/{token}")
    assert DESCRIPTION in page and "/photos/" in page


async def test_public_list_filters_and_speaks_english(server: Server, client: FormClient) -> None:
    await _file(client)
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    await classify_and_dispatch(server, row["id"])
    status, page = await client.get("/public?district=quan-1&status=open")
    assert status == 200 and f'href="/public/{row["id"]}"' in page and 'data-lat="10.774"' in page
    status, page = await client.get("/public?district=quan-3")
    assert f'href="/public/{row["id"]}"' not in page and "Chưa có phản ánh." in page
    status, page = await client.get("/public?status=pending")
    assert status == 400 and 'role="alert">Bộ lọc không hợp lệ; hãy chọn lại.' in page
    status, page = await client.get("/public?lang=en&agency_responsible=chieu-sang")
    assert '<html lang="en">' in page and f'href="/public/{row["id"]}"' in page and "Forwarded to the agency" in page
    assert (await client.get("/public/999"))[0] == 404


async def test_the_dispute_hook_reaches_the_lifecycle_handler_once_there_is_a_result(server: Server,
                                                                                   client: FormClient) -> None:
    calls: list[dict[str, object]] = []

    async def dispute(**kw: object) -> None:  # stands in for the lifecycle component's handler, recording calls
        calls.append(kw)

    token, csrf = await _file(client)
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    case_id = await classify_and_dispatch(server, row["id"])
    real, server.ctx.published.case_dispute = server.ctx.published.case_dispute, None  # first, the page without it
    assert real is not None
    _, page = await client.get(f"/lookup/{token}")
    assert 'id="dispute"' not in page  # no handler published: no button
    assert (await client.post(f"/lookup/{token}/dispute", {"csrf": csrf, "reason": "x"}))[0] == 404
    server.ctx.published.case_dispute = dispute
    _, page = await client.get(f"/lookup/{token}")
    assert 'id="dispute"' not in page  # not before a result
    await _answer(server, case_id, "resolved", note="Đã sửa.",
                  photos=[{"content_type": "image/jpeg", "data": base64.b64encode(photo_with_gps(64, 64)).decode()}])
    _, page = await client.get(f"/lookup/{token}")
    assert 'id="dispute"' in page
    status, page, _ = await client.post(f"/lookup/{token}/dispute", {"csrf": csrf, "reason": "  "})
    assert status == 400 and "Vui lòng ghi lý do" in page and calls == []
    status, _, location = await client.post(f"/lookup/{token}/dispute", {"csrf": csrf, "reason": "Đèn vẫn tắt"})
    assert status == 303 and location is not None
    assert calls == [{"report_id": row["id"], "case_id": case_id, "reason": "Đèn vẫn tắt"}]
    _, page = await client.get(location.split("#")[0])
    assert "Đã gửi đề nghị xem xét lại." in page


async def test_a_dispute_on_the_lookup_page_reopens_the_case_at_its_agency(server: Server, client: FormClient) -> None:
    token, csrf = await _file(client)
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    case_id = await classify_and_dispatch(server, row["id"])
    await _answer(server, case_id, "resolved", note="Đã sửa.",
                  photos=[{"content_type": "image/jpeg", "data": base64.b64encode(photo_with_gps(64, 64)).decode()}])
    status, _, location = await client.post(f"/lookup/{token}/dispute", {"csrf": csrf, "reason": "Đèn vẫn tắt"})
    assert status == 303 and location is not None
    case = await server.store.fetchone("SELECT state, closed_at FROM cases WHERE id=?", (case_id,))
    assert (case["state"], case["closed_at"]) == ("forwarded", None)
    status, page = await client.get(location.split("#")[0])
    assert "Đã gửi đề nghị xem xét lại." in page and 'id="dispute"' not in page and 'id="rating-form"' not in page
    # Past the days allowed after the next result: refused politely, nothing changes.
    await _answer(server, case_id, "resolved", note="Đã thay bộ đèn mới.",
                  photos=[{"content_type": "image/jpeg", "data": base64.b64encode(photo_with_gps(64, 64)).decode()}])
    server.ctx.clock.advance(30 * 86400)
    status, page, _ = await client.post(f"/lookup/{token}/dispute", {"csrf": csrf, "reason": "Lại tắt"})
    assert status == 409 and "quá thời hạn" in page
    case = await server.store.fetchone("SELECT state FROM cases WHERE id=?", (case_id,))
    assert case["state"] == "resolved"


async def test_a_report_held_for_review_shows_its_reporter_no_guess(server: Server, client: FormClient) -> None:
    # Red-team pass: the reporter's own page named the classifier's unsure guess ("abusive", a guessed agency)
    # before anyone had read the report.
    token, _ = await _file(client)
    (row,) = await server.store.fetchall("SELECT id FROM reports")
    async with server.store.transaction() as tx:
        await tx.execute("UPDATE reports SET status='review', topic='abusive', agency='chieu-sang' WHERE id=?",
                         (row["id"],))
    directory = server.ctx.directory
    guess = directory.topics["abusive"].description_vi.split(":")[0]
    status, page = await client.get(f"/lookup/{token}")
    assert status == 200 and guess not in page
    assert directory.agencies["chieu-sang"].name_vi not in page
