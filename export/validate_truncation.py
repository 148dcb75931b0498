"""Which truncation rule keeps what decides a long prompt: `python -m lmroute.export.validate_truncation`.

RouterBench's ARC and Winogrande prompts (the format of the training files) open with one shared
few-shot preamble of ~370-480 tokens and end with their own question. Training cuts them to that final
question (`lmroute.export.data.final_question`); a client sends them whole. This measures, for each
truncation rule (`lmroute.bundle.truncation`), what the encoder makes of the whole prompt, on the
validation split of the training data (fold 0 of 10, the build's held-out prompts; `--all-folds`: every
prompt once), never on the eval sets:

- preamble prompts (ARC, Winogrande): `cos`, the cosine between the embedding of the whole prompt and
  that of its final question (the training prompt), mean and 10th percentile; `distinct`, the share
  of distinct embeddings among the whole prompts (the head rule gives every one the same);
- other long prompts (every other source, longer than max_tokens): `cos_whole`, the cosine to the
  embedding of the whole text (the mean of the embeddings of consecutive max_tokens windows, weighted by
  their tokens): how much of the prompt the kept part stands for, when the task can sit anywhere;
- with `--bundle DIR`, per router of the bundle (random excluded: it hashes the text), its score on the
  whole preamble prompt against its score on the final question: Spearman correlation, mean |difference|
  and the share of distinct scores.

Selection rule: with a bundle, the highest Spearman correlation between a router's score of the whole
prompt and of its final question, averaged over the routers and the two preamble sources (a router that
scores the whole prompt as it scores the question it was trained on routes it as trained); without
one, the highest pooled mean `cos`. `cos_whole` is reported, not selected on: its reference begins with
exactly the window the head rule keeps, so it favours `head` by construction. docs/eval/truncation.md
holds the results and the command.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lmroute.bundle.encoder import OnnxEncoder, PromptTokenizer, TokenBatch, cut_and_pad
from lmroute.bundle.truncation import HEAD, Truncation
from lmroute.export.data import ROUTERBENCH_DIR, ROUTERBENCH_TASKS, final_question, not_utf8, open_data_file

__all__ = [
    "DEFAULT_RULES",
    "PREAMBLE_SOURCES",
    "RuleResult",
    "choose",
    "format_results",
    "main",
    "measure",
    "raw_routerbench_prompts",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The rules measured by default.
DEFAULT_RULES = ("head", "tail", "head_tail:16", "head_tail:32", "head_tail:64", "head_tail:96", "head_tail:128")
#: Training sources whose raw prompts carry the shared few-shot preamble.
PREAMBLE_SOURCES = ("routerbench_arc", "routerbench_winogrande")


@dataclass(frozen=True)
class RuleResult:
    """One rule on one group of prompts (a source, "pooled", or "other long"); router fields per router."""

    rule: str
    group: str
    n: int
    n_cut: int
    cos_mean: float
    cos_p10: float
    distinct: float
    routers: dict[str, dict[str, float]]


def raw_routerbench_prompts(data_dir: Path, source: str) -> Iterator[tuple[str, str]]:
    """(raw prompt, final question) of each row of a RouterBench training file: the raw prompt is the last
    item of the row's python-list `prompt`, as a client would send it; rows that do not parse are
    skipped (load_comparisons reports them)."""
    _, handle = open_data_file(data_dir, f"{ROUTERBENCH_DIR}/{ROUTERBENCH_TASKS[source]}")
    with handle:
        for row in csv.DictReader(handle):
            if not_utf8(row.get("prompt") or ""):  # load_comparisons reports a row that is not UTF-8
                continue
            try:
                value = ast.literal_eval(row.get("prompt") or "")
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(value, list) and value and isinstance(value[-1], str) and value[-1].strip():
                yield value[-1], final_question(value[-1])


def _cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)


def _distinct(values: NDArray[Any], decimals: int) -> float:
    if len(values) == 0:
        return float("nan")
    rows = np.round(np.asarray(values, dtype=np.float64).reshape(len(values), -1), decimals)
    return float(len(np.unique(rows, axis=0)) / len(values))


def _whole_text_embeddings(encoder: OnnxEncoder, texts: Sequence[str]) -> NDArray[np.float32]:
    """Each text's embedding over all its tokens: consecutive windows of max_tokens (special tokens
    kept on each), embedded, averaged with weights = window tokens, L2-normalised."""
    tok = encoder.tokenizer
    budget = tok.max_tokens - tok.front - tok.back
    uncut = PromptTokenizer(tok.path, max_tokens=1 << 30)
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for i, ids in enumerate(uncut.token_ids(texts, chunk=8)):
        head, body, tail = ids[: tok.front], ids[tok.front : len(ids) - tok.back], ids[len(ids) - tok.back :]
        windows = [head + body[s : s + budget] + tail for s in range(0, max(len(body), 1), budget)]
        batch: TokenBatch = cut_and_pad(
            windows,
            [[0] * len(w) for w in windows],
            max_tokens=tok.max_tokens,
            truncation=HEAD,
            front=tok.front,
            back=tok.back,
            pad_id=tok.pad_id,
        )
        weights = batch.n_tokens.astype(np.float64)
        mean = (encoder.embed(batch).astype(np.float64) * weights[:, None]).sum(0) / weights.sum()
        out[i] = mean / np.linalg.norm(mean)
    return out


def _embed_and_score(
    bundle: Any | None, encoder: OnnxEncoder, texts: Sequence[str]
) -> tuple[NDArray[np.float32], int, dict[str, NDArray[np.float64]]]:
    """`texts` tokenised and embedded by `encoder` (its rule): (embeddings, how many were cut, each
    non-random router's scores when a bundle is given)."""
    from lmroute.bundle.routers import PromptBatch

    names = [] if bundle is None else [name for name, r in bundle.routers.items() if r.kind != "random"]
    parts: dict[str, list[NDArray[np.float64]]] = {name: [] for name in names}
    embs, n_cut = [], 0
    for start in range(0, len(texts), 32):
        chunk = list(texts[start : start + 32])
        tokens = encoder.tokenize(chunk)
        batch = PromptBatch(texts=chunk, tokens=tokens, embeddings=encoder.embed(tokens))
        embs.append(batch.embeddings)
        n_cut += int(tokens.truncated.sum())
        for name in names:
            parts[name].append(np.asarray(bundle.routers[name].score(batch), dtype=np.float64))
    emb = np.concatenate(embs) if embs else np.zeros((0, encoder.dim), np.float32)
    return emb, n_cut, {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}


def _spearman(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def measure(
    encoders: dict[str, OnnxEncoder],
    preamble: dict[str, tuple[list[str], list[str]]],
    other_long: list[str],
    bundle: Any | None,
) -> list[RuleResult]:
    """Every rule of `encoders` (rule text -> encoder) on the preamble prompts of each source (raw,
    final question), pooled, and on `other_long`."""
    reference = next(iter(encoders.values()))
    fq = {s: _embed_and_score(bundle, reference, fqs) for s, (_, fqs) in preamble.items()}
    whole = _whole_text_embeddings(reference, other_long) if other_long else np.zeros((0, reference.dim), np.float32)
    results: list[RuleResult] = []
    for rule, encoder in encoders.items():
        pooled_cos, pooled_emb, pooled_cut = [], [], 0
        pooled_scores: dict[str, list[tuple[NDArray[np.float64], NDArray[np.float64]]]] = {}
        for source, (raws, _) in preamble.items():
            emb, n_cut, scores = _embed_and_score(bundle, encoder, raws)
            cos = _cosines(emb, fq[source][0])
            routers: dict[str, dict[str, float]] = {}
            for name, raw_scores in scores.items():
                ref_scores = fq[source][2][name]
                routers[name] = _router_stats(raw_scores, ref_scores)
                pooled_scores.setdefault(name, []).append((raw_scores, ref_scores))
            results.append(_result(rule, source, cos, emb, n_cut, routers))
            pooled_cos.append(cos)
            pooled_emb.append(emb)
            pooled_cut += n_cut
        routers = {
            name: _router_stats(np.concatenate([r for r, _ in pairs]), np.concatenate([f for _, f in pairs]))
            for name, pairs in pooled_scores.items()
        }
        results.append(
            _result(rule, "pooled", np.concatenate(pooled_cos), np.concatenate(pooled_emb), pooled_cut, routers)
        )
        if other_long:
            emb = encoder.encode(other_long)
            results.append(_result(rule, "other long", _cosines(emb, whole), emb, len(other_long), {}))
    return results


def _router_stats(raw: NDArray[np.float64], ref: NDArray[np.float64]) -> dict[str, float]:
    return {
        "spearman": round(_spearman(raw, ref), 4),
        "mean_abs_diff": round(float(np.abs(raw - ref).mean()), 4),
        "distinct": round(_distinct(raw, 9), 4),
    }


def _result(
    rule: str, group: str, cos: NDArray[np.float64], emb: NDArray[np.float32], n_cut: int, routers: dict[str, Any]
) -> RuleResult:
    return RuleResult(
        rule=rule,
        group=group,
        n=len(cos),
        n_cut=n_cut,
        cos_mean=round(float(cos.mean()), 4),
        cos_p10=round(float(np.percentile(cos, 10)), 4),
        distinct=round(_distinct(emb, 4), 4),
        routers=routers,
    )


def choose(results: Sequence[RuleResult]) -> str:
    """The selection rule of the module docstring: the highest mean over routers and preamble sources of
    the Spearman correlation (router scores measured), else the highest pooled mean cosine."""
    per_source = [r for r in results if r.group in PREAMBLE_SOURCES]
    if any(r.routers for r in per_source):
        agreement: dict[str, list[float]] = {}
        for r in per_source:
            agreement.setdefault(r.rule, []).extend(v["spearman"] for v in r.routers.values())
        return max(agreement, key=lambda rule: float(np.mean(agreement[rule])))
    return max((r for r in results if r.group == "pooled"), key=lambda r: r.cos_mean).rule


def format_results(results: Sequence[RuleResult]) -> str:
    """Markdown tables: embeddings per rule and group, then router agreement when measured."""
    lines = [
        "| rule | group | n | cut | cos mean | cos p10 | distinct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.rule} | {r.group} | {r.n} | {r.n_cut} | {r.cos_mean:.4f} | {r.cos_p10:.4f} | {r.distinct:.3f} |"
        )
    with_routers = [r for r in results if r.routers and r.group == "pooled"]
    if with_routers:
        names = list(with_routers[0].routers)
        lines += ["", "| rule | " + " | ".join(f"{n} spearman / mean abs diff / distinct" for n in names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        for r in with_routers:
            stats = [r.routers[n] for n in names]
            cells = [f"{x['spearman']:+.3f} / {x['mean_abs_diff']:.3f} / {x['distinct']:.3f}" for x in stats]
            lines.append(f"| {r.rule} | " + " | ".join(cells) + " |")
        # The selection criterion: Spearman per router and source, and their mean.
        columns = [(n, s) for n in names for s in PREAMBLE_SOURCES]
        header = " | ".join(f"{n} {s.removeprefix('routerbench_')}" for n, s in columns)
        lines += ["", f"| rule | {header} | mean |", "|---|" + "---:|" * (len(columns) + 1)]
        by_key = {(r.rule, r.group): r for r in results}
        for rule in dict.fromkeys(r.rule for r in with_routers):
            values = [by_key[(rule, s)].routers[n]["spearman"] for n, s in columns]
            cells = " | ".join(f"{v:+.3f}" for v in values)
            lines.append(f"| {rule} | {cells} | {float(np.mean(values)):+.4f} |")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lmroute.export.validate_truncation", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    p.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache", help="exported encoders")
    p.add_argument("--bundle", type=Path, default=None, help="also compare this bundle's router scores")
    p.add_argument("--rules", default=",".join(DEFAULT_RULES), help="comma-separated rules to measure")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--all-folds", action="store_true", help="every prompt once, not only fold 0 of 10")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from lmroute.export.data import load_comparisons
    from lmroute.export.validation_tables import kfold_by_prompt

    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rules = [Truncation.parse(r) for r in args.rules.split(",") if r.strip()]
    bundle = None
    if args.bundle is not None:
        from lmroute.bundle import load_bundle

        bundle = load_bundle(args.bundle, require_calibration=False)
        enc_dir, max_tokens = args.bundle / "encoder", bundle.manifest.encoder.max_tokens
    else:
        from lmroute.export.pipeline import ensure_encoder

        enc_dir, max_tokens = ensure_encoder(None, args.cache_dir, args.max_tokens)[0], args.max_tokens
    encoders = {
        str(rule): OnnxEncoder(
            enc_dir / "model.onnx",
            enc_dir / "tokenizer.json",
            max_tokens=max_tokens,
            truncation=rule,
            intra_op_threads=1,
        )
        for rule in rules
    }

    comps = load_comparisons(args.data_dir).comparisons
    val_prompts: set[str] = set()
    for _, val in kfold_by_prompt(comps, 10) if args.all_folds else kfold_by_prompt(comps, 10)[:1]:
        val_prompts.update(val.prompts)
    source_of = {}
    for i, s in zip(comps.prompt_idx.tolist(), comps.source.tolist(), strict=True):
        source_of.setdefault(comps.prompts[i], comps.sources[s])
    preamble: dict[str, tuple[list[str], list[str]]] = {}
    for source in PREAMBLE_SOURCES:
        pairs = {fq: raw for raw, fq in raw_routerbench_prompts(args.data_dir, source) if raw.strip() != fq}
        chosen = sorted(fq for fq in pairs if fq in val_prompts)
        preamble[source] = ([pairs[fq] for fq in chosen], chosen)
    reference = next(iter(encoders.values()))
    others = sorted(p for p in val_prompts if source_of.get(p) not in PREAMBLE_SOURCES)
    lengths = reference.tokenize(others).truncated if others else np.zeros(0, bool)
    other_long = [p for p, cut in zip(others, lengths.tolist(), strict=True) if cut]
    print(
        f"validation prompts: {len(val_prompts)}; preamble prompts "
        + ", ".join(f"{s} {len(v[0])}" for s, v in preamble.items())
        + f"; other prompts longer than {max_tokens} tokens: {len(other_long)} of {len(others)}",
        file=sys.stderr,
    )
    results = measure(encoders, preamble, other_long, bundle)
    print(format_results(results))
    print(f"\nchosen by the selection rule: {choose(results)}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
