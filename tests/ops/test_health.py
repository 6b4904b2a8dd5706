"""/healthz and /readyz over real HTTP: ready only when the store takes a write and the classifier model is loaded."""
from __future__ import annotations

import asyncio

import aiohttp


async def get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def test_ready_until_the_store_is_closed(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock))
    assert await get(served.url + "/healthz") == (200, {"status": "ok"})
    assert await get(served.url + "/readyz") == (200, {"status": "ready"})
    await world.store.close()
    status, body = await get(served.url + "/readyz")
    assert status == 503 and body["status"] == "not ready"
    assert any(r.startswith("store: not writable") for r in body["reasons"])
    # The process itself is alive: a restart is not what fixes this.
    assert (await get(served.url + "/healthz"))[0] == 200


async def test_not_ready_while_the_classifier_model_loads(world, context_for, serve_ops) -> None:
    ctx = context_for(world.store, world.clock)
    served = await serve_ops(ctx)
    loaded = False
    # What the classifier publishes: why it cannot classify yet, None once its model is loaded.
    ctx.published.classifier_not_ready = lambda: None if loaded else "classifier: model not loaded yet"
    status, body = await get(served.url + "/readyz")
    assert status == 503 and body["reasons"] == ["classifier: model not loaded yet"]
    loaded = True
    assert (await get(served.url + "/readyz"))[0] == 200


async def test_a_held_write_lock_makes_it_unready_then_ready_again(world, context_for, serve_ops) -> None:
    served = await serve_ops(context_for(world.store, world.clock, ops={"ready_timeout_seconds": 0.2}))
    release = asyncio.Event()
    holding = asyncio.Event()

    async def long_write() -> None:
        async with world.store.transaction() as tx:
            await tx.event(None, "test", "test")
            holding.set()
            await release.wait()

    writer = asyncio.create_task(long_write())
    await holding.wait()
    status, body = await get(served.url + "/readyz")
    assert status == 503 and body["reasons"] == ["store: no write lock within 0.2 s"]
    release.set()
    await writer
    assert (await get(served.url + "/readyz"))[0] == 200
    # The probe left no transaction open: ordinary writes still work.
    async with world.store.transaction() as tx:
        await tx.event(None, "after", "test")
