"""Two revisions of the service side by side on one host: interleaved ghz runs, medians, noise band.

Figures from different runs (let alone different CPUs) cannot tell whether a change to the serving path
changed its speed. This script serves two git revisions at once, with the same interpreter, the same
third-party packages, the same encoder and the same server settings, and alternates short ghz runs
between them, so that drifting background load hits both alike.

`prepare` lays each revision out under WORK/<old|new>/ (default WORK = /tmp/lmroute-revs):

- src/     `git archive REV` of the repository;
- its protobuf code, generated with the revision's own scripts/gen_proto.sh;
- its compiled scoring core, built from its own kernels/ with CMake + nanobind like setup.py does
  (the core checks the fingerprint of the sources beside it, so each revision needs its own build);
- import/  symlinks that map the revision's package names (pyproject.toml `package-dir`:
  lmroute_bundle, lmroute_service, ... before the namespace change, lmroute.bundle, lmroute.service, ...
  after) onto src/, so that PYTHONPATH=WORK/<rev>/import imports that revision and nothing else;
- bundle/  a quick bundle of the revision's own schema, built by its own `export.cli build --quick`
  (packaged all-MiniLM-L6-v2 encoder, the repository's data/; the encoder files come out identical).

`run` starts both servers (`<service package>.main --bundle WORK/<rev>/bundle --port 0`, default
settings but a long queue deadline, --queue-timeout-ms 30000, so that a slow or busy host queues calls
instead of shedding them), both pinned with taskset to the same core, ghz pinned to the other, warms
both, and then
for each round and each workload runs ghz once against each server, the order flipping at every
pair (old/new, new/old, ...):

- route_c1:  Route (router mf) at concurrency 1, 128 calls = twice over the 64 benchmark prompts;
- route_c16: Route at concurrency 16 for 8 s (saturation);
- score_c4:  Score (mf, sw_ranking) with 8 prompts per call (the same 64 prompts) at concurrency 4
  for 8 s.

The Route runs use benchmarks/ghz/route.json of the new revision (the call files, the prompts and the
.proto are the same in both revisions); Score uses score.json with its data replaced by 8 calls of 8
prompts. Per run it keeps OK calls/s, p50 and p99 (OK calls only). Per revision and metric it reports
the median over rounds and the spread (min-max); new/old is the ratio of the medians. The noise band
of a metric is half the larger relative spread, (max - min) / (2 * median), of the two revisions'
repeated runs; a difference is within noise when |new/old - 1| is inside that band. Next to it: a 95%
bootstrap interval of new/old (resampling whole rounds) and in how many rounds the new revision's figure
was the higher of the pair run back to back.

Commands (from the repository root, with the project's .venv; ghz from scripts/install_ghz.sh, found
in benchmarks/ghz/.bin/ or on PATH, or give --ghz):

    .venv/bin/python benchmarks/ghz/compare_revisions.py prepare --old 8b24f2d --new 01c7733  # ~5 min
    .venv/bin/python benchmarks/ghz/compare_revisions.py run --rounds 16 \\
        --markdown benchmarks/RESULTS_revisions.md                                          # ~1 min a round

`run` writes WORK/runs/<time>/results.json (every run) and, with --markdown, the results page;
`report WORK/runs/<time>/results.json [--markdown FILE]` redraws the summary and the page.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REVISIONS = ("old", "new")
METRICS = {"calls_per_s": "calls/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# prepare: a revision as an importable snapshot with its own proto code, core and bundle


@dataclass(frozen=True)
class Snapshot:
    """One revision laid out under WORK/<label>/."""

    label: str
    root: Path

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def import_dir(self) -> Path:
        return self.root / "import"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def package_dirs(self) -> dict[str, str]:
        """pyproject.toml's [tool.setuptools.package-dir]: import name -> folder in the tree."""
        with open(self.src / "pyproject.toml", "rb") as f:
            return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])

    def package_of(self, folder: str) -> str:
        """The import name of a top-level folder (service -> lmroute_service or lmroute.service)."""
        names = [name for name, d in self.package_dirs().items() if d == folder]
        if len(names) != 1:
            raise RuntimeError(f"{self.src}/pyproject.toml maps {folder!r} to {names}")
        return names[0]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONPATH=str(self.import_dir), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        return env

    def python(self, args: Sequence[str], python: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, *args], env=self.env(), cwd=self.import_dir, text=True, check=True, **kw)


def extract(rev: str, dest: Path) -> str:
    """`git archive rev` of the repository into dest; returns the full commit id."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    data = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def build_core(snap: Snapshot, python: str) -> None:
    """Compile src/kernels (CMake + nanobind, Release, like setup.py) and put _core*.so beside it."""
    nanobind_dir = subprocess.run(
        [python, "-c", "import nanobind; print(nanobind.cmake_dir())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tools = Path(python).parent
    cmake = str(tools / "cmake") if (tools / "cmake").exists() else "cmake"
    build = snap.root / "build"
    configure = [
        cmake,
        "-S",
        str(snap.src / "kernels"),
        "-B",
        str(build),
        f"-DPython_EXECUTABLE={python}",
        f"-Dnanobind_DIR={nanobind_dir}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    if (tools / "ninja").exists():
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tools / 'ninja'}"]
    subprocess.run(configure, check=True, capture_output=True)
    jobs = str(os.cpu_count() or 1)
    subprocess.run([cmake, "--build", str(build), "--parallel", jobs], check=True, capture_output=True)
    (core,) = build.glob("_core*.so")
    shutil.copyfile(core, snap.src / "kernels" / core.name)


def link_packages(snap: Snapshot) -> None:
    """import/<name as path> -> src/<folder> for every package-dir entry. A package that others nest
    in (lmroute holding lmroute.bundle, ...) becomes a real folder of links to its own files."""
    if snap.import_dir.exists():
        shutil.rmtree(snap.import_dir)
    mapping = snap.package_dirs()
    for name in sorted(mapping, key=lambda n: n.count(".")):
        target = snap.src / mapping[name]
        path = snap.import_dir / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if any(other.startswith(name + ".") for other in mapping):
            path.mkdir()
            for entry in target.iterdir():
                if entry.name != "__pycache__":
                    (path / entry.name).symlink_to(entry)
        else:
            path.symlink_to(target, target_is_directory=True)


def prepare(args: argparse.Namespace) -> int:
    work: Path = args.work
    python = args.python
    commits = {}
    for label, rev in (("old", args.old), ("new", args.new)):
        snap = Snapshot(label, work / label)
        log(f"{label}: git archive {rev}")
        commits[label] = extract(rev, snap.src)
        log(f"{label}: protobuf code (scripts/gen_proto.sh)")
        subprocess.run(["bash", "scripts/gen_proto.sh", python], cwd=snap.src, check=True, capture_output=True)
        log(f"{label}: compiled core (kernels/)")
        build_core(snap, python)
        link_packages(snap)
        kernels = snap.package_of("kernels")
        snap.python(["-c", f"import {kernels}.compiled, {snap.package_of('service')}.main"], python)
        log(f"{label}: quick bundle with {snap.package_of('export')}.cli build --quick")
        cmd = ["-m", f"{snap.package_of('export')}.cli", "build", "--quick", "--out", str(snap.bundle)]
        cmd += ["--data-dir", str(args.data_dir), "--cache-dir", str(snap.root / "cache")]
        snap.python(cmd, python, capture_output=True)
    (work / "commits.json").write_text(json.dumps(commits, indent=1) + "\n")
    if find_ghz(args.ghz, work) is None:
        log("ghz not found: scripts/install_ghz.sh of the new revision")
        subprocess.run(["bash", "scripts/install_ghz.sh"], cwd=work / "new" / "src", check=True)
    log(f"prepared {commits} under {work}")
    return 0


# ---------------------------------------------------------------------------------------------------
# run: both servers, interleaved ghz runs


def find_ghz(given: Path | None, work: Path | None = None) -> Path | None:
    candidates = [given, REPO / "benchmarks/ghz/.bin/ghz"]
    if work is not None:
        candidates.append(work / "new/src/benchmarks/ghz/.bin/ghz")
    on_path = shutil.which("ghz")
    candidates.append(Path(on_path) if on_path else None)
    return next((p for p in candidates if p is not None and p.exists()), None)


def ghz_version(ghz: Path) -> str:
    res = subprocess.run([str(ghz), "--version"], capture_output=True, text=True)
    return (res.stdout + res.stderr).strip()


def pinned(cores: str, cmd: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cores, *cmd]


class Server:
    """`<service>.main --bundle B --port 0` of one snapshot, pinned, as a child process."""

    def __init__(self, snap: Snapshot, python: str, cores: str, flags: Sequence[str]) -> None:
        module = f"{snap.package_of('service')}.main"
        cmd = [python, "-m", module, "--bundle", str(snap.bundle), "--port", "0", "--log-level", "warning", *flags]
        self.snap = snap
        self.proc = subprocess.Popen(
            pinned(cores, cmd), env=snap.env(), cwd=snap.import_dir, stderr=subprocess.PIPE, text=True
        )
        self.target = ""
        self.tail: list[str] = []

    def wait_serving(self, timeout_s: float = 300.0) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"{self.snap.label} server exited ({self.proc.wait()}):\n" + "".join(self.tail))
            self.tail = [*self.tail[-20:], line]
            if m := re.search(r"serving on (\S+)", line):
                self.target = m.group(1)
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
                return
        raise RuntimeError(f"{self.snap.label} server not serving after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def serving(snaps: Sequence[Snapshot], python: str, cores: str, flags: Sequence[str]) -> Iterator[dict[str, Server]]:
    with ExitStack() as stack:
        servers = {}
        for snap in snaps:  # start all, then wait: the loads overlap
            servers[snap.label] = Server(snap, python, cores, flags)
            stack.callback(servers[snap.label].stop)
        for server in servers.values():
            server.wait_serving()
        yield servers


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    config: Path  # ghz call file with absolute paths
    concurrency: int
    seconds: float = 0.0
    calls: int = 0

    def ghz_args(self, target: str, report: Path) -> list[str]:
        length = ["-n", str(self.calls), "-z", "0s"] if self.calls else ["-z", f"{self.seconds:g}s"]
        if not self.calls:
            length += ["--duration-stop", "ignore"]  # count only calls that finished in time, as run.py does
        c = ["-c", str(self.concurrency), "--connections", "1"]
        return ["--config", str(self.config), *c, *length, "--format", "json", "-o", str(report), target]


def call_file(src: Path, out: Path, data: list[dict[str, Any]] | None = None) -> Path:
    """A copy of a ghz call file whose paths are absolute (and optionally other request data)."""
    cfg = json.loads(src.read_text())
    base = src.parent
    cfg["proto"] = str((base / cfg["proto"]).resolve())
    cfg["import-paths"] = [str((base / p).resolve()) for p in cfg["import-paths"]]
    if data is None:
        cfg["data-file"] = str((base / cfg["data-file"]).resolve())
    else:
        data_path = out.with_name(out.stem + "_data.json")
        data_path.write_text(json.dumps(data, ensure_ascii=False))
        cfg["data-file"] = str(data_path)
    out.write_text(json.dumps(cfg, indent=1))
    return out


def workloads(ghz_dir: Path, out: Path, route_calls: int, seconds: float, score_prompts: int) -> list[Workload]:
    texts = [p["text"] for p in json.loads((ghz_dir / "prompts.json").read_text())]
    routers = json.loads((ghz_dir / "score_data.json").read_text())[0]["routers"]
    score_data = [
        {"prompts": [{"text": t} for t in texts[i : i + score_prompts]], "routers": routers}
        for i in range(0, len(texts), score_prompts)
    ]
    route = call_file(ghz_dir / "route.json", out / "route.json")
    score = call_file(ghz_dir / "score.json", out / f"score{score_prompts}.json", score_data)
    return [
        Workload("route_c1", f"Route, concurrency 1, {route_calls} calls", route, 1, calls=route_calls),
        Workload("route_c16", f"Route, concurrency 16, {seconds:g} s", route, 16, seconds=seconds),
        Workload("score_c4", f"Score ({score_prompts} prompts/call), concurrency 4, {seconds:g} s", score, 4, seconds),
    ]


def run_ghz(ghz: Path, work: Workload, target: str, cores: str, report: Path) -> dict[str, Any]:
    """One ghz run; OK calls/s and latency percentiles of the OK calls (the report keeps no details)."""
    timeout = (work.seconds or 60) + 120
    res = subprocess.run(
        pinned(cores, [str(ghz), *work.ghz_args(target, report)]), capture_output=True, timeout=timeout
    )
    if not report.exists():
        raise RuntimeError(f"ghz wrote no report (exit {res.returncode}): {res.stderr.decode()[-2000:]}")
    rep = json.loads(report.read_text())
    details = rep.pop("details", None) or []
    rep.get("options", {}).pop("data", None)
    report.write_text(json.dumps(rep, indent=1))
    ok = sorted(d["latency"] / 1e6 for d in details if d.get("status") == "OK")
    total_s = rep["total"] / 1e9
    return {
        "calls": len(details),
        "ok": len(ok),
        "status": dict(Counter(str(d.get("status")) for d in details)),
        "seconds": total_s,
        "calls_per_s": len(ok) / total_s,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
    }


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted xs (numpy's default)."""
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def host_info() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lscpu.splitlines()) if v.strip()
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu_model": fields.get("Model name", "?"),
        "cpu_family_model": f"family {fields.get('CPU family', '?')}, model {fields.get('Model', '?')}",
        "hypervisor": fields.get("Hypervisor vendor", ""),
        "nproc": int(nproc),
        "python": sys.version.split()[0],
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args: argparse.Namespace) -> int:
    work: Path = args.work
    ghz = find_ghz(args.ghz, work)
    if ghz is None:
        raise SystemExit("ghz not found: run scripts/install_ghz.sh or give --ghz")
    snaps = [Snapshot(label, work / label) for label in REVISIONS]
    commits = json.loads((work / "commits.json").read_text())
    out = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    (out / "ghz").mkdir(parents=True)
    loads = workloads(work / "new/src/benchmarks/ghz", out, args.route_calls, args.seconds, args.score_prompts)
    result: dict[str, Any] = {
        "commits": commits,
        "host": host_info(),
        "ghz": ghz_version(ghz),
        "server_flags": ["--queue-timeout-ms", str(args.queue_timeout_ms)],
        "server_cores": args.server_cores,
        "client_cores": args.client_cores,
        "rounds": args.rounds,
        "workloads": {w.name: w.what for w in loads},
        "encoder_sha256": {s.label: sha256(s.bundle / "encoder/model.onnx") for s in snaps},
        "bundles": {s.label: json.loads((s.bundle / "manifest.json").read_text())["bundle_version"] for s in snaps},
        "loadavg": [],
        "runs": [],
    }
    log(f"{result['host']['cpu_model']}, {result['host']['nproc']} CPUs; ghz {result['ghz']} at {ghz}")
    result["loadavg"].append(("before the servers", os.getloadavg()))
    flags = ["--queue-timeout-ms", str(args.queue_timeout_ms)]
    with serving(snaps, args.python, args.server_cores, flags) as servers:
        log("serving: " + ", ".join(f"{k} at {s.target}" for k, s in servers.items()))
        for label, server in servers.items():  # warm: ONNX Runtime, allocator, gRPC channels
            for w in loads:
                warm = Workload(w.name, "warm", w.config, w.concurrency, seconds=2.0)
                run_ghz(ghz, warm, server.target, args.client_cores, out / "ghz" / f"warm_{label}_{w.name}.json")
        result["loadavg"].append(("after warming", os.getloadavg()))
        pair = 0
        for rnd in range(args.rounds):
            for w in loads:
                order = REVISIONS if pair % 2 == 0 else REVISIONS[::-1]
                pair += 1
                for label in order:
                    report = out / "ghz" / f"r{rnd}_{w.name}_{label}.json"
                    row = run_ghz(ghz, w, servers[label].target, args.client_cores, report)
                    row.update(round=rnd, workload=w.name, revision=label)
                    result["runs"].append(row)
                    log(
                        f"round {rnd} {w.name:9s} {label}: {row['calls_per_s']:7.1f} calls/s "
                        f"p50 {row['p50_ms']:7.2f} ms p99 {row['p99_ms']:7.2f} ms {row['status']}"
                    )
            result["loadavg"].append((f"after round {rnd}", os.getloadavg()))
    result["summary"] = summarise(result["runs"], [w.name for w in loads])
    result["command"] = " ".join([args.python.removeprefix(f"{REPO}/"), *sys.argv])
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"results: {out / 'results.json'}")
    return write_page(result, args.markdown)


def write_page(result: dict[str, Any], path: Path | None) -> int:
    page = markdown(result, result["command"])
    print(page)
    if path is not None:
        path.write_text(page)
    return 0


def report(args: argparse.Namespace) -> int:
    """Summary and page again from a results.json of `run`."""
    result = json.loads(args.results.read_text())
    names = list(result["workloads"])
    result["summary"] = summarise(result["runs"], names)
    result.setdefault("command", "(not recorded)")
    return write_page(result, args.markdown)


# ---------------------------------------------------------------------------------------------------
# summary and page


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per workload and metric: median and min-max per revision, new/old of the medians, the noise
    band (half the larger relative spread of one revision's runs) and the per-round paired ratios."""
    summary: dict[str, Any] = {}
    for name in names:
        rows = [r for r in runs if r["workload"] == name]
        for key in METRICS:
            vals = {rev: [r[key] for r in rows if r["revision"] == rev] for rev in REVISIONS}
            med = {rev: statistics.median(v) for rev, v in vals.items()}
            spread = {rev: (max(v) - min(v)) / med[rev] for rev, v in vals.items()}
            by_round = {(r["round"], r["revision"]): r[key] for r in rows}
            rounds = sorted({r["round"] for r in rows})
            pairs = [(by_round[(k, "old")], by_round[(k, "new")]) for k in rounds]
            paired = [n / o for o, n in pairs]
            ratio = med["new"] / med["old"]
            band = max(spread.values()) / 2
            lo, hi = bootstrap_ratio(pairs)
            summary[f"{name}/{key}"] = {
                "values": vals,
                "median": med,
                "min": {rev: min(v) for rev, v in vals.items()},
                "max": {rev: max(v) for rev, v in vals.items()},
                "ratio": ratio,
                "noise_band": band,
                "within_noise": abs(ratio - 1) <= band,
                "ratio_ci95": [lo, hi],
                "paired_min": min(paired),
                "paired_median": statistics.median(paired),
                "paired_max": max(paired),
                "paired_new_higher": sum(p > 1 for p in paired),
            }
    return summary


def bootstrap_ratio(pairs: list[tuple[float, float]], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% interval of median(new) / median(old), resampling whole rounds (a round's two runs stay
    together, so load that drifted between rounds stays shared)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(n):
        sample = rng.choices(pairs, k=len(pairs))
        ratios.append(statistics.median(b for _, b in sample) / statistics.median(a for a, _ in sample))
    ratios.sort()
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def sign_test(k: int, n: int) -> float:
    """Two-sided p of k successes in n fair coin flips."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def markdown(result: dict[str, Any], command: str) -> str:
    s = result["summary"]
    host = result["host"]
    old, new = result["commits"]["old"], result["commits"]["new"]
    same_encoder = len(set(result["encoder_sha256"].values())) == 1
    loadavgs = [la[0] for when, la in result["loadavg"] if when != "before the servers"]
    before = dict(result["loadavg"]).get("before the servers", [float("nan")])[0]
    lines = [
        "# The serving path before and after the refactor, side by side (ghz)",
        "",
        f"Revisions: **old** `{old}` (before the refactor of the serving path), **new** `{new}` (after).",
        f"CPU: {host['cpu_model']} ({host['cpu_family_model']}, {host['hypervisor'] or 'bare metal'}), "
        f"{host['nproc']} CPUs; Python {host['python']}, ghz {result['ghz']}. Both servers pinned to CPU "
        f"{result['server_cores']}, ghz to CPU {result['client_cores']}. "
        f"1-minute load average: {before:.2f} before the servers started, {min(loadavgs):.2f}-{max(loadavgs):.2f} "
        "during the run.",
        "",
        "Each revision serves a quick bundle of its own schema built by its own `export.cli build --quick` "
        f"(old {result['bundles']['old']}, new {result['bundles']['new']}); the encoder "
        f"(all-MiniLM-L6-v2) is {'byte-identical' if same_encoder else 'NOT identical'} in both. "
        f"{result['rounds']} rounds; in each round every workload runs once per revision, back to back, the "
        "order flipping at every pair. Calls/s counts OK calls; p50 and p99 are over OK calls.",
        "",
        "| workload | metric | old median (min-max) | new median (min-max) | new/old | noise band | "
        "95% interval of new/old | within noise | new above old |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    n_rounds = result["rounds"]
    for name, what in result["workloads"].items():
        for key, label in METRICS.items():
            m = s[f"{name}/{key}"]
            cells = [
                f"{m['median'][rev]:.1f} ({m['min'][rev]:.1f}-{m['max'][rev]:.1f})"
                if key == "calls_per_s"
                else f"{m['median'][rev]:.2f} ({m['min'][rev]:.2f}-{m['max'][rev]:.2f})"
                for rev in REVISIONS
            ]
            lines.append(
                f"| {what} | {label} | {cells[0]} | {cells[1]} | {m['ratio']:.3f} | "
                f"±{m['noise_band'] * 100:.1f}% | {m['ratio_ci95'][0]:.3f}-{m['ratio_ci95'][1]:.3f} | "
                f"{'yes' if m['within_noise'] else '**no**'} | {m['paired_new_higher']} of {n_rounds} rounds |"
            )
    errors: dict[str, Counter[str]] = {rev: Counter() for rev in REVISIONS}
    for r in result["runs"]:
        errors[r["revision"]].update({k: v for k, v in r["status"].items() if k != "OK"})
    non_ok = "; ".join(f"{rev} {dict(c) or 'none'}" for rev, c in errors.items())
    outside = [k for k, m in s.items() if not m["within_noise"]]
    if outside:
        listed = ", ".join(f"{k} new/old {s[k]['ratio']:.3f} (band ±{s[k]['noise_band'] * 100:.1f}%)" for k in outside)
        verdict = f"{len(s) - len(outside)} of {len(s)} figures are within noise; outside it: {listed}."
    else:
        verdict = f"All {len(s)} figures are within noise: new/old of the medians "
        verdict += ", ".join(f"{k} {m['ratio']:.3f} (band ±{m['noise_band'] * 100:.1f}%)" for k, m in s.items())
        verdict += "."
    excluding = [k for k, m in s.items() if not m["ratio_ci95"][0] <= 1 <= m["ratio_ci95"][1]]
    if excluding:
        verdict += " The 95% interval of new/old excludes 1 for " + ", ".join(excluding) + "."
    else:
        verdict += f" The 95% interval of new/old contains 1 for all {len(s)}."
    leaning = []
    for k, m in s.items():
        above = m["paired_new_higher"]
        if min(above, n_rounds - above) <= n_rounds // 4:
            leaning.append(
                f"{k} (new above old in {above} of {n_rounds} rounds, sign test p = {sign_test(above, n_rounds):.2f})"
            )
    if leaning:
        verdict += " Leaning one way in the paired rounds, though inside the band: " + "; ".join(leaning) + "."
    throughput = [(name, s[f"{name}/calls_per_s"]["ratio_ci95"]) for name in result["workloads"]]
    verdict += " Throughput (calls/s) new/old lies within " + ", ".join(
        f"{lo:.2f}-{hi:.2f} ({name})" for name, (lo, hi) in throughput
    )
    verdict += "; a smaller change than those intervals' width cannot be told from noise at this load."
    flags = " ".join(result["server_flags"])
    lines += [
        "",
        f"Server settings: the defaults of both revisions plus `{flags}` (a slow, shared host then queues "
        f"instead of shedding calls). Non-OK calls: {non_ok}.",
        "",
        "The noise band of a metric is half the larger relative spread, (max - min) / (2 x median), of one "
        "revision's repeated runs; a difference counts as within noise when |new/old - 1| is inside it. The "
        "95% interval of new/old bootstraps the ratio of the medians over whole rounds (10,000 resamples). "
        "'new above old' counts the rounds in which the new revision's figure was the higher of the pair "
        "run back to back. The load average during the run includes the benchmark's own servers and ghz.",
        "",
        f"**Conclusion.** {verdict}",
        "",
        "Commands (from the repository root):",
        "",
        "```bash",
        f".venv/bin/python benchmarks/ghz/compare_revisions.py prepare --old {old[:7]} --new {new[:7]}",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmroute-revs"), help="snapshots, bundles, runs")
    ap.add_argument("--python", default=sys.executable, help="the interpreter both revisions run with")
    ap.add_argument("--ghz", type=Path, default=None, help="ghz binary (default: benchmarks/ghz/.bin/ghz, PATH)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="snapshots of two revisions with their proto code, core and bundle")
    p.add_argument("--old", default="8b24f2d")
    p.add_argument("--new", default="01c7733")
    p.add_argument("--data-dir", type=Path, default=REPO / "data")
    r = sub.add_parser("run", help="both servers, interleaved ghz runs, the summary")
    r.add_argument("--rounds", type=int, default=8)
    r.add_argument("--seconds", type=float, default=8.0, help="length of the timed runs")
    r.add_argument("--route-calls", type=int, default=128, help="calls of the concurrency-1 Route run")
    r.add_argument("--score-prompts", type=int, default=8, help="prompts per Score call")
    r.add_argument("--server-cores", default="0", help="taskset CPU list of both servers")
    r.add_argument("--client-cores", default="1", help="taskset CPU list of ghz")
    r.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=30000,
        help="both servers' queue deadline: long, so that a slow host queues instead of shedding calls",
    )
    r.add_argument("--markdown", type=Path, default=None, help="write the results page here")
    rep = sub.add_parser("report", help="the summary and page again from a results.json of run")
    rep.add_argument("results", type=Path)
    rep.add_argument("--markdown", type=Path, default=None, help="write the results page here")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
