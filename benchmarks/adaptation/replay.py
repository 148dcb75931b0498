"""Adaptation end to end through a real server: decisions, Feedback, adapt, gate, hot swap, Score.

The adaptation protocol (docs/ADAPTATION.md): MMLU and GSM8K (decontaminated by `load_eval`) split by the
sha256 of each prompt into a stream half (replayed as the deployment's traffic, the only half ever
trained on) and a test half (only reported). One `lmroute-serve` child process serves the default bundle
with an SQLite outcome store:

1. every stream prompt is scored once through `Score` (router mf): the server records each decision with
   its embedding;
2. per seed, the stream decisions arrive in a random order; at each N the outcomes of the next stream
   decisions are sent with `Feedback` (paired: both models' correctness, source `replay-<set>-<seed>`);
3. `lmroute-export adapt` (a child process) adapts the default bundle from the outcomes of this seed
   (`--since-ms`: received since the seed began), the gate decides, an accepted bundle is written;
4. an accepted bundle is hot-swapped in with the admin `ReloadBundle` RPC and the test half is scored
   through `Score` with its `adapted` router; a refused one leaves the default `mf` serving, whose test
   scores were taken once at the start (the served router's APGR is what is reported).

Rows: random (5 seeds), log length and the full-stream ceiling (one adapt from every stream outcome,
swapped in and scored the same way) next to the zero-shot default. MMLU's test half is subsampled with
`--test-limit` (a fixed, seeded sample) to bound the scoring time; the sample size is in the results.

    .venv/bin/python benchmarks/adaptation/replay.py --bundle artifacts/default --out benchmarks/adaptation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.adapt.learners import PAIRED_LEARNERS
from lmroute.adapt.protocol import stream_mask
from lmroute.export.evalsets import load_eval
from lmroute.export.metrics import router_metrics
from lmroute.service.client import RouterClient
from lmroute.v1 import router_pb2

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def start_server(bundle: Path, store: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    """lmroute-serve on a free loopback port (admin service on), its target once it serves."""
    err = log.open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "lmroute-serve"),
            "--bundle",
            str(bundle),
            "--port",
            "0",
            "--store",
            store,
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LMROUTE_QUEUE_TIMEOUT_MS": "30000"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        err.write(line)
        if "serving on" in line:
            return proc, line.strip().rsplit(" ", 1)[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server did not start; log in {log}")


def score_all(client: RouterClient, texts: list[str], router: str, chunk: int = 32) -> tuple[np.ndarray, list[str]]:
    """Scores and decision ids of `texts` under `router`, through Score calls of `chunk` prompts."""
    scores, ids = [], []
    for start in range(0, len(texts), chunk):
        resp = client.score(texts[start : start + chunk], routers=[router], timeout_s=600)
        for r in resp.results:
            if r.status.code != 0:
                raise RuntimeError(f"prompt {start + r.index} failed: {r.status.reason} {r.status.message}")
            scores.append(r.scores[0].strong_win_probability)
            ids.append(r.decision_id)
    return np.asarray(scores), ids


def send_outcomes(client: RouterClient, ids: list[str], sq: np.ndarray, wq: np.ndarray, source: str) -> None:
    for start in range(0, len(ids), 500):
        reports = [
            router_pb2.OutcomeReport(
                decision_id=ids[i],
                paired=router_pb2.PairedOutcome(strong_quality=float(sq[i]), weak_quality=float(wq[i])),
                source=source,
            )
            for i in range(start, min(start + 500, len(ids)))
        ]
        resp = client.feedback(reports, timeout_s=120)
        bad = [r for r in resp.results if r.code != 0]
        if bad:
            raise RuntimeError(f"feedback refused: {bad[0].reason} {bad[0].message}")


ADAPT_FLAGS: list[str] = []  # --gate-splits and --paired-learner of every adapt run (from the command line)


def adapt(bundle: Path, store: str, out: Path, since_ms: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One `lmroute-export adapt` run (`extra`: more of its flags); its JSON report plus whether it was
    accepted."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "lmroute-export"), "adapt", "--bundle", str(bundle), "--store", store, "--out", str(out)]
        + ["--since-ms", str(since_ms), "--overwrite", *ADAPT_FLAGS, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode not in (0, 4):
        raise RuntimeError(f"adapt failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    report["accepted"] = proc.returncode == 0
    report["adapt_s"] = round(time.perf_counter() - t0, 1)
    return report


def apgr(scores: np.ndarray, sq: np.ndarray, wq: np.ndarray) -> float:
    return float(router_metrics(scores, sq, wq).apgr)


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values)), "n": len(values)}


def load_protocol_set(name: str, test_limit: int) -> dict[str, Any]:
    """Eval set `name` under the adaptation protocol: texts, both models' qualities, the stream and test
    halves' indices (the test half sampled down to `test_limit`, seeded) and the test half's full size."""
    ev = load_eval(name, REPO / "data")
    texts = list(ev.prompts)
    sq, wq = np.asarray(ev.strong_quality, dtype=float), np.asarray(ev.weak_quality, dtype=float)
    mask = stream_mask(texts)
    stream, test = np.flatnonzero(mask), np.flatnonzero(~mask)
    if test_limit and test.size > test_limit:
        test = np.sort(np.random.default_rng(12345).choice(test, test_limit, replace=False))
    return {"texts": texts, "sq": sq, "wq": wq, "stream": stream, "test": test, "test_half": int((~mask).sum())}


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The flags every end-to-end adaptation benchmark takes."""
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "adaptation")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-limit", type=int, default=2000, help="test prompts scored per set (0 = the whole half)")
    ap.add_argument("--work", type=Path, default=None, help="stores and candidate bundles (default: a temp dir)")


def run_set(name: str, client: RouterClient, args: argparse.Namespace, store: str, work: Path) -> dict[str, Any]:
    d = load_protocol_set(name, args.test_limit)
    texts, sq, wq, stream, test = d["texts"], d["sq"], d["wq"], d["stream"], d["test"]
    t_sq, t_wq = sq[test], wq[test]
    test_texts = [texts[i] for i in test]
    res: dict[str, Any] = {"stream": int(stream.size), "test_scored": int(test.size), "test_half": d["test_half"]}

    t0 = time.perf_counter()
    _, stream_ids = score_all(client, [texts[i] for i in stream], "mf")
    res["record_stream_s"] = round(time.perf_counter() - t0, 1)
    zero, _ = score_all(client, test_texts, "mf")
    res["zero_shot_mf"] = apgr(zero, t_sq, t_wq)
    res["random"] = summary([apgr(np.random.default_rng(s).random(test.size), t_sq, t_wq) for s in range(5)])
    res["length"] = apgr(np.log1p([len(t) for t in test_texts]), t_sq, t_wq)

    def served_after(report: dict[str, Any], out: Path) -> float:
        if not report["accepted"]:
            return res["zero_shot_mf"]
        t = time.perf_counter()
        client.reload_bundle(str(out), timeout_s=600)
        report["swap_s"] = round(time.perf_counter() - t, 1)
        scores, _ = score_all(client, test_texts, "adapted")
        return apgr(scores, t_sq, t_wq)

    ns = [n for n in args.ns if n <= stream.size] + ([stream.size] if stream.size < max(args.ns) else [])
    points: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(stream.size)
        since = int(time.time() * 1000)
        sent = 0
        for n in ns:
            idx = order[sent:n]
            send_outcomes(
                client, [stream_ids[i] for i in idx], sq[stream[idx]], wq[stream[idx]], f"replay-{name}-{seed}"
            )
            sent = n
            out = work / f"{name}-{seed}-{n}"
            report = adapt(args.bundle, store, out, since)
            report["served_apgr"] = served_after(report, out)
            points[n].append(report)
            print(
                f"{name} seed {seed} N {n}: accepted {report['accepted']} served {report['served_apgr']:.3f}",
                flush=True,
            )
    # the full-stream ceiling: every stream outcome, one adaptation
    since = int(time.time() * 1000)
    send_outcomes(client, stream_ids, sq[stream], wq[stream], f"replay-{name}-all")
    ceiling = adapt(args.bundle, store, work / f"{name}-all", since)
    ceiling["served_apgr"] = served_after(ceiling, work / f"{name}-all")
    res["ceiling"] = ceiling
    res["curve"] = {
        str(n): {
            "served": summary([p["served_apgr"] for p in pts]),
            "accepted": sum(p["accepted"] for p in pts),
            "gate_candidate_apgr_held_out": summary([p["gate"].get("candidate_apgr", float("nan")) for p in pts]),
            "adapt_s": summary([p["adapt_s"] for p in pts]),
            "swap_s": [p.get("swap_s") for p in pts],
        }
        for n, pts in points.items()
    }
    return res


def markdown(results: dict[str, Any], command: str) -> str:
    out = [
        "# Adaptation end to end: Feedback -> adapt -> gate -> hot swap -> Score",
        "",
        f"Command: `{command}`  ",
        f"CPU: {results['cpu']}; server: `lmroute-serve` child process (1 intra-op thread), SQLite outcome store; "
        f"Python {platform.python_version()}; wall time {results['wall_min']:.0f} min.  ",
        f"Bundle: `{results['bundle_version']}` (its `mf` is the zero-shot default); seeds {results['seeds']}; APGR on the test half "
        "(the paper's deciles, `lmroute.export.metrics`), mean +- sd over seeds; served = the bundle serving after "
        "the gate (the adapted one when accepted and hot-swapped in, else the default `mf`).",
        "",
    ]
    for name, r in results["sets"].items():
        out += [
            f"## {name}: stream {r['stream']} prompts; test half {r['test_half']}, scored {r['test_scored']}",
            "",
            "| baseline | APGR |",
            "|---|---|",
            f"| random (5 seeds) | {r['random']['mean']:.3f} +- {r['random']['sd']:.3f} |",
            f"| log length | {r['length']:.3f} |",
            f"| zero-shot default `mf` | {r['zero_shot_mf']:.3f} |",
            f"| ceiling: every stream outcome ({r['stream']}), adapted, gated ({'accepted' if r['ceiling']['accepted'] else 'refused'}), swapped | {r['ceiling']['served_apgr']:.3f} |",
            "",
            "| N paired outcomes | served APGR | gate accepted | adapt s (mean) | hot swap s |",
            "|---|---|---|---|---|",
        ]
        for n, c in r["curve"].items():
            swaps = [s for s in c["swap_s"] if s is not None]
            swap = f"{np.mean(swaps):.1f}" if swaps else "-"
            out.append(
                f"| {n} | {c['served']['mean']:.3f} +- {c['served']['sd']:.3f} | {c['accepted']}/{c['served']['n']} "
                f"| {c['adapt_s']['mean']:.1f} | {swap} |"
            )
        out += ["", f"Recording the stream's decisions through Score: {r['record_stream_s']:.0f} s.", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--sets", default="gsm8k,mmlu")
    ap.add_argument("--ns", default="100,500,1000,2000,5000")
    ap.add_argument(
        "--gate-splits", choices=("cross_fit", "forward"), default="cross_fit", help="the gate's held-out scheme"
    )
    ap.add_argument(
        "--paired-learner", choices=PAIRED_LEARNERS, default=PAIRED_LEARNERS[0], help="the adapt runs' learner"
    )
    args = ap.parse_args(argv)
    ADAPT_FLAGS[:] = ["--gate-splits", args.gate_splits, "--paired-learner", args.paired_learner]
    args.ns = [int(x) for x in args.ns.split(",")]
    args.bundle = args.bundle.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmroute-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:{work / 'outcomes.sqlite3'}"
    t0 = time.perf_counter()
    proc, target = start_server(args.bundle, store, work / "server.log")
    try:
        with RouterClient(target, timeout_s=600) as client:
            version = client.list_routers().bundle_version
            sets = {name: run_set(name, client, args, store, work) for name in args.sets.split(",")}
            bundle_info = client.get_bundle()
    finally:
        proc.terminate()
        proc.wait(60)
    results = {
        "bundle_version": version,
        "cpu": cpu_model(),
        "seeds": args.seeds,
        "swaps": bundle_info.swaps,
        "refused_swaps": bundle_info.refused,
        "wall_min": (time.perf_counter() - t0) / 60,
        "sets": sets,
    }
    return finish("replay", results, markdown, args, work, argv)


def cpu_model() -> str:
    """The CPU's model name and count, for a results page."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} CPUs"


def finish(
    name: str,
    results: dict[str, Any],
    markdown: Callable[[dict[str, Any], str], str],
    args: argparse.Namespace,
    work: Path,
    argv: list[str] | None,
) -> int:
    """Write results_<name>.json and RESULTS_<name>.md (with the command) to --out, remove a temporary
    work directory, print the page."""
    command = f"python benchmarks/adaptation/{name}.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / f"RESULTS_{name}.md").write_text(markdown(results, command))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
