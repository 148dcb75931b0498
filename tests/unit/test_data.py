"""Tests of the vendored data pack, model-name normalisation and the comparison loader."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.data import (
    CALIBRATION_FILES,
    LABEL_KINDS,
    SHOWN_BAD_ROWS,
    SOURCES,
    Comparisons,
    DataError,
    final_question,
    load_calibration_prompts,
    load_comparisons,
    load_difficulty_labels,
)
from lmroute.export.names import STRONG, WEAK, normalize_model_name

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

EXPECTED_BY_SOURCE = {
    "arena_human": 1135,
    "alpaca_eval": 102638,
    "arena_bench_v1": 30966,
    "routerbench_arc": 56585,
    "routerbench_mbpp": 16335,
    "routerbench_winogrande": 48785,
}


@pytest.fixture(scope="module")
def real():
    return load_comparisons(DATA_DIR)


# ---------------------------------------------------------------------------------------- data pack


def test_vendored_pack_is_small_and_deterministically_gzipped():
    files = [p for p in DATA_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 15_000_000
    gz = [p for p in files if p.suffix == ".gz"]
    assert len(gz) == 13 + 57 + 2 + 1  # + LLMRouter difficulty labels
    for path in gz:
        header = path.read_bytes()[:10]
        assert header[:2] == b"\x1f\x8b", path
        assert header[3] & 0x08 == 0, f"{path}: stores a file name (not gzip -n)"
        assert header[4:8] == b"\0\0\0\0", f"{path}: stores a timestamp (not gzip -n)"
    assert (DATA_DIR / "SOURCES.md").is_file()
    assert (DATA_DIR / "licenses" / "routellm.LICENSE").is_file()


def test_reduced_eval_files_keep_only_the_needed_columns():
    with gzip.open(DATA_DIR / "eval/mt_bench/judgements.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert sorted(first) == ["model", "question_id", "score", "turn"]
    with gzip.open(DATA_DIR / "eval/gsm8k/gsm8k_responses.csv.gz", "rt", encoding="utf-8") as handle:
        header = handle.readline().strip()
    assert header == "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview"


# ---------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gpt4_1106_preview", STRONG),
        ("gpt-4-1106-preview", STRONG),
        ("  GPT-4-1106-Preview ", STRONG),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", WEAK),
        ("mixtral-8x7b-instruct-v0.1", WEAK),
        ("mistralai/mixtral-8x7b-chat", WEAK),
        ("Mixtral-8x7B-Instruct-v0.1", WEAK),
        ("Mixtral-8x7B-Instruct-v0.1_concise", "mixtral-8x7b-instruct-v0.1-concise"),
        ("gpt4_0314", "gpt-4-0314"),
        ("gpt4", "gpt-4"),
        ("gpt35_turbo_instruct", "gpt-3.5-turbo-instruct"),
        ("gpt4all-13b-snoozy", "gpt4all-13b-snoozy"),
        ("text_davinci_003", "text-davinci-003"),
        ("llama-2-70b-chat-hf", "llama-2-70b-chat"),
        ("meta/llama-2-70b-chat", "llama-2-70b-chat"),
        ("Llama-2-70b-chat", "llama-2-70b-chat"),
        ("claude-v1", "claude-1"),
        ("claude-instant-v1", "claude-instant-1"),
        ("claude", "claude-1"),
        ("chatgpt", "gpt-3.5-turbo"),
        ("palm-2-chat-bison-001", "palm-2"),
        ("vicuna-33b", "vicuna-33b-v1.3"),
        ("meta/code-llama-instruct-34b-chat", "codellama-34b-instruct"),
        ("zero-one-ai/Yi-34B-Chat", "yi-34b-chat"),
        ("openchat_3.5", "openchat-3.5"),
    ],
)
def test_normalize_model_name(raw, expected):
    assert normalize_model_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "org/"])
def test_normalize_model_name_rejects_empty(raw):
    with pytest.raises(ValueError, match="empty model name"):
        normalize_model_name(raw)


# ---------------------------------------------------------------------------------------- real data


def test_real_counts(real):
    table = real.comparisons
    counts = table.counts()
    assert table.sources == SOURCES
    assert counts["by_source"] == EXPECTED_BY_SOURCE
    assert counts["by_label_kind"] == {"human": 1135, "judge": 133604, "golden": 121705}
    assert len(table) == sum(EXPECTED_BY_SOURCE.values())
    assert counts["n_prompts"] == len(table.prompts) == 3725
    assert counts["n_models"] == len(table.models) == 133
    assert STRONG in table.models and WEAK in table.models
    assert "example" not in table.models
    assert not np.any(table.model_a == table.model_b)


def test_real_issues_and_skips_are_reported(real):
    files = {Path(issue.file).name for issue in real.issues}
    assert files == {"judgments.csv.gz"}
    reasons = [issue.reason for issue in real.issues]
    assert reasons.count("missing field generator_1/generator_2") == 624
    assert reasons.count("missing field preference") == 439
    assert real.skipped == {
        "alpaca_eval: self-battle": 1248,
        "alpaca_eval: toy model 'example'": 624,
        "arena_bench_v1: missing score (cell; that model left out of the row's pairs)": 39,
        "routerbench_arc: missing score (cell; that model left out of the row's pairs)": 92,
    }


def test_real_strong_vs_weak_base_rates(real):
    """gpt-4-1106 beats Mixtral in most judge rows; RouterBench pairs mostly tie (data README)."""
    t = real.comparisons
    s, w = t.models.index(STRONG), t.models.index(WEAK)
    for source in ("arena_bench_v1", "routerbench_winogrande"):
        rows = (t.source == t.sources.index(source)) & (
            ((t.model_a == s) & (t.model_b == w)) | ((t.model_a == w) & (t.model_b == s))
        )
        assert rows.sum() > 100
        strong_wins = ((t.model_a == s) & (t.outcome == 0)) | ((t.model_b == s) & (t.outcome == 1))
        weak_wins = ((t.model_a == w) & (t.outcome == 0)) | ((t.model_b == w) & (t.outcome == 1))
        assert strong_wins[rows].sum() > weak_wins[rows].sum()


def test_routerbench_prompts_are_final_questions(real):
    t = real.comparisons
    for source in ("routerbench_arc", "routerbench_winogrande"):
        idx = np.unique(t.prompt_idx[t.source == t.sources.index(source)])
        prompts = [t.prompts[i] for i in idx]
        assert max(len(p) for p in prompts) < 1100
        assert all(p.endswith("Answer:") and p.count("Answer:") == 1 for p in prompts)
        assert all(not p.startswith("Please answer") for p in prompts)
    mbpp = [t.prompts[i] for i in np.unique(t.prompt_idx[t.source == t.sources.index("routerbench_mbpp")])]
    assert all(not p.startswith("[") for p in mbpp)


def test_final_question_rule():
    shot = 'Q1?\nA) x\nB) y\nPrint only a single choice  from "A" or "B" without explanation. Answer:\nB\n\n'
    assert final_question(shot * 5 + "Q6?\nA) x\nB) y\nAnswer:") == "Q6?\nA) x\nB) y\nAnswer:"
    assert final_question("Write a function.") == "Write a function."


def test_limit_per_source_is_deterministic_and_spread(real):
    quick = load_comparisons(DATA_DIR, sources=["alpaca_eval", "arena_human"], limit_per_source=500)
    again = load_comparisons(DATA_DIR, sources=["arena_human", "alpaca_eval"], limit_per_source=500)
    assert quick.comparisons.sources == ("arena_human", "alpaca_eval")
    assert quick.comparisons.counts()["by_source"] == {"arena_human": 500, "alpaca_eval": 500}
    assert quick.comparisons.fingerprint() == again.comparisons.fingerprint()
    # spread over the file: the quick alpaca rows cover many generators, not just the first block
    alpaca = quick.comparisons.source == 1
    assert len(np.unique(quick.comparisons.model_b[alpaca])) > 50


def test_unknown_source_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        load_comparisons(DATA_DIR, sources=["nectar"])
    with pytest.raises(TypeError, match="not the string 'arena_human'"):
        load_comparisons(DATA_DIR, sources="arena_human")


def test_calibration_prompts():
    prompts = load_calibration_prompts(DATA_DIR)
    assert len(prompts) == len(set(prompts)) == 2132
    assert prompts[0] == "Use ABC notation to write a melody in the style of a folk tune."
    assert all(p == p.strip() and p for p in prompts)
    assert load_calibration_prompts(DATA_DIR) == prompts


# ---------------------------------------------------------------------------------------- table ops


def test_split_by_prompt_is_disjoint_and_deterministic(real):
    table = real.comparisons
    train, val = table.split_by_prompt(val_fraction=0.1, seed=0)
    assert len(train) + len(val) == len(table)
    assert not set(train.prompts) & set(val.prompts)
    assert set(train.prompts) | set(val.prompts) == set(table.prompts)
    assert len(val.prompts) == round(0.1 * len(table.prompts))
    train2, val2 = table.split_by_prompt(val_fraction=0.1, seed=0)
    assert train2.fingerprint() == train.fingerprint() and val2.fingerprint() == val.fingerprint()
    _, val_other = table.split_by_prompt(val_fraction=0.1, seed=1)
    assert set(val_other.prompts) != set(val.prompts)
    with pytest.raises(ValueError, match="val_fraction"):
        table.split_by_prompt(val_fraction=1.0)


def test_fingerprint_changes_when_one_label_changes(real):
    table = real.comparisons
    outcome = table.outcome.copy()
    outcome[12345] = (outcome[12345] + 1) % 3
    changed = Comparisons(**{**table.__dict__, "outcome": outcome})
    same = Comparisons(**{**table.__dict__, "outcome": table.outcome.copy()})
    assert same.fingerprint() == table.fingerprint()
    assert changed.fingerprint() != table.fingerprint()


def test_select_compacts_prompts_and_keeps_models(real):
    table = real.comparisons
    sub = table.select(table.label_kind == LABEL_KINDS.index("human"))
    assert len(sub) == 1135
    assert sub.models == table.models and sub.sources == table.sources
    assert len(sub.prompts) == len(np.unique(sub.prompt_idx)) == 887
    original = [table.prompts[i] for i in table.prompt_idx[table.label_kind == 0]]
    assert [sub.prompts[i] for i in sub.prompt_idx] == original


def test_comparisons_validates_its_arrays():
    ok = dict(
        prompts=("p",),
        prompt_idx=np.zeros(1, np.int32),
        model_a=np.zeros(1, np.int32),
        model_b=np.ones(1, np.int32),
        outcome=np.zeros(1, np.int8),
        label_kind=np.zeros(1, np.int8),
        source=np.zeros(1, np.int8),
        models=("a", "b"),
        sources=("arena_human",),
    )
    assert len(Comparisons(**ok)) == 1
    with pytest.raises(ValueError, match="model_b: values outside"):
        Comparisons(**{**ok, "model_b": np.full(1, 2, np.int32)})
    with pytest.raises(ValueError, match="outcome: expected a 1-D int8"):
        Comparisons(**{**ok, "outcome": np.zeros(1, np.int64)})
    with pytest.raises(ValueError, match="models: must be sorted"):
        Comparisons(**{**ok, "models": ("b", "a")})


# ---------------------------------------------------------------------------------------- malformed rows


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _battle(winner: str, a: str = "vicuna-13b", b: str = "alpaca-13b", prompt: str = "hi") -> str:
    return json.dumps({"model_a": a, "model_b": b, "winner": winner, "prompt": prompt, "turns": [prompt]})


def test_malformed_arena_rows_reported_with_file_and_line(tmp_path, caplog):
    lines = [
        _battle("model_a"),
        "{not json",
        _battle("model_c"),
        json.dumps({"model_a": "x", "winner": "tie", "prompt": "p"}),
        _battle("tie", a="gpt-4", b="gpt4"),  # self-battle after normalisation: skipped by rule
        "",
        _battle("tie (bothbad)", prompt="  second prompt \n"),
        json.dumps({"model_a": "a", "model_b": "b", "winner": ["model_a"], "prompt": "p"}),
    ]
    path = _write(tmp_path, "train/arena_human/battles.jsonl", "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="lmroute.export.data"):
        result = load_comparisons(tmp_path, sources=["arena_human"])
    issues = [(i.file, i.line, i.reason.split(":")[0]) for i in result.issues]
    assert issues == [
        (str(path), 2, "invalid JSON"),
        (str(path), 3, "unknown winner value 'model_c'"),
        (str(path), 4, "missing field model_a/model_b"),
        (str(path), 8, "unknown winner value ['model_a']"),
    ]
    assert f"4 bad rows in {path}" in caplog.text
    table = result.comparisons
    assert len(table) == 2 and table.prompts == ("hi", "second prompt")
    assert list(table.outcome) == [0, 2] and list(table.label_kind) == [0, 0]
    assert result.skipped == {"arena_human: self-battle": 1}


def test_bad_rows_are_logged_with_file_and_line_the_first_few_per_file(tmp_path, caplog):
    """The log used to say only "7 bad rows in <file>"; it names the first SHOWN_BAD_ROWS of them."""
    lines = [_battle("model_a")] + [f"{{bad json {i}" for i in range(7)]
    path = _write(tmp_path, "train/arena_human/battles.jsonl", "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="lmroute.export.data"):
        result = load_comparisons(tmp_path, sources=["arena_human"])
    assert len(result.issues) == 7
    assert [r.getMessage() for r in caplog.records] == [
        f"7 bad rows in {path}, skipped (the first {SHOWN_BAD_ROWS} below)",
        *(f"  {path}:{line}: invalid JSON: Expecting property name enclosed in double quotes" for line in range(2, 7)),
    ]
    caplog.clear()
    cal = tmp_path / "cal"
    first = _write(cal, CALIBRATION_FILES[0], '{"prompt": "calibrate me"}\n{"question": "no prompt"}\n')
    _write(cal, CALIBRATION_FILES[1], "")
    _write(cal, "train/arena_human/battles.jsonl", _battle("model_a") + "\n")
    issues: list = []
    with caplog.at_level(logging.WARNING, logger="lmroute.export.data"):
        assert load_calibration_prompts(cal, issues=issues) == ["calibrate me", "hi"]
    assert [str(i) for i in issues] == [f"{first}:2: missing field prompt"]
    assert f"  {first}:2: missing field prompt" in [r.getMessage() for r in caplog.records]


def test_malformed_alpaca_rows_and_preference_rules(tmp_path):
    _write(
        tmp_path,
        "train/alpaca_eval_judge/prompts.jsonl",
        '{"prompt_id": "p1", "instruction": "Say hi"}\n{"prompt_id": "p2"}\n',
    )
    rows = [
        "prompt_id,generator_1,generator_2,annotator,preference",
        "p1,gpt4_1106_preview,vicuna-7b,x,1.0",  # line 2: a wins
        "p1,gpt4_1106_preview,vicuna-7b,x,1.9999",  # 3: b wins (nearer side)
        "p1,gpt4_1106_preview,vicuna-7b,x,1.5",  # 4: tie
        "p1,gpt4_1106_preview,vicuna-7b,x,0.0",  # 5: tie (AlpacaEval draw code)
        "p1,gpt4_1106_preview,vicuna-7b,x,1.2",  # 6: a wins
        "p1,gpt4_1106_preview,vicuna-7b,x,2.5",  # 7: bad preference
        "p1,gpt4_1106_preview,vicuna-7b,x,",  # 8: missing preference
        "p9,gpt4_1106_preview,vicuna-7b,x,1",  # 9: unknown prompt id
        "p1,,,x,1",  # 10: missing generator
        "p1,gpt4_1106_preview,example,x,2",  # 11: toy model, skipped
        "p1,gpt4_1106_preview,gpt-4-1106-preview,x,2",  # 12: self-battle, skipped
        "p1,gpt4_1106_preview,vicuna-7b,x",  # 13: too few fields
    ]
    path = _write(tmp_path, "train/alpaca_eval_judge/judgments.csv", "\n".join(rows) + "\n")
    result = load_comparisons(tmp_path, sources=["alpaca_eval"])
    got = [(Path(i.file).name, i.line, i.reason) for i in result.issues]
    assert got == [
        ("prompts.jsonl", 2, "missing field prompt_id/instruction"),
        (path.name, 7, "bad preference '2.5' (expected 0, or a value in [1, 2])"),
        (path.name, 8, "missing field preference"),
        (path.name, 9, "unknown prompt_id 'p9'"),
        (path.name, 10, "missing field generator_1/generator_2"),
        (path.name, 13, "4 fields, header has 5"),
    ]
    assert list(result.comparisons.outcome) == [0, 1, 2, 2, 0]
    assert set(result.comparisons.label_kind) == {1}
    assert result.skipped == {"alpaca_eval: toy model 'example'": 1, "alpaca_eval: self-battle": 1}


def test_a_header_without_a_required_column_fails_the_load_naming_file_and_column(tmp_path):
    """A renamed column used to cost the whole source as one "bad row" (and the build went on)."""
    _write(tmp_path, "train/alpaca_eval_judge/prompts.jsonl", '{"prompt_id": "p1", "instruction": "Say hi"}\n')
    rows = ["prompt_id,generator_1,generator_2,annotator,pref", "p1,gpt4_1106_preview,vicuna-7b,x,1.0"]
    path = _write(tmp_path, "train/alpaca_eval_judge/judgments.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"^{path}:1: the header lacks the required column\\(s\\) preference$"):
        load_comparisons(tmp_path, sources=["alpaca_eval"])


def test_a_source_with_no_usable_row_fails_the_load_naming_it(tmp_path):
    _write(tmp_path, "train/alpaca_eval_judge/prompts.jsonl", '{"prompt_id": "p1", "instruction": "Say hi"}\n')
    rows = ["prompt_id,generator_1,generator_2,annotator,preference", "p1,,,x,1", "p1,vicuna-7b,example,x,1"]
    path = _write(tmp_path, "train/alpaca_eval_judge/judgments.csv", "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=f"^training source alpaca_eval has no usable rows \\(1 bad rows in {path}; "):
        load_comparisons(tmp_path, sources=["alpaca_eval"])


def test_arena_bench_bad_and_missing_scores(tmp_path):
    text = (
        "question_id,prompt,gpt-4-1106-preview,mistralai/Mixtral-8x7B-Instruct-v0.1,claude-1\n"
        'q1,"multi\nline prompt",9,7,9\n'  # lines 2-3
        "q2,second,10,,3\n"  # line 4: missing Mixtral score -> only (claude, gpt-4) pair
        "q3,third,abc,5,11\n"  # line 5: two bad scores -> reported, no pair left
        "q4,,5,5,5\n"  # line 6: missing prompt
    )
    path = _write(tmp_path, "train/arena_bench_v1_judge/scores_wide.csv", text)
    result = load_comparisons(tmp_path, sources=["arena_bench_v1"])
    assert [(i.file, i.line, i.reason) for i in result.issues] == [
        (str(path), 5, "bad score 'abc' for gpt-4-1106-preview (expected a number in [1, 10])"),
        (str(path), 5, "bad score '11' for claude-1 (expected a number in [1, 10])"),
        (str(path), 6, "missing field prompt"),
    ]
    t = result.comparisons
    assert t.models == ("claude-1", STRONG, WEAK)
    rows = {
        (t.prompts[p], t.models[a], t.models[b], int(o))
        for p, a, b, o in zip(t.prompt_idx, t.model_a, t.model_b, t.outcome, strict=True)
    }
    assert rows == {
        ("multi\nline prompt", "claude-1", STRONG, 2),
        ("multi\nline prompt", "claude-1", WEAK, 0),
        ("multi\nline prompt", STRONG, WEAK, 0),
        ("second", "claude-1", STRONG, 1),
    }
    assert result.skipped == {"arena_bench_v1: missing score (cell; that model left out of the row's pairs)": 1}


def test_routerbench_missing_column_and_bad_prompt(tmp_path):
    good = (
        "sample_id,prompt,eval_name,gpt-4-1106-preview,mistralai/mixtral-8x7b-chat,claude-v1,"
        "gpt-4-1106-preview|total_cost,oracle_model_to_route_to\n"
        "s1,\"['Write a function.']\",mbpp,1.0,0.0,1.0,0.01,x\n"
        "s2,not a list,mbpp,1.0,0.0,1.0,0.01,x\n"
        "s3,\"['ok']\",mbpp,1.0,0.5,1.0,0.01,x\n"
    )
    mbpp = _write(tmp_path, "train/routerbench_golden/mbpp_train.csv", good)
    arc = _write(tmp_path, "train/routerbench_golden/arc_challenge_train.csv", "sample_id,eval_name\ns,arc\n")
    with pytest.raises(DataError, match=f"^{arc}:1: the header lacks the required column\\(s\\) prompt$"):
        load_comparisons(tmp_path, sources=["routerbench_mbpp", "routerbench_arc"])
    result = load_comparisons(tmp_path, sources=["routerbench_mbpp"])
    assert [(i.file, i.line, i.reason) for i in result.issues] == [
        (str(mbpp), 3, "prompt is not a python list of non-empty strings"),
        (str(mbpp), 4, "bad score '0.5' for mistralai/mixtral-8x7b-chat (expected 0 or 1)"),
    ]
    t = result.comparisons
    assert t.sources == ("routerbench_mbpp",)
    assert t.counts()["by_source"] == {"routerbench_mbpp": 4}
    assert set(t.label_kind) == {2}
    assert t.prompts == ("Write a function.", "ok")


def test_gzip_file_is_preferred_and_line_numbers_hold(tmp_path):
    lines = [_battle("model_b"), "[1, 2]"]
    path = tmp_path / "train/arena_human/battles.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = load_comparisons(tmp_path, sources=["arena_human"])
    assert [(i.file, i.line, i.reason) for i in result.issues] == [(str(path), 2, "JSON line is not an object")]
    assert list(result.comparisons.outcome) == [1]


def test_bytes_that_are_no_text_and_deep_json_are_rows_reported_not_failures(tmp_path):
    """A line that is not UTF-8, JSON nested past the parser's depth: issues at their lines, the other rows
    read."""
    lines = [
        _battle("model_a").encode(),
        b'{"model_a": "caf\xe9"}',
        ("[" * 100_000).encode(),
        _battle("model_b").encode(),
    ]
    path = tmp_path / "train/arena_human/battles.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = load_comparisons(tmp_path, sources=["arena_human"])
    assert [(i.line, i.reason) for i in result.issues] == [
        (2, "not UTF-8 text"),
        (3, "invalid JSON: nested too deeply"),
    ]
    assert list(result.comparisons.outcome) == [0, 1]


def test_a_truncated_or_corrupt_gzip_fails_the_load_naming_the_file(tmp_path):
    """A .gz that ends early (EOFError) used to keep the rows before the cut, one "bad row" logged; a corrupt
    one whose damage only the checksum at its end finds kept the garbled rows decoded before it."""
    whole = gzip.compress(b"".join(_battle("model_a").encode() + b"\n" for _ in range(2000)))
    gz = tmp_path / "train/arena_human/battles.jsonl.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=f"^{gz}: unreadable after line [0-9]+ \\(EOFError: .*nothing read from it"):
        load_comparisons(tmp_path, sources=["arena_human"])
    gz.unlink()
    _write(tmp_path, "train/alpaca_eval_judge/prompts.jsonl", '{"prompt_id": "p1", "instruction": "Say hi"}\n')
    rows = ["prompt_id,generator_1,generator_2,annotator,preference"] + ["p1,gpt4_1106_preview,vicuna-7b,x,1"] * 500
    stored = bytearray(gzip.compress(("\n".join(rows) + "\n").encode(), compresslevel=0))  # bytes as they are
    middle = stored.index(b"vicuna-7b", len(stored) // 2)
    stored[middle] = ord("V")  # a garbled model name; only the CRC at the end tells
    csv_gz = tmp_path / "train/alpaca_eval_judge/judgments.csv.gz"
    csv_gz.write_bytes(bytes(stored))
    with pytest.raises(DataError, match=f"^{csv_gz}: unreadable after line 501 \\(BadGzipFile: CRC check failed"):
        load_comparisons(tmp_path, sources=["alpaca_eval"])


def test_an_unreadable_csv_record_costs_its_line_not_the_rest_of_the_file(tmp_path):
    """An unterminated quote runs into the field size limit (or the end of the file), as does a field of
    140,000 characters: an issue at the record's first line, and reading goes on from the next line (it
    used to stop there: one bad row lost the rest of the file); a line that is not UTF-8 is an issue and
    its record is left out."""
    _write(tmp_path, "train/alpaca_eval_judge/prompts.jsonl", '{"prompt_id": "p1", "instruction": "Say hi"}\n')
    good = "p1,gpt4_1106_preview,vicuna-7b,x,1.0"
    rows = ["prompt_id,generator_1,generator_2,annotator,preference", good, 'p1,"unterminated,vicuna-7b,x,1.0']
    rows += [good] * 3 + ["p1,gpt4_1106_preview,vicuna-7b," + "y" * 140_000 + ",1.0"] + [good]
    path = tmp_path / "train/alpaca_eval_judge/judgments.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode() + b"p1,gpt4_1106_preview,vicuna-7b,\xff,1.0\n" + good.encode())
    result = load_comparisons(tmp_path, sources=["alpaca_eval"])
    assert sorted((i.line, i.reason.split(" (")[0]) for i in result.issues) == [
        (3, "unreadable CSV: field larger than field limit"),
        (7, "unreadable CSV: field larger than field limit"),  # 140,000 characters: longer than any prompt
        (9, "not UTF-8 text"),
    ]
    assert len(result.comparisons) == 6  # every good row: lines 2, 4-6, 8 and 10


def test_a_quote_left_open_to_the_end_of_the_file_costs_its_line_only():
    """csv reads an unterminated quote near the end of a file as one field holding every line after it,
    without an error: that record is an issue, and the lines after its first are read as rows."""
    import io

    from lmroute.export.data import _csv_records

    issues: list = []
    text = 'a,b\n1,2\n3,"4\n5,6\n7,"""8"""\n'
    rows = list(_csv_records(Path("t.csv"), io.StringIO(text), ("a", "b"), issues))
    assert rows == [(2, {"a": "1", "b": "2"}), (4, {"a": "5", "b": "6"}), (5, {"a": "7", "b": '"8"'})]
    assert [(i.line, i.reason) for i in issues] == [(3, "unreadable CSV: a quoted field runs to the end of the file")]
    issues.clear()  # a header that cannot be read: no row is read, rather than the first row taken as it
    assert list(_csv_records(Path("t.csv"), io.StringIO('"a,b\n1,2\n'), ("a", "b"), issues)) == []
    assert [(i.line, i.reason.split(":")[0]) for i in issues] == [(1, "unreadable CSV")]


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="battles.jsonl: missing"):
        load_comparisons(tmp_path, sources=["arena_human"])


def test_real_difficulty_labels():
    labels = load_difficulty_labels(DATA_DIR)
    assert len(labels.prompts) == 5395 and labels.mean_score.shape == (5395,)
    assert labels.issues == []
    assert len(labels.models) == 9 and "qwen2.5-7b-instruct" in labels.models
    assert 0.0 <= labels.mean_score.min() and labels.mean_score.max() <= 1.0
    assert 0.40 < labels.mean_score.mean() < 0.45  # 9 open 7-70B models: ~42 % right on average
    assert labels.scores.shape == (5395, 9)
    np.testing.assert_allclose(np.nanmean(labels.scores, axis=1), labels.mean_score, rtol=1e-12)


def test_malformed_difficulty_rows_reported_with_file_and_line(tmp_path, caplog):
    lines = [
        json.dumps({"question": "What is 2 + 2?", "scores": {"m1": 1.0, "m2": 0.0, "m3": 0.5}}),
        json.dumps({"question": "What is 3 + 3?", "scores": {"m1": 1.0, "m3": 0.0}}),
        json.dumps({"question": "", "scores": {"m1": 1.0, "m2": 0.0}}),
        json.dumps({"question": "q3", "scores": [1, 0]}),
        json.dumps({"question": "q4", "scores": {"m1": 1.5, "m2": 0.0}}),
        json.dumps({"question": "q5", "scores": {"m1": True, "m2": 0.0}}),
        json.dumps({"question": "q6", "scores": {"m1": 1.0}}),
        "not json",
        json.dumps({"question": "What is 2 + 2?", "scores": {"m1": 0.0, "m2": 0.0}}),
    ]
    path = _write(tmp_path, "train/llmrouter/train.jsonl", "\n".join(lines) + "\n")
    labels = load_difficulty_labels(tmp_path)
    assert [(i.file, i.line, i.reason) for i in labels.issues] == [
        (str(path), 3, "missing field question"),
        (str(path), 4, "field scores must be an object {model: score}"),
        (str(path), 5, "bad score 1.5 for m1 (expected a number in [0, 1])"),
        (str(path), 6, "bad score True for m1 (expected a number in [0, 1])"),
        (str(path), 7, "1 scores, need at least 2"),
        (str(path), 8, "invalid JSON: Expecting value"),
    ]
    assert labels.prompts == ("What is 2 + 2?", "What is 3 + 3?")  # the repeat on line 9 keeps the first line
    assert labels.mean_score.tolist() == [0.5, 0.5]
    assert labels.models == ("m1", "m2", "m3")
    np.testing.assert_array_equal(labels.scores, [[1.0, 0.0, 0.5], [1.0, np.nan, 0.0]])  # NaN: m2 did not answer


def test_pair_mask_finds_the_pair_on_either_side():
    comps = Comparisons(
        prompts=("p",),
        prompt_idx=np.zeros(4, dtype=np.int32),
        model_a=np.array([0, 1, 0, 2], dtype=np.int32),
        model_b=np.array([1, 0, 2, 1], dtype=np.int32),
        outcome=np.zeros(4, dtype=np.int8),
        label_kind=np.zeros(4, dtype=np.int8),
        source=np.zeros(4, dtype=np.int8),
        models=("a", "b", "c"),
        sources=("s",),
    )
    assert comps.pair_mask("a", "b").tolist() == [True, True, False, False]
    assert comps.pair_mask("b", "c").tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        comps.pair_mask("a", "zzz")
