"""The writer's turns (ingest/write_turns.py): intake's group commit goes before waiting stages, the two alternate
so neither starves, and a waiter cancelled in the queue, or just as its turn came, holds no one up."""
from __future__ import annotations

import asyncio

from ingest.write_turns import WriteTurns


async def _take(turns: WriteTurns, name: str, intake: bool, order: list[str], release: asyncio.Event) -> None:
    async with turns.turn(intake=intake):
        order.append(name)
        await release.wait()


async def _queue(turns: WriteTurns, order: list[str], *waiters: tuple[str, bool]) -> tuple[dict[str, asyncio.Event],
                                                                                          list[asyncio.Task[None]]]:
    gates = {name: asyncio.Event() for name, _ in waiters}
    tasks = []
    for name, intake in waiters:
        tasks.append(asyncio.ensure_future(_take(turns, name, intake, order, gates[name])))
        await asyncio.sleep(0)  # queued in this order
    return gates, tasks


async def _run_out(gates: dict[str, asyncio.Event], order: list[str], tasks: list[asyncio.Task[None]]) -> None:
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0)
        if order and not gates[order[-1]].is_set():
            gates[order[-1]].set()
    await asyncio.gather(*tasks)


async def test_intake_goes_before_stages_that_queued_earlier() -> None:
    turns, order = WriteTurns(), []
    gates, tasks = await _queue(turns, order, ("stage-0", False), ("stage-1", False), ("stage-2", False),
                                ("intake", True))
    assert order == ["stage-0"]
    await _run_out(gates, order, tasks)
    assert order == ["stage-0", "intake", "stage-1", "stage-2"]


async def test_intake_and_stages_alternate_when_both_keep_waiting() -> None:
    turns, order = WriteTurns(), []
    gates, tasks = await _queue(turns, order, ("intake-0", True), ("stage-0", False), ("stage-1", False),
                                ("intake-1", True), ("intake-2", True))
    await _run_out(gates, order, tasks)
    assert order == ["intake-0", "stage-0", "intake-1", "stage-1", "intake-2"]


async def _settle() -> None:
    for _ in range(10):  # enough loop turns for every woken task to run
        await asyncio.sleep(0)


async def test_a_cancelled_waiter_holds_no_one_up() -> None:
    turns, order = WriteTurns(), []
    gates, tasks = await _queue(turns, order, ("stage-0", False), ("intake", True), ("stage-1", False))
    tasks[1].cancel()  # waiting in the queue
    gates["stage-0"].set()
    await _settle()
    assert order == ["stage-0", "stage-1"]
    gates["stage-1"].set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_waiter_cancelled_as_its_turn_comes_passes_it_on() -> None:
    turns, order = WriteTurns(), []
    async with turns.turn():
        gates, tasks = await _queue(turns, order, ("intake", True), ("stage", False))
    # The turn was just given to intake, whose task has not run yet: cancelled now, it must pass the turn on.
    tasks[0].cancel()
    await _settle()
    assert order == ["stage"]
    gates["stage"].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    async with turns.turn():  # free again
        pass


async def test_a_waiter_cancelled_and_dropped_by_a_turn_ending_still_ends_cancelled() -> None:
    turns, order = WriteTurns(), []
    async with turns.turn():
        gates, tasks = await _queue(turns, order, ("stage-0", False), ("stage-1", False))
        tasks[0].cancel()  # its turn's future is cancelled now; its task has not run yet
    # The turn ended before the cancelled task ran: the turn skipped (and dropped) it for stage-1.
    await _settle()
    assert order == ["stage-1"]
    assert tasks[0].cancelled()  # a cancellation, not another error: a supervisor stops instead of restarting
    gates["stage-1"].set()
    await asyncio.gather(*tasks, return_exceptions=True)
