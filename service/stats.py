"""Server-side timings: fixed-bucket histograms of what one request and one batch cost inside the server.

`ServerTimings` holds one `Histogram` per quantity (queue wait per prompt in microseconds, prompts per
batch, padded tokens per batch (longest x count, the queue's budget), and per batch in milliseconds the
scorer call, the encoder's share of it and the rest: tokenising inside the scorer and the routers). The scheduler
observes into it (a bisect and three adds per value: cheap enough to stay on); `summary()` gives the
short dict logged with `stopped`; `snapshot()` the full state, which `StatsFile` writes as JSON every
second and at shutdown when `--stats-path` / `LMROUTE_STATS_PATH` asks for it (the benchmarks diff
two snapshots to get one phase's histograms). Encoder time comes from the scorer itself
(`ScoredBatch.encoder_s`), so it is counted apart from the routers. No gRPC here; asyncio only in
`StatsFile`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

__all__ = [
    "Histogram",
    "ServerTimings",
    "StatsFile",
    "diff_snapshots",
    "geometric_bounds",
]

_log = structlog.get_logger("lmroute.stats")


def geometric_bounds(low: float, high: float, per_decade: int) -> tuple[float, ...]:
    """Bucket upper bounds from `low` to at least `high`, `per_decade` buckets per factor of 10."""
    if not 0 < low < high or per_decade < 1:
        raise ValueError(f"geometric_bounds: need 0 < low < high and per_decade >= 1 (got {low}, {high}, {per_decade})")
    out: list[float] = []
    i = 0
    while True:
        b = float(f"{low * 10 ** (i / per_decade):.6g}")
        out.append(b)
        if b >= high:
            return tuple(out)
        i += 1


class Histogram:
    """Counts of values in fixed buckets `(bounds[i-1], bounds[i]]`, plus count, sum, min and max.

    Bucket 0 holds values <= bounds[0]; the last bucket (index len(bounds)) holds values above
    bounds[-1]. `quantile(q)` is the upper bound of the bucket holding the q-th value (an upper
    estimate within one bucket's width), clipped to the largest value seen.
    """

    __slots__ = ("bounds", "counts", "count", "total", "min", "max")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"Histogram: bounds must be non-empty and strictly increasing (got {bounds!r})")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def observe(self, value: float, n: int = 1) -> None:
        """Count `value` `n` times."""
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.count += n
        self.total += value * n
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the value of rank ceil(q * count); NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile: q must be in [0, 1] (got {q})")
        if not self.count:
            return float("nan")
        rank = max(1, math.ceil(q * self.count))  # at least the first value
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                upper = self.bounds[i] if i < len(self.bounds) else self.max
                return min(upper, self.max)
        return self.max  # pragma: no cover - counts always add up to count

    def to_dict(self) -> dict[str, Any]:
        return {
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "count": self.count,
            "sum": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls(d["bounds"])
        if len(d["counts"]) != len(h.counts):
            raise ValueError(f"Histogram.from_dict: {len(d['counts'])} counts for {len(h.bounds)} bounds")
        h.counts = [int(c) for c in d["counts"]]
        h.count = int(d["count"])
        h.total = float(d["sum"])
        h.min = float("inf") if d.get("min") is None else float(d["min"])
        h.max = float("-inf") if d.get("max") is None else float(d["max"])
        return h


# Bucket layouts (fixed, so snapshots from two moments, or two runs, can be subtracted and compared).
QUEUE_WAIT_US = geometric_bounds(10, 60_000_000, 10)  # 10 us .. 60 s
BATCH_SIZE = tuple(float(b) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512))
PADDED_TOKENS = geometric_bounds(8, 1_048_576, 5)
MILLIS = geometric_bounds(0.01, 100_000, 10)  # 10 us .. 100 s


class ServerTimings:
    """Histograms of one server's life; written by the scheduler, read at shutdown or by StatsFile."""

    def __init__(self) -> None:
        self.queue_wait_us = Histogram(QUEUE_WAIT_US)  # per prompt: enqueued -> its batch leaves
        self.batch_size = Histogram(BATCH_SIZE)  # prompts per batch
        self.padded_tokens = Histogram(PADDED_TOKENS)  # per batch: longest prompt x prompts
        self.score_ms = Histogram(MILLIS)  # per batch: the whole scorer call (encoder + routers)
        self.encoder_ms = Histogram(MILLIS)  # per batch: time inside encoder.embed (0 if unwrapped)
        self.scorer_other_ms = Histogram(MILLIS)  # per batch: score_ms - encoder_ms (tokenising, routers)
        self.started_at = time.time()
        self._encoder_s = 0.0  # the scorer's encoder seconds since the last record_batch

    def add_encoder_time(self, seconds: float) -> None:
        self._encoder_s += seconds

    def record_batch(self, waits_us: Sequence[float], longest_tokens: int, score_s: float) -> None:
        """One batch left the queue and was scored: its prompts' waits, its padding, its cost."""
        for w in waits_us:
            self.queue_wait_us.observe(w)
        n = len(waits_us)
        self.batch_size.observe(n)
        self.padded_tokens.observe(longest_tokens * n)
        enc_s, self._encoder_s = self._encoder_s, 0.0
        self.score_ms.observe(score_s * 1000.0)
        self.encoder_ms.observe(enc_s * 1000.0)
        self.scorer_other_ms.observe(max(score_s - enc_s, 0.0) * 1000.0)

    def histograms(self) -> dict[str, Histogram]:
        return {
            "queue_wait_us": self.queue_wait_us,
            "batch_size": self.batch_size,
            "padded_tokens": self.padded_tokens,
            "score_ms": self.score_ms,
            "encoder_ms": self.encoder_ms,
            "scorer_other_ms": self.scorer_other_ms,
        }

    def summary(self) -> dict[str, float]:
        """A few numbers for the `stopped` log line (means and p99 upper bounds)."""
        out: dict[str, float] = {}
        for name, h in self.histograms().items():
            out[f"{name}_mean"] = round(h.mean, 3) if h.count else 0.0
            out[f"{name}_p99"] = round(h.quantile(0.99), 3) if h.count else 0.0
        return out

    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything, as plain JSON-able values, with the process's peak RSS."""
        snap: dict[str, Any] = {
            "written_at": time.time(),
            "started_at": self.started_at,
            "pid": os.getpid(),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "histograms": {k: h.to_dict() for k, h in self.histograms().items()},
        }
        if extra:
            snap.update(extra)
        return snap


def diff_snapshots(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Histogram]:
    """Histograms of what happened between two snapshots of one server (after - before).

    min and max of the difference are not known; they are set to the after-snapshot's bucket range
    of the first and last non-empty difference bucket (so quantiles stay within those buckets).
    """
    out: dict[str, Histogram] = {}
    for name, a in after["histograms"].items():
        b = before["histograms"][name]
        if a["bounds"] != b["bounds"]:
            raise ValueError(f"diff_snapshots: {name} has different buckets in the two snapshots")
        h = Histogram(a["bounds"])
        h.counts = [x - y for x, y in zip(a["counts"], b["counts"], strict=True)]
        if any(c < 0 for c in h.counts):
            raise ValueError(f"diff_snapshots: {name} counts went down (snapshots of two servers?)")
        h.count = a["count"] - b["count"]
        h.total = a["sum"] - b["sum"]
        used = [i for i, c in enumerate(h.counts) if c]
        if used:
            lo, hi = used[0], used[-1]
            h.min = h.bounds[lo - 1] if lo > 0 else (a["min"] if a["min"] is not None else 0.0)
            h.max = h.bounds[hi] if hi < len(h.bounds) else float(a["max"])
        out[name] = h
    return out


class StatsFile:
    """Writes `snapshot()` as JSON to `path` every `interval_s` and once more at `close()`.

    The file is replaced atomically (write to a sibling, then rename), so a reader never sees half. Only
    the first write (`start`) raises; a later one that fails (a full disk, no file descriptor left) is
    logged (`stats_write_failed`, once until a write succeeds again: `stats_write_recovered`) and tried
    again at the next interval, and the one at `close()` is logged, not raised.
    """

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]], interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self._snapshot = snapshot
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.failed_writes = 0  # writes that failed since the last one that succeeded

    def write(self) -> None:
        # a sibling of a fresh name (not a fixed one another user could have made a link)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self._snapshot()))
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="lmroute-stats-file")

    def _try_write(self) -> None:
        try:
            self.write()
        except OSError as exc:
            if not self.failed_writes:
                _log.error("stats_write_failed", path=str(self.path), error=str(exc))
            self.failed_writes += 1
            return
        if self.failed_writes:
            _log.warning("stats_write_recovered", path=str(self.path), failed_writes=self.failed_writes)
            self.failed_writes = 0

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._try_write()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._try_write()
