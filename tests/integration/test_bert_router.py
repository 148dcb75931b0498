"""The bert router end to end: labels from comparisons, a short real fine-tune, ONNX export, parity.

The training test uses a synthetic table where the signal is unmistakable: prompts that mention
"math" are always won by the strong-tier model, all others by the weak-tier model. A 20 s fine-tune
must get held-out prompts (unseen fillers and subjects) right, which also pins the label order
(index 0 = strong_wins). ONNX vs PyTorch probabilities are compared with tolerance 1e-5.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.data import Comparisons
from lmroute.export.train_bert import (
    LABELS,
    STRONG_WINS,
    TIE,
    WEAK_WINS,
    build_bert_examples,
    default_model_dir,
    export_bert_onnx,
    predict_proba,
    train_bert,
)

PROB_TOL = 1e-5  # max |ONNX - PyTorch| on softmax probabilities
LOGIT_TOL = 1e-4  # max |ONNX - PyTorch| on logits (what export_bert_onnx returns)

MODELS = ("big", "mid-a", "mid-b", "small", "unrated")  # sorted, as Comparisons requires
TIERS = {"big": 2, "mid-a": 1, "mid-b": 1, "small": 0}  # "unrated" has no tier


def _table(rows: list[tuple[str, str, str, int]]) -> Comparisons:
    """Comparisons from (prompt, model_a, model_b, outcome) rows."""
    prompts: dict[str, int] = {}
    p = [prompts.setdefault(r[0], len(prompts)) for r in rows]
    n = len(rows)
    return Comparisons(
        prompts=tuple(prompts),
        prompt_idx=np.asarray(p, dtype=np.int32),
        model_a=np.asarray([MODELS.index(r[1]) for r in rows], dtype=np.int32),
        model_b=np.asarray([MODELS.index(r[2]) for r in rows], dtype=np.int32),
        outcome=np.asarray([r[3] for r in rows], dtype=np.int8),
        label_kind=np.zeros(n, dtype=np.int8),
        source=np.zeros(n, dtype=np.int8),
        models=MODELS,
        sources=("synthetic",),
    )


def test_labels_are_read_from_the_strong_side_and_same_tier_is_dropped() -> None:
    rows = [
        ("p0", "big", "small", 0),  # strong (a) wins
        ("p0", "small", "big", 0),  # weak (a) wins
        ("p0", "mid-a", "big", 1),  # strong (b) wins
        ("p0", "big", "mid-b", 2),  # tie
        ("p0", "mid-a", "mid-b", 0),  # same tier: dropped
        ("p0", "unrated", "small", 0),  # untiered model: dropped
        ("p1", "mid-a", "mid-b", 1),  # only same tier: prompt dropped
        ("p2", "small", "mid-b", 1),  # strong (b) wins
        ("p2", "mid-a", "small", 1),  # weak (b) wins
        ("p2", "small", "big", 0),  # weak (a) wins
    ]
    texts, labels, weights = build_bert_examples(_table(rows), TIERS)
    assert texts == ("p0", "p2")
    np.testing.assert_allclose(labels[0], [2 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(labels[1], [1 / 3, 0.0, 2 / 3])
    np.testing.assert_array_equal(weights, [4.0, 3.0])
    assert labels.dtype == np.float32 and weights.dtype == np.float32

    _, hard, _ = build_bert_examples(_table(rows), TIERS, soft=False)
    np.testing.assert_array_equal(hard[0], np.eye(3)[STRONG_WINS])
    np.testing.assert_array_equal(hard[1], np.eye(3)[WEAK_WINS])

    # A draw between outcomes becomes a hard tie.
    draw = [("q", "big", "small", 0), ("q", "big", "small", 1)]
    _, hard_draw, _ = build_bert_examples(_table(draw), TIERS, soft=False)
    np.testing.assert_array_equal(hard_draw[0], np.eye(3)[TIE])
    assert LABELS[STRONG_WINS] == "strong_wins" and LABELS[WEAK_WINS] == "weak_wins"


def test_bad_labels_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"labels: shape \(2, 2\)"):
        train_bert(["a", "b"], np.zeros((2, 2)), time_budget_s=5)
    with pytest.raises(ValueError, match="probability distribution"):
        train_bert(["a", "b"], np.ones((2, 3)), time_budget_s=5)
    with pytest.raises(ValueError, match=r"BertTrainConfig.max_tokens"):
        train_bert(["a", "b"], np.eye(3)[[0, 2]], max_tokens=4)


def test_same_seed_same_model() -> None:
    texts = [f"question number {i} about {'math' if i % 2 else 'art'}" for i in range(12)]
    labels = np.eye(3)[[STRONG_WINS if i % 2 else WEAK_WINS for i in range(12)]]
    kwargs = dict(
        max_tokens=16,
        epochs=1,
        batch_size=4,
        seed=3,
        time_budget_s=120,
        device="cpu",
        val_fraction=0.25,
        patience=10,
        cpu_threads=1,
    )
    runs = [train_bert(texts, labels, **kwargs) for _ in range(2)]
    assert all(r.stats.stopped_by == "epochs" and r.stats.examples_seen == 9 for r in runs)
    probs = [predict_proba(r, default_model_dir(), texts) for r in runs]
    np.testing.assert_array_equal(probs[0], probs[1])
    other = train_bert(texts, labels, **{**kwargs, "seed": 4})
    assert np.abs(predict_proba(other, default_model_dir(), texts) - probs[0]).max() > 1e-6


_TEMPLATES = (
    "Can you help me with my {s} homework about {x}?",
    "I have a {s} question regarding {x}.",
    "Explain the {s} behind {x} in simple words.",
    "Quick {s} problem: what do you know about {x}?",
    "Give me three {s} facts about {x}.",
    "My teacher asked a {s} question on {x}, please answer it.",
)
_TRAIN_FILL = (
    "triangles",
    "rivers",
    "apples",
    "trains",
    "clocks",
    "bridges",
    "stars",
    "coins",
    "gardens",
    "volcanoes",
    "islands",
    "bicycles",
    "candles",
    "mountains",
    "ladders",
)
_TRAIN_SUBJECTS = ("cooking", "history", "poetry", "travel", "music", "fashion", "art", "sports")
_HELD_FILL = ("pyramids", "snowflakes", "elevators", "lighthouses", "glaciers", "kites")
_HELD_SUBJECTS = ("gardening", "dance", "film")


def _synthetic(fill: tuple[str, ...], subjects: tuple[str, ...]) -> tuple[list[str], list[str]]:
    math_prompts = [t.format(s="math", x=x) for t in _TEMPLATES for x in fill]
    other = [t.format(s=s, x=x) for t in _TEMPLATES for x in fill for s in subjects]
    return math_prompts, other


@pytest.mark.slow
def test_short_finetune_learns_the_signal_and_onnx_matches(tmp_path: Path) -> None:
    math_train, other_train = _synthetic(_TRAIN_FILL, _TRAIN_SUBJECTS)
    rng = np.random.default_rng(0)
    other_train = list(rng.choice(other_train, size=len(math_train), replace=False))  # balanced
    rows = [(p, "big", "small", 0) for p in math_train] + [(p, "small", "mid-a", 0) for p in other_train]
    texts, labels, _ = build_bert_examples(_table(rows), TIERS)
    assert len(texts) == 2 * len(math_train)

    from transformers import AutoModelForSequenceClassification  # noqa: F401  (import outside the clock)

    budget = 25.0
    t0 = time.monotonic()
    trained = train_bert(
        texts,
        labels,
        max_tokens=32,
        epochs=50,
        batch_size=16,
        lr=2e-4,
        seed=0,
        time_budget_s=budget,
        device="cpu",
        val_fraction=0.1,
        cpu_threads=1,
    )
    wall = time.monotonic() - t0
    stats = trained.stats
    # the budget ends training (50 epochs would take minutes); the wall margin covers a slow step on a busy machine
    assert stats.elapsed_s <= budget and wall <= budget + 10.0, (stats.elapsed_s, wall)
    assert stats.examples_seen > 0 and stats.steps > 0
    assert stats.stopped_by in ("time_budget", "early_stopping", "epochs")
    assert stats.n_val == round(0.1 * len(texts)) and stats.n_train + stats.n_val == len(texts)
    assert stats.epochs_completed == pytest.approx(stats.examples_seen / stats.n_train)
    assert stats.val_loss < stats.const_val_loss  # beats the constant predictor

    # Held-out prompts: unseen fillers and unseen subjects; the strong side must win on "math".
    math_held, other_held = _synthetic(_HELD_FILL, _HELD_SUBJECTS)
    other_held = other_held[:: len(_HELD_SUBJECTS)]
    probs = predict_proba(trained, default_model_dir(), math_held + other_held)
    is_math = np.array([True] * len(math_held) + [False] * len(other_held))
    pred_strong = probs[:, STRONG_WINS] > probs[:, WEAK_WINS]
    accuracy = float((pred_strong == is_math).mean())
    assert accuracy >= 0.9, (accuracy, stats)
    assert probs[is_math, STRONG_WINS].mean() > 0.7 and probs[~is_math, WEAK_WINS].mean() > 0.7

    # Export, then compare ONNX and PyTorch at several batch sizes and sequence lengths.
    import onnxruntime as ort

    from lmroute.bundle.encoder import PromptTokenizer
    from lmroute.export.recipe import SHIPPED

    out = tmp_path / "routers" / "bert" / "model.onnx"
    max_logit_diff = export_bert_onnx(trained, default_model_dir(), out)
    assert max_logit_diff <= LOGIT_TOL
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]

    # What the service feeds the classifier: the encoder's tokens, cut by the shipped truncation rule.
    tok = PromptTokenizer(default_model_dir() / "tokenizer.json", max_tokens=256, truncation=SHIPPED.truncation_rule)
    held = math_held + other_held
    ref = predict_proba(trained, default_model_dir(), held, max_tokens=256)
    long_prompt = "Please solve this math exercise step by step. " * 40  # > 256 tokens
    for batch in ([held[0]], held[:3], held[5:22], [long_prompt, held[1]], held):
        tb = tok.tokenize(batch)
        feed = {"input_ids": tb.input_ids, "attention_mask": tb.attention_mask, "token_type_ids": tb.token_type_ids}
        logits = sess.run(["logits"], feed)[0]
        assert logits.shape == (len(batch), 3) and logits.dtype == np.float32
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        onnx_probs = e / e.sum(axis=1, keepdims=True)
        torch_probs = predict_proba(trained, default_model_dir(), batch, max_tokens=256)
        assert np.abs(onnx_probs - torch_probs).max() <= PROB_TOL
    # Serving score = softmax(logits)[0]: high for math, low otherwise.
    tb = tok.tokenize(held)
    feed = {"input_ids": tb.input_ids, "attention_mask": tb.attention_mask, "token_type_ids": tb.token_type_ids}
    logits = sess.run(["logits"], feed)[0]
    score = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(score, ref[:, STRONG_WINS], atol=PROB_TOL)
    assert score[is_math].mean() > score[~is_math].mean() + 0.4


@pytest.mark.slow
def test_validation_harness_trains_bert_like_the_pipeline() -> None:
    """The harness's bert (`fit_scorers(..., routers=("bert",))`): tiers from the Elo fit of all rows,
    examples from the direct strong-vs-weak rows only, and a scorer that returns P(strong wins) for
    the texts it is given, in their order."""
    from lmroute.export.validation_recipes import Recipe, fit_scorers

    math_train, other_train = _synthetic(_TRAIN_FILL, _TRAIN_SUBJECTS)
    rng = np.random.default_rng(0)
    other_train = list(rng.choice(other_train, size=len(math_train), replace=False))
    rows = [(p, "big", "small", 0) for p in math_train] + [(p, "small", "big", 0) for p in other_train]
    # Rows that only the Elo fit sees: big > mid-a > small, so the pair lands in different tiers.
    rows += [(f"elo filler {i}", "big", "mid-a", 0) for i in range(20)]
    rows += [(f"elo filler {i}", "mid-a", "small", 0) for i in range(20)]
    comps = _table(rows)
    # the epochs bound the run; the budget only guards against a hang (on cores shared with other work, 25 s
    # stopped the fine-tuning early and the head had not learned yet)
    recipe = Recipe(bert_max_tokens=32, bert_epochs=50, bert_lr=2e-4, bert_time_budget_s=180.0)
    scorer = fit_scorers(
        recipe, comps, np.zeros((len(comps.prompts), 4), np.float32), routers=("bert",), strong="big", weak="small"
    )["bert"]

    math_held, other_held = _synthetic(_HELD_FILL, _HELD_SUBJECTS)
    texts = [p for pair in zip(math_held, other_held[:: len(_HELD_SUBJECTS)], strict=True) for p in pair]  # interleaved
    scores = scorer(np.zeros((len(texts), 4), np.float32), texts)
    assert scores.shape == (len(texts),) and ((scores >= 0) & (scores <= 1)).all()
    is_math = np.arange(len(texts)) % 2 == 0
    assert float(((scores > 0.5) == is_math).mean()) >= 0.9, scores
    assert scorer(np.zeros((0, 4), np.float32), []).shape == (0,)
    with pytest.raises(ValueError, match="unknown routers"):
        fit_scorers(recipe, comps, np.zeros((len(comps.prompts), 4), np.float32), routers=("causal_llm",))
