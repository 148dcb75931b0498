"""Tests of lmroute.export.validate on tiny synthetic data: quality tables, folds, metrics, recipes."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.data import Comparisons, evenly_spaced
from lmroute.export.metrics import router_metrics
from lmroute.export.validate import (
    Experiment,
    PairTable,
    Recipe,
    evaluate_table,
    fit_scorers,
    format_results,
    kfold_by_prompt,
    length_scores,
    load_judge_scores,
    pair_tables,
    validate_recipe,
)

S, W = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
# The harness's machinery on toy data, with RouteLLM's knobs rather than the shipped recipe's: gamma 10,
# every comparison in mf and sw_ranking with no pair factor, mf noise 0.1, no prior blend (the toy
# tables are too small for the shipped knobs, which `test_recipe.py` checks).
TOY = Recipe(
    n_tiers=4,
    mf_dim=8,
    mf_lr=2e-2,
    mf_batch_size=256,
    mf_noise_sigma=0.1,
    mf_pair_weight=1.0,
    gamma=10.0,
    sw_pair_only=False,
    prior_weights=(),
)
MODELS = tuple(sorted((S, W, "m-low", "m-mid")))
SOURCES = ("alpaca_eval", "arena_bench_v1", "routerbench_arc")


def comps_from_rows(rows, prompts) -> Comparisons:
    """rows: (prompt index, model a, model b, outcome, source name)."""
    return Comparisons(
        prompts=tuple(prompts),
        prompt_idx=np.array([r[0] for r in rows], dtype=np.int32),
        model_a=np.array([MODELS.index(r[1]) for r in rows], dtype=np.int32),
        model_b=np.array([MODELS.index(r[2]) for r in rows], dtype=np.int32),
        outcome=np.array([r[3] for r in rows], dtype=np.int8),
        label_kind=np.array([2 if r[4].startswith("routerbench") else 1 for r in rows], dtype=np.int8),
        source=np.array([SOURCES.index(r[4]) for r in rows], dtype=np.int8),
        models=MODELS,
        sources=SOURCES,
    )


def test_pair_tables_read_outcomes_from_either_side_and_average() -> None:
    prompts = ["p0", "p1", "p2", "p3"]
    rows = [
        (0, S, W, 0, "routerbench_arc"),  # strong wins
        (1, W, S, 0, "routerbench_arc"),  # weak wins (weak on side a)
        (2, S, W, 2, "routerbench_arc"),  # tie
        (3, S, W, 0, "routerbench_arc"),
        (3, S, W, 0, "alpaca_eval"),
        (3, W, S, 1, "alpaca_eval"),  # strong wins again
        (0, S, "m-low", 0, "routerbench_arc"),  # not the pair: ignored
    ]
    tables = pair_tables(comps_from_rows(rows, prompts), strong=S, weak=W, min_prompts=1)
    rb = tables["routerbench_arc"]
    assert rb.kind == "correctness"
    assert rb.prompts == ("p0", "p1", "p2", "p3")
    np.testing.assert_allclose(rb.strong_q, [1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(rb.weak_q, [0.0, 1.0, 0.5, 0.0])
    assert "alpaca_eval" in tables and tables["alpaca_eval"].kind == "preference"
    np.testing.assert_allclose(tables["alpaca_eval"].strong_q, [1.0])


def test_tie_as_half_gives_the_exact_pgr_of_correctness() -> None:
    """Ties scored (0.5, 0.5) give the same APGR / CPT as the true 0/1 correctness."""
    rng = np.random.default_rng(3)
    n = 200
    sq = rng.integers(0, 2, n).astype(float)
    wq = np.where(rng.random(n) < 0.6, sq, rng.integers(0, 2, n)).astype(float)
    half_s = np.where(sq == wq, 0.5, sq)
    half_w = np.where(sq == wq, 0.5, wq)
    scores = rng.random(n)
    exact = router_metrics(scores, sq, wq, targets=(0.5,))
    halved = router_metrics(scores, half_s, half_w, targets=(0.5,))
    assert halved.apgr == pytest.approx(exact.apgr, abs=1e-12)
    assert halved.cpt[0.5] == pytest.approx(exact.cpt[0.5], abs=1e-12)


def test_judge_scores_replace_outcomes_for_arena_bench(tmp_path: Path) -> None:
    f = tmp_path / "train/arena_bench_v1_judge/scores_wide.csv.gz"
    f.parent.mkdir(parents=True)
    text = (
        "question_id,prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1,m-low\n"
        'q0," first ",9,4,1\nq1,second,7,8,\nq2,third,10,,2\n'
    )
    with gzip.open(f, "wt") as h:
        h.write(text)
    scores = load_judge_scores(tmp_path)
    assert scores["first"] == {S: 9.0, W: 4.0, "m-low": 1.0}
    assert scores["third"] == {S: 10.0, "m-low": 2.0}
    rows = [(0, S, W, 0, "arena_bench_v1"), (1, W, S, 0, "arena_bench_v1"), (2, S, "m-low", 0, "arena_bench_v1")]
    table = pair_tables(comps_from_rows(rows, ["first", "second", "third"]), judge_scores=scores)["arena_bench_v1"]
    assert table.kind == "score" and table.prompts == ("first", "second")
    np.testing.assert_allclose(table.strong_q, [9.0, 7.0])
    np.testing.assert_allclose(table.weak_q, [4.0, 8.0])


def test_evaluate_table_perfect_router_and_length_baseline() -> None:
    prompts = tuple("x" * (i + 1) for i in range(40))
    gain = np.arange(40) >= 30  # strong wins exactly on the 10 longest prompts, ties elsewhere
    table = PairTable("routerbench_arc", "correctness", prompts, np.where(gain, 1.0, 0.5), np.where(gain, 0.0, 0.5))
    res = evaluate_table(table, gain.astype(float) + 0.01 * np.arange(40), router="oracle")
    assert res.apgr > 0.85 and res.cpt50 < 0.2
    assert res.length_apgr == pytest.approx(res.apgr)  # length orders the prompts the same way
    assert 0.3 < res.random_apgr_mean < 0.7 and res.random_apgr_std > 0.0
    anti = evaluate_table(table, -np.arange(40.0), router="anti")
    assert anti.apgr < 0.15
    with pytest.raises(ValueError, match="3 scores for 40 prompts"):
        evaluate_table(table, np.zeros(3), router="bad")
    np.testing.assert_array_equal(length_scores(["ab", ""]), [2.0, 0.0])


def test_kfold_partitions_prompts_and_fold0_is_the_pipeline_split() -> None:
    prompts = [f"prompt {i}" for i in range(53)]
    rows = [(i, S, W, i % 3, "alpaca_eval") for i in range(53)] + [
        (i, S, "m-low", 0, "alpaca_eval") for i in range(0, 53, 2)
    ]
    comps = comps_from_rows(rows, prompts)
    folds = kfold_by_prompt(comps, 10, seed=0)
    val_sets = [set(v.prompts) for _, v in folds]
    assert sum(len(v) for v in val_sets) == 53
    assert set().union(*val_sets) == set(prompts)
    for (tr, va), vs in zip(folds, val_sets, strict=True):
        assert not set(tr.prompts) & vs and len(tr) + len(va) == len(comps)
    _, pipeline_val = comps.split_by_prompt(0.1, seed=0)
    assert val_sets[0] == set(pipeline_val.prompts)
    with pytest.raises(ValueError, match="k must be >= 2"):
        kfold_by_prompt(comps, 1)


def synthetic_world(seed: int = 0, n_prompts: int = 120, d: int = 8):
    """Prompts with a direction v: strong beats weak iff e . v > -0.3 (~80 %); other models fill tiers."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_prompts, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    v = np.zeros(d, np.float32)
    v[0] = 1.0
    prompts = [f"synthetic prompt {i}" for i in range(n_prompts)]
    rows = []
    for i in range(n_prompts):
        hard = emb[i] @ v > -0.3
        for src in ("routerbench_arc", "alpaca_eval"):
            rows.append((i, S, W, 0 if hard else 1, src))
            rows.append((i, S, "m-low", 0, src))
            rows.append((i, "m-mid", "m-low", 0, src))
            rows.append((i, S, "m-mid", 0 if hard else 2, src))
            rows.append((i, W, "m-low", 0, src))
    comps = comps_from_rows(rows, prompts)
    lookup = dict(zip(prompts, emb, strict=True))
    return comps, (lambda texts: np.stack([lookup[t] for t in texts])), emb, v


def test_fit_scorers_learn_the_prompt_direction() -> None:
    comps, emb_of, emb, v = synthetic_world()
    recipe = replace(TOY, mf_epochs=30)
    scorers = fit_scorers(recipe, comps, emb_of(comps.prompts), strong=S, weak=W)
    hard = emb @ v > -0.3
    texts = list(comps.prompts)
    for name, scorer in scorers.items():
        s = scorer(emb, texts)
        assert s.shape == (len(emb),)
        assert s[hard].mean() > s[~hard].mean() + 0.05, name


def test_validate_recipe_beats_random_on_synthetic_data_and_formats() -> None:
    comps, emb_of, _, _ = synthetic_world(seed=1, n_prompts=200)
    recipe = replace(TOY, mf_epochs=30)
    results = validate_recipe(recipe, comps, emb_of, judge_scores=None, folds=4, only_folds=(0, 1), strong=S, weak=W)
    assert {r.router for r in results} == {"mf", "sw_ranking"}
    assert {r.source for r in results} == {"routerbench_arc", "alpaca_eval"}
    assert {r.fold for r in results} == {0, 1}
    for r in results:
        assert r.apgr > r.random_apgr_mean + 2 * r.random_apgr_std, (r.router, r.source, r.apgr)
    text = format_results(results, title="synthetic")
    assert text.startswith("### synthetic") and text.count("\n| mf |") == 2
    z_column = [
        float(line.split("|")[6]) for line in text.splitlines() if line.startswith(("| mf |", "| sw_ranking |"))
    ]
    assert len(z_column) == 4 and min(z_column) > 2  # every router beat random by > 2 std on every source


def test_recipe_describe_and_pair_weights() -> None:
    assert Recipe().describe() == "default" == Experiment().describe()
    assert Recipe(gamma=5.0, mf_pair_weight=3.0).describe() == "gamma=5.0, mf_pair_weight=3.0"
    exp = Experiment(recipe=Recipe(gamma=5.0), other_weight=0.5)
    assert exp.describe() == "gamma=5.0, other_weight=0.5"


def test_training_weights_pair_factors_and_tier_window() -> None:
    from lmroute.export.validate import training_weights

    rows = [
        (0, S, W, 0, "routerbench_arc"),  # the pair
        (0, S, "m-low", 0, "routerbench_arc"),  # involves strong
        (0, "m-mid", "m-low", 0, "routerbench_arc"),  # neither
        (0, W, "m-mid", 1, "alpaca_eval"),  # involves weak, judge source
    ]
    comps = comps_from_rows(rows, ["p0"])
    exp = Experiment(
        recipe=Recipe(mf_pair_weight=10.0, sw_pair_only=False),
        sw_pair_weight=4.0,
        pair_model_weight=2.0,
        other_weight=0.5,
        source_weights=(("alpaca_eval", 3.0),),
    )
    np.testing.assert_allclose(training_weights(exp, comps, S, W, router="mf"), [20.0, 2.0, 0.5, 6.0])
    np.testing.assert_allclose(training_weights(exp, comps, S, W, router="sw_ranking"), [8.0, 2.0, 0.5, 6.0])
    # the shipped recipe: mf weighs the pair 10x, sw_ranking learns from the pair only (as the build)
    np.testing.assert_allclose(training_weights(Recipe(), comps, S, W, router="mf"), [10.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(training_weights(Recipe(), comps, S, W, router="sw_ranking"), [1.0, 0.0, 0.0, 0.0])
    pair_only = Experiment(recipe=Recipe(mf_pair_weight=1.0), mf_pair_only=True)
    np.testing.assert_allclose(training_weights(pair_only, comps, S, W, router="mf"), [1.0, 0.0, 0.0, 0.0])
    tiers = {S: 3, W: 2, "m-mid": 1, "m-low": 0}
    plain = Recipe(mf_pair_weight=1.0)
    window = training_weights(Experiment(recipe=plain, tier_window=1), comps, S, W, tiers, router="mf")
    np.testing.assert_allclose(window, [1.0, 0.0, 0.0, 1.0])  # m-low (tier 0) is outside 1..4
    window0 = training_weights(Experiment(recipe=plain, tier_window=0), comps, S, W, tiers, router="mf")
    np.testing.assert_allclose(window0, [1.0, 0.0, 0.0, 0.0])


def test_decontaminate_drops_val_prompts_with_a_training_twin() -> None:
    comps, _, emb, _ = synthetic_world(seed=2, n_prompts=80)
    twin = {t: emb[i % 40] for i, t in enumerate(comps.prompts)}  # prompt i and i + 40 share an embedding
    emb_of = lambda texts: np.stack([twin[t] for t in texts])  # noqa: E731
    recipe = replace(TOY, mf_epochs=5)
    kw = dict(judge_scores=None, folds=2, only_folds=(0,), strong=S, weak=W, routers=("sw_ranking",))
    kept = validate_recipe(recipe, comps, emb_of, decontaminate=None, **kw)
    clean = validate_recipe(recipe, comps, emb_of, decontaminate=0.95, **kw)
    n_kept = {r.source: r.n_prompts for r in kept}
    n_clean = {r.source: r.n_prompts for r in clean}
    train, val = kfold_by_prompt(comps, 2)[0]
    idx = {t: i % 40 for i, t in enumerate(comps.prompts)}
    with_twin = sum(1 for p in val.prompts if any(idx[q] == idx[p] for q in train.prompts))
    assert with_twin > 0
    assert all(n_kept[s] - n_clean.get(s, 0) == with_twin for s in n_kept)


def test_prior_weight_blends_scores_like_the_bundle() -> None:
    """A router the recipe's prior_weights name is the plain one blended with the prior, standardised
    on the training embeddings, the blend's center / scale fixed on prior_standardise_on training
    prompts (evenly spread), as the build does."""
    from lmroute.export.train_prior import blend_params, fit_difficulty_prior
    from lmroute.kernels.reference import blend_scores

    comps, emb_of, emb, v = synthetic_world(seed=2)
    train_emb = emb_of(comps.prompts)
    # accuracy falls along v: the prior's difficulty rises with e . v, as the true gain does
    prior = fit_difficulty_prior(train_emb, 0.5 - 0.4 * (train_emb @ v), ridge=1e-3)
    base = replace(TOY, mf_epochs=5)
    plain = fit_scorers(base, comps, train_emb, strong=S, weak=W, routers=("mf",))["mf"]
    recipe = replace(base, prior_weights=(("mf", 2.0), ("bert", 1.0)), prior_standardise_on=30)
    blended = fit_scorers(recipe, comps, train_emb, strong=S, weak=W, routers=("mf",), prior=prior)["mf"]
    texts = list(comps.prompts)
    std = prior.with_standardisation(train_emb)
    sample = evenly_spaced(len(texts), 30)
    assert len(sample) == 30 < len(texts)
    bp = blend_params(plain(train_emb[sample], [texts[i] for i in sample]), 2.0)
    expected = blend_scores(
        plain(emb, texts),
        emb,
        std.weights,
        std.bias,
        std.center,
        std.scale,
        weight=2.0,
        center=bp.center,
        scale=bp.scale,
    )
    np.testing.assert_allclose(blended(emb, texts), expected, rtol=0, atol=1e-12)
    # without a prior fit_scorers returns the routers alone; the harness's protocol refuses that
    alone = fit_scorers(recipe, comps, train_emb, strong=S, weak=W, routers=("mf",))["mf"]
    np.testing.assert_array_equal(alone(emb, texts), plain(emb, texts))
    with pytest.raises(ValueError, match=r"prior_weights \{'mf': 2.0\} need a difficulty prior"):
        validate_recipe(recipe, comps, emb_of, judge_scores=None, folds=2, strong=S, weak=W, routers=("mf",))


def test_validate_bundle_blends_a_built_bundles_routers(tmp_path: Path) -> None:
    """validate_bundle scores a real (tiny) bundle on fold 0 with the bundle's own blend taken off; at
    weight 0 the blend is a monotone map of the router's score, so APGR equals the plain router's."""
    from lmroute.bundle import load_bundle
    from lmroute.bundle.testing import make_fake_classifier, make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
    from lmroute.export.train_prior import fit_difficulty_prior
    from lmroute.export.validate import evaluate_table, kfold_by_prompt, validate_bundle

    enc = make_fake_encoder_dir(tmp_path / "enc", dim=16)
    path = make_tiny_bundle(tmp_path / "bundle", encoder_dir=enc, bert_onnx=make_fake_classifier(tmp_path / "b.onnx"))
    bundle = load_bundle(path)
    strong, weak = bundle.manifest.default_pair.strong, bundle.manifest.default_pair.weak
    prompts = synthetic_prompts(200, seed=9)
    rng = np.random.default_rng(0)
    models = tuple(sorted((strong, weak)))
    rows = [(i, strong, weak, int(rng.integers(0, 3)), "routerbench_arc") for i in range(len(prompts))]
    comps = Comparisons(
        prompts=tuple(prompts),
        prompt_idx=np.arange(len(prompts), dtype=np.int32),
        model_a=np.array([models.index(r[1]) for r in rows], dtype=np.int32),
        model_b=np.array([models.index(r[2]) for r in rows], dtype=np.int32),
        outcome=np.array([r[3] for r in rows], dtype=np.int8),
        label_kind=np.full(len(rows), 2, dtype=np.int8),
        source=np.zeros(len(rows), dtype=np.int8),
        models=models,
        sources=("routerbench_arc",),
    )

    def emb_of(texts):
        return (
            bundle.encoder.embed(bundle.encoder.tokenize(list(texts))) if len(texts) else np.zeros((0, 16), np.float32)
        )

    labels_emb = emb_of(synthetic_prompts(50, seed=3))
    prior = fit_difficulty_prior(labels_emb, rng.random(50), ridge=1.0)
    results = validate_bundle(
        path,
        comps,
        emb_of,
        judge_scores=None,
        prior=prior,
        prior_emb=labels_emb[:0],
        prior_weights=[0.0, 1.0],
        routers=["mf", "bert"],
        strong=strong,
        weak=weak,
        standardise_on=50,
    )
    assert sorted(r.router for r in results) == ["bert@0", "bert@1", "mf@0", "mf@1"]
    val = kfold_by_prompt(comps, 10)[0][1]
    table = pair_tables(val, strong=strong, weak=weak)["routerbench_arc"]
    plain = bundle.routers["mf"].inner.score(bundle.prompt_batch(table.prompts))
    at_zero = next(r for r in results if r.router == "mf@0")
    assert at_zero.apgr == pytest.approx(evaluate_table(table, plain, router="mf").apgr, abs=1e-12)
    assert next(r for r in results if r.router == "mf@1").apgr != at_zero.apgr


def test_prior_weight_sweep_equals_one_run_per_weight() -> None:
    """A sweep trains each router once per fold and blends at every weight: each "<router>@<w>" row
    equals a separate run whose recipe blends every router at w (w = 0: the router alone)."""
    from lmroute.export.train_prior import fit_difficulty_prior

    comps, emb_of, _, v = synthetic_world(seed=4, n_prompts=160)
    all_emb = emb_of(comps.prompts)
    prior = fit_difficulty_prior(all_emb, 0.5 - 0.4 * (all_emb @ v), ridge=1e-3)
    base = replace(TOY, mf_epochs=10)
    common = dict(judge_scores=None, folds=4, only_folds=(0,), strong=S, weak=W, prior=prior, random_seeds=20)
    swept = validate_recipe(base, comps, emb_of, prior_weights=[0.0, 2.0], **common)
    assert {r.router for r in swept} == {"mf@0", "mf@2", "sw_ranking@0", "sw_ranking@2"}
    for weight in (0.0, 2.0):
        every = (("mf", weight), ("sw_ranking", weight))
        single = validate_recipe(replace(base, prior_weights=every), comps, emb_of, **common)
        for r in single:
            twin = next(s for s in swept if s.router == f"{r.router}@{weight:g}" and s.source == r.source)
            assert twin.apgr == pytest.approx(r.apgr, abs=1e-12) and twin.cpt50 == pytest.approx(r.cpt50, abs=1e-12)
    assert any(
        a.apgr != b.apgr
        for a in swept
        for b in swept
        if a.router == "mf@0" and b.router == "mf@2" and a.source == b.source
    )
    with pytest.raises(ValueError, match="sweep needs a prior"):
        validate_recipe(replace(base, prior_weights=(("mf", 1.0),)), comps, emb_of, prior_weights=[0.0], **common)
