"""The ghz benchmark sweep: the service vs the raw encoder, batch size 1, an empty handler and RouteLLM.

    scripts/install_ghz.sh && scripts/install_routellm.sh
    .venv/bin/python benchmarks/ghz/run.py --bundle artifacts/default --publish      # full, ~10 min on 2 cores
    .venv/bin/python benchmarks/ghz/run.py --bundle DIR --quick --out /tmp/ghzq     # check, ~2-3 min

In one run, server-side work pinned to `--server-cores` and ghz to `--client-cores` (taskset):
 1. the raw encoder ceiling (encoder_ceiling.py: ONNX Runtime alone, same prompts and batch shapes);
 2. the service (defaults, timings file on): warm; concurrency 1 interleaved (`--rounds` rounds of one
    ghz pass over the 64 prompts against the service, one against the empty handler and one raw-encoder
    batch-1 pass, back to back, so all three see the same machine state); closed-loop Route and Score
    at each concurrency, connections 1/4/16 at concurrency 64, one run through server reflection, then open-loop Route
    (ghz --async --rps) at fractions of the measured capacity up to 2x (overload);
 3. the service with --max-batch-size 1 (micro-batching off);
 4. the empty handler (empty_server.py: the transport's own cost);
 5. RouteLLM's own path (routellm_driver.py) for mf and sw_ranking;
 6. the raw encoder again (the machine's drift).
Writes OUT/summary.json, OUT/ghz/*.json (ghz reports without per-call details), OUT/*.png and
OUT/RESULTS.md; with --publish OUT is benchmarks/ghz/results/latest and RESULTS.md also goes to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GHZ, GhzRun, ghz_version, run_ghz
from procs import ChildServer, child_env, cpu_model, default_cores, empty_cmd, pinned, run_json_script, service_cmd

from lmroute.service.config import BatchPolicy

REPO = HERE.parent.parent
LOAD_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.1, 1.5, 2.0)


class Sweep:
    """Runs the phases and collects one dict of results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out: Path = args.out
        self.res: dict[str, Any] = {"runs": [], "server": {}, "notes": []}
        q = args.quick
        self.conc = [1, 64] if q else [1, 4, 16, 64, 256]
        if q:
            args.rounds = min(args.rounds, 2)
        self.secs = 3.0 if q else args.seconds
        self.fractions = (0.5, 2.0) if q else LOAD_FRACTIONS

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def ghz(self, srv: ChildServer, run: GhzRun, phase: str, prev: dict[str, Any] | None) -> dict[str, Any]:
        row = run_ghz(run, srv.target, self.a.client_cores, self.out / "ghz")
        row["phase"] = phase
        if srv.stats_path is not None:
            snap = srv.snapshot_after(time.time())
            row["server_before"], row["server_after"] = prev, snap
        self.res["runs"].append(row)
        self.log(
            f"{phase} {run.label}: {row['ok_per_s']:.1f} ok/s p50 {row['p50_ms']:.1f} ms "
            f"p99 {row['p99_ms']:.1f} ms status {row['status']}"
        )
        return row

    def encoder(self, when: str) -> None:
        self.log(f"raw encoder ({when})")
        args = [
            "--bundle",
            str(self.a.bundle),
            "--seconds",
            str(2.0 if self.a.quick else 5.0),
            "--batch",
            "1",
            "8",
            str(self.a.max_batch_size),
            "--chunk",
            str(self.a.encoder_chunk_size),
            "--intra-op-threads",
            str(self.a.intra_op_threads),
            "--device",
            self.a.device,
        ]
        self.res[f"encoder_{when}"] = run_json_script("encoder_ceiling.py", args, self.a.server_cores, 900)

    def service_flags(self, **over: object) -> dict[str, object]:
        flags: dict[str, object] = {"intra_op_threads": self.a.intra_op_threads, "device": self.a.device}
        flags.update(over)
        return flags

    def service(self) -> None:
        self.log("service (defaults)")
        cmd = service_cmd(self.a.bundle, **self.service_flags())
        with ChildServer(cmd, self.a.server_cores, stats=True) as srv:
            run_ghz(
                GhzRun("route.json", 4, 1, 2.0 if self.a.quick else 4.0, label="warm"),
                srv.target,
                self.a.client_cores,
                self.out / "ghz",
            )
            self.paired_c1(srv)
            prev = start = srv.snapshot_after(time.time())
            for call in ("route", "score"):
                for c in self.conc:
                    r = GhzRun(f"{call}.json", c, 1, self.secs, label=f"svc_{call}_c{c}")
                    prev = self.ghz(srv, r, f"service_{call}", prev)["server_after"]
            if not self.a.quick:
                for conns in (4, 16):
                    r = GhzRun("route.json", 64, conns, self.secs, label=f"svc_route_c64_conn{conns}")
                    prev = self.ghz(srv, r, "service_connections", prev)["server_after"]
            for call in ("route",) if self.a.quick else ("route", "score"):
                r = GhzRun(f"{call}_reflection.json", 16, 1, self.secs, label=f"svc_{call}_reflection_c16")
                prev = self.ghz(srv, r, "service_reflection", prev)["server_after"]
            closed = [x for x in self.res["runs"] if x["phase"] == "service_route"]
            capacity = max(x["ok_per_s"] for x in closed)
            self.res["capacity_route_per_s"] = capacity
            for f in self.fractions:
                rps = max(1, round(capacity * f))
                r = GhzRun("route.json", 64, 4, self.secs, rps=rps, label=f"svc_open_{int(f * 100)}pct")
                row = self.ghz(srv, r, "service_open", prev)
                row["load_fraction"] = f
                prev = row["server_after"]
        self.res["server"] = {
            "start": start,
            "final": srv.stop() or prev,
            "peak_rss_bytes": srv.peak_rss,
            "stopped_line": next((ln for ln in srv.stderr_tail if '"stopped"' in ln), ""),
        }

    def paired_c1(self, srv: ChildServer) -> None:
        """Concurrency 1, interleaved: per round one ghz pass (65 Route calls: the first, on a fresh
        connection, is dropped; call k carries prompt k mod 64) against the service, one against the
        empty handler, and one batch-1 pass of the raw encoder over the same 64 prompts. Latencies are
        kept in prompt order, so service call i pairs with the encoder's run of the same prompt."""
        self.log(f"concurrency 1, interleaved ({self.a.rounds} rounds)")
        n_prompts = len(json.loads((HERE / "prompts.json").read_text()))
        enc_cmd = pinned(
            self.a.server_cores,
            [
                sys.executable,
                str(HERE / "encoder_ceiling.py"),
                "--bundle",
                str(self.a.bundle),
                "--passes-from-stdin",
                "--intra-op-threads",
                str(self.a.intra_op_threads),
                "--device",
                self.a.device,
            ],
        )
        rounds: list[dict[str, Any]] = []
        with (
            ChildServer(empty_cmd(), self.a.server_cores, stats=False) as empty,
            subprocess.Popen(
                enc_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=REPO
            ) as enc,
        ):
            assert enc.stdin is not None and enc.stdout is not None
            if enc.stdout.readline().strip() != "ready":
                raise RuntimeError("encoder_ceiling.py --passes-from-stdin did not start")
            for i in range(self.a.rounds):
                row: dict[str, Any] = {}
                for name, target in (("service", srv.target), ("empty", empty.target)):
                    run = GhzRun(
                        "route.json", 1, 1, 0.0, label=f"c1_paired_{name}_{i}", count=n_prompts + 1, keep_latencies=True
                    )
                    with tempfile.TemporaryDirectory() as tmp:  # per-call latencies go to summary.json
                        lat = run_ghz(run, target, self.a.client_cores, Path(tmp))["latencies_ms"]
                    row[name] = [lat[n_prompts], *lat[1:n_prompts]]  # calls 1..64, in prompt order 0..63
                enc.stdin.write("pass\n")
                enc.stdin.flush()
                row["encoder"] = json.loads(enc.stdout.readline())
                rounds.append(row)
            enc.stdin.close()
        self.res["c1_paired"] = {"rounds": rounds, "prompts": n_prompts}

    def batch1(self) -> None:
        self.log("service, --max-batch-size 1")
        cmd = service_cmd(self.a.bundle, **self.service_flags(max_batch_size=1))
        with ChildServer(cmd, self.a.server_cores, stats=True) as srv:
            run_ghz(GhzRun("route.json", 4, 1, 2.0, label="warm_b1"), srv.target, self.a.client_cores, self.out / "ghz")
            prev = srv.snapshot_after(time.time())
            for c in [1, 64] if self.a.quick else [1, 16, 64]:
                prev = self.ghz(
                    srv, GhzRun("route.json", c, 1, self.secs, label=f"b1_route_c{c}"), "batch1_route", prev
                )["server_after"]

    def empty(self) -> None:
        self.log("empty handler")
        with ChildServer(empty_cmd(), self.a.server_cores, stats=False) as srv:
            for c in [1, 64] if self.a.quick else [1, 64, 256]:
                self.ghz(
                    srv, GhzRun("route.json", c, 1, min(self.secs, 5.0), label=f"empty_route_c{c}"), "empty_route", None
                )

    def routellm(self) -> None:
        self.log("RouteLLM path")
        secs = str(3.0 if self.a.quick else 8.0)
        try:
            mf = run_json_script(
                "routellm_driver.py",
                ["--bundle", str(self.a.bundle), "--routers", "mf", "--concurrency", "1", "64", "--seconds", secs],
                self.a.server_cores,
                900,
            )
            sw = run_json_script(
                "routellm_driver.py",
                [
                    "--bundle",
                    str(self.a.bundle),
                    "--routers",
                    "sw_ranking",
                    "--concurrency",
                    "1",
                    "4",
                    "--seconds",
                    secs,
                    "--battles",
                    str(self.a.battles),
                ],
                self.a.server_cores,
                900,
            )
            self.res["routellm"] = {**mf, "runs": mf["runs"] + sw["runs"]}
        except RuntimeError as exc:
            self.res["routellm"] = {"not_run": str(exc).splitlines()[0][:300]}
            self.log(f"RouteLLM not run: {exc}")

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.res["meta"] = machine_and_versions(self.a)
        phases = [
            ("raw encoder (before)", lambda: self.encoder("before")),
            ("service", self.service),
            ("service, batch size 1", self.batch1),
            ("empty handler", self.empty),
        ]
        if not self.a.skip_routellm:
            phases.append(("RouteLLM path", self.routellm))
        phases.append(("raw encoder (after)", lambda: self.encoder("after")))
        self.res["failed"] = {}
        for name, phase in phases:  # one failing phase is reported, the others still run
            try:
                phase()
            except Exception as exc:
                self.res["failed"][name] = f"{type(exc).__name__}: {exc}"[:1500]
                self.log(f"FAILED {name}: {exc}")
        self.res["meta"]["wall_s"] = time.time() - t0
        self.res["meta"]["loadavg_end"] = list(os.getloadavg())
        return self.res


def machine_and_versions(a: argparse.Namespace) -> dict[str, Any]:
    import platform

    import grpc
    import onnxruntime

    cpu = cpu_model()
    mem = next(
        (
            int(ln.split()[1]) * 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    manifest = json.loads((a.bundle / "manifest.json").read_text())
    files = [p for p in a.bundle.rglob("*") if p.is_file()]
    return {
        "command": " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/ghz/run.py", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "ghz": ghz_version(),
        "server_cores": a.server_cores,
        "client_cores": a.client_cores,
        "bundle": str(a.bundle),
        "bundle_label": a.label,
        "bundle_version": manifest.get("bundle_version", "?"),
        "bundle_bytes": sum(p.stat().st_size for p in files),
        "bundle_files": len(files),
        "routers": list(manifest.get("routers", {}))
        if isinstance(manifest.get("routers"), dict)
        else [r.get("name") for r in manifest.get("routers", [])],
        "intra_op_threads": a.intra_op_threads,
        "device": a.device,
        "quick": a.quick,
        "note": a.note,
        "loadavg_start": list(os.getloadavg()),
        "max_batch_size": a.max_batch_size,
        "encoder_chunk_size": a.encoder_chunk_size,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    server, client = default_cores()
    ap = argparse.ArgumentParser(
        prog="benchmarks/ghz/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--label", default="", help="how RESULTS.md names the bundle (e.g. 'default bundle')")
    ap.add_argument("--out", type=Path, help="results directory (default benchmarks/ghz/results/dev-<time>)")
    ap.add_argument(
        "--publish", action="store_true", help="write to benchmarks/ghz/results/latest and benchmarks/RESULTS.md"
    )
    ap.add_argument("--quick", action="store_true", help="2 concurrency levels, 3 s each (a check)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per ghz run (full mode)")
    ap.add_argument("--rounds", type=int, default=16, help="rounds of the interleaved concurrency-1 runs")
    ap.add_argument("--server-cores", default=server, help=f"taskset list for servers (default {server})")
    ap.add_argument("--client-cores", default=client, help=f"taskset list for ghz (default {client})")
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--max-batch-size",
        type=int,
        default=BatchPolicy().max_batch_size,
        help="the service's default (for the ceiling)",
    )
    ap.add_argument("--encoder-chunk-size", type=int, default=8, help="the service's default")
    ap.add_argument("--battles", type=int, default=55_000, help="RouteLLM sw_ranking battle table size")
    ap.add_argument("--skip-routellm", action="store_true")
    ap.add_argument("--note", default="", help="one line for RESULTS.md (e.g. what else ran on the machine)")
    a = ap.parse_args(argv)
    if not (a.bundle / "manifest.json").is_file():
        ap.error(f"--bundle {a.bundle}: no manifest.json there")
    if not GHZ.exists():
        ap.error(f"{GHZ} missing: run scripts/install_ghz.sh")
    a.bundle = a.bundle.resolve()
    a.label = a.label or a.bundle.name
    if a.publish:
        a.out = HERE / "results" / "latest"
        shutil.rmtree(a.out, ignore_errors=True)  # no stale files from an earlier run
    elif a.out is None:
        a.out = HERE / "results" / time.strftime("dev-%Y%m%d-%H%M%S")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    res = Sweep(a).run()
    (a.out / "summary.json").write_text(json.dumps(res, indent=1))
    from report import write_report

    md = write_report(res, a.out, plot_prefix="ghz/results/latest/" if a.publish else "")
    if a.publish:
        (REPO / "benchmarks" / "RESULTS.md").write_text(md)
    print(f"results in {a.out} ({res['meta']['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
