"""How long one big Feedback call holds the server's event loop, read in slices (the service) and whole.

    .venv/bin/python benchmarks/feedback_stall.py --bundle DIR [--outcomes 1024] [--repeats 5]

A RouterServer in this process (the bundle, a SQLite outcome store in a temporary directory) makes
--outcomes Route decisions, then takes one Feedback call with a paired outcome for each, while a
neighbour task on the same event loop does nothing but yield (`await asyncio.sleep(0)`) and notes the
time between its turns: the longest gap is the longest the loop was held, which every other call of the
server waits for. The call runs --repeats times with the service's slice (`_FEEDBACK_SLICE`, outcomes
read and answered between two yields) and as many times with the slice set past the call's size (the
whole call at once, as before slicing), alternating; each repeat reports the same decisions again under
a fresh `source`, so every outcome is new. Prints the median and largest of the longest gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from lmroute.service import servicer as servicer_module
from lmroute.service.config import ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.server import RouterServer
from lmroute.v1 import router_pb2


async def _longest_gap_ms(server: RouterServer, request: router_pb2.FeedbackRequest) -> float:
    gaps: list[float] = []
    done = False

    async def neighbour() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(neighbour())
    await asyncio.sleep(0)
    try:
        await server.servicer.feedback(request, reporter="")
    finally:
        done = True
        await task
    return max(gaps) * 1000


async def run(bundle: Path, n: int, repeats: int) -> dict[str, list[float]]:
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        # no --feedback-rate: the calls come back to back, and what is measured is each one's hold of the loop
        cfg = ServiceConfig(bundle_path=bundle, port=0, store=f"sqlite:{tmp}/outcomes.sqlite3", feedback_rate=0.0)
        server = RouterServer(cfg)
        await server.start()
        try:
            ids = []
            for i in range(n):
                req = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text=f"prompt {i}"), router="mf", threshold=0.5)
                ids.append((await server.servicer.route(req, asked_tenant="", timeout_s=None)).decision_id)
            await asyncio.sleep(1.0)  # the decisions committed
            sliced = servicer_module._FEEDBACK_SLICE
            gaps: dict[str, list[float]] = {"sliced": [], "whole": []}
            for r in range(repeats):
                for label, size in (("sliced", sliced), ("whole", n + 1)):
                    servicer_module._FEEDBACK_SLICE = size
                    paired = router_pb2.PairedOutcome(strong_quality=1.0, weak_quality=0.0)
                    source = f"bench-{label}-{r}"
                    outcomes = [router_pb2.OutcomeReport(decision_id=d, paired=paired, source=source) for d in ids]
                    gaps[label].append(await _longest_gap_ms(server, router_pb2.FeedbackRequest(outcomes=outcomes)))
            servicer_module._FEEDBACK_SLICE = sliced
            return gaps
        finally:
            await server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--outcomes", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    gaps = asyncio.run(run(args.bundle, args.outcomes, args.repeats))
    print(f"Feedback of {args.outcomes} paired outcomes, {args.repeats} calls each, longest event-loop gap (ms):")
    for label, values in gaps.items():
        listed = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {label:7s} median {statistics.median(values):6.2f}  largest {max(values):6.2f}  all {listed}")


if __name__ == "__main__":
    main()
