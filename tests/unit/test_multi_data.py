"""The N-model tables: the vendored RouterBench and LLMRouter files load whole (counts, names, costs),
malformed rows are reported with file and line, and the held-out split is a fixed hash of the prompt."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.multi_data import MultiModelTable, load_llmrouter, load_routerbench, split_by_prompt
from lmroute.export.multi_prices import LLMROUTER_PRICES, OUTPUT_TOKENS, ModelPrice, answer_cost_usd, approx_tokens
from lmroute.export.names import STRONG, WEAK

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
RB_DIR = "train/routerbench_golden"
RB_FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")

ROUTERBENCH_MODELS = (
    "claude-1",
    "claude-2",
    "claude-instant-1",
    "codellama-34b-instruct",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "llama-2-70b-chat",
    "mistral-7b-chat",
    "mixtral-8x7b-instruct-v0.1",
    "wizardlm-13b-v1.2",
    "yi-34b-chat",
)


@pytest.fixture(scope="module")
def routerbench() -> MultiModelTable:
    return load_routerbench(DATA_DIR)


@pytest.fixture(scope="module")
def llmrouter() -> MultiModelTable:
    return load_llmrouter(DATA_DIR)


def test_routerbench_loads_every_well_formed_row(routerbench):
    assert routerbench.models == ROUTERBENCH_MODELS
    assert STRONG in routerbench.models and WEAK in routerbench.models
    counts = {t: routerbench.tasks.count(t) for t in set(routerbench.tasks)}
    # ARC: 1,039 rows, 20 of them lack correctness cells (reported, left out)
    assert counts == {"arc-challenge": 1019, "mbpp": 297, "winogrande": 887}
    assert len(routerbench.issues) == 20
    for issue in routerbench.issues:
        assert issue.file.endswith("arc_challenge_train.csv.gz") and "correctness not 0/1" in issue.reason
    assert set(np.unique(routerbench.quality).tolist()) == {0.0, 1.0}
    assert routerbench.cost.min() >= 0 and routerbench.cost.max() < 0.1
    gpt4 = routerbench.models.index(STRONG)
    assert routerbench.cost[:, gpt4].mean() > 10 * routerbench.cost[:, routerbench.models.index(WEAK)].mean()
    # the routing prompt is the final question, not the shared 5-shot prefix
    assert not any(p.count("Answer:") > 1 for p in routerbench.prompts)


def test_routerbench_reports_a_bad_row_with_file_and_line(tmp_path):
    rb = tmp_path / RB_DIR
    rb.mkdir(parents=True)
    for name in RB_FILES:
        with gzip.open(DATA_DIR / RB_DIR / f"{name}.gz", "rb") as src, (rb / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    path = rb / "mbpp_train.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    line_no = next(i for i, ln in enumerate(lines, start=1) if ln.startswith("mbpp.dev.92,"))
    cells = lines[line_no - 1].split(",")
    cells[-2] = "-1"  # a negative cost in the last cost column (mistral-7b-chat)
    lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")

    table = load_routerbench(tmp_path)
    bad = [i for i in table.issues if i.file == str(path)]
    assert len(bad) == 1
    assert bad[0].line == line_no
    assert "cost not a number >= 0 for mistralai/mistral-7b-chat" in bad[0].reason
    assert len(table) == 2203 - 1


def test_llmrouter_loads_with_list_price_costs(llmrouter):
    assert len(llmrouter) == 5395 and not llmrouter.issues
    assert llmrouter.models == tuple(sorted(LLMROUTER_PRICES))
    assert set(llmrouter.tasks) == {"llmrouter"}
    assert llmrouter.quality.min() >= 0 and llmrouter.quality.max() <= 1
    assert llmrouter.cost.min() > 0
    # every price has input = output, so per question the costs are in the ratio of the prices
    prices = np.array([LLMROUTER_PRICES[m].input_usd_per_mtok for m in llmrouter.models])
    np.testing.assert_allclose(llmrouter.cost / llmrouter.cost[:, :1], np.tile(prices / prices[0], (len(llmrouter), 1)))
    tokens = approx_tokens(llmrouter.prompts[0])
    j = llmrouter.models.index("gemma-2-9b-it")
    assert llmrouter.cost[0, j] == pytest.approx((tokens + OUTPUT_TOKENS) * 0.10 / 1e6)


def test_llmrouter_reports_bad_lines(tmp_path):
    good = {"question": "What is 2 + 2?", "scores": {m: 1.0 for m in LLMROUTER_PRICES}}
    out_of_range = {"question": "q2", "scores": {**good["scores"], "gemma-2-9b-it": 1.5}}
    missing = {"question": "q3", "scores": {m: 0.0 for m in list(LLMROUTER_PRICES)[1:]}}
    rows = [json.dumps(good), json.dumps(out_of_range), json.dumps(missing), "{not json", json.dumps({"scores": {}})]
    path = tmp_path / "train" / "llmrouter" / "train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")

    table = load_llmrouter(tmp_path)
    assert len(table) == 1 and table.prompts == ("What is 2 + 2?",)
    assert [(i.file, i.line) for i in table.issues] == [(str(path), n) for n in (2, 3, 4, 5)]
    assert "bad score 1.5 for gemma-2-9b-it" in table.issues[0].reason
    assert f"no score for {next(iter(LLMROUTER_PRICES))}" in table.issues[1].reason
    assert "invalid JSON" in table.issues[2].reason
    assert "missing field question" in table.issues[3].reason


def test_split_by_prompt_is_a_fixed_disjoint_hash_split(routerbench):
    train, val = split_by_prompt(routerbench.prompts, 0.2, seed=0)
    assert len(train) + len(val) == len(routerbench)
    assert not set(train) & set(val)
    assert abs(len(val) / len(routerbench) - 0.2) < 0.01
    np.testing.assert_array_equal(val, split_by_prompt(routerbench.prompts, 0.2, seed=0)[1])
    # repeated prompts share a side, and the split does not depend on row order
    prompts = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i"]
    tr, va = split_by_prompt(prompts, 0.3)
    assert (0 in va) == (2 in va)
    assert {prompts[i] for i in va} == {list(reversed(prompts))[i] for i in split_by_prompt(prompts[::-1], 0.3)[1]}
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_prompt(prompts, 1.0)


def test_table_rejects_bad_matrices():
    with pytest.raises(ValueError, match="negative cost"):
        MultiModelTable("x", ("p",), ("t",), ("a",), np.array([[1.0]]), np.array([[-1.0]]))
    with pytest.raises(ValueError, match="outside"):
        MultiModelTable("x", ("p",), ("t",), ("a",), np.array([[2.0]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match="sorted"):
        MultiModelTable("x", ("p",), ("t",), ("b", "a"), np.zeros((1, 2)), np.zeros((1, 2)))


def test_prices_and_token_rule():
    assert approx_tokens("one two three") == 4  # ceil(3 x 4 / 3)
    assert approx_tokens("") == 1
    assert answer_cost_usd(ModelPrice(1.0, 2.0), 1000, 500) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="input_usd_per_mtok"):
        ModelPrice(-1.0, 1.0)
