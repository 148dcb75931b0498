"""Live target changes kept in the outcome store, so that a restart and every replica sharing the store
hold them.

    sync = TargetSync(lambda: open_store(dsn), targets)
    await sync.catch_up()          # at startup: every stored change, applied over the settings
    sync.watch(10.0)               # then the changes other replicas store, every 10 s
    await sync.record(check)       # AdminService.SetTargets: caught up, checked, durable, then applied
    await sync.close()

Every server applies the stored changes in the order of their ids (`TenantTargets.apply`), so two
replicas changing one tenant's target at once both end with the value of the later id. A server applies
its own changes the same way, with any stored before them, as it records them; read back at its next
poll they change nothing (`apply` skips a value already held). Store calls run on one thread of their
own over one connection, opened on first use and opened again after a failure.

A change for a tenant this server does not honour (not in its --tenants list, no token bound to it) is
not held, but kept aside, the latest per tenant and target: once the tenant is honoured (a token bound
to it added to the tokens file) it is applied at the next read, as a restart would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from lmroute.outcomes.records import TargetChange
from lmroute.outcomes.store import OutcomeStore, failure_cause
from lmroute.service.targets import TenantTargets

__all__ = ["TargetChangesUnread", "TargetSync"]


class TargetChangesUnread(Exception):
    """The store's target changes could not be read before a change was checked (its cause: the message)."""


_log = structlog.get_logger("lmroute.targets")
_T = TypeVar("_T")


class TargetSync:
    """The stored target changes of one server (see the module docstring); event-loop only."""

    def __init__(
        self,
        connect: Callable[[], OutcomeStore],
        targets: TenantTargets,
        honours: Callable[[str], bool] = lambda tenant: True,
    ) -> None:
        self._connect = connect
        self.targets = targets
        self.honours = honours  # whether a tenant could be spoken for here: another's targets are not held
        self.last_id = 0  # the id of the latest stored change applied (or found applied)
        # (tenant, target) -> the latest change read for a tenant not honoured then (applied once it is)
        self._not_honoured: dict[tuple[str, str], tuple[int, TargetChange]] = {}
        self._store: OutcomeStore | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmroute-targets")
        self._lock = asyncio.Lock()  # one reader or writer at a time: changes are applied in id order
        self._watch: asyncio.Task[None] | None = None

    def _on_store(self, fn: Callable[[OutcomeStore], _T]) -> _T:
        """`fn` on the held connection (pool thread); a failed call drops it, to be opened again."""
        if self._store is None:
            self._store = self._connect()
        try:
            return fn(self._store)
        except BaseException:
            self._store.close()
            self._store = None
            raise

    async def _call(self, fn: Callable[[OutcomeStore], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._on_store, fn)

    async def catch_up(self) -> int:
        """Apply the changes stored since the last read, in id order; how many changed something. Raises
        the store's error when it cannot be read (nothing applied then)."""
        async with self._lock:
            return await self._catch_up()

    async def _catch_up(self) -> int:
        after = self.last_id
        rows = await self._call(lambda store: store.target_changes(after_id=after))
        now_honoured = [kept for key, kept in self._not_honoured.items() if self.honours(key[0])]
        changed = 0
        for change_id, change in sorted(now_honoured, key=lambda kept: kept[0]) + list(rows):
            key = (change.tenant, change.target)
            if change.value is not None and not self.honours(change.tenant):  # another replica's tenant
                _log.warning("target_change_not_honoured", id=change_id, tenant=change.tenant, target=change.target)
                self._not_honoured[key] = (change_id, change)
                self.last_id = max(self.last_id, change_id)
                continue
            self._not_honoured.pop(key, None)
            try:
                done = self.targets.apply(change)
            except ValueError as exc:  # a row no SetTargets wrote (it checks every value): skipped, said
                _log.warning("target_change_ignored", id=change_id, tenant=change.tenant, error=str(exc))
                done = False
            if done:
                changed += 1
                _log.info(
                    "target_applied", id=change_id, tenant=change.tenant, target=change.target, value=change.value
                )
            self.last_id = max(self.last_id, change_id)
        return changed

    async def record(self, check: Callable[[], Sequence[TargetChange]]) -> None:
        """In one hold of the lock, so that no other call's changes come in between: apply the changes
        stored so far, take `check()` (the changes to make, checked against the targets as they now
        stand; what it raises is raised, nothing stored), store them in one transaction (durable when
        this returns), then apply them. Raises TargetChangesUnread when the stored changes cannot be
        read, the store's error when they cannot be stored: nothing changed either way."""
        async with self._lock:
            try:
                await self._catch_up()
            except Exception as exc:
                raise TargetChangesUnread(failure_cause(exc)) from exc
            changes = check()
            await self._call(lambda store: store.record_target_changes(changes))
            await self._catch_up()

    def watch(self, every_s: float) -> None:
        """Apply the changes other servers store every `every_s` seconds (0: never); a failed read is
        logged and tried again at the next tick."""
        if every_s > 0 and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._poll(every_s), name="lmroute-target-watch")

    async def _poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.catch_up()
            except Exception as exc:  # a store away for a while: keep the targets held, read again later
                _log.warning("target_read_failed", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Stop watching and close the connection."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.get_running_loop().run_in_executor(self._pool, store.close)
        self._pool.shutdown(wait=False)
