"""What a handler's own work costs the server per Route call under load, and so where the Route share of
the static tier (its rate / the empty handler's) can be at best on this transport.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/floor.py --bundle /tmp/tiers/static --out benchmarks/ghz/results/floor
    .venv/bin/python benchmarks/ghz/floor.py --bundle /tmp/tiers/static --transport threads \
        --out benchmarks/ghz/results/floor_threads

The bundle is a static-encoder bundle with an mf router (`lmroute-export build --encoder static ...`).
Servers, in interleaved rounds (`tiers.rounds`: each started in turn, a 2 s warm-up, then closed-loop
Route at concurrency 16 and 64, the server pinned to one core and ghz to the other, the server's CPU per
OK call read from /proc):

- empty handler: `empty_server.py`, constant answers (the transport and the request-context
  interceptor);
- spin N us: the same, each Route spending N us of its thread's CPU time in a loop first (`--spin-us`),
  for each N of `--spin-us`: work that touches nothing, so its cost under load is the transport's
  response to a handler of that length;
- tokenise + embed: the same, each Route computing the compiled tokenizer's ids of its prompt, cut to the
  encoder's limit by its truncation rule, and the token table's mean of them, in one compiled call
  (`--embed-only`, `StaticEncoder.embed_texts`; the same embedding as the bundle's encoder): the least
  work any answer of a static-encoder bundle needs;
- scoring only: the same, each Route scored by the bundle's encoder (that one call) and mf router, its
  threshold from the calibration table (`--bundle`): the scoring work without a service path;
- service: `lmroute-serve --bundle B --transport aio`, its defaults otherwise: on grpc.aio, as every other
  server here (the service's default transport, threads, is measured beside both empty handlers in
  benchmarks/ghz/tiers.py).

With `--transport threads` every server is the synchronous one instead: the empty-handler servers with
`--sync --workers 256` (the handlers answer on gRPC's pool threads: no interceptor, no event loop), the
service with `--transport threads` (its default for a static bundle: the pool thread hands each call's
coroutine, interceptor logic included, to the event loop). There the empty, spin, tokenise + embed and
scoring only rows are what a Route handler with that work and nothing else keeps of the synchronous
server's rate: the most any Python service path on it could keep with that work in Python. Three more
rows split the way from there to the service: the empty handler as a coroutine on the service's own
thread transport (`empty_server.py --sync --handoff`: the pool thread hands it to an event loop and waits),
without the request-context interceptor ("hand-off") and with it ("hand-off + interceptor"), and the
scoring-only handler the same way ("scoring only, hand-off + interceptor"); the service adds its own
per-call logic (admission, scheduler, decision id) to the last.

Before the rounds, the script checks that "tokenise + embed" gives the bundle's own embeddings (`tokenize`
+ `embed`) for the benchmark prompts, one at a time and as one batch, and counts the prompts the encoder's
limit cuts; then each handler's work is timed in this process, one prompt after another over the
benchmark prompts (thread CPU per call, median of 5 passes): `route_reply` of empty_server.py in each mode,
and for the service `RouterServicer.route` of a started server (scheduler, scorer, decision id; not the
interceptor, which the empty handler runs too). Per server the page gives the work added over the empty
handler in process, the CPU added per call in the server under load, their ratio, and the Route share
(per round: best OK/s of the two concurrencies / the empty handler's; median and spread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import empty_server
from procs import default_cores, empty_cmd, service_cmd
from tiers import EMPTY_THREADS_WORKERS, round_ratios, rounds, run_header

from lmroute.v1 import router_pb2

SPIN_US = (50.0, 100.0, 200.0)
ROUNDS = 5
SECONDS = 4.0
PASSES = 5
EMPTY = "empty handler"
SERVICE = "service"
# --transport threads only: the empty and scoring-only handlers run as coroutines on the service's thread
# transport (empty_server.py --handoff); their handler work is that of the row named beside them
HANDOFF_ROWS = {
    "hand-off": (EMPTY, ["--handoff", "--no-interceptor"]),
    "hand-off + interceptor": (EMPTY, ["--handoff"]),
    "scoring only, hand-off + interceptor": ("scoring only", ["--handoff"]),
}


def requests() -> list[router_pb2.RouteRequest]:
    texts = [p["text"] for p in json.loads((HERE / "prompts.json").read_text())]
    return [router_pb2.RouteRequest(prompt=router_pb2.Prompt(text=t), router="mf", strong_share=0.5) for t in texts]


def cpu_us_per_call(call: Callable[[router_pb2.RouteRequest], object], reqs: list[router_pb2.RouteRequest]) -> float:
    """Median over PASSES of the thread CPU per call of `call` over `reqs` (after one warm pass)."""
    for r in reqs:
        call(r)
    passes = []
    for _ in range(PASSES):
        t0 = time.thread_time()
        for _ in range(10):
            for r in reqs:
                call(r)
        passes.append((time.thread_time() - t0) * 1e6 / (10 * len(reqs)))
    return statistics.median(passes)


def embed_check(loaded: Any) -> dict[str, Any]:
    """Whether `empty_server.embed_only` gives the bundle's own embeddings (`tokenize` + `embed`) for the
    benchmark prompts, one at a time and as one batch, and how many of them the encoder's limit cuts."""
    enc = loaded.encoder
    texts = [r.prompt.text for r in requests()]
    one = all(np.array_equal(empty_server.embed_only(enc, [t]), enc.embed(enc.tokenize([t]))) for t in texts)
    tokens = enc.tokenize(texts)
    return {
        "equal_one_by_one": one,
        "equal_batched": bool(np.array_equal(empty_server.embed_only(enc, texts), enc.embed(tokens))),
        "prompts": len(texts),
        "cut": int(tokens.truncated.sum()),
        "max_tokens": int(enc.max_tokens),
        "truncation": str(enc.truncation),
    }


def handler_work(bundle: Path, loaded: Any, spin_us: tuple[float, ...]) -> dict[str, float]:
    """In-process thread CPU per Route call of each server's handler work (see the module docstring);
    `loaded` is the bundle at `bundle`, loaded."""
    reqs = requests()
    scoring = empty_server.Scoring
    out: dict[str, float] = {EMPTY: cpu_us_per_call(empty_server.route_reply, reqs)}
    for n in spin_us:
        scoring.spin_s = n * 1e-6
        out[spin_name(n)] = cpu_us_per_call(empty_server.route_reply, reqs)
    scoring.spin_s = 0.0
    scoring.bundle = loaded
    scoring.embed_only = True
    out["tokenise + embed"] = cpu_us_per_call(empty_server.route_reply, reqs)
    scoring.embed_only = False
    out["scoring only"] = cpu_us_per_call(empty_server.route_reply, reqs)
    scoring.bundle = None
    out[SERVICE] = asyncio.run(service_work(bundle, reqs))
    return out


async def service_work(bundle: Path, reqs: list[router_pb2.RouteRequest]) -> float:
    """`RouterServicer.route` of a started server on `bundle` (port 0, logs at warning), per call."""
    from lmroute.service.config import ServiceConfig
    from lmroute.service.logs import configure_logging
    from lmroute.service.server import RouterServer

    configure_logging("warning")
    server = RouterServer(ServiceConfig(bundle_path=bundle, port=0))
    await server.start()
    try:
        route = server.servicer.route
        for r in reqs:
            await route(r, asked_tenant="", timeout_s=None)
        passes = []
        for _ in range(PASSES):
            t0 = time.thread_time()
            for _ in range(10):
                for r in reqs:
                    await route(r, asked_tenant="", timeout_s=None)
            passes.append((time.thread_time() - t0) * 1e6 / (10 * len(reqs)))
        return statistics.median(passes)
    finally:
        await server.stop(0)


def spin_name(n: float) -> str:
    return f"spin {n:g} us"


def markdown(summary: dict[str, Any], command: str) -> str:
    rows = summary["rounds"]
    names = list(rows[0])
    work = summary["handler_work_us"]
    chk = summary["embed_check"]
    cpu = {n: statistics.median(v["cpu_us_per_call"] for row in rows for v in row[n].values()) for n in names}
    lines = [
        "# The Route share's floor: what a handler's own work costs the server per call",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- {summary['date']}; {summary['cpu']}, {summary['n_cpus']} CPUs; Python {summary['python']}; "
        f"ghz {summary['ghz']}.",
        f"- Server pinned to core {summary['server_core']}, ghz to core {summary['client_core']}; "
        f"{len(rows)} interleaved rounds, each server: 2 s warm-up, then Route (router mf, strong_share 0.5, "
        f"benchmarks/ghz/prompts.json) at concurrency 16 and 64 for {summary['seconds']:g} s each.",
        f"- Bundle `{summary['bundle']}`: {summary['bundle_desc']}.",
        "- Every server on "
        + (
            "a synchronous gRPC server (empty-handler servers: `--sync --workers 256`, the handlers on its pool "
            "threads; the hand-off rows: `--sync --workers 256 --handoff`, the handler a coroutine on the "
            "service's thread transport; the service: `--transport threads`)."
            if summary.get("transport") == "threads"
            else "grpc.aio (the service: `--transport aio`)."
        ),
        f"- tokenise + embed gives the bundle's own embeddings for the {chk['prompts']} prompts, one at a time "
        f"and as one batch (the script's check); {chk['cut']} of them are longer than its {chk['max_tokens']} "
        f"tokens and are cut by its rule ({chk['truncation']}) first.",
        "- In process: thread CPU per Route call of the handler's work alone (median of "
        f"{PASSES} passes over the 64 prompts); under load: the server process's CPU per OK call (median over "
        "rounds and both concurrencies). Added = minus the empty handler's.",
        "",
        "| server | work in process, us/call | added | server CPU under load, us/call | added | added under load "
        "/ added in process | Route share of the empty handler: median (lowest-highest) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in names:
        shares = sorted(round_ratios(rows, n, EMPTY)) if n != EMPTY else [1.0]
        added_work, added_cpu = work[n] - work[EMPTY], cpu[n] - cpu[EMPTY]
        ratio = f"{added_cpu / added_work:.1f}" if n != EMPTY and added_work > 1 else "-"
        lines.append(
            f"| {n} | {work[n]:,.1f} | {added_work:,.1f} | {cpu[n]:,.0f} | {added_cpu:,.0f} | {ratio} | "
            f"{statistics.median(shares):.2f} ({shares[0]:.2f}-{shares[-1]:.2f}) |"
        )
    lines += [
        "",
        "Per round (best OK/s of the two concurrencies; CPU us/call at each):",
        "",
        "| round | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, row in enumerate(rows):
        cells = [str(i + 1)]
        for n in names:
            best = max(v["ok_per_s"] for v in row[n].values())
            cells.append(f"{best:,.0f}/s, " + " / ".join(f"{v['cpu_us_per_call']:,.0f}" for v in row[n].values()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a static-encoder bundle with an mf router")
    p.add_argument("--spin-us", type=float, nargs="*", default=list(SPIN_US), help="handler spins to measure")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument(
        "--transport",
        choices=("aio", "threads"),
        default="aio",
        help="every server on grpc.aio, or every server on a synchronous gRPC server (module docstring)",
    )
    p.add_argument("--out", type=Path, default=None, help="default: results/floor (aio), results/floor_threads")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = HERE / "results" / ("floor" if args.transport == "aio" else "floor_threads")
    from lmroute.bundle.loader import load_bundle, read_manifest

    m = read_manifest(args.bundle)
    if m.encoder.kind != "static" or "mf" not in m.routers:
        p.error(f"{args.bundle}: needs a static-encoder bundle with an mf router")
    t0 = time.time()
    loaded = load_bundle(args.bundle)
    if not empty_server.embeds_only(loaded.encoder):
        p.error(f"{args.bundle}: its tokenizer has no compiled fast path (needed by --embed-only)")
    check = embed_check(loaded)
    if not (check["equal_one_by_one"] and check["equal_batched"]):
        p.error(f"tokenise + embed does not give the bundle's embeddings: {check}")
    work = handler_work(args.bundle, loaded, tuple(args.spin_us))
    print("in process, us/call:", {k: round(v, 1) for k, v in work.items()}, file=sys.stderr)
    server_core, client_core = default_cores()
    empty = [
        *empty_cmd(),
        *(["--sync", "--workers", str(EMPTY_THREADS_WORKERS)] if args.transport == "threads" else []),
    ]
    scoring = ["--bundle", str(args.bundle)]
    handoff = [
        (name, [*empty, *flags, *(scoring if like != EMPTY else [])]) for name, (like, flags) in HANDOFF_ROWS.items()
    ]
    targets = [
        (EMPTY, empty),
        *((spin_name(n), [*empty, "--spin-us", f"{n:g}"]) for n in args.spin_us),
        ("tokenise + embed", [*empty, *scoring, "--embed-only"]),
        ("scoring only", [*empty, *scoring]),
        *(handoff if args.transport == "threads" else []),
        (SERVICE, service_cmd(args.bundle, transport=args.transport)),
    ]
    if args.transport == "threads":
        work.update({name: work[like] for name, (like, _) in HANDOFF_ROWS.items()})
    with tempfile.TemporaryDirectory() as tmp:
        per_round = rounds(targets, args.rounds, server_core, client_core, args.seconds, Path(tmp))
    summary = {
        **run_header(t0, server_core, client_core, args.seconds),
        "bundle": str(args.bundle),
        "transport": args.transport,
        "bundle_desc": f"{m.encoder.kind} {m.encoder.name} ({m.encoder.dim} dims), version {m.bundle_version}",
        "embed_check": check,
        "handler_work_us": work,
        "rounds": per_round,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    extra = [f"--transport {args.transport}"] if args.transport != "aio" else []
    extra += [f"--rounds {args.rounds}"] if args.rounds != ROUNDS else []
    extra += [f"--seconds {args.seconds:g}"] if args.seconds != SECONDS else []
    extra += ["--spin-us " + " ".join(f"{n:g}" for n in args.spin_us)] if tuple(args.spin_us) != SPIN_US else []
    command = " ".join([f".venv/bin/python benchmarks/ghz/floor.py --bundle {args.bundle}", *extra])
    (args.out / "RESULTS.md").write_text(markdown(json.loads(json.dumps(summary)), command))
    print((args.out / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
