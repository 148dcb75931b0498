"""The N-model gate's routing condition (`lmroute.adapt.routing_value`, `gate_qualities(logged=...)`): the
off-policy AIQ matches the AIQ computed with every model judged; a candidate whose levels and per-model
orders look right but which compares the models wrongly on each prompt is refused; one that routes
better is accepted; bad logs are named."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.adapt.quality_heads import gate_qualities
from lmroute.adapt.routing_value import LoggedChoices, policy_choices, routing_values
from lmroute.export.multi_eval import aiq, sweep, upper_hull
from lmroute.export.multi_policy import choose_max_utility
from lmroute.export.multi_select import lambda_grid


def _world(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three models of rising price; which one is right depends on the prompt's kind (a hidden label in
    three equal parts): p(quality 1) [n, 3], costs [n, 3], the kind [n]."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    p = np.full((n, 3), 0.3)
    p[np.arange(n), kind] = 0.9  # the model of the prompt's kind is right, the others mostly wrong
    p[:, 2] = np.maximum(p[:, 2], 0.6)  # the dearest model is decent everywhere
    cost = np.tile([0.1, 0.3, 1.0], (n, 1)) * rng.uniform(0.8, 1.2, (n, 1))
    return p, cost, kind


def _true_aiq(p: np.ndarray, cost: np.ndarray, pred: np.ndarray, lams: list[float]) -> float:
    points = sweep(p, cost, lambda lam: choose_max_utility(pred, cost, lam), lams)
    costs = np.array([pt.cost for pt in points])
    hull = upper_hull(np.array([(pt.cost, pt.quality) for pt in points]))
    return aiq(hull, float(costs.min()), float(cost.max(axis=1).mean()))


def test_the_off_policy_value_matches_the_value_with_every_model_judged() -> None:
    n = 30_000
    p, cost, kind = _world(n)
    rng = np.random.default_rng(1)
    quality = (rng.random((n, 3)) < p).astype(float)
    logging = np.array([0.5, 0.3, 0.2])  # the serving policy's probabilities, logged with each choice
    answered = rng.choice(3, n, p=logging)
    logged = LoggedChoices.build(answered, logging[answered], cost)
    seen = np.full_like(quality, np.nan)
    seen[np.arange(n), answered] = quality[np.arange(n), answered]
    lams = lambda_grid(cost.mean(axis=0), 30)
    informed = p + rng.normal(0, 0.05, p.shape)
    flat = np.tile([0.45, 0.5, 0.7], (n, 1))
    est = routing_values(
        [policy_choices(informed, cost, lams), policy_choices(flat, cost, lams)], seen, logged, np.ones((1, n))
    )
    assert est[0, 0] == pytest.approx(_true_aiq(p, cost, informed, lams), abs=0.01)
    assert est[1, 0] == pytest.approx(_true_aiq(p, cost, flat, lams), abs=0.01)
    assert est[0, 0] > est[1, 0] + 0.05


def test_policy_choices_keep_to_the_available_models() -> None:
    pred = np.array([[0.2, 0.9, np.nan], [0.5, 0.5, 0.5], [np.nan, np.nan, np.nan]])
    cost = np.array([[1.0, 2.0, 0.5], [3.0, 1.0, np.inf], [1.0, 1.0, 1.0]])
    got = policy_choices(pred, cost, [0.0, 1.0, float("inf")])
    assert got[:, 0].tolist() == [1, 0, 0]  # model 2 has no prediction; at lambda 1 the utility favours model 0
    assert got[:, 1].tolist() == [0, 1, 1]  # ties at lambda 0: the first; model 2 is not a candidate
    assert got[:, 2].tolist() == [-1, -1, -1]


def test_the_gate_refuses_a_candidate_that_compares_the_models_wrongly() -> None:
    """A cheap model A is right on the easy half of the prompts and mostly wrong on the rest; a dear model
    B is right on the easy half and often right on the rest. The wrong candidate orders each model's
    prompts correctly and predicts each model's quality better than its mean (level and order pass), but
    overstates B's spread: on easy prompts it sends B (no better, ten times the price), on hard ones A
    (mostly wrong). Single outcomes with logged choices let the routing condition refuse it."""
    n = 3000
    rng = np.random.default_rng(3)
    easy = rng.random(n) < 0.5
    p = np.stack([np.where(easy, 1.0, 0.2), np.where(easy, 1.0, 0.6)], axis=1)
    cost = np.tile([0.1, 1.0], (n, 1)) * rng.uniform(0.8, 1.2, (n, 1))
    quality = (rng.random((n, 2)) < p).astype(float)
    answered = rng.integers(0, 2, n)  # uniform exploration: propensity 1/2
    judged = np.full_like(quality, np.nan)
    judged[np.arange(n), answered] = quality[np.arange(n), answered]
    logged = LoggedChoices.build(answered, np.full(n, 0.5), cost)
    champion = np.tile(np.nanmean(judged, axis=0), (n, 1))  # per-model means: routes by level and price
    sign = np.where(easy, 1.0, -1.0)
    wrong = np.stack([0.6 + 0.05 * sign, np.clip(0.8 + 0.3 * sign, 0, 1)], axis=1)
    right = np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1)
    without = gate_qualities(champion, wrong, judged)  # level and order only
    assert without.accepted and without.n_logged == 0 and np.isnan(without.candidate_routing), without.reason
    assert "routing: not judged" in without.reason
    bad = gate_qualities(champion, wrong, judged, logged=logged)
    assert not bad.accepted and bad.routing_lower_bound < -bad.routing_margin, bad.reason
    assert bad.candidate_routing < bad.champion_routing - 0.05 and bad.n_logged == n
    good = gate_qualities(champion, right, judged, logged=logged)
    assert good.accepted and good.candidate_routing > good.champion_routing + 0.02, good.reason
    assert "routing AIQ" in good.reason


def test_bad_logs_are_named() -> None:
    cost = np.ones((3, 2))
    with pytest.raises(ValueError, match="propensity is outside"):
        LoggedChoices.build([0, 1, -1], [0.5, 0.0, 0.0], cost)
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        LoggedChoices.build([0, 2, -1], [0.5, 0.5, 0.0], cost)
    with pytest.raises(ValueError, match="no finite cost"):
        LoggedChoices.build([0, 1, -1], [0.5, 0.5, 0.0], [[1.0, 1.0], [1.0, np.inf], [1.0, 1.0]])
    with pytest.raises(ValueError, match="NaN or negative"):
        LoggedChoices.build([0, 1, -1], [0.5, 0.5, 0.0], [[1.0, -1.0], [1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="disagree"):
        LoggedChoices.build([0, 1], [0.5, 0.5, 0.5], cost)
    q = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="logged costs"):
        gate_qualities(q, q, q, logged=LoggedChoices.build([0, 1, 0], [0.5] * 3, np.ones((3, 3))))


def test_logged_choices_read_what_route_among_candidates_kept() -> None:
    from lmroute.adapt.quality_from_store import logged_choices
    from lmroute.outcomes.records import LabeledPrompt, OutcomeKind

    def row(choice: str, chosen: str | None = "b", propensity: float | None = 0.25, judged: str = "b") -> LabeledPrompt:
        return LabeledPrompt(
            target="d:x",
            time_ms=0,
            prompt_sha256="0" * 64,
            kinds=frozenset({OutcomeKind.SINGLE}),
            qualities={judged: 1.0},
            chosen_model=chosen,
            propensity=propensity,
            choice=choice,
        )

    made = '{"models": ["a", "b", "other"], "qualities": [0.5, 0.6, 0.7], "costs": [0.1, 0.2, 0.3], "chosen": 1}'
    rows = [
        row(made),
        row(""),  # no candidates: a pair decision
        row(made, propensity=None),
        row(made, judged="a"),  # the outcome judged another model than the one chosen
        row("{not json"),
        row('{"models": ["a"], "costs": [0.1, 0.2], "chosen": 0}'),
        row(made.replace('"chosen": 1', '"chosen": 2'), chosen="other", judged="other"),  # not one of the models
    ]
    got = logged_choices(rows, ["a", "b", "c"])
    assert got is not None and got.answered.tolist() == [1, -1, -1, -1, -1, -1, -1]
    assert got.propensity[0] == 0.25 and got.cost[0].tolist() == [0.1, 0.2, float("inf")]
    assert logged_choices(rows[1:], ["a", "b", "c"]) is None
