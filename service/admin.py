"""AdminService servicer: wire messages <-> the bundle swapper (lmroute.service.bundle_swap).

ReloadBundle hot-swaps the router bundle; GetBundle reports what serves, the swap in progress and the
counters; ListShareTargets and ListSpendTargets the tenants' targets and their controllers
(lmroute.service.targets); SetTargets changes targets live (recorded in the outcome store first when the
server keeps them there: lmroute.service.target_sync); DecisionsToJudge picks the recent decisions most
worth judging (lmroute.adapt.to_judge over the server's store and serving bundle, one call at a time on
a thread of its own at the lowest CPU priority, so that serving keeps the CPU while a list is made).
The servicer is registered when the server binds (when `admin_service` allows it) and attached to the
swapper once the first bundle is loaded;
before that every call is NotReady (UNAVAILABLE). A call whose token is bound to a tenant is refused
(PERMISSION_DENIED): such a token speaks for its tenant, and administering the server (or reading other
tenants' targets) is not its tenant's business. DecisionsToJudge is the one exception: such a token is
answered as its tenant, from that tenant's decisions and their outcomes only. Errors are ServiceErrors,
turned into statuses by the interceptor like RouterService's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from lmroute.outcomes.records import TargetChange
from lmroute.outcomes.store import StoreError, failure_cause
from lmroute.service.auth import AUTH_TENANT
from lmroute.service.bundle_swap import BundleSwapper
from lmroute.service.cpus import lowest_cpu_priority
from lmroute.service.errors import (
    InvalidArgument,
    JudgeListBusy,
    NoOutcomeStore,
    NotFound,
    NotReady,
    PermissionDenied,
    ServiceError,
    StoreUnavailable,
    echo,
)
from lmroute.service.target_sync import TargetChangesUnread, TargetSync
from lmroute.service.targets import DEFAULT_TENANT, TENANT_RE, TenantTargets
from lmroute.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from lmroute.adapt.to_judge import JudgePicks

__all__ = ["ADMIN_SERVICE_NAME", "AdminServicer"]

ADMIN_SERVICE_NAME: str = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name

# (budget, window, since_ms, callers, tenant_view, seed) -> (picks, the serving bundle's version)
JudgeFn = Callable[[int, int, int, Sequence[str], bool, int], "tuple[JudgePicks, str]"]

_MAX_PATH_CHARS = 4096
MAX_TARGET_CHANGES = 256  # changes in one SetTargets call
MAX_JUDGE_BUDGET = 1000  # decisions one DecisionsToJudge call picks
MAX_JUDGE_WINDOW = 100_000  # decisions it looks at
DEFAULT_JUDGE_WINDOW = 500
MAX_JUDGE_CALLERS = 64
_log = structlog.get_logger("lmroute.admin")


def _unix_ms(t: float) -> int:
    return round(t * 1000)


class _Turns:
    """One holder at a time; waiting operator calls take their turn before waiting tenant calls, first
    come first within each (a tenant has at most one call waiting: JUDGE_LIST_BUSY)."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (0 operator / 1 tenant, arrival, turn)
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, *, operator: bool) -> AsyncIterator[None]:
        if self._held:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (0 if operator else 1, next(self._arrivals), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():  # given the turn as it left: pass it on
                    self._pass()
                raise
        else:
            self._held = True
        try:
            yield
        finally:
            self._pass()

    def _pass(self) -> None:
        """The turn to the first caller still waiting, else free."""
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # a caller that left is skipped
                granted.set_result(None)
                return
        self._held = False


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Implements lmroute.v1.AdminService over a BundleSwapper attached once the first bundle serves."""

    def __init__(
        self,
        targets: TenantTargets | None = None,
        *,
        max_message_bytes: int = 4 * 1024 * 1024,
        tenants: Collection[str] = (),
        bound_tenants: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.swapper: BundleSwapper | None = None
        self._swaps: set[asyncio.Future[Any]] = set()  # swaps running, kept referenced until done
        self.tenants = frozenset(tenants)  # the tenants callers may name (--tenants); empty: any
        self.bound_tenants = bound_tenants  # the tenants the tokens in use are bound to (honoured too)
        self.targets = targets  # the tenants' share targets (the RouterServicer's); None = none set
        self.restored = 0  # share-controller decisions replayed from the outcome store at startup
        self.target_sync: TargetSync | None = None  # where SetTargets records its changes (store_targets)
        # DecisionsToJudge's picks (JudgeFn), set when the server has a store; blocking (run on a worker thread)
        self.judge: JudgeFn | None = None
        self.max_message_bytes = max_message_bytes  # the largest answer the server sends
        self._judging = _Turns()  # one DecisionsToJudge call at a time, the operator's first
        self._judging_tenants: set[str] = set()  # tenants with a call being answered or waiting
        self._judge_thread: concurrent.futures.ThreadPoolExecutor | None = None  # made on the first call

    def honours(self, tenant: str) -> bool:
        """Whether a call could speak for `tenant` here: any with no --tenants list, else one it lists, a
        bound token's, or the default tenant."""
        return not self.tenants or tenant in self.tenants or tenant == DEFAULT_TENANT or tenant in self.bound_tenants()

    def attach(self, swapper: BundleSwapper) -> None:
        """Start answering with this swapper (called after the first load)."""
        self.swapper = swapper

    def close(self) -> None:
        """Let the judge-list thread end (a list being made is dropped with the server)."""
        if self._judge_thread is not None:
            self._judge_thread.shutdown(wait=False, cancel_futures=True)

    def _ready(self) -> BundleSwapper:
        if AUTH_TENANT.get() is not None:
            raise PermissionDenied("AdminService: the token is bound to a tenant; administering takes an unbound one")
        return self._loaded()

    def _loaded(self) -> BundleSwapper:
        if self.swapper is None:
            raise NotReady("bundle not loaded and warmed yet")
        return self.swapper

    async def ReloadBundle(
        self, request: admin_pb2.ReloadBundleRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadBundleResponse:
        swapper = self._ready()
        if len(request.path) > _MAX_PATH_CHARS:
            raise InvalidArgument(
                f"path: {len(request.path)} characters (limit {_MAX_PATH_CHARS})", reason="PATH_TOO_LONG"
            )
        if "\0" in request.path:
            raise InvalidArgument("path: contains a NUL character", reason="INVALID_PATH")
        swap = asyncio.ensure_future(
            swapper.reload(
                Path(request.path) if request.path else None,
                allow_dropped_routers=request.allow_dropped_routers,
                if_version=request.if_version,
            )
        )
        self._swaps.add(swap)
        swap.add_done_callback(self._swap_done)
        # shielded: a caller that leaves (its deadline, a cancel) does not cut the swap off mid-load; it
        # finishes or is refused, logged and counted, and GetBundle says which
        report = await asyncio.shield(swap)
        return admin_pb2.ReloadBundleResponse(
            previous_version=report.previous.version,
            bundle_version=report.current.version,
            path=str(report.current.path),
            resolved_path=str(report.current.resolved_path),
            load_seconds=report.load_s,
            warm_seconds=report.warm_s,
            switch_seconds=report.switch_s,
            release_seconds=report.release_s,
        )

    def _swap_done(self, swap: asyncio.Future[Any]) -> None:
        self._swaps.discard(swap)
        if swap.cancelled() or swap.exception() is None:
            return
        if not isinstance(swap.exception(), ServiceError):  # a refusal is logged by the swapper already
            _log.error("bundle_swap_failed", error=repr(swap.exception()))

    async def GetBundle(
        self, request: admin_pb2.GetBundleRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetBundleResponse:
        swapper = self._ready()
        serving, counters = swapper.serving, swapper.counters
        loading = swapper.loading_path
        return admin_pb2.GetBundleResponse(
            bundle_version=serving.version,
            path=str(serving.path),
            resolved_path=str(serving.resolved_path),
            loaded_unix_ms=_unix_ms(serving.loaded_at),
            routers=list(serving.routers),
            swaps=counters.swaps,
            refused=counters.refused,
            last_refusal=counters.last_refusal,
            last_refusal_unix_ms=_unix_ms(counters.last_refusal_at),
            loading_path="" if loading is None else str(loading),
            watch_interval_seconds=swapper.watch_interval_s,
            default_router=serving.catalog.default_router,
            default_quality_router=serving.catalog.default_quality_router,
            tenant_routers=serving.catalog.tenant_routers,
            tenant_quality_routers=serving.catalog.tenant_quality_routers,
            watch_problem=swapper.watch_problem,
        )

    async def ListShareTargets(
        self, request: admin_pb2.ListShareTargetsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListShareTargetsResponse:
        self._ready()
        response = admin_pb2.ListShareTargetsResponse(restored_decisions=self.restored)
        if self.targets is None:
            return response
        for tenant, share in sorted(self.targets.targets.items()):
            response.targets.add(tenant=tenant, strong_share=share)
        for held in self.targets.states():
            st = held.state
            response.controllers.add(
                tenant=held.tenant,
                router=held.router,
                target=st.target,
                realised=st.realised,
                threshold=st.threshold,
                decisions=st.decisions,
                deficit=st.deficit,
                bundle_version=held.bundle_version,
            )
        return response

    async def ListSpendTargets(
        self, request: admin_pb2.ListSpendTargetsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListSpendTargetsResponse:
        self._ready()
        response = admin_pb2.ListSpendTargetsResponse(restored_decisions=self.restored)
        if self.targets is None:
            return response
        for tenant, usd in sorted(self.targets.spends.items()):
            response.targets.add(tenant=tenant, spend_per_1k_usd=usd)
        for tenant, router, spend in self.targets.spend_states():
            response.controllers.add(
                tenant=tenant,
                router=router,
                target_per_1k_usd=spend.target_per_1k,
                realised_per_1k_usd=spend.realised_per_1k,
                cost_weight=spend.cost_weight,
                decisions=spend.decisions,
                deficit_usd=spend.deficit,
            )
        return response

    async def SetTargets(
        self, request: admin_pb2.SetTargetsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetTargetsResponse:
        self._ready()
        targets = self.targets
        if targets is None:
            raise NotReady("the server holds no target table")
        if not request.changes:  # as the command line: a call that changes nothing is a mistake, not a read
            raise InvalidArgument(
                "changes: at least one change required (ListShareTargets and ListSpendTargets read the targets)",
                reason="NO_CHANGE",
            )
        if len(request.changes) > MAX_TARGET_CHANGES:
            raise InvalidArgument(
                f"changes: {len(request.changes)} changes (limit {MAX_TARGET_CHANGES})", reason="TOO_MANY_CHANGES"
            )

        def checked() -> list[TargetChange]:  # every change checked against the targets as the earlier ones leave them
            shares, spends = set(targets.targets), set(targets.spends)
            for j, change in enumerate(request.changes):
                where = f"changes[{j}]"
                if not TENANT_RE.match(change.tenant):
                    raise InvalidArgument(
                        f"{where}.tenant: {echo(change.tenant)} is not 1-64 of [A-Za-z0-9._-]", reason="INVALID_TENANT"
                    )
                kind = change.WhichOneof("change")
                if not self.honours(change.tenant):
                    if kind is not None and not kind.startswith("remove_"):  # no call could ever use it
                        raise InvalidArgument(
                            f"{where}.tenant: {change.tenant} is not one of the tenants this server honours (its "
                            f"--tenants list, and the tenants of bound tokens) nor {DEFAULT_TENANT}",
                            reason="UNKNOWN_TENANT",
                        )
                if kind is None:
                    why = "set one of strong_share, spend_per_1k_usd, remove_strong_share, remove_spend"
                    raise InvalidArgument(f"{where}: {why}", reason="NO_CHANGE")
                value = getattr(change, kind)
                check = {"strong_share": targets.check_share, "spend_per_1k_usd": targets.check_spend}.get(kind)
                try:
                    if check is not None:
                        check(value)
                except ValueError as exc:
                    raise InvalidArgument(f"{where}.{kind}: {exc}", reason="OUT_OF_RANGE") from None
                if kind.startswith("remove_") and not value:
                    raise InvalidArgument(f"{where}.{kind}: must be true", reason="NO_CHANGE")
                held = shares if kind in ("strong_share", "remove_strong_share") else spends
                if kind.startswith("remove_"):
                    if change.tenant not in held:
                        what = "strong-share" if held is shares else "spend"
                        raise NotFound(f"{where}: tenant {change.tenant} has no {what} target", reason="NO_TARGET")
                    held.discard(change.tenant)
                else:
                    held.add(change.tenant)
            return [_stored(change) for change in request.changes]

        sync = self.target_sync
        if sync is None:  # checked and applied with no await between: no other call comes in between
            for stored in checked():
                targets.apply(stored)
        else:  # caught up with what every replica has stored, checked, stored, applied: one turn of its lock
            try:
                await sync.record(checked)
            except ServiceError:  # a change refused
                raise
            except TargetChangesUnread as exc:
                raise StoreUnavailable(f"target changes cannot be read from the store ({exc})") from exc
            except Exception as exc:
                raise StoreUnavailable(
                    f"target changes cannot be stored ({failure_cause(exc)}); nothing changed"
                ) from exc
        for change in request.changes:
            done = str(change.WhichOneof("change"))
            _log.info("target_set", tenant=change.tenant, change=done, value=float(getattr(change, done)))
        response = admin_pb2.SetTargetsResponse()
        for tenant, share in sorted(targets.targets.items()):
            response.share_targets.add(tenant=tenant, strong_share=share)
        for tenant, usd in sorted(targets.spends.items()):
            response.spend_targets.add(tenant=tenant, spend_per_1k_usd=usd)
        return response

    async def DecisionsToJudge(
        self, request: admin_pb2.DecisionsToJudgeRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DecisionsToJudgeResponse:
        tenant = AUTH_TENANT.get()  # a bound token: its own tenant's decisions, judged by its own outcomes
        callers = list(request.callers)
        if tenant is not None:
            other = next((c for c in callers if c != tenant), None)
            if other is not None:
                raise PermissionDenied(
                    f"callers: the token is bound to tenant {tenant}; it may ask for that tenant's decisions "
                    f"only (got {echo(other)})"
                )
            callers = [tenant]
        self._loaded()
        if self.judge is None:
            raise NoOutcomeStore("no outcome store: start the server with --store to pick decisions to judge")
        window = _judge_window(request)
        args = (request.budget, window, request.since_ms, callers, tenant is not None, request.seed)
        if tenant is None:
            picks, version, seconds = await self._judge_list(self.judge, args, operator=True)
        else:
            if tenant in self._judging_tenants:
                raise JudgeListBusy(
                    f"tenant {tenant} has a DecisionsToJudge call being answered or waiting: one at a time a tenant"
                )
            self._judging_tenants.add(tenant)
            try:
                picks, version, seconds = await self._judge_list(self.judge, args, operator=False)
            finally:
                self._judging_tenants.discard(tenant)
        response = _judge_answer(picks, version, request.since_ms, self.max_message_bytes)
        _log.info(
            "judge_list",
            tenant=tenant,
            picked=len(picks.decisions),
            window=picks.window,
            judged=picks.judged,
            skipped=picks.skipped,
            seconds=seconds,
        )
        return response

    async def _judge_list(
        self, judge: JudgeFn, args: tuple[Any, ...], *, operator: bool
    ) -> tuple[JudgePicks, str, float]:
        """(picks, bundle version, seconds) of one call, made on the judge thread when its turn comes (an
        operator's call before the tenants' waiting ones); a caller that leaves holds the next call until
        its thread is done."""
        async with self._judging.turn(operator=operator):
            t0 = time.perf_counter()
            if self._judge_thread is None:  # nice 19: measured, serving keeps its rate while a list is made
                self._judge_thread = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="lmroute-judge", initializer=lowest_cpu_priority
                )
            work = asyncio.get_running_loop().run_in_executor(self._judge_thread, judge, *args)
            try:
                picks, version = await asyncio.shield(work)
            except asyncio.CancelledError:  # the caller left: the next call still waits for this one's thread
                await asyncio.wait([work])
                raise
            except StoreError as exc:  # the store cannot be opened or read (the message names it)
                _log.warning("judge_list_failed", error=str(exc))
                raise StoreUnavailable(f"the outcome store cannot be read: {exc}") from exc
        return picks, version, round(time.perf_counter() - t0, 3)


def _judge_window(request: admin_pb2.DecisionsToJudgeRequest) -> int:
    """A DecisionsToJudge request's window (0: the default) once its fields are checked; InvalidArgument
    naming the first bad one."""
    window = request.window or DEFAULT_JUDGE_WINDOW
    for name, value, most in (("budget", request.budget, MAX_JUDGE_BUDGET), ("window", window, MAX_JUDGE_WINDOW)):
        if not 1 <= value <= most:
            raise InvalidArgument(f"{name}: must be in [1, {most}] (got {value})", reason="OUT_OF_RANGE")
    if request.since_ms < 0:
        raise InvalidArgument(f"since_ms: must be >= 0 (got {request.since_ms})", reason="OUT_OF_RANGE")
    if len(request.callers) > MAX_JUDGE_CALLERS:
        raise InvalidArgument(
            f"callers: {len(request.callers)} names (limit {MAX_JUDGE_CALLERS})", reason="OUT_OF_RANGE"
        )
    for j, caller in enumerate(request.callers):
        if not TENANT_RE.match(caller):
            raise InvalidArgument(
                f"callers[{j}]: {echo(caller)} is not 1-64 of [A-Za-z0-9._-]", reason="INVALID_TENANT"
            )
    return window


def _judge_answer(picks: JudgePicks, version: str, since_ms: int, max_bytes: int) -> admin_pb2.DecisionsToJudgeResponse:
    """The DecisionsToJudge answer of `picks`; InvalidArgument (RESPONSE_TOO_LARGE) when it would not fit
    one message of `max_bytes`."""
    response = admin_pb2.DecisionsToJudgeResponse(
        judged=picks.judged,
        window=picks.window,
        skipped=picks.skipped,
        next_since_ms=since_ms if picks.newest_ms is None else picks.newest_ms + 1,
        bundle_version=version,
    )
    room = max_bytes - response.ByteSize()
    for n, d in enumerate(picks.decisions):
        pick = admin_pb2.DecisionToJudge(
            decision_id=d.decision_id,
            time_ms=d.time_ms,
            prompt=d.prompt_text or "",
            strong_model=d.strong_model,
            weak_model=d.weak_model,
        )
        room -= pick.ByteSize() + 4  # its tag and length, at most 4 bytes here
        if room < 0:
            raise InvalidArgument(
                f"budget: the {len(picks.decisions)} picks with their prompts would not fit one message of "
                f"max_message_bytes ({max_bytes} bytes; the newest {n} of them would): ask for fewer",
                reason="RESPONSE_TOO_LARGE",
            )
        response.decisions.append(pick)
    return response


def _stored(change: admin_pb2.TargetChange) -> TargetChange:
    """A checked SetTargets change as the store keeps it and TenantTargets.apply takes it."""
    kind = change.WhichOneof("change")
    if kind == "strong_share":
        return TargetChange(change.tenant, "strong_share", change.strong_share)
    if kind == "spend_per_1k_usd":
        return TargetChange(change.tenant, "spend", change.spend_per_1k_usd)
    return TargetChange(change.tenant, "spend" if kind == "remove_spend" else "strong_share", None)
