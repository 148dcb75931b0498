"""An upstream's slots shared by tenants (lmroute.service.tenant_slots): free slots at once, contended ones
to the waiting tenant holding the fewest, first come within a tenant; timeouts and cancellations leave
nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from lmroute.service.tenant_slots import TenantSlots


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 10))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_contended_slots_go_to_the_tenant_holding_fewest_then_in_turn() -> None:
    async def body() -> None:
        slots = TenantSlots(2)
        got: list[str] = []

        async def take(tenant: str, name: str) -> None:
            await slots.acquire(tenant, 5.0)
            got.append(name)

        await take("A", "a0")
        await take("A", "a1")  # both slots A's; nobody waited
        tasks = [asyncio.create_task(take("A", f"a{i}")) for i in range(2, 6)]
        await settle()
        tasks += [asyncio.create_task(take("B", "b0")), asyncio.create_task(take("C", "c0"))]
        await settle()
        assert slots.waiting() == 6 and got == ["a0", "a1"]
        slots.release("A")  # A holds 1, B and C none: B, waiting longest of the two
        await settle()
        slots.release("A")  # A holds 0, C 0: A waited first
        await settle()
        assert got == ["a0", "a1", "b0", "a2"]
        slots.release("B")  # A 1, C 0: C
        await settle()
        slots.release("A")  # only A waits
        await settle()
        assert got[4:] == ["c0", "a3"] and (slots.held("A"), slots.held("C"), slots.in_use) == (1, 1, 2)
        for _ in range(2):
            slots.release("A")
            await settle()
        slots.release("A")
        slots.release("C")
        await asyncio.gather(*tasks)
        assert got[6:] == ["a4", "a5"] and slots.in_use == 0 and slots.waiting() == 0

    run(body)


def test_one_tenant_is_served_first_come() -> None:
    async def body() -> None:
        slots = TenantSlots(1)
        got: list[int] = []

        async def take(i: int) -> None:
            await slots.acquire("", 5.0)
            got.append(i)
            await asyncio.sleep(0.001)
            slots.release("")

        await asyncio.gather(*(take(i) for i in range(8)))
        assert got == list(range(8)) and slots.in_use == 0

    run(body)


def test_a_wait_that_times_out_or_is_cancelled_leaves_no_slot_or_waiter_behind() -> None:
    async def body() -> None:
        slots = TenantSlots(1)
        await slots.acquire("A", 1.0)
        with pytest.raises(TimeoutError):
            await slots.acquire("B", 0.01)
        assert slots.waiting() == 0
        waiter = asyncio.create_task(slots.acquire("B", 5.0))
        await settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert slots.waiting() == 0 and slots.held("B") == 0
        # granted and cancelled in the same step: the slot goes back, to the next waiter
        granted = asyncio.create_task(slots.acquire("B", 5.0))
        after = asyncio.create_task(slots.acquire("C", 5.0))
        await settle()
        slots.release("A")  # B's future is granted ...
        granted.cancel()  # ... but its task is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await granted
        await after
        assert (slots.held("B"), slots.held("C"), slots.in_use, slots.waiting()) == (0, 1, 1, 0)
        with pytest.raises(ValueError, match="capacity must be >= 1"):
            TenantSlots(0)

    run(body)
