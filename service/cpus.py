"""CPU pinning of the scoring thread (Linux): `--scoring-cpus` gives the scoring thread CPUs of its own.

The service runs two busy threads: the event loop (it receives every call, admits or refuses it, and
answers it) and the scoring thread (it runs the encoder and the routers). On one core they share it,
so under overload the loop's work on calls it refuses takes CPU time the scorer would have spent on
admitted work (benchmarks/ghz/results/overload). Pinned, the scoring thread keeps `scoring_cpus` and the
event loop, with the threads it starts afterwards (tokenising, bundle loading, store writer), keeps the
process's other CPUs. Threads started before the pinning keep the whole set.

`lowest_cpu_priority`: background work that must not take CPU from serving (a hot swap's load, a judge
list) runs on a thread at nice 19.

`limit_blas_threads`: NumPy's BLAS (the adapted kernel router's [batch, support] product) otherwise starts
a thread per core that spins on every call; beside the service's own busy threads those threads wait on
each other far longer than the product takes on one.
"""

from __future__ import annotations

import os
import sys
import threading

import structlog

__all__ = ["available_cpus", "limit_blas_threads", "lowest_cpu_priority", "parse_cpu_list", "pin_current_thread"]

_log = structlog.get_logger("lmroute.cpus")


MAX_CPU = 65535
"""The highest CPU number a CPU list may name (Linux's own limit is a build setting, 8,192 by default)."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a Linux CPU list such as "0", "2-3" or "0,4-5" (empty text: none)."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or range (e.g. 0 or 2-3)") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a CPU range (e.g. 2-3)")
        if last > MAX_CPU:  # a typo's range of 10^11 would be built before any check
            raise ValueError(f"{part!r}: CPU numbers go up to {MAX_CPU} here")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def available_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on; None where the platform cannot pin threads."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


def pin_current_thread(cpus: frozenset[int]) -> None:
    """Restrict the calling thread (only it; Linux pins per thread) to `cpus`."""
    os.sched_setaffinity(0, cpus)


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS libraries NumPy loaded (OpenBLAS, MKL) at `threads` threads, process-wide."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def lowest_cpu_priority() -> None:
    """Nice 19 for the calling thread only (a thread initializer): Linux gives each thread its own nice
    value; elsewhere setpriority would name a process, so nothing is changed there. Threads the caller
    starts afterwards inherit it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError as exc:
        _log.warning("thread_priority_unchanged", thread=threading.current_thread().name, error=str(exc))
