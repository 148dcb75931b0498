"""The gate: a candidate trained on shuffled outcomes is refused, one trained on real outcomes of a
learnable problem is accepted, one equal to the champion is accepted (not worse); too few held-out
outcomes are refused; every number is recorded."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.adapt.gate import MIN_HELD_OUT, forward_chaining, gate, time_split
from lmroute.adapt.learners import fit_paired
from lmroute.adapt.pipeline import adapt_paired

DIM = 16


def _problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lengths = rng.uniform(3.0, 7.0, n)
    u = np.linspace(-1.0, 1.0, DIM) / np.linalg.norm(np.linspace(-1.0, 1.0, DIM))
    weak = (rng.random(n) < 1.0 / (1.0 + np.exp(-(1.0 - 4.0 * (emb @ u))))).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.8).astype(float))
    return emb, lengths, strong - weak


@pytest.fixture(scope="module")
def split() -> dict[str, np.ndarray]:
    emb, lengths, gap = _problem(3000, seed=11)
    train, held = time_split(np.arange(3000.0), 0.3)
    # the champion: a weak but real signal (the first coordinate of the direction the gap follows)
    champion = emb[held, -1] + 0.3 * np.random.default_rng(1).standard_normal(held.size)
    return {"emb": emb, "len": lengths, "gap": gap, "train": train, "held": held, "champion": champion}


def test_a_candidate_trained_on_real_outcomes_is_accepted(split: dict[str, np.ndarray]) -> None:
    tr, ho = split["train"], split["held"]
    head = fit_paired(split["emb"][tr], split["len"][tr], split["gap"][tr])
    decision = gate(split["champion"], head.raw(split["emb"][ho], split["len"][ho]), split["gap"][ho])
    assert decision.accepted, decision.reason
    assert decision.candidate_apgr > decision.champion_apgr
    assert decision.lower_bound >= -decision.margin
    assert decision.reason.startswith("accepted: APGR")


def test_a_candidate_trained_on_shuffled_outcomes_is_refused(split: dict[str, np.ndarray]) -> None:
    tr, ho = split["train"], split["held"]
    shuffled = np.random.default_rng(2).permutation(split["gap"][tr])
    head = fit_paired(split["emb"][tr], split["len"][tr], shuffled)
    decision = gate(split["champion"], head.raw(split["emb"][ho], split["len"][ho]), split["gap"][ho])
    assert not decision.accepted
    assert decision.lower_bound < -decision.margin
    assert decision.reason.startswith("refused: APGR")
    assert 0.0 < decision.p_value <= 1.0


def test_a_candidate_equal_to_the_champion_is_accepted(split: dict[str, np.ndarray]) -> None:
    tr, ho = split["train"], split["held"]
    learnt = fit_paired(split["emb"][tr], split["len"][tr], split["gap"][tr]).raw(split["emb"][ho], split["len"][ho])
    decision = gate(learnt, learnt.copy(), split["gap"][ho])
    assert decision.accepted, decision.reason
    assert decision.difference == 0.0 and decision.lower_bound == 0.0 and decision.signal_p_value < decision.alpha


def test_a_candidate_without_signal_is_refused_beside_a_random_champion(split: dict[str, np.ndarray]) -> None:
    """Not worse than a champion at random is not enough: the candidate's own APGR must beat a random
    order's."""
    held_gap = split["gap"][split["held"]]
    random_order = np.random.default_rng(4).random(held_gap.size)
    decision = gate(random_order, random_order.copy(), held_gap)
    assert not decision.accepted
    assert decision.lower_bound == 0.0 and decision.signal_p_value >= decision.alpha
    assert "no signal to serve" in decision.reason


def test_too_few_held_out_outcomes_are_refused_and_the_record_has_every_number() -> None:
    decision = gate(np.arange(5.0), np.arange(5.0), np.ones(5))
    assert not decision.accepted
    assert decision.reason == f"refused: 5 held-out outcomes, the gate needs at least {MIN_HELD_OUT}"
    record = decision.to_dict()
    assert set(record) >= {
        "accepted",
        "reason",
        "metric",
        "test",
        "n_held_out",
        "champion_apgr",
        "candidate_apgr",
        "difference",
        "lower_bound",
        "p_value",
        "margin",
        "alpha",
        "replicates",
        "seed",
    }


def test_gate_names_bad_input() -> None:
    with pytest.raises(ValueError, match="must match"):
        gate(np.zeros(30), np.zeros(29), np.zeros(30))
    with pytest.raises(ValueError, match="candidate_scores contains NaN"):
        gate(np.zeros(30), np.full(30, np.nan), np.zeros(30))
    for kw, says in (
        ({"margin": -1.0}, r"gate: margin must be a number >= 0 \(got -1.0\)"),
        ({"alpha": 0.5}, r"gate: alpha must be in \(0, 0.5\) \(got 0.5\)"),
        ({"replicates": 10}, r"gate: replicates must be >= 100 \(got 10\)"),
    ):
        with pytest.raises(ValueError, match=says):  # the setting out of range, not every condition
            gate(np.zeros(30), np.zeros(30), np.zeros(30), **kw)  # type: ignore[arg-type]


def test_time_splits_hold_out_the_newest() -> None:
    t = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    train, held = time_split(t, 0.4)
    assert list(held) == [0, 2] and list(train) == [1, 3, 4]
    times = np.arange(10.0)[::-1]
    splits = forward_chaining(times, blocks=5)
    assert len(splits) == 4
    for k, (tr, ho) in enumerate(splits, start=1):
        assert times[ho].min() > times[tr].max()  # every held-out outcome is newer than its training
        assert tr.size == 2 * k and ho.size == 2


@pytest.mark.slow  # 26 adaptations of 2,500 outcomes: minutes of CPU, left out of `scripts/test.sh --unit`
@pytest.mark.parametrize(("learner", "shuffles", "most_accepted"), [("ridge", 20, 3), ("kernel", 5, 1)])
def test_adapt_paired_accepts_real_and_refuses_shuffled_against_a_real_champion(
    learner: str, shuffles: int, most_accepted: int
) -> None:
    emb, lengths, gap = _problem(2500, seed=21)
    base = np.clip(0.5 + 0.1 * emb[:, -1], 0.01, 0.99)
    real = adapt_paired(emb, lengths, gap, base, base, np.arange(2500.0), learner=learner)
    assert real.accepted, real.decision.reason
    assert (real.head.kernel is not None) == (learner == "kernel")
    # outcomes shuffled across prompts: the signal test accepts noise with probability alpha (5 %, one
    # in 20 expected; 40 shuffles of this problem measured 4 with cross_fit, 1 with forward, for the ridge;
    # fewer shuffles for the kernel learner, whose fits cost more)
    accepted = [
        adapt_paired(
            emb, lengths, np.random.default_rng(s).permutation(gap), base, base, np.arange(2500.0), learner=learner
        ).accepted
        for s in range(shuffles)
    ]
    assert sum(accepted) <= most_accepted, accepted
