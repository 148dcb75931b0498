"""What the OpenAI-compatible front adds over a direct gRPC Route: latency (p50, p99) and throughput.

    .venv/bin/python benchmarks/openai_front.py [--bundle DIR] [--calls 2000] [--seconds 10]
        [--concurrency 8] [--out benchmarks/results/openai_front]

Three processes: fake upstream LLMs (lmroute.service.fake_upstream: real HTTP on 127.0.0.1, answers at
once), the server (lmroute-serve with `--http-port`, over FakeScorer by default so that the serving path
itself is what is measured, or over `--bundle`), and this client. On a machine of two or more cores the
server is pinned to the first half of the cores and the client and upstreams to the other half.

Measured side by side in one run, each call kind in turn so all see the same conditions:

    route     gRPC Route (threshold 0.5): the routing decision alone
    upstream  POST /v1/chat/completions straight to the fake upstream: what a caller pays without routing
    front     POST /v1/chat/completions to the front (model router-mf-0.5): route + forward + answer

The front's added latency is front - upstream (per percentile); it is compared with route. Latency is
sequential (one call at a time, `--calls` of each after 100 to warm up); throughput is `--concurrency`
closed-loop threads for `--seconds` per kind. Writes report.md and results.json to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent / "ghz"))
from procs import ChildServer, child_env, default_cores, pinned

from lmroute.service.client import RouterClient

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Explain why the sum of two even numbers is even, in two sentences."


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _start_upstreams(cores: str | None, delay_s: float = 0.0) -> tuple[subprocess.Popen[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "lmroute.service.fake_upstream", "strong", "weak", "--delay-s", str(delay_s)]
    proc = subprocess.Popen(pinned(cores, cmd), stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO)
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    while len(urls) < 2:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake upstreams exited with {proc.wait()}")
        if m := re.match(r"fake-upstream (\S+) on (\S+)", line):
            urls[m.group(1)] = m.group(2)
    return proc, urls


def _upstreams_file(urls: dict[str, str], prefix: str, **settings: float) -> Path:
    """A temporary upstreams file naming the fake strong and weak upstreams, each with `settings`."""
    path = Path(tempfile.mkdtemp(prefix=prefix)) / "upstreams.json"
    path.write_text(
        json.dumps({t: {"model": f"{t}-model", "base_url": urls[t], **settings} for t in ("strong", "weak")})
    )
    return path


def _front_url(server: ChildServer) -> str:
    """The base URL of the server's OpenAI front, from its start-up lines."""
    return next(m.group(1) for line in server.stderr_tail if (m := re.search(r"front on (\S+)", line)) is not None)


def _publish(out: Path | None, res: dict[str, Any], text: str) -> None:
    """Print the report; with `out`, write it and the raw results there."""
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "report.md").write_text(text)


def _server_cmd(args: argparse.Namespace, upstreams_file: Path, *flags: str) -> list[str]:
    common = ["--port", "0", "--http-port", "0", "--upstreams-file", str(upstreams_file), "--log-level", "warning"]
    common += flags
    if args.bundle is None:
        return [sys.executable, str(REPO / "benchmarks" / "ghz" / "fake_server.py"), "--fake-routers", "mf", *common]
    return [sys.executable, "-m", "lmroute.service.main", "--bundle", str(args.bundle), *common]


def _kinds(grpc_target: str, front: str, upstream: str) -> dict[str, Callable[[], Callable[[], None]]]:
    """kind -> a factory of one caller's call function (each thread gets its own connection)."""
    messages = [{"role": "user", "content": PROMPT}]

    def route() -> Callable[[], None]:
        client = RouterClient(grpc_target)
        return lambda: client.route(PROMPT, router="mf", threshold=0.5) and None

    def http(url: str, model: str) -> Callable[[], Callable[[], None]]:
        def make() -> Callable[[], None]:
            session = requests.Session()
            body = json.dumps({"model": model, "messages": messages}).encode()
            headers = {"Content-Type": "application/json"}

            def call() -> None:
                r = session.post(url + "/chat/completions", data=body, headers=headers, timeout=30)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")

            return call

        return make

    return {"route": route, "upstream": http(upstream, "strong-model"), "front": http(front, "router-mf-0.5")}


def _latency(kinds: dict[str, Callable[[], Callable[[], None]]], calls: int) -> dict[str, dict[str, float]]:
    fns = {k: make() for k, make in kinds.items()}
    for _ in range(100):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(calls):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    return {
        k: {"p50_ms": _percentile(v, 0.5), "p99_ms": _percentile(v, 0.99), "mean_ms": sum(v) / len(v)}
        for k, v in times.items()
    }


def _throughput(make: Callable[[], Callable[[], None]], threads: int, seconds: float) -> float:
    counts = [0] * threads
    errors: list[BaseException] = []
    stop = threading.Event()
    fns = [make() for _ in range(threads)]

    def worker(j: int) -> None:
        try:
            while not stop.is_set():
                fns[j]()
                counts[j] += 1
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(j,)) for j in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} callers failed: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - t0)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(args: argparse.Namespace, res: dict[str, Any]) -> str:
    lat, thr = res["latency"], res["throughput"]
    added = {q: lat["front"][q] - lat["upstream"][q] for q in ("p50_ms", "p99_ms")}
    lines = [
        "# OpenAI-compatible front: added latency and throughput",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{res['machine']}; server on cores {res['server_cores']}, client and fake upstreams on cores "
        f"{res['client_cores']}; scorer: {res['scorer']}; {args.calls} sequential calls of each kind, "
        f"throughput with {args.concurrency} closed-loop callers for {args.seconds:g} s per kind.",
        "",
        "| call | p50 ms | p99 ms | mean ms | calls/s | server CPU ms per call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cpu = res["server_cpu_ms_per_call"]
    for k in ("route", "upstream", "front"):
        lines.append(
            f"| {k} | {lat[k]['p50_ms']:.3f} | {lat[k]['p99_ms']:.3f} | {lat[k]['mean_ms']:.3f} | {thr[k]:.0f} "
            f"| {cpu[k]:.3f} |"
        )
    lines += [
        "",
        f"Added by the front (front - upstream): p50 {added['p50_ms']:.3f} ms, p99 {added['p99_ms']:.3f} ms; "
        f"a direct gRPC Route costs p50 {lat['route']['p50_ms']:.3f} ms, p99 {lat['route']['p99_ms']:.3f} ms "
        f"(ratio of p50s {added['p50_ms'] / lat['route']['p50_ms']:.2f}).",
        "",
        "calls/s is what the closed-loop callers reached; they and the fake upstreams share the client "
        "cores, which bound it. Server CPU ms per call (the server process's user + system time over the "
        "throughput phase, divided by its calls) is the server's own cost: the front's work over a direct "
        f"Route is {cpu['front'] - cpu['route']:.3f} ms of server CPU per call (the upstream row: the server is "
        "idle, nothing of it is the server's).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="serve this bundle (default: FakeScorer)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    server_cores, client_cores = default_cores()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(c) for c in client_cores.split(",")})
    up_proc, urls = _start_upstreams(client_cores)
    upstreams_file = _upstreams_file(urls, "lmroute-front-bench-", max_concurrency=256)
    server = ChildServer(_server_cmd(args, upstreams_file), server_cores, stats=False).start()
    try:
        front = _front_url(server)
        kinds = _kinds(server.target, front, urls["strong"])
        res: dict[str, Any] = {
            "command": "benchmarks/openai_front.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "server_cores": server_cores,
            "client_cores": client_cores,
            "scorer": f"bundle {args.bundle}" if args.bundle else "FakeScorer (router mf)",
            "latency": _latency(kinds, args.calls),
        }
        assert server.proc is not None
        throughput, cpu = {}, {}
        for k, make in kinds.items():
            c0 = _cpu_s(server.proc.pid)
            throughput[k] = _throughput(make, args.concurrency, args.seconds)
            cpu[k] = (_cpu_s(server.proc.pid) - c0) * 1000 / (throughput[k] * args.seconds)
        res["throughput"] = throughput
        res["server_cpu_ms_per_call"] = cpu
    finally:
        server.stop()
        up_proc.terminate()
        up_proc.wait(30)
    _publish(args.out, res, _report(args, res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
