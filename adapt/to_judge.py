"""Which recent decisions to judge next, from an outcome store (`lmroute-export to-judge`): the label budget
a deployment spends its judge calls by.

A deployment that judges a sample of its traffic with both models of the pair (an LLM judge, a human
review) asks for `k` decisions of its latest `window`; it judges both models' answers to those prompts
and sends the paired outcomes back by decision id (`Feedback`, or `lmroute-export import-outcomes`),
which `lmroute-export adapt` then learns from.

1. What has been judged: every prompt of the store with a paired outcome of the bundle's pair (both
   models judged; with `judged_of_callers`, only outcomes of the `callers`' decisions: a tenant's own
   view). Their features give the ridge head's posterior A = penalty I + sum of x x'.
2. The window: the `window` most recent decisions (only those of `callers` when given; made at or after
   `since_ms`) whose prompt no paired outcome judges yet (by decision id or prompt text: a prompt sent
   again is not judged again), with the features the
   bundle can give them: the stored embedding when it is in the bundle's encoder space, else the stored
   prompt text embedded now. A decision with neither (privacy switch, another encoder) is skipped.
3. `lmroute.adapt.selection.label_budget` picks `k` of the window: most at random (coverage of the
   traffic as it is), the rest by the largest posterior variance given what is judged.

The picks depend on the store's contents and `seed` only, so the same call gives the same decisions. Run
it once per window of new traffic (`since_ms` = just after the newest decision of the previous run), so
that decisions handed out but not judged yet are not handed out again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.adapt.from_store import score_texts
from lmroute.adapt.selection import judged_inverse, label_budget
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.manifest import encoder_identity
from lmroute.bundle.writer import write_text_atomic
from lmroute.outcomes.jsonl import to_judge_line
from lmroute.outcomes.records import Decision, LabeledPrompt, OutcomeKind
from lmroute.outcomes.store import OutcomeStore

__all__ = ["BUDGET_PENALTY", "JudgePicks", "decisions_to_judge", "judge_line", "write_judge_list"]

BUDGET_PENALTY = 30.0
"""The ridge penalty of the posterior the budget's variance picks read (the value its share was chosen with)."""


@dataclass(frozen=True)
class JudgePicks:
    """The decisions to judge (newest first) and what the choice saw."""

    decisions: list[Decision]
    judged: int  # prompts already judged with the pair (their features entered the posterior)
    window: int  # recent unjudged decisions considered
    skipped: int  # of those, without features (no usable embedding, no text)
    newest_ms: int | None  # when the newest of them was made (the next run's since_ms: just after it)


def _features(bundle: Bundle, rows: Sequence[Decision | LabeledPrompt]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(embeddings, log(1 + characters), indices of `rows` they are for): the stored embedding when it is
    in the bundle's space, else the stored text embedded now; rows with neither are left out."""
    own = encoder_identity(bundle.manifest)
    kept, texts, known, lengths = [], [], [], []
    for i, r in enumerate(rows):
        stored = r.embedding if r.encoder_id == own and r.embedding is not None else None
        chars = len(r.prompt_text) if r.prompt_text else r.prompt_chars
        if chars is None or (stored is None and not r.prompt_text):
            continue
        kept.append(i)
        texts.append(r.prompt_text or "")
        known.append(stored)
        lengths.append(math.log1p(chars))
    emb, _ = score_texts(bundle, texts, [], known)
    return emb.astype(np.float64), np.asarray(lengths), kept


def decisions_to_judge(
    bundle: Bundle | str | Path,
    store: OutcomeStore,
    k: int,
    *,
    window: int = 500,
    since_ms: int = 0,
    callers: Collection[str] | None = None,
    judged_of_callers: bool = False,
    seed: int = 0,
) -> JudgePicks:
    """Up to `k` (the budget) of the latest `window` unjudged decisions to judge (module docstring), with
    the encoder and pair of `bundle` (loaded, or its directory); ValueError naming a budget or window
    below 1. With `callers` and `judged_of_callers`, what counts as judged is only the outcomes of those
    callers' decisions (by decision id): a tenant's own view, which nothing of other tenants' traffic
    shapes (not even whether they sent and judged the same prompt)."""
    for name, value in (("budget", k), ("window", window)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1 (got {value})")
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(Path(bundle))
    pair = bundle.manifest.default_pair
    paired = {OutcomeKind.PAIRED, OutcomeKind.PREFERENCE}
    judged = [
        r
        for r in store.labeled_prompts(callers=callers if judged_of_callers else None)
        if r.kinds & paired and pair.strong in r.qualities and pair.weak in r.qualities
    ]
    judged_prompts = {r.prompt_sha256 for r in judged}  # a prompt judged once: none of its decisions again
    limit = 2 * window
    while True:  # the latest decisions, as many as it takes to find `window` unjudged ones
        recent = store.recent_decisions(since_ms=since_ms, limit=limit, callers=callers)
        unjudged = [d for d in recent if d.prompt_sha256 not in judged_prompts]
        if len(unjudged) >= window or len(recent) < limit:
            break
        limit *= 2
    unjudged = unjudged[:window]
    emb, lengths, kept = _features(bundle, unjudged)
    j_emb, j_len, _ = _features(bundle, judged)
    inverse = judged_inverse(j_emb.reshape(-1, bundle.encoder.dim), j_len, BUDGET_PENALTY)
    picks: list[Decision] = []
    if kept:
        chosen, _ = label_budget(emb, lengths, min(k, len(kept)), inverse, seed=seed)
        picks = sorted((unjudged[kept[int(i)]] for i in chosen), key=lambda d: -d.time_ms)
    newest = max((d.time_ms for d in unjudged), default=None)
    return JudgePicks(picks, len(j_len), len(unjudged), len(unjudged) - len(kept), newest)


def judge_line(d: Decision) -> str:
    """One decision to judge as a JSON line (`lmroute.outcomes.jsonl.to_judge_line`)."""
    return to_judge_line(d.decision_id, d.time_ms, d.prompt_text, d.strong_model, d.weak_model)


NEXT_SINCE = "next_since_ms"
"""The file in a judge directory that holds where the next list starts (the state of `write_judge_list`)."""


def write_judge_list(
    bundle_dir: str | Path,
    store: OutcomeStore,
    out_dir: Path,
    k: int,
    *,
    window: int = 500,
    seed: int = 0,
    keep: int = 0,
) -> dict[str, Any]:
    """The decisions to judge made since the last list written to `out_dir`, written there as
    `to_judge-<UTC time>.jsonl` (no file when none is picked), and `out_dir/next_since_ms` moved past the
    window looked at (written atomically): what `lmroute-adapt --judge-budget` does each round. With
    `keep` > 0 the lists beyond the newest `keep` are deleted (they hold prompt texts). Returns a summary
    (picked, window, skipped, file: its path, None without one; pruned: lists deleted). ValueError naming
    the state file when it holds no time; an OSError of the folder names it."""
    state = out_dir / NEXT_SINCE
    since = 0
    with _folder_named(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        if state.is_file():
            text = state.read_text(encoding="utf-8", errors="replace").strip()
            if not text.isdigit():
                raise ValueError(f"{state}: not a time in Unix milliseconds ({text[:40]!r}); remove it to start again")
            since = int(text)
    picks = decisions_to_judge(bundle_dir, store, k, window=window, since_ms=since, seed=seed)
    written = None
    with _folder_named(out_dir):
        if picks.decisions:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            written = out_dir / f"to_judge-{stamp}.jsonl"
            write_text_atomic(written, "".join(judge_line(d) + "\n" for d in picks.decisions))
        if picks.newest_ms is not None:
            write_text_atomic(state, f"{picks.newest_ms + 1}\n")
        lists = sorted(out_dir.glob("to_judge-*.jsonl"))  # their names sort by the time they were written
        pruned = lists[: max(len(lists) - keep, 0)] if keep > 0 else []
        for old in pruned:
            old.unlink(missing_ok=True)
    file = None if written is None else str(written)
    summary = {"picked": len(picks.decisions), "window": picks.window, "skipped": picks.skipped, "file": file}
    return summary | {"pruned": len(pruned)}


@contextlib.contextmanager
def _folder_named(folder: Path) -> Iterator[None]:
    """An OSError on the lists' folder (not writable, a full disk) says it was the judge lists' folder."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != folder else ""
        raise OSError(exc.errno, f"judge lists' folder {folder}: {why}{where}") from exc
