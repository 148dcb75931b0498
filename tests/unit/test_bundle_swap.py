"""Hot swap mechanics against FakeScorer: `Scheduler.swap` (each call finishes on the scorer it was
admitted with, a batch of both is scored as two, versions name the scorer that scored, the measured
rate) and `BundleSwapper` (refusals with the loader's message, compatibility, one swap at a time, the
transport re-attached, the path watcher). Concurrency is gated with events, not sleeps."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lmroute.bundle.errors import BundleError
from lmroute.service.bundle_swap import BundleSwapper, manifest_version
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.errors import (
    BundleRefused,
    Code,
    ConfigError,
    Draining,
    SwapInProgress,
    VersionMoved,
    status_of,
)
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import ItemResult, Scheduler
from lmroute.service.scorer_api import Scorer
from lmroute.service.servicer import RouterServicer


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def make(scorer: FakeScorer, **kw: int) -> Scheduler[Any]:
    policy = dict(max_batch_size=32, max_wait_us=0, max_batch_tokens=100_000, max_queue=256, queue_timeout_ms=5000)
    policy.update(kw)
    sched: Scheduler[Any] = Scheduler(scorer, BatchPolicy(**policy))
    sched.start()
    return sched


def texts_of(scorer: FakeScorer) -> list[str]:
    return [t for call in scorer.calls for t in call]


def test_calls_admitted_before_a_swap_finish_on_the_old_scorer() -> None:
    """A running call, a queued call (tokenised by the old scorer) and a call admitted after the swap:
    the first two are scored by the old scorer, the third by the new; the batch holding the queued old
    call and the new call is scored as two; each result names the scorer that scored it."""

    async def body() -> None:
        old, new = FakeScorer(version="old"), FakeScorer(version="new")
        old.block()
        sched = make(old)
        running = asyncio.create_task(sched.score(["running on old"]))
        await asyncio.to_thread(old.entered.wait, 10)
        queued = asyncio.create_task(sched.score(["queued on old", "second queued on old"]))
        await until(lambda: sched.stats.admitted == 3)
        assert sched.swap(new) is old
        assert sched.scorer is new and sched.stats.swaps == 1
        after = asyncio.create_task(sched.score(["admitted after the swap"]))
        await until(lambda: sched.stats.admitted == 4)
        old.release()
        outs = [*await running, *await queued, *await after]
        assert all(isinstance(o, ItemResult) for o in outs)
        assert [o.version for o in outs if isinstance(o, ItemResult)] == ["old", "old", "old", "new"]
        assert texts_of(old) == ["running on old", "queued on old", "second queued on old"]
        assert new.calls == [["admitted after the swap"]]  # the mixed batch was split by scorer
        assert "queued on old" in old.counted and "queued on old" not in new.counted
        assert new.counted == ["admitted after the swap"] and new.scored_without_tokens == []
        assert sched.stats.batches == 2 and sched.stats.items_scored == 4
        await sched.close()

    run(body)


def test_the_old_scorer_is_released_once_its_last_call_is_answered() -> None:
    async def body() -> None:
        old = FakeScorer(version="old")
        old.block()
        sched = make(old)
        pending = asyncio.create_task(sched.score(["answered by the old scorer", "after the swap"]))
        await asyncio.to_thread(old.entered.wait, 10)
        ref = weakref.ref(old)
        assert sched.swap(FakeScorer(version="new")) is old
        old.release()
        del old
        outs = await pending
        assert [o.version for o in outs if isinstance(o, ItemResult)] == ["old", "old"]
        del outs, pending
        gc.collect()
        assert ref() is None, "the swapped-out scorer is still referenced"
        await sched.close()

    run(body)


def test_a_call_tokenising_during_the_swap_keeps_its_scorer() -> None:
    """Admission pins the scorer before the tokenising thread runs: a swap while the call is being
    tokenised does not move it to the new scorer."""

    async def body() -> None:
        gate = threading.Event()

        class SlowTokenizer(FakeScorer):
            def tokenize(self, texts: Any) -> Any:
                gate.wait(10)
                return super().tokenize(texts)

        old, new = SlowTokenizer(version="old"), FakeScorer(version="new")
        old.block()
        sched = make(old)
        running = asyncio.create_task(sched.score(["keeps the scorer busy"]))
        await asyncio.to_thread(old.entered.wait, 10)
        tokenising = asyncio.create_task(sched.score(["being tokenised", "by the old scorer"]))
        await until(lambda: sched.in_flight == 3)
        sched.swap(new)
        gate.set()
        old.release()
        outs = await tokenising
        await running
        assert [o.version for o in outs if isinstance(o, ItemResult)] == ["old", "old"]
        assert new.calls == []
        await sched.close()

    run(body)


def test_rate_is_kept_only_when_asked_and_fed_only_by_the_current_scorer() -> None:
    async def body() -> None:
        old = FakeScorer(version="old")
        sched = make(old)
        await sched.score(["measure the rate"])
        assert sched.rate.measured
        rate = sched.rate
        sched.swap(FakeScorer(version="same encoder"), keep_rate=True)
        assert sched.rate is rate and sched.rate.measured
        sched.swap(FakeScorer(version="other encoder"))
        assert not sched.rate.measured  # measured again from the new scorer's first batch
        await sched.score(["first batch of the new scorer"])
        assert sched.rate.measured

        blocked = FakeScorer(version="blocked")
        blocked.block()
        sched.swap(blocked)
        pending = asyncio.create_task(sched.score(["scored by a scorer swapped out meanwhile"]))
        await asyncio.to_thread(blocked.entered.wait, 10)
        sched.swap(FakeScorer(version="latest"))
        blocked.release()
        [out] = await pending
        assert isinstance(out, ItemResult) and out.version == "blocked"
        assert not sched.rate.measured  # the old scorer's batch did not feed the new scorer's rate
        assert sched.stats.swaps == 4
        await sched.close()

    run(body)


def _servicer() -> RouterServicer:
    return RouterServicer(max_prompts_per_request=16, max_turns=8, max_request_chars=10_000, max_router_names=8)


class Loader:
    """Scorers by path name: "bad*" raises the loader's BundleError, "gated*" waits for `gate`, a name
    with "+" adds a router, "no-mf*" lacks mf, "cold*" fails its warm-up; the version is the name."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.loaded: list[Path] = []

    def __call__(self, path: Path) -> Scorer[Any]:
        self.loaded.append(path)
        name = path.name
        if name.startswith("bad"):
            raise BundleError("manifest.json", "content version does not match (edited after it was stamped?)")
        if name.startswith("gated"):
            assert self.gate.wait(10)
        routers: tuple[str, ...] = ("random", "mf")
        if name.startswith("no-mf"):
            routers = ("random",)
        if "+" in name:
            routers = (*routers, "extra")
        scorer = FakeScorer(routers, version=name)
        if name.startswith("cold"):

            def fail() -> None:
                raise RuntimeError("first ONNX run failed")

            scorer.warmup = fail  # type: ignore[method-assign]
        return scorer


def _swapper(sched: Scheduler[Any], loader: Loader, servicer: RouterServicer) -> BundleSwapper:
    servicer.attach(sched, sched.scorer.catalog())
    return BundleSwapper(sched, servicer, loader, BundleSwapper.serving_now(sched.scorer, Path("/srv/a")))


def test_swap_attaches_the_new_catalog_and_refusals_keep_the_old_bundle() -> None:
    async def body() -> None:
        sched, loader, servicer = make(FakeScorer(version="a")), Loader(), _servicer()
        swapper = _swapper(sched, loader, servicer)

        report = await swapper.reload(Path("/srv/b+"))
        assert report.previous.version == "a" and report.current.version == "b+"
        assert sched.scorer.version == "b+" and servicer.catalog is not None and servicer.catalog.version == "b+"
        assert servicer.routers == ("random", "mf", "extra") and swapper.serving.routers == servicer.routers
        assert report.load_s >= 0 and report.warm_s >= 0 and 0 <= report.switch_s < 1
        assert loader.loaded == [Path("/srv/b+").resolve()]

        refusals = [
            (Path("/srv/bad"), "BUNDLE_INVALID", "manifest.json: content version does not match"),
            (Path("/srv/no-mf"), "BUNDLE_INCOMPATIBLE", "routers: the candidate lacks 'mf', 'extra', served now"),
            (Path("/srv/cold+"), "BUNDLE_WARMUP_FAILED", "warm-up failed: RuntimeError('first ONNX run failed')"),
        ]
        for i, (path, reason, text) in enumerate(refusals, start=1):
            with pytest.raises(BundleRefused) as e:
                await swapper.reload(path)
            assert e.value.reason == reason and text in e.value.message, e.value.message
            assert e.value.message.startswith(f"bundle {path} refused (b+ keeps serving): ")
            assert status_of(e.value).code is Code.FAILED_PRECONDITION
            assert swapper.counters.refused == i and swapper.counters.last_refusal == e.value.message
            assert sched.scorer.version == "b+" and servicer.catalog.version == "b+"
        [out] = await sched.score(["still served by b+"])
        assert isinstance(out, ItemResult) and out.version == "b+"

        report = await swapper.reload(None)  # the serving path again
        assert report.current.path == Path("/srv/b+") and swapper.counters.swaps == 2
        report = await swapper.reload(Path("/srv/no-mf-parent"), allow_dropped_routers=True)  # a rollback
        assert report.current.version == "no-mf-parent" and servicer.routers == ("random",)
        assert swapper.counters.swaps == 3 and swapper.counters.refused == 3
        await swapper.close()
        with pytest.raises(Draining):
            await swapper.reload(Path("/srv/c"))
        await sched.close()

    run(body)


def test_one_swap_at_a_time() -> None:
    async def body() -> None:
        sched, loader = make(FakeScorer(version="a")), Loader()
        swapper = _swapper(sched, loader, _servicer())
        first = asyncio.create_task(swapper.reload(Path("/srv/gated-b")))
        await until(lambda: bool(loader.loaded))
        assert swapper.loading_path == Path("/srv/gated-b")
        with pytest.raises(SwapInProgress) as e:
            await swapper.reload(Path("/srv/c"))
        assert "a bundle swap is already in progress (loading /srv/gated-b for " in e.value.message
        assert status_of(e.value).code is Code.ABORTED and e.value.reason == "SWAP_IN_PROGRESS"
        [out] = await sched.score(["served while the candidate loads"])
        assert isinstance(out, ItemResult) and out.version == "a"
        loader.gate.set()
        assert (await first).current.version == "gated-b"
        assert swapper.loading_path is None and loader.loaded == [Path("/srv/gated-b").resolve()]
        assert (await swapper.reload(Path("/srv/c"))).previous.version == "gated-b"
        await swapper.close()
        await sched.close()

    run(body)


def test_a_conditional_swap_is_refused_once_another_version_serves() -> None:
    """`if_version`: taken while that version serves; refused (ABORTED, VERSION_MOVED) once another swap
    came first, before anything is loaded, the serving bundle left as it is (two adaptation loops on one
    server each built a candidate from the same parent: the second undid the first's swap)."""

    async def body() -> None:
        sched, loader = make(FakeScorer(version="a")), Loader()
        swapper = _swapper(sched, loader, _servicer())
        assert (await swapper.reload(Path("/srv/b"), if_version="a")).current.version == "b"
        with pytest.raises(VersionMoved) as e:
            await swapper.reload(Path("/srv/c"), if_version="a")  # built from a, but b serves now
        assert e.value.message == (
            "if_version: b serves, not a (another swap came first); the serving bundle is left as it is"
        )
        assert status_of(e.value).code is Code.ABORTED and e.value.reason == "VERSION_MOVED"
        assert loader.loaded == [Path("/srv/b").resolve()] and sched.scorer.version == "b"
        assert swapper.counters.swaps == 1 and swapper.counters.refused == 0
        assert (await swapper.reload(Path("/srv/c"))).current.version == "c"  # unconditional: as before
        await swapper.close()
        await sched.close()

    run(body)


def test_a_swap_asked_for_by_a_caller_that_leaves_still_finishes() -> None:
    """ReloadBundle whose caller's deadline passes mid-load: the swap goes on, is switched in and counted
    (it was cut off silently: no swap, no refusal, nothing logged after `bundle_swap_started`)."""
    from lmroute.service.admin import AdminServicer
    from lmroute.v1 import admin_pb2

    async def body() -> None:
        sched, loader = make(FakeScorer(version="a")), Loader()
        swapper = _swapper(sched, loader, _servicer())
        admin = AdminServicer()
        admin.attach(swapper)
        call = asyncio.create_task(admin.ReloadBundle(admin_pb2.ReloadBundleRequest(path="/srv/gated-b"), None))
        await until(lambda: bool(loader.loaded))
        call.cancel()  # the caller went away
        with pytest.raises(asyncio.CancelledError):
            await call
        loader.gate.set()
        await until(lambda: swapper.serving.version == "gated-b")
        assert swapper.counters.swaps == 1 and sched.scorer.version == "gated-b"
        await swapper.close()
        await sched.close()

    run(body)


def _write_manifest(path: Path, version: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "manifest.json.tmp"
    tmp.write_text(json.dumps({"bundle_version": version}))
    tmp.replace(path / "manifest.json")


def test_watcher_swaps_on_a_new_version_and_does_not_retry_a_refused_one(tmp_path: Path) -> None:
    async def body() -> None:
        watched = tmp_path / "current"
        _write_manifest(watched, "v1")
        versions: list[str] = []

        def load(path: Path) -> Scorer[Any]:
            version = manifest_version(path)
            versions.append(version)
            if version.startswith("bad"):
                raise BundleError("routers/mf/pair_vector.npy", "sha256 mismatch")
            return FakeScorer(version=version)

        sched = make(FakeScorer(version="v1"))
        servicer = _servicer()
        servicer.attach(sched, sched.scorer.catalog())
        swapper = BundleSwapper(sched, servicer, load, BundleSwapper.serving_now(sched.scorer, watched))
        swapper.watch(0.005)
        _write_manifest(watched, "v2")
        await until(lambda: swapper.serving.version == "v2")
        assert servicer.catalog is not None and servicer.catalog.version == "v2"
        _write_manifest(watched, "bad-v3")
        await until(lambda: swapper.counters.refused == 1)
        await asyncio.sleep(0.05)  # about ten more polls
        assert swapper.counters.refused == 1 and versions.count("bad-v3") == 1  # not retried
        assert "routers/mf/pair_vector.npy: sha256 mismatch" in swapper.counters.last_refusal
        (watched / "manifest.json").write_text("{not json")
        await asyncio.sleep(0.03)
        assert swapper.serving.version == "v2"
        _write_manifest(watched, "v4")
        await until(lambda: swapper.serving.version == "v4")
        assert swapper.counters.swaps == 2 and versions == ["v2", "bad-v3", "v4"]
        await swapper.close()
        await sched.close()

    run(body)


def test_a_bundle_reloaded_by_hand_serves_until_the_watched_path_shows_another(tmp_path: Path) -> None:
    """The watch keeps polling the path it started on (a link a deployment flips): a ReloadBundle of
    another directory serves until the link shows a new bundle, then the link's bundle is swapped in
    (the watch used to follow the reloaded path and ignore every later flip)."""

    async def body() -> None:
        watched, other = tmp_path / "current", tmp_path / "by-hand"
        _write_manifest(watched, "v1")
        _write_manifest(other, "v2")
        sched = make(FakeScorer(version="v1"))
        servicer = _servicer()
        servicer.attach(sched, sched.scorer.catalog())
        load = lambda path: FakeScorer(version=manifest_version(path))  # noqa: E731
        swapper = BundleSwapper(sched, servicer, load, BundleSwapper.serving_now(sched.scorer, watched))
        swapper.watch(0.005)
        await asyncio.sleep(0.02)  # the watch has read what the link shows (v1, serving)
        await swapper.reload(other)
        await asyncio.sleep(0.05)  # polls of the unchanged link: the bundle reloaded by hand keeps serving
        assert swapper.serving.version == "v2" and swapper.watched_path == watched
        _write_manifest(watched, "v3")
        await until(lambda: swapper.serving.version == "v3")
        assert swapper.serving.path == watched and swapper.counters.swaps == 2
        await swapper.close()
        await sched.close()

    run(body)


def test_admin_and_watch_settings() -> None:
    def cfg(**kw: Any) -> ServiceConfig:
        return ServiceConfig(bundle_path=Path("b"), **kw)

    assert cfg().admin_service == "loopback" and cfg().admin_enabled and cfg().bundle_watch_s == 0.0
    for host in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"):
        assert cfg(host=host).admin_enabled, host
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.com"):
        assert not cfg(host=host).admin_enabled, host
    assert cfg(host="0.0.0.0", admin_service="on").admin_enabled
    assert not cfg(admin_service="off").admin_enabled
    with pytest.raises(ConfigError, match=r"^admin_service: must be one of loopback, on, off \(got 'yes'\)$"):
        cfg(admin_service="yes")
    with pytest.raises(ConfigError, match=r"^bundle_watch_s: must be >= 0 and finite \(got -1\)$"):
        cfg(bundle_watch_s=-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_low_priority_loads_on_a_nice_19_thread_and_leaves_the_others() -> None:
    async def body() -> None:
        seen: list[int] = []

        def load(path: Path) -> Scorer[Any]:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return FakeScorer(version=path.name)

        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for low, want in ((False, own), (True, 19)):
            sched = make(FakeScorer(version="a"))
            servicer = _servicer()
            servicer.attach(sched, sched.scorer.catalog())
            serving = BundleSwapper.serving_now(sched.scorer, Path("/srv/a"))
            swapper = BundleSwapper(sched, servicer, load, serving, low_priority=low)
            await swapper.reload(Path("/srv/b"))
            assert seen[-1] == want
            assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
            await swapper.close()
            await sched.close()

    run(body)


def test_a_swap_that_drops_the_default_router_is_refused_unless_asked() -> None:
    """Calls that name no router rely on the bundle's default router as others rely on a router's name:
    a candidate without one is incompatible (those calls would all be refused MISSING_ROUTER), unless
    dropped routers are allowed."""

    async def body() -> None:
        def load(path: Path) -> Scorer[Any]:
            return FakeScorer(version=path.name, default_router="" if path.name.startswith("plain") else "mf")

        sched = make(FakeScorer(version="a", default_router="mf"))
        servicer = _servicer()
        servicer.attach(sched, sched.scorer.catalog())
        swapper = BundleSwapper(sched, servicer, load, BundleSwapper.serving_now(sched.scorer, Path("/srv/a")))
        with pytest.raises(BundleRefused) as e:
            await swapper.reload(Path("/srv/plain"))
        assert e.value.reason == "BUNDLE_INCOMPATIBLE"
        assert "the candidate lacks a default_router (calls naming no router are served by mf now)" in e.value.message
        assert (await swapper.reload(Path("/srv/b"))).current.version == "b"  # keeps one: taken
        report = await swapper.reload(Path("/srv/plain2"), allow_dropped_routers=True)
        assert report.current.version == "plain2" and servicer.catalog is not None
        assert servicer.catalog.default_router == ""
        await swapper.close()
        await sched.close()

    run(body)


def test_a_refused_candidate_is_not_held_after_its_refusal() -> None:
    """What a refused load built (a scorer that lacks a router, one whose warm-up failed, what a loader
    that failed had loaded) is freed with the refusal, reference counting alone (the garbage collector
    off): refusals one after another grew the process by a bundle each."""

    async def body() -> None:
        built: list[weakref.ref[Any]] = []

        class Loaded:  # what a loader holds while it fails
            pass

        def load(path: Path) -> Scorer[Any]:
            if path.name == "bad":
                arrays = Loaded()
                built.append(weakref.ref(arrays))
                raise BundleError("routers/mf/pair_vector.npy", "sha256 mismatch")
            scorer = Loader()(path)
            built.append(weakref.ref(scorer))
            return scorer

        sched = make(FakeScorer(version="a"))
        servicer = _servicer()
        servicer.attach(sched, sched.scorer.catalog())
        swapper = BundleSwapper(sched, servicer, load, BundleSwapper.serving_now(sched.scorer, Path("/srv/a")))
        gc.collect()
        gc.disable()
        try:
            for name in ("bad", "no-mf", "cold"):
                with pytest.raises(BundleRefused) as e:
                    await swapper.reload(Path("/srv") / name)
                del e
                assert built[-1]() is None, name
        finally:
            gc.enable()
        await swapper.close()
        await sched.close()

    run(body)


def test_the_watch_goes_on_past_what_it_cannot_read_and_takes_a_bundle_copied_file_by_file(tmp_path: Path) -> None:
    """A manifest nested past the parser's depth (the watch died of it, silently) and one that is a pipe
    (a read waited for a writer forever, holding the swap thread) are each said (`watch_problem`, logged)
    and the watch goes on; a bundle copied into the watched directory file by file, its manifest first,
    is refused while half copied and loaded once its last file lands (it was never tried again)."""

    async def body() -> None:
        watched = tmp_path / "current"
        _write_manifest(watched, "v1")
        tried: list[str] = []

        def load(path: Path) -> Scorer[Any]:
            doc = json.loads((path / "manifest.json").read_text())
            tried.append(doc["bundle_version"])
            for rel, want in doc.get("files", {}).items():
                if (path / rel).read_text() != want:
                    raise BundleError(rel, "sha256 mismatch")
            return FakeScorer(version=doc["bundle_version"])

        sched = make(FakeScorer(version="v1"))
        servicer = _servicer()
        servicer.attach(sched, sched.scorer.catalog())
        swapper = BundleSwapper(sched, servicer, load, BundleSwapper.serving_now(sched.scorer, watched))
        swapper.watch(0.005)
        (watched / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
        await until(lambda: "nested too deeply" in swapper.watch_problem)
        (watched / "manifest.json").unlink()
        os.mkfifo(watched / "manifest.json")
        await until(lambda: "not a regular file" in swapper.watch_problem)
        (watched / "manifest.json").unlink()
        _write_manifest(watched, "v2")
        await until(lambda: swapper.serving.version == "v2")
        assert swapper.watch_problem == ""

        (watched / "table.npy").write_text("old")  # the copy: the manifest first, then the file it lists
        (watched / "manifest.json").write_text(json.dumps({"bundle_version": "v3", "files": {"table.npy": "new"}}))
        await until(lambda: swapper.counters.refused == 1)
        await asyncio.sleep(0.03)
        assert tried == ["v2", "v3"]  # not tried again while nothing changed
        (watched / "table.npy").write_text("new")
        await until(lambda: swapper.serving.version == "v3")
        assert tried == ["v2", "v3", "v3"]
        await swapper.close()
        await sched.close()

    run(body)
