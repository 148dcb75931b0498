"""How many Route calls reach the scheduler in one event-loop iteration of the service under load?

    .venv/bin/python benchmarks/ghz/calls_per_iteration.py --bundle /tmp/tiers/static

If grpc.aio handed the handler several calls per iteration, calls arriving together could be scored as
one batch and share the per-call work; this counts whether it does. Per concurrency (closed-loop Route,
benchmarks/ghz/route.json, `--seconds` each), a fresh service (`--serve`: this script started as a child,
the service's defaults, pinned to the server cores) counts, on the event loop, the calls entering
`Scheduler.score` before a `call_soon` callback set at the first of them runs, i.e. within one
iteration; ghz runs on the client cores. Printed: per concurrency, the iterations that saw calls, the
calls, their mean per iteration and the histogram of calls per iteration.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadgen import GhzRun, run_ghz
from procs import ChildServer, default_cores


def serve(bundle: Path, out: Path) -> None:
    """The service with `Scheduler.score` wrapped to count calls per loop iteration; on SIGTERM the
    histogram (calls in an iteration -> iterations) goes to `out` as JSON."""
    from lmroute.service import scheduler as sched_mod
    from lmroute.service.config import ServiceConfig
    from lmroute.service.logs import configure_logging
    from lmroute.service.server import RouterServer

    hist: collections.Counter[int] = collections.Counter()
    state = {"n": 0, "armed": False}
    score = sched_mod.Scheduler.score

    def flush() -> None:
        hist[state["n"]] += 1
        state.update(n=0, armed=False)

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        state["n"] += 1
        if not state["armed"]:
            state["armed"] = True
            asyncio.get_running_loop().call_soon(flush)
        return score(self, *a, **k)

    sched_mod.Scheduler.score = counted  # type: ignore[method-assign]

    async def main() -> None:
        configure_logging("warning")
        server = RouterServer(ServiceConfig(bundle_path=bundle, port=0))
        await server.start()
        print(f"serving on 127.0.0.1:{server.port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        out.write_text(json.dumps(sorted(hist.items())))
        await server.stop(0)

    asyncio.run(main())


def main() -> None:
    server_cores, client_cores = default_cores()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--server-cores", default=server_cores)
    p.add_argument("--client-cores", default=client_cores)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # child mode: write the histogram here
    args = p.parse_args()
    if args.serve is not None:
        serve(args.bundle, args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            hist_path = Path(tmp) / f"hist_c{c}.json"
            cmd = [sys.executable, __file__, "--bundle", str(args.bundle), "--serve", str(hist_path)]
            with ChildServer(cmd, args.server_cores, stats=False) as srv:
                run = run_ghz(
                    GhzRun("route.json", c, 1, args.seconds, label=f"c{c}"), srv.target, args.client_cores, Path(tmp)
                )
            hist = {int(k): v for k, v in json.loads(hist_path.read_text())}
            iterations, calls = sum(hist.values()), sum(k * v for k, v in hist.items())
            print(
                f"concurrency {c}: {run['ok_per_s']:.0f} OK calls/s; {iterations} iterations with calls, {calls} "
                f"calls, {calls / max(iterations, 1):.3f} a iteration; calls in an iteration -> iterations: {hist}"
            )


if __name__ == "__main__":
    main()
