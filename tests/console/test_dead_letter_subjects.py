"""The dead-letter page's subject filters (console/views.py, ingest/queue.py `_filters`): a row's 'like' link and
'replay all of this subject' take that subject exactly; a typed subject is one subject, or every one under it when
it ends with "/". Endpoint 'hook' never takes in endpoint 'hook-2' of the same agency: replaying that one's jobs
re-enabled it (dispatch/delivery.py `_delivery_replayed` deletes its endpoint_state) after it had answered 410."""
from __future__ import annotations

from dispatch.delivery import enqueue_delivery
from ingest.store import Store

from .conftest import Browser, Server, seed_case


async def _two_disabled_endpoints(server: Server) -> tuple[int, int]:
    """A case's dead deliveries to endpoints so-gtvt/hook and so-gtvt/hook-2, both switched off by a 410."""
    store = server.store
    case = await seed_case(server, text="Mất nước cả khu phố đường Trần Hưng Đạo", incident="INC-000001")
    now = store.clock.now()
    async with store.transaction() as tx:
        for target in ("hook", "hook-2"):
            await tx.execute("INSERT INTO endpoint_state(agency, target, disabled_at, reason) VALUES (?,?,?,?)",
                             ("so-gtvt", target, now, "410 Gone"))
            cur = await tx.execute(
                "INSERT INTO deliveries(msg_id, case_id, agency, target, kind, event, payload, state, next_at,"
                " deadline_at, created_at, updated_at) VALUES (?,?,?,?,'webhook','forwarded','{}','dead',?,?,?,?)",
                (f"msg_{target}", case, "so-gtvt", target, now, now + 3600, now, now))
            await enqueue_delivery(tx, int(cur.lastrowid), "so-gtvt", target, now + 3600, disabled=True)
    hook, other = [d.id for d in sorted(await store.queue.dead_letters("deliver"), key=lambda d: d.id)]
    return hook, other


async def _disabled(store: Store) -> list[str]:
    return [r["target"] for r in await store.fetchall("SELECT target FROM endpoint_state WHERE agency='so-gtvt'"
                                                      " ORDER BY target")]


async def test_replaying_one_endpoints_dead_letters_leaves_another_endpoint_alone(
        server: Server, browser: Browser) -> None:
    store = server.store
    hook, other = await _two_disabled_endpoints(server)
    await browser.login("admin")
    status, page = await browser.get(f"/console/dead-letters?like={hook}")
    assert status == 200 and "so-gtvt/hook-2" not in page and "so-gtvt/hook" in page
    status, _, location = await browser.post("/console/dead-letters/replay", {"like": str(hook)})
    assert status == 303 and location is not None and "replayed=1" in location
    assert [d.id for d in await store.queue.dead_letters("deliver")] == [other]
    assert await _disabled(store) == ["hook-2"]


async def test_a_typed_subject_is_one_endpoint_or_every_endpoint_under_it(server: Server, browser: Browser) -> None:
    store = server.store
    hook, other = await _two_disabled_endpoints(server)
    await browser.login("admin")
    status, page = await browser.get("/console/dead-letters?subject=so-gtvt/hook")
    assert status == 200 and "so-gtvt/hook-2" not in page
    status, _, location = await browser.post("/console/dead-letters/replay", {"subject": "so-gtvt/hook"})
    assert status == 303 and location is not None and "replayed=1" in location
    assert await _disabled(store) == ["hook-2"]
    # Ending with "/": every endpoint of the agency, as the operator typed it.
    status, _, location = await browser.post("/console/dead-letters/replay", {"subject": "so-gtvt/"})
    assert status == 303 and location is not None and "replayed=1" in location
    assert await store.queue.dead_letters("deliver") == [] and await _disabled(store) == []
