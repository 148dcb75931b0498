"""The cost policies (lmroute.bundle.model_choice) on small matrices whose right answer is known, and the
models file (lmroute.service.model_prices): its costs and the errors that name the file and key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.model_choice import choose, runner_up
from lmroute.service.model_prices import ModelPrice, expected_cost_usd, input_tokens, load_models_file

# three prompts x three models: model 0 cheap and weak, model 1 middling, model 2 dear and strong
Q = np.array([[0.50, 0.70, 0.90], [0.80, 0.82, 0.84], [0.10, 0.60, 0.62]])
C = np.array([0.001, 0.004, 0.020])


def test_max_utility_trades_quality_for_cost() -> None:
    assert choose("cost_weight", 0.0, Q, C).tolist() == [2, 2, 2]  # quality only
    assert choose("cost_weight", 10.0, Q, C).tolist() == [2, 0, 1]
    assert choose("cost_weight", 20.0, Q, C).tolist() == [1, 0, 1]  # row 0: 0.62 > 0.50 > 0.48
    assert choose("cost_weight", math.inf, Q, C).tolist() == [0, 0, 0]


def test_margin_and_floor_pick_the_cheapest_good_enough_model() -> None:
    assert choose("quality_margin", 0.05, Q, C).tolist() == [2, 0, 1]
    assert choose("quality_margin", 1.0, Q, C).tolist() == [0, 0, 0]
    assert choose("quality_floor", 0.65, Q, C).tolist() == [1, 0, 2]  # none reaches 0.65: the best
    assert choose("quality_floor", 0.0, Q, C).tolist() == [0, 0, 0]


def test_ties_go_to_the_cheaper_then_the_better_model() -> None:
    q = np.array([[0.7, 0.7, 0.6]])
    assert choose("cost_weight", 0.0, q, np.array([0.2, 0.1, 0.1])).tolist() == [1]
    assert choose("quality_margin", 0.2, q, np.array([0.1, 0.1, 0.1])).tolist() == [0]


def test_runner_up_is_the_choice_without_the_chosen_model() -> None:
    chosen = choose("cost_weight", 0.0, Q, C)
    assert runner_up("cost_weight", 0.0, Q, C, chosen).tolist() == [1, 1, 1]
    floor = choose("quality_floor", 0.65, Q, C)
    assert runner_up("quality_floor", 0.65, Q, C, floor).tolist() == [2, 1, 1]
    assert runner_up("cost_weight", 0.0, Q[:, :1], C[:1], [0, 0, 0]).tolist() == [-1, -1, -1]


def test_expected_cost_counts_input_tokens_from_characters() -> None:
    assert input_tokens("abcdefgh") == 2 and input_tokens("abcdefghi") == 3 and input_tokens("") == 1
    price = ModelPrice(2.0, 10.0, None)
    assert expected_cost_usd(price, 1000, 500) == pytest.approx((1000 * 2 + 500 * 10) / 1e6)
    assert expected_cost_usd(ModelPrice(2.0, 10.0, 50), 1000, 500) == pytest.approx((2000 + 500) / 1e6)


def test_models_file_reads_prices_and_names_the_bad_key(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": {"a": {"input_price_per_mtok": 1, "output_price_per_mtok": 2.5}}}))
    assert load_models_file(path) == {"a": ModelPrice(1.0, 2.5, None)}
    for body, message in [
        ({"models": {}}, "with at least one model"),
        ({"models": {"a": {"input_price_per_mtok": 1}}}, "models.a.output_price_per_mtok: required"),
        (
            {"models": {"a": {"input_price_per_mtok": -1, "output_price_per_mtok": 1}}},
            "models.a.input_price_per_mtok: must be in [0, 1e+06] USD per million tokens (got -1.0)",
        ),
        (  # one large enough makes an expected cost inf, which held a spend controller for good
            {"models": {"a": {"input_price_per_mtok": 1e308, "output_price_per_mtok": 1}}},
            "models.a.input_price_per_mtok: must be in [0, 1e+06] USD per million tokens (got 1e+308)",
        ),
        (
            {"models": {"a": {"input_price_per_mtok": 1, "output_price_per_mtok": 1, "output_tokens": 0}}},
            "models.a.output_tokens: must be an integer in [1, 1000000] (got 0)",
        ),
        ({"models": {"a": {"input_price": 1}}}, "models.a: unknown key(s) ['input_price']"),
        (
            {"models": {"a": {"input_price_per_mtok": 1, "output_price_per_mtok": 1}}, "sourse": "x"},
            "unknown key(s) ['sourse']",
        ),
        (
            {"models": {"": {"input_price_per_mtok": 1, "output_price_per_mtok": 1}}},
            "models: a model with an empty name",
        ),
    ]:
        path.write_text(json.dumps(body))
        with pytest.raises(ValueError) as e:
            load_models_file(path)
        assert str(path) in str(e.value) and message in str(e.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_models_file(path)
    price = '{"input_price_per_mtok": 1, "output_price_per_mtok": 1}'
    path.write_text(f'{{"models": {{"a": {price}, "a": {price}}}}}')  # json would keep the last, silently
    with pytest.raises(ValueError, match="cannot be read as JSON \\('a' given twice\\)"):
        load_models_file(path)
