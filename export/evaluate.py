"""Evaluation of routers on MT-Bench, MMLU and GSM8K, and the written report.

``evaluate_router`` takes scores that are already computed (benchmark -> router -> scores, one per
eval prompt, in the eval set's order) and the eval sets, and returns a JSON-ready results dict:
per benchmark and router the cost-quality curve, APGR and CPT (see ``lmroute.export.metrics``), plus
the random baseline (mean +- sample std over 10 seeds), the oracle (prompts ordered by the strong
model's quality gain: ``oracle_scores(..., graded=True)``) and the paper's published numbers.
A router "beats random" when its APGR exceeds the random router's APGR mean by more than two stds,
both taken over ``null_seeds`` (200) seeds: ten seeds estimate that std too loosely on MT-Bench's 72
prompts (0.038 from seeds 0-9 vs. 0.061 from 200).

``write_report`` writes ``results.json``, one cost-quality PNG per benchmark and ``report.md`` (the
exact command line at the top, then one table per benchmark) into a temporary directory beside the
report directory and renames it into place, so an interrupted run leaves the earlier report whole.

The evaluation command glues these to a bundle: ``score_bundle`` scores texts with a loaded bundle's
routers (public ``lmroute.bundle`` API only), ``run_evaluation`` loads the eval sets
(``lmroute.export.evalsets.load_eval``), scores them, evaluates and writes the report, and ``main``
is its command line (``python -m lmroute.export.evaluate --bundle DIR --out DIR``).

Units: in the results dict every share and CPT is a fraction; the Markdown shows CPT in %.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from lmroute.export.metrics import (
    DEFAULT_CPT_TARGETS,
    Curve,
    oracle_scores,
    random_baseline,
    router_metrics,
)
from lmroute.export.plots import PlotCurve, plot_cost_quality

REPO_ROOT = Path(__file__).resolve().parent.parent  # as lmroute.export.pipeline's (which imports this module)

if TYPE_CHECKING:
    from lmroute.bundle import Bundle

__all__ = [
    "BEATS_RANDOM_STDS",
    "PAPER_RESULTS",
    "EvalSetLike",
    "PaperRow",
    "ReportFiles",
    "benchmark_key",
    "evaluate_router",
    "main",
    "render_markdown",
    "run_evaluation",
    "score_bundle",
    "write_report",
]

RESULTS_SCHEMA = "lmroute-eval/1"
BEATS_RANDOM_STDS = 2.0
"""A router beats random when APGR > random APGR mean + BEATS_RANDOM_STDS * random APGR std."""
NULL_SEEDS = 200
"""Seeds of the random-router APGR distribution behind "beats random"."""


class EvalSetLike(Protocol):
    """What evaluation needs from an eval set (``lmroute.export.evalsets.EvalSet`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def prompts(self) -> Sequence[str]: ...
    @property
    def strong_quality(self) -> ArrayLike: ...
    @property
    def weak_quality(self) -> ArrayLike: ...
    @property
    def n_dropped_contaminated(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class PaperRow:
    """One published RouteLLM result (Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference
    Data", arXiv:2406.18665). CPTs are fractions keyed by PGR target."""

    label: str
    cpt: Mapping[float, float]
    apgr: float | None = None
    approximate: bool = False


PAPER_RESULTS: Mapping[str, tuple[PaperRow, ...]] = {
    "mtbench": (
        PaperRow(label="paper: mf (arena + judge)", cpt={0.5: 0.1340, 0.8: 0.313}, apgr=0.802),
        PaperRow(label="paper: bert (arena + judge)", cpt={0.5: 0.1958}),
        PaperRow(label="paper: random", cpt={0.5: 0.4903}),
    ),
    "mmlu": (
        PaperRow(label="paper: best (with golden MMLU labels)", cpt={0.5: 0.354, 0.8: 0.703}, apgr=0.603),
        PaperRow(label="paper: random", cpt={0.5: 0.50}, approximate=True),
        PaperRow(label="paper: oracle", cpt={0.5: 0.062}),
    ),
    "gsm8k": (
        PaperRow(label="paper: causal_llm (augmented)", cpt={0.5: 0.3364}),
        PaperRow(label="paper: random", cpt={0.5: 0.50}, approximate=True),
        PaperRow(label="paper: oracle", cpt={0.5: 0.110}),
    ),
}
"""Published numbers per benchmark key (see ``benchmark_key``)."""

_DISPLAY = {"mtbench": "MT-Bench", "mmlu": "MMLU", "gsm8k": "GSM8K"}
_QUALITY_LABEL = {"mtbench": "mean GPT-4 score (1-10), both turns"}


def benchmark_key(name: str) -> str:
    """Normalised benchmark name: lower case, letters and digits only ("MT-Bench" -> "mtbench")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _target_key(t: float) -> str:
    return f"{t:g}"


def _curve_json(c: Curve) -> dict[str, list[float]]:
    return {
        "strong_share": [float(v) for v in c.strong_share],
        "quality": [float(v) for v in c.quality],
        "thresholds": [float(v) for v in c.thresholds],
    }


def _by_name(evalsets: Mapping[str, EvalSetLike] | Sequence[EvalSetLike]) -> dict[str, EvalSetLike]:
    if isinstance(evalsets, Mapping):
        return dict(evalsets)
    return {e.name: e for e in evalsets}


def evaluate_router(
    scores_by_benchmark: Mapping[str, Mapping[str, ArrayLike]],
    evalsets: Mapping[str, EvalSetLike] | Sequence[EvalSetLike],
    *,
    targets: Sequence[float] = DEFAULT_CPT_TARGETS,
    random_seeds: int = 10,
    null_seeds: int = NULL_SEEDS,
    n_edges: int = 11,
    models: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of every router on every benchmark, with random, oracle and the paper's numbers.

    Args:
        scores_by_benchmark: benchmark name -> router name -> scores [n], in the eval set's order.
        evalsets: benchmark name -> eval set, or a sequence of eval sets keyed by their ``name``.
        targets: PGR targets for CPT (fractions).
        random_seeds: number of seeds of the random baseline shown in the report.
        null_seeds: number of seeds of the random APGR distribution that "beats random" uses.
        n_edges: quantile edges per curve (11 = deciles).
        models: optional ``{"strong": ..., "weak": ...}`` names, copied into the results.

    Returns:
        A JSON-ready dict (``write_report`` renders it).
    """
    sets = _by_name(evalsets)
    benchmarks: dict[str, Any] = {}
    for bench, router_scores in scores_by_benchmark.items():
        if bench not in sets:
            raise ValueError(f"scores_by_benchmark[{bench!r}]: no eval set of that name (have {sorted(sets)})")
        if not router_scores:
            raise ValueError(f"scores_by_benchmark[{bench!r}]: no routers")
        es = sets[bench]
        sq = np.asarray(es.strong_quality, dtype=np.float64)
        wq = np.asarray(es.weak_quality, dtype=np.float64)
        n = len(es.prompts)
        if sq.shape != (n,) or wq.shape != (n,):
            raise ValueError(f"eval set {bench!r}: {n} prompts but quality shapes {sq.shape} / {wq.shape}")
        rand = random_baseline(n, sq, wq, seeds=random_seeds, targets=targets, n_edges=n_edges)
        null = random_baseline(n, sq, wq, seeds=null_seeds, targets=(), n_edges=n_edges)
        bar = null.apgr_mean + BEATS_RANDOM_STDS * null.apgr_std
        routers: dict[str, Any] = {}
        for name, scores in router_scores.items():
            s = np.asarray(scores, dtype=np.float64)
            if s.shape != (n,):
                raise ValueError(
                    f"scores_by_benchmark[{bench!r}][{name!r}]: shape {s.shape}, expected ({n},) to match the eval set"
                )
            try:
                m = router_metrics(s, sq, wq, targets=targets, n_edges=n_edges)
            except ValueError as err:
                raise ValueError(f"scores_by_benchmark[{bench!r}][{name!r}]: {err}") from None
            z = (m.apgr - null.apgr_mean) / null.apgr_std if null.apgr_std > 0 else None
            routers[name] = {
                "apgr": m.apgr,
                "cpt": {_target_key(t): v for t, v in m.cpt.items()},
                "beats_random": bool(m.apgr > bar),
                "apgr_z_vs_random": z,
                "curve": _curve_json(m.curve),
            }
        orc = router_metrics(oracle_scores(sq, wq, graded=True), sq, wq, targets=targets, n_edges=n_edges)
        key = benchmark_key(bench)
        benchmarks[bench] = {
            "display_name": _DISPLAY.get(key, bench),
            "quality_label": _QUALITY_LABEL.get(key, "accuracy"),
            "n_prompts": n,
            "n_dropped_contaminated": int(es.n_dropped_contaminated),
            "strong_mean": float(sq.mean()),
            "weak_mean": float(wq.mean()),
            "routers": routers,
            "random": {
                "seeds": list(rand.seeds),
                "apgr_mean": rand.apgr_mean,
                "apgr_std": rand.apgr_std,
                "apgr_values": [float(v) for v in rand.apgr_values],
                "cpt_mean": {_target_key(t): v for t, v in rand.cpt_mean.items()},
                "cpt_std": {_target_key(t): v for t, v in rand.cpt_std.items()},
                "curve": {
                    "strong_share": [float(v) for v in rand.grid],
                    "quality": [float(v) for v in rand.quality_mean],
                    "quality_std": [float(v) for v in rand.quality_std],
                },
            },
            "random_null": {"seeds": null_seeds, "apgr_mean": null.apgr_mean, "apgr_std": null.apgr_std},
            "oracle": {
                "apgr": orc.apgr,
                "cpt": {_target_key(t): v for t, v in orc.cpt.items()},
                "curve": _curve_json(orc.curve),
            },
            "paper": [
                {
                    "label": row.label,
                    "cpt": {_target_key(t): v for t, v in row.cpt.items()},
                    "apgr": row.apgr,
                    "approximate": row.approximate,
                }
                for row in PAPER_RESULTS.get(key, ())
            ],
        }
    return {
        "schema": RESULTS_SCHEMA,
        "models": dict(models) if models else None,
        "protocol": {
            "n_edges": n_edges,
            "cpt_targets": [float(t) for t in targets],
            "random_seeds": random_seeds,
            "null_seeds": null_seeds,
            "beats_random": f"APGR > random APGR mean + {BEATS_RANDOM_STDS:g} * random APGR std "
            f"(both over {null_seeds} seeds; z = distance in those stds)",
        },
        "benchmarks": benchmarks,
    }


# ----------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True, kw_only=True)
class ReportFiles:
    """Paths written by ``write_report``."""

    results_json: Path
    markdown: Path
    plots: Mapping[str, Path]


def _pct(v: float | None, std: float | None = None, approx: bool = False) -> str:
    if v is None:
        return "–"
    text = f"{100.0 * v:.2f} %"
    if std is not None:
        text = f"{100.0 * v:.2f} ± {100.0 * std:.2f} %"
    return ("~" + text) if approx else text


def _num(v: float | None, std: float | None = None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if std is None else f"{v:.3f} ± {std:.3f}"


def _plot_name(bench: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", bench) + ".png"


def render_markdown(results: Mapping[str, Any], command: str, plot_names: Mapping[str, str] | None = None) -> str:
    """The Markdown report: command line first, then one table per benchmark."""
    targets = [_target_key(t) for t in results["protocol"]["cpt_targets"]]
    cpt_heads = [f"CPT({100.0 * float(t):g}%)" for t in targets]
    lines = ["# Router evaluation", "", "Command:", "", "```", command, "```", ""]
    models = results.get("models")
    if models:
        lines += [f"Strong model `{models.get('strong')}`, weak model `{models.get('weak')}`.", ""]
    bundle = results.get("bundle")
    if bundle:
        lines += [f"Bundle `{bundle.get('version')}` at `{bundle.get('path')}`.", ""]
    proto = results["protocol"]
    lines += [
        f"Protocol (RouteLLM): thresholds at {proto['n_edges']} quantile edges of each router's "
        "scores plus both end points; CPT(x%) = % of calls to the strong model needed to recover "
        "x % of the strong-weak quality gap (lower is better); APGR = normalised area under the "
        f"cost-quality curve (higher is better, random ~ 0.5). Random: mean ± std over "
        f"{proto['random_seeds']} seeds. Beats random: {proto['beats_random']}.",
        "",
    ]
    for bench, b in results["benchmarks"].items():
        lines += [
            f"## {b['display_name']} (`{bench}`)",
            "",
            f"{b['n_prompts']} prompts after dropping {b['n_dropped_contaminated']} contaminated; "
            f"quality = {b['quality_label']}: strong {b['strong_mean']:.4g}, "
            f"weak {b['weak_mean']:.4g}. Random APGR over {b['random_null']['seeds']} seeds: "
            f"{_num(b['random_null']['apgr_mean'], b['random_null']['apgr_std'])}.",
            "",
            "| router | " + " | ".join(cpt_heads) + " | APGR | beats random |",
            "|---|" + "---|" * len(cpt_heads) + "---|---|",
        ]
        for name, r in b["routers"].items():
            verdict = "yes" if r["beats_random"] else "no"
            if r["apgr_z_vs_random"] is not None:
                verdict += f" (z = {r['apgr_z_vs_random']:+.1f})"
            lines.append(
                f"| {name} | "
                + " | ".join(_pct(r["cpt"].get(t)) for t in targets)
                + f" | {_num(r['apgr'])} | {verdict} |"
            )
        rnd = b["random"]
        lines.append(
            f"| random ({len(rnd['seeds'])} seeds) | "
            + " | ".join(_pct(rnd["cpt_mean"].get(t), rnd["cpt_std"].get(t)) for t in targets)
            + f" | {_num(rnd['apgr_mean'], rnd['apgr_std'])} | – |"
        )
        orc = b["oracle"]
        lines.append(
            "| oracle | " + " | ".join(_pct(orc["cpt"].get(t)) for t in targets) + f" | {_num(orc['apgr'])} | – |"
        )
        for row in b["paper"]:
            lines.append(
                f"| {row['label']} | "
                + " | ".join(_pct(row["cpt"].get(t), approx=row["approximate"]) for t in targets)
                + f" | {_num(row['apgr'])} | – |"
            )
        if plot_names and bench in plot_names:
            lines += ["", f"![{b['display_name']} cost-quality curve]({plot_names[bench]})"]
        lines.append("")
    return "\n".join(lines)


def _not_a_report(out: Path) -> str:
    """Why ``write_report`` will not replace the directory ``out`` ("" when it may): it holds files but no
    ``results.json``, so it is not a report directory."""
    if out.is_dir() and not (out / "results.json").exists() and any(out.iterdir()):
        return f"{out} holds files but no results.json (not a report directory, so it is not replaced)"
    return ""


def write_report(results: Mapping[str, Any], out_dir: Path | str, command: str) -> ReportFiles:
    """Write ``results.json``, ``<benchmark>.png`` per benchmark and ``report.md`` into ``out_dir``.

    They are written into a temporary directory beside ``out_dir``, then renamed into place (an earlier
    report there is replaced whole), so an interrupted write leaves the earlier report or the new one,
    never parts of both. A directory holding files but no ``results.json`` is refused (FileExistsError).
    """
    from lmroute.bundle.writer import replace_directory

    out = Path(out_dir)
    if problem := _not_a_report(out):
        raise FileExistsError(problem)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        files = _write_report_files(results, tmp, command)
        if out.exists():
            replace_directory(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportFiles(
        results_json=out / files.results_json.name,
        markdown=out / files.markdown.name,
        plots={bench: out / p.name for bench, p in files.plots.items()},
    )


def _write_report_files(results: Mapping[str, Any], out: Path, command: str) -> ReportFiles:
    payload = {"command": command, **results}
    results_path = out / "results.json"
    results_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    plots: dict[str, Path] = {}
    for bench, b in results["benchmarks"].items():
        routers = {
            name: PlotCurve(strong_share=r["curve"]["strong_share"], quality=r["curve"]["quality"])
            for name, r in b["routers"].items()
        }
        rc = b["random"]["curve"]
        oc = b["oracle"]["curve"]
        plots[bench] = plot_cost_quality(
            out / _plot_name(bench),
            title=f"{b['display_name']}: cost vs. quality ({b['n_prompts']} prompts)",
            ylabel=b["quality_label"],
            routers=routers,
            random=PlotCurve(strong_share=rc["strong_share"], quality=rc["quality"], band=rc["quality_std"]),
            oracle=PlotCurve(strong_share=oc["strong_share"], quality=oc["quality"]),
            strong_mean=b["strong_mean"],
            weak_mean=b["weak_mean"],
            strong_label=(results.get("models") or {}).get("strong", "strong model"),
            weak_label=(results.get("models") or {}).get("weak", "weak model"),
        )
    md_path = out / "report.md"
    md_path.write_text(render_markdown(results, command, {k: p.name for k, p in plots.items()}))
    return ReportFiles(results_json=results_path, markdown=md_path, plots=plots)


# ----------------------------------------------------------------------------------------------
# The evaluation command


def score_bundle(
    bundle: Bundle,
    texts: Sequence[str],
    *,
    routers: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Scores of ``texts`` by each router of ``bundle`` (all, or the named ones), in input order.

    Texts are batched by length (fewer padded tokens) and the order restored afterwards.
    ``progress``: a label for a progress bar on stderr (None: no bar).
    ``extra``: more scorers, name -> f(PromptBatch) -> scores [n], run on the same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    names = list(bundle.routers) if routers is None else list(routers)
    unknown = [n for n in names if n not in bundle.routers]
    if unknown:
        raise ValueError(f"routers: {unknown} not in the bundle (has {list(bundle.routers)})")
    texts = list(texts)
    scorers = {name: bundle.routers[name].score for name in names}
    scorers.update(extra or {})
    out = {name: np.empty(len(texts), dtype=np.float64) for name in scorers}
    order = np.argsort([len(t) for t in texts], kind="stable")
    from tqdm import tqdm

    with tqdm(total=len(texts), desc=progress, unit="prompt", disable=progress is None) as bar:
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = bundle.prompt_batch([texts[i] for i in idx])
            for name, scorer in scorers.items():
                out[name][idx] = scorer(batch)
            bar.update(len(idx))
    return out


def reference_baselines(bundle: Bundle) -> dict[str, Any]:
    """Two trivial routers any router worth shipping should beat, scored like the routers:
    ``baseline:length`` (longer prompt -> strong) and, when the bundle carries one,
    ``baseline:prior`` (the difficulty prior alone, without any router)."""
    from lmroute.export.validation_tables import length_scores  # the harness's length baseline, the same scores

    out: dict[str, Any] = {"baseline:length": lambda batch: length_scores(batch.texts)}
    prior = bundle.manifest.difficulty_prior
    if prior is not None:
        weights = np.load(bundle.path / prior.files["weights"]).astype(np.float64)
        out["baseline:prior"] = lambda batch: -(np.asarray(batch.embeddings, dtype=np.float64) @ weights + prior.bias)
    return out


def run_evaluation(
    bundle_dir: Path | str,
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    command: str,
    benchmarks: Sequence[str] = ("mt_bench", "mmlu", "gsm8k"),
    routers: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    intra_op_threads: int = 1,
    baselines: bool = True,
) -> ReportFiles:
    """Load the bundle and the eval sets, score, evaluate and write the report into ``out_dir``.

    ``limit`` keeps at most that many prompts per benchmark (evenly spread; a quick mode whose
    numbers are not the protocol's). ``baselines``: also report `reference_baselines`.
    """
    from lmroute.bundle import load_bundle
    from lmroute.export.evalsets import load_eval

    bundle = load_bundle(bundle_dir, intra_op_threads=intra_op_threads, require_calibration=False)
    sets = {name: load_eval(name, Path(data_dir), limit=limit) for name in benchmarks}
    extra = reference_baselines(bundle) if baselines else {}
    scores = {
        name: score_bundle(bundle, es.prompts, routers=routers, batch_size=batch_size, progress=name, extra=extra)
        for name, es in sets.items()
    }
    pair = bundle.manifest.default_pair
    results = evaluate_router(scores, sets, models={"strong": pair.strong, "weak": pair.weak})
    results["bundle"] = {"path": str(bundle_dir), "version": bundle.version}
    results["limit"] = limit
    return write_report(results, out_dir, command)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a bundle's routers on MT-Bench, MMLU and GSM8K (RouteLLM protocol) and write a report.",
    )
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument(
        "--data-dir",
        default=REPO_ROOT / "data",
        type=Path,
        help=f"data pack root holding eval/ (default: {REPO_ROOT / 'data'})",
    )
    p.add_argument(
        "--benchmarks", nargs="+", default=["mt_bench", "mmlu", "gsm8k"], help="eval sets (default: all three)"
    )
    p.add_argument("--routers", nargs="+", default=None, help="routers (default: all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per benchmark (quick mode)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument(
        "--plugin",
        action="append",
        default=[m.strip() for m in os.environ.get("LMROUTE_PLUGINS", "").split(",") if m.strip()],
        metavar="MODULE",
        help="import MODULE first: it registers more router kinds, as the bundle's (repeatable; env "
        "LMROUTE_PLUGINS, comma-separated)",
    )
    return p


def _flag_problem(args: argparse.Namespace) -> str:
    """The first flag that cannot work, as "--flag: why" ("" when none): checked before any scoring."""
    from lmroute.bundle.errors import BundleError
    from lmroute.bundle.loader import read_manifest
    from lmroute.bundle.writer import out_dir_problem
    from lmroute.export.evalsets import EVAL_NAMES

    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            return f"{flag}: must be >= 1 (got {value})"
    unknown = [b for b in args.benchmarks if b not in EVAL_NAMES]
    if unknown:
        return f"--benchmarks: unknown {', '.join(unknown)} (known: {', '.join(EVAL_NAMES)})"
    if problem := out_dir_problem(args.out) or _not_a_report(args.out):
        return f"--out: {problem}"
    if not (args.data_dir / "eval").is_dir():
        return f"--data-dir: {args.data_dir} holds no eval/ directory"
    if not args.bundle.is_dir():
        return f"--bundle: {args.bundle} {'is not a directory' if args.bundle.exists() else 'does not exist'}"
    try:
        manifest = read_manifest(args.bundle)
    except BundleError as exc:
        return f"--bundle: {args.bundle}: {exc}"
    unknown = [r for r in args.routers or () if r not in manifest.routers]
    if unknown:
        return f"--routers: {', '.join(unknown)} not in the bundle (has {', '.join(manifest.routers)})"
    return ""


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m lmroute.export.evaluate") -> int:
    """Command line of the evaluation; returns the exit status: 0 done, 1 a bundle or eval file it cannot
    use (one line naming it), 2 a bad flag (one line naming it, before any scoring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(args_list)
    from lmroute.bundle import kinds

    try:
        kinds.load_plugins(args.plugin)  # before the bundle is read: its routers may be of these kinds
    except ImportError as exc:
        print(f"{prog}: --plugin: {exc}", file=sys.stderr)
        return 2
    if problem := _flag_problem(args):
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    command = " ".join([prog, shlex.join(args_list)]).strip()
    try:
        files = run_evaluation(
            args.bundle,
            args.data_dir,
            args.out,
            command=command,
            benchmarks=args.benchmarks,
            routers=args.routers,
            limit=args.limit,
            batch_size=args.batch_size,
            intra_op_threads=args.threads,
        )
    except (ValueError, OSError) as exc:  # BundleError, EvalDataError (file and line), a missing eval file
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    results = json.loads(files.results_json.read_text())
    for bench, b in results["benchmarks"].items():
        for name, r in b["routers"].items():
            print(
                f"{bench:9s} {name:12s} APGR {r['apgr']:.3f}  CPT(50%) "
                f"{100 * r['cpt'].get('0.5', float('nan')):6.2f} %  "
                f"beats random: {'yes' if r['beats_random'] else 'no'}"
            )
        print(f"{bench:9s} {'random':12s} APGR {b['random']['apgr_mean']:.3f} ± {b['random']['apgr_std']:.3f}")
    print(f"report: {files.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
