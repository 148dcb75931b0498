"""The encoder tiers side by side: the service on a static-, int8- and fp32-encoder bundle and the empty
handler, the same prompts, one run, the server on one core and ghz on the other.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/tiers.py --bundle static=/tmp/tiers/static \
        --bundle onnx-int8=/tmp/tiers/onnx-int8 --bundle onnx=/tmp/tiers/onnx \
        --out benchmarks/ghz/results/tiers

Per server (the empty handler first: grpc.aio, the project's baseline; then the same empty handler on a
synchronous gRPC server with 256 pool threads, the floor of the service's default thread transport (no
interceptor, no hand-off to an event loop); then, with `--scoring-only NAME` (default static), the empty
handler doing that bundle's scoring work and nothing else (`empty_server.py --bundle`), then each bundle
in the order given), with the service's defaults:
a 2 s warm-up, then closed-loop Route (router mf, strong_share 0.5, one prompt per call, round-robin
over benchmarks/ghz/prompts.json: 48 short + 16 long real Arena prompts) at concurrency 1, 16 and 64,
then Score calls of all 64 prompts (router mf) at concurrency 2. Route decisions/s per server core are
OK Route calls/s with the server pinned to one core; Score prompts/s are OK Score calls/s x 64. Latency
percentiles are over OK calls. Each server's peak RSS (VmHWM) is read before it stops; each bundle's
size is the sum of its files. Then `--rounds` (default 5) interleaved rounds of both empty handlers, the
scoring-only server, that bundle's service and the bundles named by `--round-also`, Route at concurrency
16 and 64 each, with the server's CPU per OK call: the Route share's median and spread over rounds
(against each empty handler), which one run's table cannot give.
Writes OUT/summary.json and OUT/RESULTS.md (the table and the goals of the fast-encoder issue judged on
this run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, cpu_model, default_cores, empty_cmd, service_cmd

REPO = HERE.parent.parent
ROUTE_CONCURRENCY = (1, 16, 64)
ROUND_CONCURRENCY = (16, 64)
ROUNDS = 5  # --rounds default
SCORE_PROMPTS = 64
SCORE_CONCURRENCY = 2
SCORING_ONLY = "scoring only"
EMPTY = "empty handler"
EMPTY_THREADS = "empty handler (threads)"
EMPTY_THREADS_WORKERS = 256  # the service's default --grpc-threads


def bundle_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def score_data(out_dir: Path) -> Path:
    """One ScoreRequest of all 64 benchmark prompts, router mf (ghz --data-file)."""
    texts = [p["text"] for p in json.loads((HERE / "prompts.json").read_text())]
    assert len(texts) == SCORE_PROMPTS
    path = out_dir / "score64_data.json"
    path.write_text(json.dumps([{"prompts": [{"text": t} for t in texts], "routers": ["mf"]}], ensure_ascii=False))
    return path


def measure(
    name: str, cmd: list[str], server_core: str, client_core: str, seconds: float, work: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "route": {}, "score": None}
    data = score_data(work)
    with ChildServer(cmd, server_core, stats=False) as srv:
        run_ghz(GhzRun("route.json", 4, 1, 2.0, label=f"{name}_warm"), srv.target, client_core, work / "ghz")
        for c in ROUTE_CONCURRENCY:
            run = GhzRun("route.json", c, 1, seconds, label=f"{name}_route_c{c}")
            out["route"][c] = run_ghz(run, srv.target, client_core, work / "ghz")
        run = GhzRun(
            "score.json", SCORE_CONCURRENCY, 1, seconds, label=f"{name}_score64", extra=["--data-file", str(data)]
        )
        s = run_ghz(run, srv.target, client_core, work / "ghz")
        s["prompts_per_s"] = s["ok_per_s"] * SCORE_PROMPTS
        out["score"] = s
        srv.stop()
        out["peak_rss_bytes"] = srv.peak_rss
    return out


def rounds(
    targets: list[tuple[str, list[str]]], n_rounds: int, server_core: str, client_core: str, seconds: float, work: Path
) -> list[dict[str, dict[str, Any]]]:
    """`n_rounds` rounds, each starting every target in turn and running Route at concurrency 16 and 64
    after a 2 s warm-up: OK calls/s and the server's CPU microseconds per OK call at each. Rounds
    interleave the servers, so a change of the machine's speed during the run moves every server of a
    round alike; the spread of a ratio over rounds says how far one run can be trusted."""
    out: list[dict[str, dict[str, Any]]] = []
    for r in range(n_rounds):
        row: dict[str, dict[str, Any]] = {}
        for name, cmd in targets:
            got: dict[str, Any] = {}
            with ChildServer(cmd, server_core, stats=False) as srv:
                run_ghz(
                    GhzRun("route.json", 4, 1, 2.0, label=f"r{r}_{name}_warm"), srv.target, client_core, work / "ghz"
                )
                for c in ROUND_CONCURRENCY:
                    cpu0 = srv.cpu_seconds()
                    g = run_ghz(
                        GhzRun("route.json", c, 1, seconds, label=f"r{r}_{name}_c{c}"),
                        srv.target,
                        client_core,
                        work / "ghz",
                    )
                    cpu_us = (srv.cpu_seconds() - cpu0) * 1e6 / max(g["ok"], 1)
                    got[str(c)] = {"ok_per_s": g["ok_per_s"], "cpu_us_per_call": cpu_us, "status": g["status"]}
            row[name] = got
            print(f"round {r + 1}/{n_rounds} {name}: {[round(v['ok_per_s']) for v in got.values()]}/s", file=sys.stderr)
        out.append(row)
    return out


def run_header(t0: float, server_core: str, client_core: str, seconds: float) -> dict[str, Any]:
    """What a results page says of its run: start (`t0`, time.time()), host, versions, cores, run length,
    wall time so far."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "cpu": cpu_model(),
        "n_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ghz": ghz_version(),
        "server_core": server_core,
        "client_core": client_core,
        "seconds": seconds,
        "wall_s": round(time.time() - t0, 1),
    }


def round_ratios(rows: list[dict[str, dict[str, Any]]], name: str, base: str) -> list[float]:
    """Per round: `name`'s best Route OK/s over the round's concurrencies / `base`'s best."""
    return [
        max(v["ok_per_s"] for v in row[name].values()) / max(v["ok_per_s"] for v in row[base].values()) for row in rows
    ]


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def markdown(summary: dict[str, Any], command: str) -> str:
    rows = summary["servers"]
    empty = next(r for r in rows if r["name"] == EMPTY)
    lines = [
        "# Encoder tiers side by side: Route and Score per server core, latency, memory",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- {summary['date']}; {summary['cpu']}, {summary['n_cpus']} CPUs; Python {summary['python']}; ghz {summary['ghz']}.",
        f"- Server pinned to core {summary['server_core']}, ghz to core {summary['client_core']}; {summary['seconds']:g} s "
        "per run after a 2 s warm-up; service defaults (`lmroute-serve --bundle B`) plus the flags a row's bundle "
        "column names.",
        "- Route: router mf, strong_share 0.5, one prompt per call over benchmarks/ghz/prompts.json (48 short + 16 "
        f"long Arena prompts); Score: all 64 prompts per call, router mf, concurrency {SCORE_CONCURRENCY}.",
        "- Latency percentiles over OK calls; `statuses` counts every call of the run.",
        "",
        "| server | bundle | Route c=1 OK/s | p50 / p99 ms | Route c=16 OK/s | p50 / p99 ms | Route c=64 OK/s "
        "| p50 / p99 ms | Score prompts/s | Score p50 ms | peak RSS MiB |",
        "|---|---|---:|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["name"], r.get("bundle_desc", "-")]
        for c in ROUTE_CONCURRENCY:
            g = r["route"][str(c)] if str(c) in r["route"] else r["route"][c]
            bad = {k: v for k, v in g["status"].items() if k != "OK"}
            cells += [_fmt(g["ok_per_s"]) + (f" ({bad})" if bad else ""), f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f}"]
        s = r["score"]
        cells += [_fmt(s["prompts_per_s"], 0), f"{s['p50_ms']:.1f}", _fmt((r["peak_rss_bytes"] or 0) / 2**20, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Goals (static tier, this run)", "", "| goal | measured | target | |", "|---|---|---|---|"]
    static = next((r for r in rows if r["name"] == "static"), None)
    if static is not None:
        best = max(static["route"].values(), key=lambda g: g["ok_per_s"])
        empty_best = max(empty["route"].values(), key=lambda g: g["ok_per_s"])
        c1 = static["route"]["1"] if "1" in static["route"] else static["route"][1]
        goals = [
            (
                "Route decisions/s on one server core (best concurrency)",
                best["ok_per_s"],
                ">= 1,000",
                best["ok_per_s"] >= 1000,
            ),
            (
                "... as a share of the empty handler's best (grpc.aio)",
                best["ok_per_s"] / empty_best["ok_per_s"],
                ">= 0.75",
                best["ok_per_s"] / empty_best["ok_per_s"] >= 0.75,
            ),
            ("Route p50 at concurrency 1, ms", c1["p50_ms"], "<= 1.5", c1["p50_ms"] <= 1.5),
            (
                "Score prompts/s on one server core (64 per call)",
                static["score"]["prompts_per_s"],
                ">= 10,000",
                static["score"]["prompts_per_s"] >= 10_000,
            ),
        ]
        per_round = summary.get("rounds") or []
        if per_round and "static" in per_round[0]:
            at = 2
            for base, what in ((EMPTY, "grpc.aio"), (EMPTY_THREADS, "the synchronous server the service runs on")):
                if base in per_round[0]:
                    median = statistics.median(round_ratios(per_round, "static", base))
                    goals.insert(
                        at,
                        (
                            f"... the share of the empty handler on {what}, median of {len(per_round)} interleaved "
                            "rounds (below)",
                            median,
                            ">= 0.75",
                            median >= 0.75,
                        ),
                    )
                    at += 1
        for what, got, target, ok in goals:
            lines.append(f"| {what} | {got:,.2f} | {target} | **{'PASS' if ok else 'MISS'}** |")
        only = next((r for r in rows if r["name"] == SCORING_ONLY), None)
        if only is not None:
            only_best = max(only["route"].values(), key=lambda g: g["ok_per_s"])
            share = only_best["ok_per_s"] / empty_best["ok_per_s"]
            lines.append(
                f"| for comparison: the static bundle's scoring work alone in the empty handler, share of its best "
                f"| {share:,.2f} | (no goal: the bound of any service path here) | |"
            )
    if summary.get("rounds"):
        lines += rounds_markdown(summary["rounds"], summary["seconds"])
    lines += ["", "Bundles:", ""]
    for r in rows:
        if "bundle" in r:
            lines.append(
                f"- {r['name']}: `{r['bundle']}`, {r['bundle_desc']}, {r['bundle_bytes'] / 2**20:,.1f} MiB on disk."
            )
    return "\n".join(lines) + "\n"


def rounds_markdown(rows: list[dict[str, dict[str, Any]]], seconds: float) -> list[str]:
    names = list(rows[0])
    cs = list(rows[0][names[0]])
    lines = [
        "",
        f"## Route in {len(rows)} interleaved rounds (the share of the empty handler, run after run)",
        "",
        f"Each round starts {', '.join(names)} in turn (2 s warm-up, then Route at concurrency "
        f"{' and '.join(cs)} for {seconds:g} s each); a server's rate in a round is its best of those. "
        "CPU us/call: the server process's user + system CPU over the run / its OK calls.",
        "",
        "| round | "
        + " | ".join(f"{n} OK/s (c={c}) | CPU us/call" for n in names for c in cs)
        + " | "
        + " | ".join(f"{n} / empty" for n in names[1:])
        + " |",
        "|---|" + "---:|---:|" * (len(names) * len(cs)) + "---:|" * (len(names) - 1),
    ]
    ratios = {n: round_ratios(rows, n, names[0]) for n in names[1:]}
    for i, row in enumerate(rows):
        cells = [str(i + 1)]
        for n in names:
            for c in cs:
                cells += [_fmt(row[n][c]["ok_per_s"]), _fmt(row[n][c]["cpu_us_per_call"], 0)]
        cells += [f"{ratios[n][i]:.2f}" for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    for base in [b for b in (EMPTY, EMPTY_THREADS) if b in names]:
        lines += ["", f"| share of the {base}'s Route rate | median | lowest | highest |", "|---|---:|---:|---:|"]
        for n in names:
            if n != base:
                r = sorted(round_ratios(rows, n, base))
                lines.append(f"| {n} | {statistics.median(r):.2f} | {r[0]:.2f} | {r[-1]:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, help="NAME=DIR, repeatable, in the order to run")
    p.add_argument(
        "--scoring-only",
        default="static",
        help="the bundle NAME whose scoring work alone (empty_server.py --bundle) is measured too, after the empty "
        "handler: the most any service path could make of it on this transport ('' = none)",
    )
    p.add_argument(
        "--flags",
        action="append",
        default=[],
        help="NAME=FLAGS, repeatable: extra lmroute-serve flags for the bundle NAME (e.g. a second NAME for the same "
        "directory with other batch settings)",
    )
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="then this many interleaved rounds of Route (c=16, 64) on the empty handler, the scoring-only server and "
        "the --scoring-only bundle, for the spread of the Route share (0 = none)",
    )
    p.add_argument(
        "--round-also",
        action="append",
        default=[],
        help="NAME, repeatable: a bundle NAME to run in the interleaved rounds too (e.g. the same bundle on the aio "
        "transport)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "tiers")
    args = p.parse_args(argv)
    server_core, client_core = default_cores()
    from lmroute.bundle.loader import read_manifest

    sync = [*empty_cmd(), "--sync", "--workers", str(EMPTY_THREADS_WORKERS)]
    targets: list[tuple[str, list[str], dict[str, Any]]] = [(EMPTY, empty_cmd(), {}), (EMPTY_THREADS, sync, {})]
    extra = {name: shlex.split(flags) for name, _, flags in (f.partition("=") for f in args.flags)}
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        bundle = Path(path)
        m = read_manifest(bundle)
        desc = f"{m.encoder.kind} {m.encoder.name} ({m.encoder.dim} dims{', int8' if m.encoder.quantized else ''}), version {m.bundle_version}"
        if name in extra:
            desc += f"; flags {' '.join(extra[name])}"
        info = {"bundle": str(bundle), "bundle_desc": desc, "bundle_bytes": bundle_bytes(bundle)}
        targets.append((name, [*service_cmd(bundle), *extra.get(name, [])], info))
        if name == args.scoring_only:
            only = {"bundle_desc": f"{name}: its scoring work in the empty handler"}
            targets.insert(2, (SCORING_ONLY, [*empty_cmd(), "--bundle", str(bundle)], only))
    t0 = time.time()
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, info in targets:
            res = measure(name, cmd, server_core, client_core, args.seconds, Path(tmp))
            servers.append({**res, **info})
            print(
                f"{name}: Route c=1 {res['route'][1]['ok_per_s']:.1f}/s, Score {res['score']['prompts_per_s']:.0f} prompts/s",
                file=sys.stderr,
            )
        in_rounds = {EMPTY, EMPTY_THREADS, SCORING_ONLY, args.scoring_only, *args.round_also}
        round_targets = [(n, cmd) for n, cmd, _ in targets if n in in_rounds]
        per_round = (
            rounds(round_targets, args.rounds, server_core, client_core, args.seconds, Path(tmp)) if args.rounds else []
        )
    summary = {
        **run_header(t0, server_core, client_core, args.seconds),
        "servers": servers,
        "rounds": per_round,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    command = ".venv/bin/python benchmarks/ghz/tiers.py " + " ".join(
        [*(f"--bundle {shlex.quote(b)}" for b in args.bundle), *(f"--flags {shlex.quote(f)}" for f in args.flags)]
        + [f"--round-also {shlex.quote(n)}" for n in args.round_also]
        + ([f"--rounds {args.rounds}"] if args.rounds != ROUNDS else [])
    )
    (args.out / "RESULTS.md").write_text(markdown(json.loads(json.dumps(summary, default=str)), command))
    print((args.out / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
