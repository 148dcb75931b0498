"""Server timings (lmroute.service.stats): fixed-bucket histogram math, snapshot diffs, the JSON stats
file, and the scheduler filling the histograms (against FakeScorer, with a real delay)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import BatchPolicy, Scheduler
from lmroute.service.stats import (
    Histogram,
    ServerTimings,
    StatsFile,
    diff_snapshots,
    geometric_bounds,
)


def test_geometric_bounds_cover_the_range_with_the_asked_density() -> None:
    b = geometric_bounds(10, 1000, 4)
    assert b[0] == 10 and b[-1] >= 1000
    assert len(b) == 9  # 10 .. 1000 is two decades of 4 buckets, plus the first bound
    assert all(x < y for x, y in zip(b, b[1:]))
    assert b[4] == pytest.approx(100, rel=1e-6)
    with pytest.raises(ValueError, match="0 < low < high"):
        geometric_bounds(0, 10, 4)


def test_values_land_in_upper_inclusive_buckets() -> None:
    h = Histogram([1, 2, 4])
    for v in (0.5, 1, 1.5, 2, 3, 4, 4.01, 100):
        h.observe(v)
    # buckets: <=1, (1,2], (2,4], >4
    assert h.counts == [2, 2, 2, 2]
    assert h.count == 8 and h.total == pytest.approx(116.01)
    assert h.min == 0.5 and h.max == 100
    assert h.mean == pytest.approx(116.01 / 8)


def test_quantile_is_the_upper_bound_of_the_bucket_holding_that_rank() -> None:
    h = Histogram([1, 2, 4, 8])
    for v in [1] * 50 + [3] * 45 + [7] * 5:
        h.observe(v)
    assert h.quantile(0.5) == 1
    assert h.quantile(0.51) == 4
    assert h.quantile(0.95) == 4
    assert h.quantile(0.96) == 7  # bucket (4, 8] clipped to the largest value seen
    assert h.quantile(0.0) == 1
    assert math.isnan(Histogram([1]).quantile(0.5))
    with pytest.raises(ValueError, match="q must be in"):
        h.quantile(1.5)


def test_overflow_bucket_reports_the_largest_value() -> None:
    h = Histogram([1, 2])
    h.observe(50)
    h.observe(70)
    assert h.counts == [0, 0, 2]
    assert h.quantile(0.99) == 70


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.01, max_value=1e7, allow_nan=False), min_size=1, max_size=300),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_quantile_lies_in_the_bucket_of_the_exact_quantile(values: list[float], q: float) -> None:
    bounds = geometric_bounds(0.01, 1e7, 10)
    h = Histogram(bounds)
    for v in values:
        h.observe(v)
    exact = sorted(values)[max(1, math.ceil(q * len(values))) - 1]  # the value of that rank
    est = h.quantile(q)
    assert est >= exact  # an upper estimate ...
    i = int(np.searchsorted(bounds, exact, side="left"))
    lower = bounds[i - 1] if i > 0 else 0.0
    assert lower < est <= (bounds[i] if i < len(bounds) else max(values))  # ... within one bucket


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram([1, 1, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram([])


def test_dict_round_trip_keeps_every_field() -> None:
    h = Histogram([1, 10, 100])
    for v in (0.2, 5, 50, 500):
        h.observe(v, n=2)
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.to_dict() == h.to_dict()
    assert back.quantile(0.9) == h.quantile(0.9) == 500


def test_record_batch_splits_encoder_and_router_time() -> None:
    t = ServerTimings()
    t.add_encoder_time(0.003)
    t.add_encoder_time(0.002)
    t.record_batch([100.0, 250.0, 4000.0], longest_tokens=40, score_s=0.008)
    assert t.batch_size.count == 1 and t.batch_size.total == 3
    assert t.queue_wait_us.count == 3 and t.queue_wait_us.total == pytest.approx(4350)
    assert t.padded_tokens.total == 120
    assert t.encoder_ms.total == pytest.approx(5.0)
    assert t.scorer_other_ms.total == pytest.approx(3.0)
    assert t.score_ms.total == pytest.approx(8.0)
    t.record_batch([10.0], longest_tokens=5, score_s=0.001)  # encoder time was reset by the first batch
    assert t.encoder_ms.total == pytest.approx(5.0)
    summary = t.summary()
    assert summary["batch_size_mean"] == 2.0 and summary["encoder_ms_mean"] == 2.5


def test_diff_of_two_snapshots_is_what_happened_between_them() -> None:
    t = ServerTimings()
    t.record_batch([100.0] * 4, longest_tokens=10, score_s=0.010)
    before = json.loads(json.dumps(t.snapshot()))
    for _ in range(3):
        t.record_batch([5000.0] * 16, longest_tokens=100, score_s=0.050)
    after = json.loads(json.dumps(t.snapshot()))
    d = diff_snapshots(before, after)
    assert d["batch_size"].count == 3 and d["batch_size"].total == 48
    assert d["batch_size"].quantile(0.5) == 16
    assert d["queue_wait_us"].count == 48
    assert 5000 <= d["queue_wait_us"].quantile(0.99) < 7000
    assert d["score_ms"].total == pytest.approx(150.0)
    with pytest.raises(ValueError, match="counts went down"):
        diff_snapshots(after, before)


def test_snapshot_reports_this_process_peak_rss() -> None:
    snap = ServerTimings().snapshot({"counters": {"admitted": 3}})
    assert snap["peak_rss_bytes"] > 10 * 2**20  # a Python process with numpy loaded
    assert snap["counters"] == {"admitted": 3}


def test_stats_file_writes_now_periodically_and_at_close(tmp_path: Path) -> None:
    calls = []

    def snap() -> dict[str, object]:
        calls.append(1)
        return {"n": len(calls)}

    async def body() -> None:
        f = StatsFile(tmp_path / "sub" / "stats.json", snap, interval_s=0.02)
        f.start()
        assert json.loads(f.path.read_text()) == {"n": 1}
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        await f.close()
        n = len(calls)
        assert json.loads(f.path.read_text()) == {"n": n}
        await asyncio.sleep(0.05)
        assert len(calls) == n  # no writes after close

    asyncio.run(asyncio.wait_for(body(), 10))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["stats.json"]


def test_the_stats_file_is_never_written_through_a_link_at_a_name_it_could_have_used(tmp_path: Path) -> None:
    """A link another user made at the old fixed sibling name (stats.json.tmp) does not redirect the write."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "stats.json.tmp").symlink_to(victim)
    f = StatsFile(tmp_path / "stats.json", lambda: {"n": 1})
    f.write()
    assert victim.read_text() == "keep" and json.loads(f.path.read_text()) == {"n": 1}
    assert f.path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "stats.json.tmp", "victim"]


def test_scheduler_fills_the_timings_for_every_batch_and_prompt() -> None:
    async def body() -> tuple[Scheduler, float]:
        scorer = FakeScorer(delay_s=0.02)
        sched = Scheduler(scorer, BatchPolicy(max_batch_size=4, max_wait_us=0, max_queue=64))
        sched.start()
        texts = [f"prompt number {i} " + "word " * i for i in range(10)]
        await asyncio.gather(*(sched.score([t]) for t in texts))
        await sched.close()
        return sched, 0.02

    sched, delay = asyncio.run(asyncio.wait_for(body(), 20))
    t = sched.timings
    assert t.batch_size.count == sched.stats.batches >= 3  # 10 prompts, at most 4 a batch
    assert t.batch_size.total == t.queue_wait_us.count == 10
    assert t.score_ms.count == sched.stats.batches
    assert t.score_ms.min >= delay * 1000 * 0.9  # the fake's sleep is inside the scorer call
    assert t.encoder_ms.total == 0  # FakeScorer has no encoder to time
    # the prompts of later batches waited at least one scorer call in the queue
    assert t.queue_wait_us.max >= delay * 1e6 * 0.9


def test_a_stats_write_that_fails_is_logged_and_tried_again(tmp_path: Path) -> None:
    """After the first write, a failing one (here its directory gone) neither ends the periodic writes nor
    fails close(); the file is written again once it can be."""

    async def body() -> None:
        f = StatsFile(tmp_path / "sub" / "stats.json", lambda: {"n": 1}, interval_s=0.01)
        f.start()
        f.path.unlink()
        f.path.parent.rmdir()
        while f.failed_writes < 3:
            await asyncio.sleep(0.01)
        f.path.parent.mkdir()
        while not f.path.exists():
            await asyncio.sleep(0.01)
        assert f.failed_writes == 0
        f.path.unlink()
        f.path.parent.rmdir()
        await f.close()  # its last write fails: logged, not raised
        assert f.failed_writes == 1

    asyncio.run(asyncio.wait_for(body(), 10))
