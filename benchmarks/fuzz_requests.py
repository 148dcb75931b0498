"""Coverage-guided fuzzing of request parsing -> validation -> scheduling -> a fake scorer, through a real
gRPC server on 127.0.0.1.

    .venv/bin/python benchmarks/fuzz_requests.py --runs 100000 --out benchmarks/results/fuzz

Each input's first byte picks the RPC (Score, Route, Feedback, ListRouters, GetRouter); the rest is sent
as that call's request bytes, undecoded, so the server's own decoding, limits and validation meet
whatever the fuzzer makes. The lmroute modules are instrumented (atheris), so inputs that reach new code
are kept and mutated further, from a seed of valid requests. The server runs FakeScorer (routers random
and mf), share targets for two tenants and an SQLite outcome store (so Feedback is judged item by item).

An input fails the run when its call ends with a code other than OK, INVALID_ARGUMENT (the request is
malformed or invalid; names the field) or NOT_FOUND (the router a Route or GetRouter call names, or one
a Score call names, is not loaded: the API's answer to an unknown name), or when the server stops
answering: INTERNAL or UNKNOWN would mean an unhandled exception; or when the process holds more than
2 GiB. The counts by RPC and code are written at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import atheris
import grpc

with atheris.instrument_imports(include=["lmroute"]):
    from lmroute.service.config import ServiceConfig
    from lmroute.service.fake_scorer import FakeScorer
    from lmroute.service.logs import configure_logging
    from lmroute.service.testing import ServerThread
    from lmroute.v1 import router_pb2

METHODS = (
    "/lmroute.v1.RouterService/Score",
    "/lmroute.v1.RouterService/Route",
    "/lmroute.v1.RouterService/Feedback",
    "/lmroute.v1.RouterService/ListRouters",
    "/lmroute.v1.RouterService/GetRouter",
)
ALLOWED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}


RSS_LIMIT_MB = 2048


def current_rss_mb() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seeds() -> list[bytes]:
    """Valid requests of each RPC, the fuzzer's starting corpus."""
    p = router_pb2.Prompt
    return [
        bytes([0]) + router_pb2.ScoreRequest(prompts=[p(text="hello"), p(text="Prove it.")]).SerializeToString(),
        bytes([1]) + router_pb2.RouteRequest(prompt=p(text="hi"), router="mf", threshold=0.5).SerializeToString(),
        bytes([1]) + router_pb2.RouteRequest(prompt=p(text="hi"), router="mf").SerializeToString(),
        bytes([1])
        + router_pb2.RouteRequest(
            prompt=p(conversation=router_pb2.Conversation(messages=[router_pb2.ChatMessage(role="user", content="x")])),
            router="random",
            strong_share=0.3,
        ).SerializeToString(),
        bytes([2])
        + router_pb2.FeedbackRequest(
            outcomes=[router_pb2.OutcomeReport(decision_id="0" * 32, single=router_pb2.SingleOutcome(quality=1.0))]
        ).SerializeToString(),
        bytes([3]),
        bytes([4]) + router_pb2.GetRouterRequest(name="mf").SerializeToString(),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000, help="inputs to try")
    ap.add_argument("--out", type=Path, help="write <out>/RESULTS.md and results.json")
    args, fuzzer_args = ap.parse_known_args()  # the rest goes to libFuzzer

    configure_logging("error")
    store = tempfile.TemporaryDirectory()
    cfg = ServiceConfig(
        bundle_path=Path("unused"),
        port=0,
        log_level="error",
        grace_s=0.0,
        share_targets="default=0.3,batch=0.1",
        store=f"sqlite:{store.name}/outcomes.sqlite3",
    )
    fake = FakeScorer(routers=("random", "mf"))
    server = ServerThread(cfg, scorer_factory=lambda _cfg: fake).start()
    channel = grpc.insecure_channel(server.target)
    calls = [channel.unary_unary(m) for m in METHODS]  # no serializers: raw bytes in, raw bytes out
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    bad: list[str] = []

    def finish() -> int:
        seconds = time.perf_counter() - t0
        channel.close()
        server.stop()
        total = sum(counts.values())
        print(f"{total} inputs in {seconds:.0f} s; {len(bad)} failures", file=sys.stderr)
        if args.out:
            write_results(args.out, counts, bad, seconds)
        return 1 if bad else 0

    def one_input(data: bytes) -> None:
        which = data[0] % len(METHODS) if data else 0
        try:
            calls[which](data[1:], timeout=30)
            name = grpc.StatusCode.OK.name
        except grpc.RpcError as e:
            name = e.code().name
        except Exception as e:  # anything else the client side raised: a failure, reported, not a crash
            name = f"client raised {type(e).__name__}: {e}"[:200]
        counts[(METHODS[which].rsplit("/", 1)[1], name)] += 1
        if name not in ALLOWED:
            bad.append(f"{METHODS[which]} -> {name}: {data[1:][:200]!r}")
        n = sum(counts.values())
        if n % 1000 == 0 and (rss := current_rss_mb()) > RSS_LIMIT_MB:
            bad.append(f"resident memory {rss:.0f} MiB after {n} inputs (limit {RSS_LIMIT_MB})")
        if n >= args.runs or bad:
            sys.stderr.flush()
            os._exit(finish())  # libFuzzer would exit() without returning to Python

    corpus = Path(".cache/fuzz_corpus")
    corpus.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(s)
    t0 = time.perf_counter()
    # libFuzzer's own RSS limit reads the peak RSS, which Linux carries across exec from the parent (a
    # test runner's gigabytes): the current RSS is checked here instead (RSS_LIMIT_MB)
    # (a crashing input, if any, is written to the system's temp directory, not the repository)
    prefix = f"-artifact_prefix={tempfile.gettempdir()}/lmroute-fuzz-"
    atheris.Setup([sys.argv[0], "-rss_limit_mb=0", prefix, *fuzzer_args, str(corpus)], one_input)
    atheris.Fuzz()
    return finish()  # not reached: one_input ends the process after --runs inputs


def write_results(out: Path, counts: collections.Counter[tuple[str, str]], bad: list[str], seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(counts.items())
    total = sum(counts.values())
    command = "python benchmarks/fuzz_requests.py " + " ".join(sys.argv[1:])
    result = {
        "command": command,
        "inputs": total,
        "seconds": round(seconds, 1),
        "failures": bad,
        "counts": [{"rpc": r, "code": c, "n": n} for (r, c), n in rows],
        "hardware": f"{platform.machine()} CPU, 2 cores, no GPU",
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Fuzzing the request path",
        "",
        f"Command: `.venv/bin/{command}`",
        "",
        f"{result['hardware']}; {total} inputs in {seconds:.0f} s; **{len(bad)} failures** (a code outside "
        "OK, INVALID_ARGUMENT and NOT_FOUND for an unknown router, or a server that stopped answering).",
        "",
        "| rpc | code | inputs |",
        "|---|---|---:|",
        *[f"| {r} | {c} | {n} |" for (r, c), n in rows],
    ]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
