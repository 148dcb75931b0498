"""The build's training and calibration prompts are checked against the eval prompts: the shipped list of
near-duplicates (data/train_decontamination.json) and an exact match after casefolding and collapsing
whitespace."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from lmroute.export.contamination import eval_prompt_keys, prompt_key
from lmroute.export.data import load_calibration_prompts
from lmroute.export.evalsets import load_eval
from lmroute.export.pipeline import calibration_prompts, training_comparisons

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def _plant(data: Path, prompts: list[str]) -> None:
    path = data / "train/arena_human/battles.jsonl.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    for text in prompts:
        record = {"model_a": "gpt-4-1106-preview", "model_b": "vicuna-7b", "winner": "model_a", "turns": [text]}
        lines.append(json.dumps(record))
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_training_prompts_equal_to_an_eval_prompt_are_dropped(tmp_path):
    """An MT-Bench, an MMLU and a GSM8K prompt planted in the Arena battles (one in other case and spacing)
    used to be trained on: only the shipped list of near-duplicates was applied."""
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    planted = [load_eval("mt_bench", data).prompts[3], load_eval("mmlu", data).prompts[100]]
    gsm8k = load_eval("gsm8k", data).prompts[7]
    planted.append("  " + gsm8k.upper().replace(" ", " \n "))
    _plant(data, planted)
    table = training_comparisons(data)
    assert table.n_equal_eval == 3
    assert table.n_near_eval == training_comparisons(DATA_DIR).n_near_eval  # the shipped list, as before
    keys = eval_prompt_keys(data)
    assert not [p for p in table.comparisons.prompts if prompt_key(p) in keys]


def test_the_shipped_data_has_no_training_prompt_equal_to_an_eval_prompt():
    table = training_comparisons(DATA_DIR)
    assert (table.n_near_eval, table.n_equal_eval) == (277, 0)
    assert len(table.comparisons) == len(table.loaded.comparisons) - 277


def test_calibration_leaves_out_the_prompts_the_build_does_not_train_on(tmp_path):
    """2 of the 3 prompts of the shipped list are calibration prompts: thresholds were tuned on them."""
    listed = json.loads((DATA_DIR / "train_decontamination.json").read_text())["training_prompts_to_drop"]
    everything = load_calibration_prompts(DATA_DIR)
    assert sum(p in everything for p in listed) == 2
    kept = calibration_prompts(DATA_DIR)
    assert not set(listed) & set(kept) and len(kept) == len(everything) - 2
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    planted = " ".join(load_eval("mt_bench", data).prompts[5].upper().split())
    _plant(data, [planted])
    assert planted in load_calibration_prompts(data) and planted not in calibration_prompts(data)
