"""Hot swap of the router bundle in a running server: load, validate and warm a candidate in the
background, then switch the scheduler and the transport to it between two batches.

`BundleSwapper.reload(path)` (the AdminService ReloadBundle RPC, or the watcher) runs the steps:

1. one swap at a time: a second request while one is loading is SwapInProgress (ABORTED), at once;
2. on the swap thread (a dedicated one, so the event loop keeps serving): resolve `path`'s symlinks once
   (a symlink flipped during the load cannot mix two bundles' files), load it with the serving
   settings (the server's scorer factory with only the bundle path replaced: device, ONNX threads,
   chunk size, --bundle-public-key, plug-ins), which validates every file (checksums, signature);
3. check that it is compatible: it serves every router name the serving bundle serves, and names a
   default router (and default quality router) where the serving one does, so names that clients use,
   and calls that name none, stay valid (it may add routers; its models, encoder and calibration may
   differ);
4. warm it on the swap thread (when the server warms at start);
5. switch, in one synchronous step on the event loop: `Scheduler.swap` (calls admitted from now on go
   to the new scorer, each call admitted before finishes on the scorer it was admitted with) and
   `RouterServicer.attach` with the new catalog (router names, calibration and the answers'
   bundle_version). Nothing awaits between the two, so no call sees the new catalog with the old scorer
   or the reverse. The measured service rate is kept when the encoder is the same (its cost dominates)
   and measured again otherwise.

With `low_priority` the swap thread runs at the lowest CPU priority (Linux: nice 19, that thread
only), so loading and warming take the CPU the serving threads leave instead of competing with them: a
swap on a busy core then takes longer, and the calls being served do not queue behind it. Threads the
load creates inherit that priority and an unprivileged process cannot raise it again, so the server
asks for it only where loading creates none that serve later (CPU, one ONNX Runtime intra-op thread:
more make ONNX Runtime start its pool of scoring threads during the load).

A candidate that fails step 2, 3 or 4 is BundleRefused (FAILED_PRECONDITION) with the loader's message
(BUNDLE_INVALID), the missing routers (BUNDLE_INCOMPATIBLE) or the warm-up error
(BUNDLE_WARMUP_FAILED); the serving bundle keeps serving, `counters` records it and one log line
(`bundle_refused`) says why. The old scorer is dropped when its last call is answered, and the heap
memory freed by then is handed back to the system after the switch (glibc's malloc_trim).

`watch(interval_s)` polls the serving bundle's `manifest.json` and reloads when its bundle_version
differs from the serving one (a deployment that flips a symlink to a new bundle directory), reading on
a daemon thread of its own (a read a hung volume holds blocks neither swaps nor the process's exit). A
refused candidate is not tried again until what the path shows changes: its directory (symlinks
resolved), its manifest's bytes (not only its claimed version, since a tampered copy can claim a good
version), or the size, time or inode of a file the manifest lists (a bundle copied in place file by file
is tried again once its last file lands). Whatever a poll cannot read, or a reload raises that is not a
refusal, is said (`watch_problem`, logged once per problem) and the watch goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from lmroute.bundle.files import read_regular_file
from lmroute.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES
from lmroute.service.cpus import lowest_cpu_priority
from lmroute.service.errors import BundleRefused, Draining, SwapInProgress, VersionMoved
from lmroute.service.scheduler import Scheduler
from lmroute.service.scorer_api import Catalog, Scorer

__all__ = [
    "Attachable",
    "BundleSwapper",
    "ScorerLoader",
    "ServingBundle",
    "SwapCounters",
    "SwapReport",
    "manifest_version",
    "read_candidate",
]

_log = structlog.get_logger("lmroute.swap")

_T = TypeVar("_T")
ScorerLoader = Callable[[Path], Scorer[Any]]
"""Loads and validates the bundle at a path with the serving settings (runs on the swap thread)."""


class Attachable(Protocol):
    """The transport's view of what is served (RouterServicer): set again after each swap."""

    def attach(self, scheduler: Scheduler[Any], catalog: Catalog) -> None: ...


@dataclass(frozen=True)
class ServingBundle:
    """The bundle that serves new calls."""

    version: str
    path: Path  # as configured or asked for
    resolved_path: Path  # what was loaded: `path` with its symlinks resolved
    routers: tuple[str, ...]
    loaded_at: float  # time.time() when it started serving
    catalog: Catalog  # what ListRouters reports of it (its default and tenant routers among the rest)

    @property
    def encoder_id(self) -> str:
        """Catalog.encoder_id: the same id means the same encoder cost."""
        return self.catalog.encoder_id


@dataclass(frozen=True)
class SwapReport:
    """One completed swap: what served before and after, and the time of each step (seconds)."""

    previous: ServingBundle
    current: ServingBundle
    load_s: float
    warm_s: float
    switch_s: float
    release_s: float = 0.0  # freeing the previous bundle right after the switch (see _reload)


@dataclass
class SwapCounters:
    """Swaps and refusals since the process started (read them; the swapper writes them)."""

    swaps: int = 0
    refused: int = 0
    last_refusal: str = ""  # the refusal's message
    last_refusal_at: float = 0.0  # time.time() of the last refusal, 0.0 when none


@dataclass
class _Loading:
    path: Path
    since: float = field(default_factory=time.monotonic)


class BundleSwapper:
    """Swaps the scheduler's scorer for a freshly loaded bundle; one swap at a time. Event-loop only."""

    def __init__(
        self,
        scheduler: Scheduler[Any],
        transport: Attachable,
        load: ScorerLoader,
        serving: ServingBundle,
        *,
        warmup: bool = True,
        low_priority: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.transport = transport
        self._load = load
        self.serving = serving
        self.warmup = warmup
        self.counters = SwapCounters()
        self.watch_interval_s = 0.0
        self._loading: _Loading | None = None
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self.watched_path: Path | None = None  # the path the watch polls (set by `watch`)
        self.watch_problem = ""  # why the watched path could not be read at the last poll ("" when it could)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="lmroute-swap", initializer=lowest_cpu_priority if low_priority else None
        )

    @classmethod
    def serving_now(cls, scorer: Scorer[Any], path: Path) -> ServingBundle:
        """The ServingBundle of a scorer loaded from `path` and serving from now on."""
        return ServingBundle(
            version=scorer.version,
            path=path,
            resolved_path=path.resolve(),
            routers=scorer.router_names,
            loaded_at=time.time(),
            catalog=scorer.catalog(),
        )

    @property
    def loading_path(self) -> Path | None:
        """The candidate being loaded now; None when no swap is in progress."""
        return None if self._loading is None else self._loading.path

    async def reload(
        self, path: Path | None = None, *, allow_dropped_routers: bool = False, if_version: str = ""
    ) -> SwapReport:
        """Load, check and warm the bundle at `path` (None: the serving path again), then switch to it;
        with `allow_dropped_routers` a candidate lacking routers served now is taken too (a rollback);
        with `if_version` only if that version serves (swaps are one at a time: none can come between).

        Raises SwapInProgress while another swap runs, VersionMoved when `if_version` does not serve,
        BundleRefused for a candidate that fails (the serving bundle is unchanged), Draining after
        `close`."""
        if self._closed:
            raise Draining("server is shutting down")
        if if_version and if_version != self.serving.version:
            raise VersionMoved(
                f"if_version: {self.serving.version} serves, not {if_version} (another swap came first); the "
                "serving bundle is left as it is"
            )
        target = self.serving.path if path is None else path
        if self._loading is not None:
            since = time.monotonic() - self._loading.since
            raise SwapInProgress(
                f"path: a bundle swap is already in progress (loading {self._loading.path} for {since:.1f} s); "
                "retry after it finishes"
            )
        self._loading = _Loading(target)
        try:
            return await self._reload(target, allow_dropped_routers)
        finally:
            self._loading = None

    async def _reload(self, path: Path, allow_dropped_routers: bool = False) -> SwapReport:
        loop = asyncio.get_running_loop()
        _log.info("bundle_swap_started", path=str(path), serving=self.serving.version)
        t0 = time.perf_counter()
        try:
            resolved, scorer, catalog = await loop.run_in_executor(self._pool, self._load_candidate, path)
        except Exception as exc:  # BundleError, ConfigError, OSError, an ONNX Runtime error: all refuse it
            why = f"{exc}"
            del exc  # its traceback holds the loader's frames and what they had loaded
            raise await self._refused(path, why, "BUNDLE_INVALID") from None
        load_s = time.perf_counter() - t0
        missing = [repr(name) for name in self.serving.routers if name not in scorer.router_names]
        served = self.serving.catalog
        for what, now, then in (
            ("default_router", served.default_router, catalog.default_router),
            ("default_quality_router", served.default_quality_router, catalog.default_quality_router),
        ):
            if now and not then:  # calls that name no router rely on it as others rely on a router's name
                missing.append(f"a {what} (calls naming no router are served by {now} now)")
        if missing and allow_dropped_routers:
            _log.warning("bundle_swap_drops_routers", path=str(path), dropped=missing)
        elif missing:
            has = ", ".join(scorer.router_names)
            del scorer, catalog  # not held by the refusal (its traceback holds this frame)
            raise await self._refused(
                path,
                f"routers: the candidate lacks {', '.join(missing)}, served now (candidate has: {has}); clients "
                "relying on them would be refused",
                "BUNDLE_INCOMPATIBLE",
            )
        if self._closed:
            raise Draining("server is shutting down: the loaded bundle was not swapped in")
        warm_s = 0.0
        if self.warmup:
            t1 = time.perf_counter()
            failed = ""
            try:
                await loop.run_in_executor(self._pool, scorer.warmup)
            except Exception as exc:
                failed = f"warm-up failed: {exc!r}"
            if failed:
                del scorer, catalog
                raise await self._refused(path, failed, "BUNDLE_WARMUP_FAILED")
            warm_s = time.perf_counter() - t1
        if self._closed:
            raise Draining("server is shutting down: the loaded bundle was not swapped in")
        t2 = time.perf_counter()
        previous = self.serving
        current = ServingBundle(scorer.version, path, resolved, scorer.router_names, time.time(), catalog)
        same_encoder = bool(current.encoder_id) and current.encoder_id == previous.encoder_id
        old = self.scheduler.swap(scorer, keep_rate=same_encoder)  # no await from here to the attach
        self.transport.attach(self.scheduler, catalog)
        self.serving = current
        switch_s = time.perf_counter() - t2
        # The old bundle is freed here when no call holds it any more, else with the last call that does.
        # Freeing its ONNX sessions and arrays holds the GIL on any thread, so it is timed, not moved.
        t3 = time.perf_counter()
        del old
        release_s = time.perf_counter() - t3
        self.counters.swaps += 1
        with contextlib.suppress(RuntimeError):  # the swap thread is gone: the server is stopping
            await loop.run_in_executor(self._pool, _return_freed_memory)
        _log.info(
            "bundle_swapped",
            previous=previous.version,
            version=current.version,
            path=str(path),
            resolved_path=str(resolved),
            load_s=round(load_s, 3),
            warm_s=round(warm_s, 3),
            switch_us=round(switch_s * 1e6, 1),
            release_ms=round(release_s * 1e3, 3),
            kept_rate=same_encoder,
        )
        return SwapReport(previous, current, load_s, warm_s, switch_s, release_s)

    def _load_candidate(self, path: Path) -> tuple[Path, Scorer[Any], Catalog]:
        """On the swap thread: resolve the path once, load and validate the bundle, read its catalog."""
        resolved = path.resolve()
        scorer = self._load(resolved)
        return resolved, scorer, scorer.catalog()

    async def _refused(self, path: Path, message: str, reason: str) -> BundleRefused:
        """Count and log a refused candidate, hand the memory it took back to the system (as after a
        swap: refused candidates, one after another, grew the process by a bundle each); the error to
        raise (no candidate in reach of it)."""
        refusal = self._refuse(path, message, reason)
        with contextlib.suppress(RuntimeError):  # the swap thread is gone: the server is stopping
            await asyncio.get_running_loop().run_in_executor(self._pool, _return_freed_memory)
        return refusal

    def _refuse(self, path: Path, message: str, reason: str) -> BundleRefused:
        """Count and log a refused candidate; the error to raise."""
        text = f"bundle {path} refused ({self.serving.version} keeps serving): {message}"
        self.counters.refused += 1
        self.counters.last_refusal = text
        self.counters.last_refusal_at = time.time()
        _log.warning("bundle_refused", path=str(path), reason=reason, error=message, serving=self.serving.version)
        return BundleRefused(text, reason=reason)

    # -- watching the serving path ---------------------------------------------------------------------

    def watch(self, interval_s: float) -> None:
        """Poll the serving path's manifest.json every `interval_s` seconds (on the running loop).

        The path watched is the one serving when the watch starts (the server's --bundle, a symlink a
        deployment flips): a bundle swapped in by ReloadBundle from another path serves until that path
        shows another bundle, and the watch goes on watching it. A candidate seen there is loaded once:
        refused, it is tried again only when the path shows another."""
        if interval_s <= 0 or self._watcher is not None:
            return
        self.watch_interval_s = interval_s
        self.watched_path = self.serving.path
        self._watcher = asyncio.get_running_loop().create_task(self._watch(interval_s), name="lmroute-bundle-watch")

    async def _watch(self, interval_s: float) -> None:
        path = self.watched_path
        assert path is not None  # set by `watch`
        unreadable = ""
        seen: str | None = None  # the identity the path showed when last acted on (None: not read yet)
        first = True  # read at once: what the path shows when the watch starts is what serves
        polling: asyncio.Future[tuple[str, str]] | None = None
        while not self._closed:
            if not first:
                await asyncio.sleep(interval_s)
            first = False
            try:
                if polling is None or polling.done():  # a read still hanging (a stuck volume) is waited on
                    polling = _on_daemon_thread(read_candidate, path)
                version, identity = await asyncio.wait_for(asyncio.shield(polling), interval_s)
            except TimeoutError:
                self._watch_failed(f"{path / MANIFEST_NAME}: not read within {interval_s:g} s (still waiting)")
                continue
            except (OSError, ValueError) as exc:
                if str(exc) != unreadable:  # once per distinct problem, not every poll
                    unreadable = str(exc)
                    _log.warning("bundle_watch_unreadable", path=str(path), error=unreadable)
                self.watch_problem = unreadable
                continue
            except Exception as exc:  # whatever else: said, and the watch goes on
                self._watch_failed(f"{type(exc).__name__}: {exc}")
                continue
            unreadable = self.watch_problem = ""
            if identity == seen or self._loading is not None:
                continue
            if version == self.serving.version:  # serving it already (from the start, or reloaded by hand)
                seen = identity
                continue
            _log.info("bundle_watch_changed", path=str(path), serving=self.serving.version, found=version)
            try:
                await self.reload(path)
                seen = identity
            except BundleRefused:
                seen = identity  # logged and counted; tried again when the path shows another
            except (SwapInProgress, Draining):
                pass
            except Exception as exc:  # a reload that failed otherwise: said; tried again at the next poll
                self._watch_failed(f"reload failed: {type(exc).__name__}: {exc}")

    def _watch_failed(self, problem: str) -> None:
        if problem != self.watch_problem:
            _log.warning("bundle_watch_failed", path=str(self.watched_path), error=problem)
        self.watch_problem = problem

    async def close(self) -> None:
        """Stop watching; a swap still loading finishes on its thread but is not switched in."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)


def _on_daemon_thread(fn: Callable[[Path], _T], path: Path) -> asyncio.Future[_T]:
    """fn(path) on a daemon thread of its own: a read a hung volume holds neither blocks the swap thread
    nor keeps the process from exiting."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(path)
        except BaseException as exc:  # handed to the loop, raised where the read is awaited
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="lmroute-bundle-watch-read", daemon=True).start()
    return done


def _return_freed_memory() -> None:
    """glibc only: hand the heap pages freed with the old bundle back to the system (malloc_trim, on the
    swap thread; ctypes releases the GIL for the call), so the resident size after a swap is about one
    bundle's, not two; without it the allocator keeps them for the next candidate. Elsewhere: nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def manifest_version(path: Path) -> str:
    """The bundle_version field of `path`/manifest.json (read only: the loader validates the rest);
    OSError when it cannot be read, ValueError when it holds no version."""
    return read_candidate(path)[0]


def read_candidate(path: Path) -> tuple[str, str]:
    """What `path` shows now: the bundle_version its manifest.json claims, and an identity (the
    directory with symlinks resolved, a hash of the manifest's bytes, and the size, modification time
    and inode of each file the manifest lists, so a bundle copied in place file by file is seen again
    once its last file lands). OSError when the manifest cannot be read, ValueError when it holds no
    version (a manifest that is not a regular file or is over the loader's limit, which a read could
    wait on or fill memory with, is a ValueError too: a BundleError)."""
    resolved = path.resolve()
    raw = read_regular_file(resolved / MANIFEST_NAME, str(resolved / MANIFEST_NAME), limit=MAX_MANIFEST_BYTES)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path / MANIFEST_NAME}: not valid JSON (nested too deeply)") from None
    version = data.get("bundle_version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version:
        raise ValueError(f"{path / MANIFEST_NAME}: no bundle_version")
    files = data.get("files")
    stamps = []
    for rel in sorted(files) if isinstance(files, dict) else ():
        try:
            st = os.stat(resolved / str(rel))
            stamps.append(f"{rel}={st.st_size},{st.st_mtime_ns},{st.st_ino}")
        except (OSError, ValueError):
            stamps.append(f"{rel}=missing")
    listed = hashlib.sha256("\n".join(stamps).encode("utf-8", "surrogatepass")).hexdigest()
    return version, f"{resolved}:{hashlib.sha256(raw).hexdigest()}:{listed}"
