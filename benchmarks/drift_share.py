"""Holding a strong-model share on drifting traffic: the live controller against the static threshold.

    .venv/bin/lmroute-export build --encoder static --routers random mf sw_ranking --out /tmp/drift/static
    .venv/bin/python benchmarks/drift_share.py --bundle /tmp/drift/static --router mf \\
        --out benchmarks/results/drift_share

A stream of prompts whose mix moves through five phases (Arena-like -> MMLU -> GSM8K -> code ->
Arena-like; each phase after the first opens with a linear cross-fade from the previous mix) is routed
three ways at each target strong share:

    static      the bundle's calibration table's threshold for the target (what Route(strong_share=)
                does): fixed, calibrated once on Arena prompts
    controlled  `lmroute.service.share_control.ShareController`, the code the server runs for a
                tenant's target, seeded from the same calibration table
    hindsight   one fixed threshold chosen after the fact to give the controller's overall share on this
                stream (a bound no live system has: it knows the whole stream's scores in advance)

Reported per target: the realised share of every 500-decision window, the share of windows after the
first two within +-2 percentage points of the target (goal: >= 95 %), the largest window error, and the
mean quality of the decisions on the prompts whose answers by both models were judged (MMLU, GSM8K:
correctness; code: RouterBench MBPP correctness; Arena-like: arena-bench-v1 GPT-4 scores / 10),
controlled against hindsight at the same share.

Two streams: `tune` draws only training prompts (AlpacaEval, RouterBench ARC / Winogrande, LLMRouter)
and is what the controller's constants were chosen on (`--grid` prints the sweep); `report` is the
stream above and is only reported. Prompts are scored once with the bundle's scorer (the serving
code) and the scores reused by every policy.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmroute.export.data import load_calibration_prompts, load_comparisons
from lmroute.export.evalsets import load_eval
from lmroute.export.names import normalize_model_name
from lmroute.export.pipeline import REPO_ROOT
from lmroute.service.bundle_scorer import BundleScorer
from lmroute.service.share_control import ControlSettings, ShareController, seed_scores

WINDOW = 500
TARGETS = (0.1, 0.3, 0.5)
STRONG = "gpt-4-1106-preview"
WEAK = normalize_model_name("mistralai/Mixtral-8x7B-Instruct-v0.1")


@dataclass(frozen=True)
class Source:
    """Prompts of one kind of traffic and, where judged, both models' quality on each (NaN = unjudged)."""

    name: str
    prompts: tuple[str, ...]
    strong_q: np.ndarray
    weak_q: np.ndarray


def _unjudged(name: str, prompts: Sequence[str]) -> Source:
    nan = np.full(len(prompts), np.nan)
    return Source(name, tuple(prompts), nan, nan.copy())


def _pair_source(name: str, sources: Sequence[str], data_dir: Path, *, with_calibration: bool = False) -> Source:
    """Prompts of training sources judged on the strong/weak pair: quality 1 / 0 for a win, 0.5 each for
    a tie (a tie's value does not depend on the choice, so it shifts every policy's quality alike)."""
    comps = load_comparisons(data_dir, sources=sources).comparisons
    rows = np.flatnonzero(comps.pair_mask(STRONG, WEAK))
    strong_i = comps.models.index(STRONG)
    q: dict[str, tuple[float, float]] = {}
    for r in rows:
        a_is_strong = comps.model_a[r] == strong_i
        out = int(comps.outcome[r])
        s = 0.5 if out == 2 else float((out == 0) == a_is_strong)
        q[comps.prompts[comps.prompt_idx[r]]] = (s, 1.0 - s)
    prompts = list(q)
    if with_calibration:  # Arena-like: the calibration prompts, those judged on the pair keep their labels
        prompts += [p for p in load_calibration_prompts(data_dir) if p not in q]
    strong_q = np.array([q.get(p, (np.nan, np.nan))[0] for p in prompts])
    weak_q = np.array([q.get(p, (np.nan, np.nan))[1] for p in prompts])
    return Source(name, tuple(prompts), strong_q, weak_q)


def _eval_source(name: str, data_dir: Path) -> Source:
    ev = load_eval(name, data_dir)
    return Source(name, ev.prompts, ev.strong_quality, ev.weak_quality)


def _llmrouter_prompts(data_dir: Path) -> list[str]:
    path = data_dir / "train" / "llmrouter" / "train.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["question"] for line in fh if line.strip()]


def report_sources(data_dir: Path) -> list[tuple[Source, int]]:
    arena = _pair_source("arena", ["arena_bench_v1"], data_dir, with_calibration=True)
    return [
        (arena, 5000),
        (_eval_source("mmlu", data_dir), 5000),
        (_eval_source("gsm8k", data_dir), 4000),
        (_pair_source("code", ["routerbench_mbpp"], data_dir), 2000),
        (arena, 5000),
    ]


def tune_sources(data_dir: Path) -> list[tuple[Source, int]]:
    alpaca = _pair_source("alpaca", ["alpaca_eval"], data_dir)
    return [
        (alpaca, 4000),
        (_pair_source("arc", ["routerbench_arc"], data_dir), 4000),
        (_unjudged("llmrouter", _llmrouter_prompts(data_dir)), 4000),
        (_pair_source("winogrande", ["routerbench_winogrande"], data_dir), 4000),
        (alpaca, 4000),
    ]


@dataclass(frozen=True)
class Stream:
    """Prompt draws in order: the source index and the prompt's index in that source."""

    source: np.ndarray
    item: np.ndarray
    phase_starts: tuple[int, ...]


def build_stream(phases: Sequence[tuple[Source, int]], *, fade: int = 1000, seed: int = 0) -> Stream:
    """Phase k draws from source k; its first `fade` draws come from source k-1 with probability falling
    linearly from 1 to 0. Draws are without replacement while a source lasts, then start over."""
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(src.prompts)) for src, _ in phases]
    used = [0] * len(phases)
    src_ix: list[int] = []
    item_ix: list[int] = []
    starts: list[int] = []

    def draw(k: int) -> None:
        if used[k] and used[k] % len(orders[k]) == 0:
            orders[k] = rng.permutation(len(orders[k]))
        src_ix.append(k)
        item_ix.append(int(orders[k][used[k] % len(orders[k])]))
        used[k] += 1

    for k, (_, length) in enumerate(phases):
        starts.append(len(src_ix))
        for j in range(length):
            prev = k > 0 and j < fade and rng.random() < 1.0 - j / fade
            draw(k - 1 if prev else k)
    return Stream(np.array(src_ix), np.array(item_ix), tuple(starts))


def score_sources(scorer: BundleScorer, router: str, sources: Sequence[Source], chunk: int = 64) -> list[np.ndarray]:
    """The router's score of every prompt of every source (each distinct text scored once)."""
    texts = list(dict.fromkeys(p for s in sources for p in s.prompts))
    scores: dict[str, float] = {}
    for i in range(0, len(texts), chunk):
        part = texts[i : i + chunk]
        out = scorer.score(part, [(router,)] * len(part), [None] * len(part))
        scores.update(zip(part, out.scores[router].tolist(), strict=True))
    return [np.array([scores[p] for p in s.prompts]) for s in sources]


@dataclass(frozen=True)
class Run:
    strong: np.ndarray  # [n] bool decisions
    thresholds: np.ndarray  # [n] the threshold each decision met


def run_static(scores: np.ndarray, threshold: float) -> Run:
    return Run(scores >= threshold, np.full(len(scores), threshold))


def run_controlled(scores: np.ndarray, target: float, seed: list[float], settings: ControlSettings) -> Run:
    ctl = ShareController(target, seed, settings)
    strong = np.zeros(len(scores), dtype=bool)
    th = np.zeros(len(scores))
    for i, s in enumerate(scores.tolist()):
        th[i] = ctl.threshold
        strong[i] = ctl.decide(s)
    return Run(strong, th)


def window_shares(strong: np.ndarray, window: int = WINDOW) -> np.ndarray:
    n = len(strong) // window
    return strong[: n * window].reshape(n, window).mean(axis=1)


@dataclass(frozen=True)
class Tracking:
    share: float
    within: float  # share of windows after the first two within tolerance
    max_error_pp: float
    mean_abs_error_pp: float
    windows: list[float]


def tracking(strong: np.ndarray, target: float, tol: float = 0.02) -> Tracking:
    w = window_shares(strong)
    later = w[2:]
    err = np.abs(later - target)
    return Tracking(
        share=float(strong.mean()),
        within=float((err <= tol + 1e-12).mean()),
        max_error_pp=float(err.max() * 100),
        mean_abs_error_pp=float(err.mean() * 100),
        windows=[round(float(x), 4) for x in w],
    )


def quality(strong: np.ndarray, sq: np.ndarray, wq: np.ndarray) -> tuple[float, int]:
    judged = ~np.isnan(sq)
    q = np.where(strong, sq, wq)[judged]
    return float(q.mean()), int(judged.sum())


def hindsight_threshold(scores: np.ndarray, share: float) -> float:
    """The fixed threshold that sends `share` of this stream's decisions strong."""
    k = len(scores) - round(share * len(scores))
    ordered = np.sort(scores)
    return float(ordered[min(max(k, 0), len(ordered) - 1)])


def evaluate(
    scores: np.ndarray,
    sq: np.ndarray,
    wq: np.ndarray,
    static_threshold: Callable[[float], float],
    seed_for: Callable[[int], list[float]],
    settings: ControlSettings,
) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for target in TARGETS:
        static = run_static(scores, static_threshold(target))
        ctl = run_controlled(scores, target, seed_for(settings.window), settings)
        ctl_track = tracking(ctl.strong, target)
        hind = run_static(scores, hindsight_threshold(scores, ctl_track.share))
        out[f"{target:.2f}"] = {
            "static": {**tracking(static.strong, target).__dict__, "quality": quality(static.strong, sq, wq)[0]},
            "controlled": {**ctl_track.__dict__, "quality": quality(ctl.strong, sq, wq)[0]},
            "hindsight": {**tracking(hind.strong, target).__dict__, "quality": quality(hind.strong, sq, wq)[0]},
            "judged": quality(ctl.strong, sq, wq)[1],
            "static_threshold": static_threshold(target),
        }
    return out


def _markdown(result: dict[str, object], command: str) -> str:
    lines = [
        "# Holding a strong share on drifting traffic",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {result['hardware']}. Bundle `{result['bundle_version']}` (encoder {result['encoder']}), "
        f"router `{result['router']}`; controller {result['settings']}.",
        "",
        f"Stream `{result['stream']}`: {result['n']} prompts, phases "
        + ", ".join(f"{name} from {start}" for name, start in result["phases"])  # type: ignore[attr-defined]
        + f" (each after the first opens with a {result['fade']}-prompt cross-fade). "
        f"Windows of {WINDOW} decisions; 'within' counts the windows after the first two within +-2 pp.",
        "",
        "| target | policy | share | within +-2 pp | max error (pp) | mean abs error (pp) | quality |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    per_target = result["targets"]
    assert isinstance(per_target, dict)
    for target, row in per_target.items():
        for policy in ("static", "controlled", "hindsight"):
            r = row[policy]
            lines.append(
                f"| {target} | {policy} | {r['share']:.3f} | {r['within'] * 100:.0f} % | {r['max_error_pp']:.1f} "
                f"| {r['mean_abs_error_pp']:.1f} | {r['quality']:.4f} |"
            )
    lines += [
        "",
        "Quality: mean over the judged prompts of the stream (hindsight = one fixed threshold giving the "
        "controller's overall share on this stream, known only after the fact).",
        "",
        "Window shares (controlled), per target:",
        "",
    ]
    for target, row in per_target.items():
        lines.append(f"- {target}: " + " ".join(f"{x:.3f}" for x in row["controlled"]["windows"]))
    lines.append("")
    lines.append("Window shares (static), per target:")
    lines.append("")
    for target, row in per_target.items():
        lines.append(f"- {target}: " + " ".join(f"{x:.3f}" for x in row["static"]["windows"]))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--router", default="mf")
    ap.add_argument("--stream", choices=("report", "tune"), default="report")
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--out", type=Path, help="write <out>/<stream>.json and <out>/<stream>.md")
    ap.add_argument("--grid", action="store_true", help="sweep the controller's constants (tune stream)")
    ap.add_argument("--fade", type=int, default=1000)
    args = ap.parse_args(argv)

    phases = report_sources(args.data_dir) if args.stream == "report" else tune_sources(args.data_dir)
    sources = [s for s, _ in phases]
    scorer = BundleScorer.load(args.bundle)
    t0 = time.perf_counter()
    per_source = score_sources(scorer, args.router, sources)
    print(f"scored {sum(len(s.prompts) for s in sources)} prompts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    stream = build_stream(phases, fade=args.fade)
    scores = np.array([per_source[k][i] for k, i in zip(stream.source, stream.item, strict=True)])
    sq = np.array([sources[k].strong_q[i] for k, i in zip(stream.source, stream.item, strict=True)])
    wq = np.array([sources[k].weak_q[i] for k, i in zip(stream.source, stream.item, strict=True)])
    cal = next(r for r in scorer.catalog().routers if r.name == args.router)

    def seed_for(n: int) -> list[float]:
        return seed_scores(cal.calibration_strong_share, cal.calibration_thresholds, n)

    def static_threshold(share: float) -> float:
        return float(scorer.threshold_for_share(args.router, share))

    if args.grid:
        for window in (300, 1000, 2000):
            for repay in (25, 50, 100, 300):
                for horizon in (2000,):
                    settings = ControlSettings(window=window, repay=repay, horizon=horizon)
                    res = evaluate(scores, sq, wq, static_threshold, seed_for, settings)
                    cells = [
                        f"{t}: {r['controlled']['within'] * 100:.0f}% max {r['controlled']['max_error_pp']:.1f} "  # type: ignore[index]
                        f"dq {(r['controlled']['quality'] - r['hindsight']['quality']) * 1000:+.1f}e-3"  # type: ignore[index]
                        for t, r in res.items()
                    ]
                    print(f"window={window} repay={repay} horizon={horizon} | " + " | ".join(cells), flush=True)
        return 0

    settings = ControlSettings()
    result: dict[str, object] = {
        "stream": args.stream,
        "n": int(len(scores)),
        "fade": args.fade,
        "phases": [(s.name, start) for s, start in zip(sources, stream.phase_starts, strict=True)],
        "bundle_version": scorer.version,
        "encoder": f"{scorer.catalog().encoder_name} ({scorer.catalog().encoder_kind})",
        "router": args.router,
        "settings": f"window={settings.window} repay={settings.repay} horizon={settings.horizon}",
        "hardware": f"{platform.machine()} CPU, 2 cores, no GPU",
        "targets": evaluate(scores, sq, wq, static_threshold, seed_for, settings),
    }
    command = ".venv/bin/python benchmarks/drift_share.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = _markdown(result, command)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.stream}.json").write_text(json.dumps({**result, "command": command}, indent=1) + "\n")
        (args.out / f"{args.stream}.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
