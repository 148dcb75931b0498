"""The label budget end to end through a real server: decisions, `lmroute-export to-judge`, Feedback,
adapt, gate, hot swap, Score.

The adaptation protocol (docs/ADAPTATION.md) on one eval set (default MMLU): its stream half replayed as the
deployment's traffic, its test half only reported. Per seed and rule, a fresh `lmroute-serve` child with
its own SQLite outcome store serves the bundle, and a pool of `--pool` stream prompts (a seeded order)
passes in windows of `--window`:

1. each window's prompts are scored through `Score` (router mf): the server records the decisions;
2. the rule picks the window's share of N (N x the pool seen so far / the pool, less what is judged):
   `budget`: `lmroute-export to-judge --budget k --window W --since-ms <the window's start>` (the
   service's label budget over the store); `random`: k of the window's decisions drawn uniformly;
3. the picks' paired outcomes (both models' correctness) go back with `Feedback` by decision id;

then `lmroute-export adapt` learns from the N outcomes, the gate decides, an accepted bundle is
hot-swapped in and the test half scored through `Score` (a refused one leaves `mf`, the zero-shot default,
serving). Both rules see the same pool in the same order for a seed, so their difference is the choice.

    .venv/bin/python benchmarks/adaptation/label_budget_replay.py --bundle B --out benchmarks/adaptation
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay import (
    BIN,
    adapt,
    add_common_args,
    apgr,
    cpu_model,
    finish,
    load_protocol_set,
    score_all,
    send_outcomes,
    start_server,
    summary,
)

from lmroute.service.client import RouterClient

RULES = ("budget", "random")


def to_judge(bundle: Path, store: str, k: int, window: int, since_ms: int, seed: int) -> list[str]:
    """The decision ids `lmroute-export to-judge` picks."""
    proc = subprocess.run(
        [str(BIN / "lmroute-export"), "to-judge", "--bundle", str(bundle), "--store", store]
        + ["--budget", str(k), "--window", str(window), "--since-ms", str(since_ms), "--seed", str(seed)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line)["decision_id"] for line in proc.stdout.split("\n") if line]


def one_run(rule: str, seed: int, n: int, data: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One seed of one rule at N judged outcomes: a fresh server and store, the pool's windows, adapt,
    the served APGR on the test half."""
    store = f"sqlite:{work / f'{rule}-{seed}-{n}.sqlite3'}"
    proc, target = start_server(args.bundle, store, work / f"server-{rule}-{seed}-{n}.log")
    texts, sq, wq = data["texts"], data["sq"], data["wq"]
    pool = data["stream"][np.random.default_rng(seed).permutation(data["stream"].size)[: args.pool]]
    rng = np.random.default_rng(10_000 + seed)
    t0 = time.perf_counter()
    try:
        with RouterClient(target, timeout_s=600) as client:
            began = int(time.time() * 1000)
            judged = 0
            for start in range(0, pool.size, args.window):
                win = pool[start : start + args.window]
                k = int(round(n * (start + win.size) / pool.size)) - judged
                window_start = int(time.time() * 1000)
                _, ids = score_all(client, [texts[i] for i in win], "mf")
                if k <= 0:
                    continue
                if rule == "budget":
                    picked = to_judge(args.bundle, store, k, win.size, window_start, seed + start)
                    where = {d: j for j, d in enumerate(ids)}
                    rows = np.asarray([where[d] for d in picked])
                else:
                    rows = rng.choice(win.size, k, replace=False)
                send_outcomes(client, [ids[j] for j in rows], sq[win[rows]], wq[win[rows]], f"{rule}-{seed}")
                judged += rows.size
            report = adapt(args.bundle, store, work / f"{rule}-{seed}-{n}", began)
            served = data["zero_shot"]
            if report["accepted"]:
                client.reload_bundle(str(work / f"{rule}-{seed}-{n}"), timeout_s=600)
                scores, _ = score_all(client, data["test_texts"], "adapted")
                served = apgr(scores, data["t_sq"], data["t_wq"])
    finally:
        proc.terminate()
        proc.wait(60)
    out = {
        "rule": rule,
        "seed": seed,
        "n": n,
        "judged": judged,
        "accepted": report["accepted"],
        "served_apgr": served,
        "candidate_apgr_held_out": report["gate"].get("candidate_apgr"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out), flush=True)
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        "# The label budget end to end: Score -> to-judge -> Feedback -> adapt -> gate -> hot swap -> Score",
        "",
        f"Command: `{command}`  ",
        f"CPU: {results['cpu']}; Python {platform.python_version()}; wall time {results['wall_min']:.0f} min.  ",
        f"Bundle: `{results['bundle_version']}` ({results['encoder']}; its `mf` the zero-shot default). "
        f"{results['set']}: stream {results['stream']} prompts, a pool of {results['pool']} per seed in windows "
        f"of {results['window']}; test half {results['test_half']}, scored {results['test_scored']} (a fixed "
        f"sample). APGR on the scored test prompts (the paper's deciles), mean +- sd over {results['seeds']} "
        "seeds; served = the bundle serving after the gate (the adapted one when accepted and swapped in, "
        "else `mf`).",
        "",
        "| baseline | APGR |",
        "|---|---|",
        f"| zero-shot default `mf` | {results['zero_shot']:.3f} |",
        "",
        "| N judged | rule | served APGR | gate accepted | budget - random, same seed (mean +- se) |",
        "|---|---|---|---|---|",
    ]
    for n, by_rule in results["curve"].items():
        diff = by_rule.get("budget_minus_random")
        for rule in RULES:
            r = by_rule[rule]
            extra = f"{diff['mean']:+.3f} +- {diff['se']:.3f}" if diff and rule == "budget" else ""
            lines.append(
                f"| {n} | {rule} | {r['served']['mean']:.3f} +- {r['served']['sd']:.3f} | "
                f"{r['accepted']}/{r['served']['n']} | {extra} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--set", default="mmlu")
    ap.add_argument("--ns", default="1000")
    ap.add_argument("--pool", type=int, default=5000, help="stream prompts that pass per seed")
    ap.add_argument("--window", type=int, default=500, help="decisions per to-judge call")
    args = ap.parse_args(argv)
    args.bundle = args.bundle.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmroute-budget-"))
    work.mkdir(parents=True, exist_ok=True)
    d = load_protocol_set(args.set, args.test_limit)
    texts, test = d["texts"], d["test"]
    data: dict[str, Any] = {
        **d,
        "test_texts": [texts[i] for i in test],
        "t_sq": d["sq"][test],
        "t_wq": d["wq"][test],
    }
    t0 = time.perf_counter()
    proc, target = start_server(args.bundle, f"sqlite:{work / 'zero.sqlite3'}", work / "server-zero.log")
    try:
        with RouterClient(target, timeout_s=600) as client:
            routers = client.list_routers()
            zero, _ = score_all(client, data["test_texts"], "mf")
    finally:
        proc.terminate()
        proc.wait(60)
    data["zero_shot"] = apgr(zero, data["t_sq"], data["t_wq"])
    runs = [
        one_run(rule, seed, n, data, args, work)
        for n in (int(x) for x in args.ns.split(","))
        for seed in range(args.seeds)
        for rule in RULES
    ]
    curve: dict[str, Any] = {}
    for n in sorted({r["n"] for r in runs}):
        by_rule: dict[str, Any] = {}
        for rule in RULES:
            pts = [r for r in runs if r["n"] == n and r["rule"] == rule]
            by_rule[rule] = {
                "served": summary([p["served_apgr"] for p in pts]),
                "accepted": sum(p["accepted"] for p in pts),
            }
        diffs = [
            b["served_apgr"] - r["served_apgr"]
            for b in runs
            for r in runs
            if b["n"] == r["n"] == n and b["seed"] == r["seed"] and b["rule"] == "budget" and r["rule"] == "random"
        ]
        by_rule["budget_minus_random"] = {
            "mean": float(np.mean(diffs)),
            "se": float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan"),
        }
        curve[str(n)] = by_rule
    results = {
        "bundle_version": routers.bundle_version,
        "encoder": f"encoder {routers.encoder.name}, {routers.encoder.dim} dims",
        "cpu": cpu_model(),
        "set": args.set,
        "seeds": args.seeds,
        "pool": args.pool,
        "window": args.window,
        "stream": int(d["stream"].size),
        "test_half": d["test_half"],
        "test_scored": int(test.size),
        "zero_shot": data["zero_shot"],
        "wall_min": (time.perf_counter() - t0) / 60,
        "curve": curve,
        "runs": runs,
    }
    return finish("label_budget_replay", results, markdown, args, work, argv)


if __name__ == "__main__":
    sys.exit(main())
