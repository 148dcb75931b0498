"""Tests of the evaluation sets: the paper's decontaminated figures, quick mode, malformed files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.evalsets import EvalDataError, EvalSet, load_eval

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize(
    ("name", "n", "n_dropped", "strong", "weak"),
    [
        ("gsm8k", 1307, 12, 0.858, 0.637),
        ("mmlu", 14037, 5, 0.806, 0.681),
        ("mt_bench", 72, 8, 9.21, 8.28),
    ],
)
def test_paper_figures_reproduced(name, n, n_dropped, strong, weak):
    ev = load_eval(name, DATA_DIR)
    assert ev.name == name
    assert len(ev) == len(ev.prompts) == len(ev.ids) == n
    assert ev.n_dropped_contaminated == n_dropped
    assert round(float(ev.strong_quality.mean()), 3 if name != "mt_bench" else 2) == strong
    assert round(float(ev.weak_quality.mean()), 3 if name != "mt_bench" else 2) == weak
    assert ev.strong_quality.dtype == np.float64 and ev.weak_quality.shape == (n,)
    assert len(set(ev.ids)) == n


def test_mt_bench_routes_on_turn_one_and_averages_both_turns():
    ev = load_eval("mt_bench", DATA_DIR)
    # question 81 (the Hawaii blog post) is contaminated; 82 is the first kept question
    assert ev.ids[0] == "mt_bench:82"
    assert ev.prompts[0].startswith("Draft a professional email seeking your supervisor's feedback")
    hawaii = "Compose an engaging travel blog post about a recent trip to Hawaii"
    assert not any(p.startswith(hawaii) for p in ev.prompts)
    assert set(np.round(ev.strong_quality * 2) / 2) <= {x / 2 for x in range(2, 21)}


def test_contaminated_prompts_are_gone():
    contaminated = {
        json.loads(line)["eval_prompt"].strip()
        for line in gzip.open(DATA_DIR / "eval/gsm8k/contaminated_prompts.jsonl.gz", "rt")
    }
    ev = load_eval("gsm8k", DATA_DIR)
    assert not contaminated & {p.strip() for p in ev.prompts}


def test_limit_is_a_deterministic_spread_subset():
    full = load_eval("mmlu", DATA_DIR)
    quick = load_eval("mmlu", DATA_DIR, limit=50)
    assert len(quick) == 50 and quick.ids == load_eval("mmlu", DATA_DIR, limit=50).ids
    assert set(quick.ids) <= set(full.ids)
    assert quick.ids[0] == full.ids[0] and quick.ids[-1] == full.ids[-1]
    assert len({i.split(":")[0] for i in quick.ids}) > 20  # spread over subjects
    assert quick.n_dropped_contaminated == full.n_dropped_contaminated


def test_unknown_name_and_bad_limit():
    with pytest.raises(ValueError, match="unknown eval set 'humaneval'"):
        load_eval("humaneval", DATA_DIR)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_eval("gsm8k", DATA_DIR, limit=0)


def _gsm8k_dir(tmp_path: Path, body: str, contaminated: str = "") -> Path:
    folder = tmp_path / "eval/gsm8k"
    folder.mkdir(parents=True)
    (folder / "contaminated_prompts.jsonl").write_text(contaminated, encoding="utf-8")
    (folder / "gsm8k_responses.csv").write_text(body, encoding="utf-8")
    return folder / "gsm8k_responses.csv"


def test_plain_files_and_whitespace_decontamination(tmp_path):
    _gsm8k_dir(
        tmp_path,
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
        'q1,True,False\n"q2 \n",False,True\nq3,False,False\n',
        contaminated=json.dumps({"eval_prompt": "  q2"}) + "\n",
    )
    ev = load_eval("gsm8k", tmp_path)
    assert ev.prompts == ("q1", "q3") and ev.ids == ("gsm8k:0", "gsm8k:2")
    assert list(ev.strong_quality) == [0.0, 0.0] and list(ev.weak_quality) == [1.0, 0.0]
    assert ev.n_dropped_contaminated == 1


def test_bad_correctness_value_names_file_and_line(tmp_path):
    path = _gsm8k_dir(
        tmp_path,
        'prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"multi\nline",True,True\nq2,True,maybe\n',
    )
    with pytest.raises(EvalDataError, match=f"^{path}:4: bad correctness 'maybe' for gpt-4-1106-preview$"):
        load_eval("gsm8k", tmp_path)


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    """In a correctness CSV and in a JSONL file alike (they raised a bare UnicodeDecodeError)."""
    path = _gsm8k_dir(tmp_path, "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\nq1,True,True\n")
    path.write_bytes(path.read_bytes() + b"caf\xe9,True,False\n")
    with pytest.raises(EvalDataError, match=f"^{path}:3: not UTF-8 text$"):
        load_eval("gsm8k", tmp_path)
    folder = tmp_path / "eval/mt_bench"
    folder.mkdir(parents=True)
    (folder / "contaminated_prompts.jsonl").write_bytes(b'{"eval_prompt": "x"}\n{"eval_prompt": "\xff"}\n')
    with pytest.raises(EvalDataError, match=r"contaminated_prompts.jsonl:2: not UTF-8 text$"):
        load_eval("mt_bench", tmp_path)


def test_missing_model_column_is_an_error(tmp_path):
    path = _gsm8k_dir(tmp_path, "prompt,gpt-4-1106-preview\nq,True\n")
    with pytest.raises(EvalDataError, match=f"^{path}:1: missing column\\(s\\) mixtral-8x7b-instruct-v0.1$"):
        load_eval("gsm8k", tmp_path)


def test_mt_bench_bad_judgement_line(tmp_path):
    folder = tmp_path / "eval/mt_bench"
    folder.mkdir(parents=True)
    (folder / "contaminated_prompts.jsonl").write_text("", encoding="utf-8")
    (folder / "question.jsonl").write_text(json.dumps({"question_id": 1, "turns": ["a", "b"]}) + "\n")
    good = {"question_id": 1, "model": "gpt-4-1106-preview", "score": 9, "turn": 1}
    (folder / "judgements.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "turn": 2, "score": 42}) + "\n"
    )
    with pytest.raises(EvalDataError, match=r"judgements.jsonl:2: bad score 42 \(expected 1-10\)$"):
        load_eval("mt_bench", tmp_path)
    (folder / "judgements.jsonl").write_text(json.dumps(good) + "\n")
    with pytest.raises(EvalDataError, match=r"question.jsonl:1: question 1 lacks turn 1 and 2 scores"):
        load_eval("mt_bench", tmp_path)


def test_evalset_validates_shapes():
    with pytest.raises(ValueError, match="strong_quality: expected float64"):
        EvalSet("x", ("a",), np.zeros(2), np.zeros(1), 0)


def test_a_truncated_gzip_csv_names_the_file_and_line(tmp_path):
    """A correctness CSV whose gzip ends early is an EvalDataError naming it (it was a bare EOFError)."""
    rows = "".join(f"question {i},True,False\n" for i in range(2000))
    plain = _gsm8k_dir(tmp_path, "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n" + rows)
    whole = gzip.compress(plain.read_bytes())
    gz = plain.with_name(plain.name + ".gz")
    gz.write_bytes(whole[: len(whole) // 2])
    plain.unlink()
    with pytest.raises(EvalDataError, match=rf"^{gz}:\d+: unreadable after line \d+ \(EOFError: "):
        load_eval("gsm8k", tmp_path)


def test_a_field_over_the_csv_size_limit_names_the_file_and_line(tmp_path):
    """An unterminated quote (or a huge field) raised a bare _csv.Error traceback in build and evaluate."""
    header = "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\n"
    path = _gsm8k_dir(tmp_path, header + 'q1,True,True\n"multi\nline",True,True\n"' + "x" * 200_000 + ",True,True\n")
    with pytest.raises(EvalDataError, match=f"^{path}:5: unreadable CSV \\(field larger than field limit"):
        load_eval("gsm8k", tmp_path)
    path.write_text('"' + "p" * 200_000 + '",a,b\n', encoding="utf-8")  # in the header
    with pytest.raises(EvalDataError, match=f"^{path}:1: unreadable CSV \\(field larger than field limit"):
        load_eval("gsm8k", tmp_path)
