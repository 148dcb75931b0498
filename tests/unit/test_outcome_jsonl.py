"""The JSONL outcome format and `lmroute-export import-outcomes` (into a SQLite store in a temporary
directory): a file is imported whole or not at all, bad lines are named by file and line, a second
import of the same file changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmroute.export.cli import main
from lmroute.outcomes.jsonl import OutcomeFileError, read_outcomes
from lmroute.outcomes.records import OutcomeKind, prompt_sha256
from lmroute.outcomes.store import open_store

GOOD = """\
{"prompt": "What is 2+2?", "paired": {"strong": 1, "weak": 0.5}, "source": "judge"}

{"prompt": "Say hi", "preference": "weak", "observed_unix_ms": 1700000000000}
{"prompt": "Sort a list", "single": {"quality": 0.25, "model": "W"}}
{"prompt": "Name a prime", "qualities": {"A": 1, "B": 0}}
"""


def test_good_lines_become_outcomes_in_file_order(tmp_path: Path) -> None:
    f = tmp_path / "o.jsonl"
    f.write_text(GOOD)
    out = read_outcomes(f, strong="S", weak="W")
    assert [(o.kind, o.model, o.quality) for o in out] == [
        (OutcomeKind.PAIRED, "S", 1.0),
        (OutcomeKind.PAIRED, "W", 0.5),
        (OutcomeKind.PREFERENCE, "S", 0.0),
        (OutcomeKind.PREFERENCE, "W", 1.0),
        (OutcomeKind.SINGLE, "W", 0.25),
        (OutcomeKind.SCORES, "A", 1.0),
        (OutcomeKind.SCORES, "B", 0.0),
    ]
    assert out[0].source == "judge" and out[2].observed_ms == 1700000000000


def test_every_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(
        GOOD
        + '{"prompt": "x", "single": {"quality": 1.5, "model": "W"}}\n'
        + "not json\n"
        + '{"decision_id": "abc", "single": {"quality": 1}}\n'
        + '{"prompt": "x", "paired": {"strong": 1}}\n'
        + '{"prompt": "x", "preference": "both"}\n'
        + '{"prompt": "x", "single": {"quality": 1}, "extra": 1}\n'
        + '{"prompt": "x", "single": {"quality": 1}}\n'
        + '{"prompt": "x", "qualities": {"": 1}}\n'
        + '{"prompt": "x", "single": {"quality": 1, "model": "W"}, "observed_unix_ms": 140737488355328}\n'
    )
    with pytest.raises(OutcomeFileError) as err:
        read_outcomes(f, strong="S", weak="W")
    lines = str(err.value).splitlines()
    assert lines[-1].startswith(f"{f}:14: observed_unix_ms: 140737488355328 is ")  # the year 6429
    assert lines[-1].endswith(" s ahead of this server's clock (at most 300 s: an outcome is observed, not foreseen)")
    assert lines[:-1] == [
        "9 bad lines, nothing imported:",
        f"{f}:6: single.quality: must be in [0, 1] (got 1.5)",
        f"{f}:7: not JSON (Expecting value at column 1)",
        f"{f}:8: decision_id: not a decision id (32 lowercase hex characters)",
        f'{f}:9: paired: must be {{"strong": q, "weak": q}}',
        f'{f}:10: preference: must be "strong", "weak" or "tie" (got \'both\')',
        f"{f}:11: extra: unknown field",
        f"{f}:12: single.model: required",  # named where it stands (it said `model: required`)
        f"{f}:13: qualities.model: required",
    ]


def test_import_outcomes_whole_or_nothing_and_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "not json\n")
    assert main(["import-outcomes", str(bad), "--store", store, "--strong", "S", "--weak", "W"]) == 1
    assert f"{bad}:6: not JSON" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD)
    assert main(["import-outcomes", str(good), "--store", store, "--strong", "S", "--weak", "W"]) == 0
    assert capsys.readouterr().out.strip().endswith(": stored 7")
    assert main(["import-outcomes", str(good), "--store", store, "--strong", "S", "--weak", "W"]) == 0
    assert capsys.readouterr().out.strip().endswith(": duplicate 7")
    s = open_store(store)
    rows = {r.prompt_sha256: r for r in s.labeled_prompts()}
    s.close()
    assert len(rows) == 4 and rows[prompt_sha256("What is 2+2?")].qualities == {"S": 1.0, "W": 0.5}
    # imported as a named reporter: its own outcomes, beside the first import's
    as_eval = ["import-outcomes", str(good), "--store", store, "--strong", "S", "--weak", "W", "--reporter", "eval"]
    assert main(as_eval) == 0
    assert capsys.readouterr().out.strip().endswith(": stored 7")
    s = open_store(store)
    assert len(s.labeled_prompts(reporters={"eval"})) == 4 and s.counts()["outcomes"] == 14
    s.close()
    assert main(as_eval[:-1] + ["a,b"]) == 1
    assert "--reporter: one tenant name (got 'a,b')" in capsys.readouterr().err


def test_a_line_no_store_can_hold_is_refused_by_the_reader_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lone surrogate (valid JSON escape, not Unicode), nesting past the parser's depth, a key given twice:
    each is named by file and line, and no outcome is stored, not even the 1,200 lines before them."""
    store = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    f = tmp_path / "o.jsonl"
    many = "".join(f'{{"prompt": "q{i}", "preference": "tie"}}\n' for i in range(1200))
    f.write_text(
        many
        + '{"prompt": "bad \\ud800", "preference": "tie"}\n'
        + '{"prompt": "x", "qualities": {"\\udfff": 1}}\n'
        + '{"prompt": "x", "single": {"quality": 1, "model": "\\ud83d"}}\n'
        + '{"prompt": "x", "single": '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n"
        + '{"prompt": "x", "preference": "tie", "prompt": "y"}\n'
    )
    assert main(["import-outcomes", str(f), "--store", store, "--strong", "S", "--weak", "W"]) == 1
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"{f}:1201: prompt: not valid Unicode (a lone surrogate)",
        f"{f}:1202: qualities.\\udfff: not valid Unicode (a lone surrogate)",
        f"{f}:1203: single.model: not valid Unicode (a lone surrogate)",
        f"{f}:1204: nested too deeply",
        f"{f}:1205: 'prompt' given twice",
    ]
    s = open_store(store)
    assert s.counts()["outcomes"] == 0
    s.close()


def test_import_outcomes_says_when_it_made_a_new_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deployment's first import makes its store; a mistyped path would too, so it is said on stderr."""
    f = tmp_path / "o.jsonl"
    f.write_text(GOOD)
    store = f"sqlite:{tmp_path / 'typo.sqlite3'}"
    argv = ["import-outcomes", str(f), "--store", store, "--strong", "S", "--weak", "W"]
    assert main(argv) == 0
    assert (
        capsys.readouterr().err == f"lmroute-export import-outcomes: {store}: no store there, a new one was created\n"
    )
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


def test_a_store_under_a_file_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "o.jsonl"
    f.write_text(GOOD)
    store = f"sqlite:{f}/x.sqlite3"
    assert main(["import-outcomes", str(f), "--store", store, "--strong", "S", "--weak", "W"]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"lmroute-export import-outcomes: store {store!r}: cannot create {f}/x.sqlite3: {f} is not a directory\n"
    )
    source = f"sqlite:{tmp_path / 'source.sqlite3'}"
    open_store(source).close()
    assert main(["copy-store", "--from", source, "--to", store]) == 1
    assert f"lmroute-export copy-store: store {store!r}: cannot create" in capsys.readouterr().err


def test_import_outcomes_needs_the_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "o.jsonl"
    f.write_text(GOOD)
    assert main(["import-outcomes", str(f), "--store", f"sqlite:{tmp_path / 's'}"]) == 1
    assert "give --bundle or both --strong and --weak" in capsys.readouterr().err
    same = ["import-outcomes", str(f), "--store", f"sqlite:{tmp_path / 's'}", "--strong", "m", "--weak", "m"]
    assert main(same) == 1
    assert "--strong and --weak: one model ('m'); paired outcomes compare two" in capsys.readouterr().err


def test_import_names_each_refused_line_and_keeps_a_privacy_stores_texts_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused outcomes are listed by file and line (only counts were printed); into a store whose
    decisions hold no text (its server runs --store-prompts false), prompts by text are refused unless
    the import says which way: --no-store-prompts, or --store-prompts."""
    import time

    import numpy as np

    from lmroute.outcomes.records import Decision
    from lmroute.service.decisions import new_decision_id

    store = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    first = tmp_path / "first.jsonl"
    first.write_text('{"prompt": "Say hi", "single": {"quality": 0.5, "model": "W"}, "source": "s"}\n')
    assert main(["import-outcomes", str(first), "--store", store, "--strong", "S", "--weak", "W"]) == 0
    assert "a new one was created" in capsys.readouterr().err
    clash = tmp_path / "clash.jsonl"
    clash.write_text(
        '{"prompt": "Name a prime", "single": {"quality": 1, "model": "W"}}\n'
        '{"decision_id": "' + new_decision_id(1) + '", "single": {"quality": 1}}\n'
        '{"prompt": "Say hi", "single": {"quality": 0.9, "model": "W"}, "source": "s"}\n'
    )
    assert main(["import-outcomes", str(clash), "--store", store, "--strong", "S", "--weak", "W"]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{clash}:2: not_found", f"{clash}:3: conflict (model W)"]

    private = f"sqlite:{tmp_path / 'private.sqlite3'}"
    s = open_store(private, store_prompts=False)
    now = int(time.time() * 1000)
    decision = Decision(
        decision_id=new_decision_id(now),
        time_ms=now,
        kind="route",
        bundle_version="v",
        scores={"mf": 0.5},
        strong_model="S",
        weak_model="W",
        prompt_sha256=prompt_sha256("secret"),
        n_tokens=3,
        encoder_id="e",
        router="mf",
        threshold=0.5,
        chosen_model="W",
        propensity=1.0,
        prompt_text="secret",
        embedding=np.zeros(4, dtype=np.float32),
    )
    s.write([decision])
    s.close()
    argv = ["import-outcomes", str(first), "--store", private, "--strong", "S", "--weak", "W"]
    assert main(argv) == 1
    assert "its decisions hold no prompt text (its server runs --store-prompts false)" in capsys.readouterr().err
    assert main([*argv, "--no-store-prompts"]) == 0
    s = open_store(private)
    assert s._exec("SELECT COUNT(prompt_text) FROM outcomes").fetchone()[0] == 0
    s.close()


def test_lines_are_numbered_as_wc_and_sed_count_them(tmp_path: Path) -> None:
    """Only \\n ends a line: a lone \\r inside an object is JSON whitespace (it split the line in two and
    numbered every later line one too high); a line that is not UTF-8 is named by its own number and the
    byte within it, beside the other bad lines (the whole file was refused at a byte counted from the
    start of Python's decode buffer)."""
    f = tmp_path / "o.jsonl"
    good = '{"prompt": "q", "preference": "tie"}\n'
    f.write_bytes(
        b'{"prompt": "a",\r "preference": "tie"}\n'  # 1: valid JSON, a bare CR inside
        + good.encode() * 2000  # 2-2001: past any read buffer
        + b'{"prompt": "caf\xe9", "preference": "tie"}\n'  # 2002: Latin-1, not UTF-8
        + b'{"prompt": "x", "single": {"quality": 1.5, "model": "W"}}\r\n'  # 2003, CRLF
    )
    with pytest.raises(OutcomeFileError) as err:
        read_outcomes(f, strong="S", weak="W")
    assert str(err.value).splitlines() == [
        "2 bad lines, nothing imported:",
        f"{f}:2002: not UTF-8 text (invalid continuation byte at byte 16 of the line)",
        f"{f}:2003: single.quality: must be in [0, 1] (got 1.5)",
    ]


def test_an_empty_file_is_no_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text in ("", "\n  \n\n"):
        f = tmp_path / "empty.jsonl"
        f.write_text(text)
        store = tmp_path / "never.sqlite3"
        assert main(["import-outcomes", str(f), "--store", f"sqlite:{store}", "--strong", "S", "--weak", "W"]) == 1
        assert f"{f}: no outcomes (an empty file, or blank lines only)" in capsys.readouterr().err
        assert not store.exists()  # no store made for nothing


def test_a_lines_outcomes_are_committed_together() -> None:
    from lmroute.export.cli import _whole_lines

    lines = [(n, None) for n in (1, 1, 2, 2, 3, 4, 4, 4, 5)]  # a paired line gives two, a qualities line more
    assert list(_whole_lines(lines, 3)) == [(0, 4), (4, 8), (8, 9)]
    assert list(_whole_lines(lines, 100)) == [(0, 9)] and list(_whole_lines([], 3)) == []


def test_an_import_the_store_stops_says_what_was_committed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The store refuses a write half way (here a trigger past 1,000 outcomes, as a full disk would): the
    import exits 1 saying how many outcomes of which lines were committed and how to complete it; they
    stay, and the same file imported once the store takes writes again completes it."""
    import sqlite3

    path = tmp_path / "outcomes.sqlite3"
    store = f"sqlite:{path}"
    open_store(store).close()
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER full BEFORE INSERT ON outcomes WHEN (SELECT count(*) FROM outcomes) >= 1000 "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    db.commit()
    f = tmp_path / "o.jsonl"
    f.write_text("".join(f'{{"prompt": "q{i}", "single": {{"quality": 1, "model": "W"}}}}\n' for i in range(1500)))
    argv = ["import-outcomes", str(f), "--store", store, "--strong", "S", "--weak", "W"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("lmroute-export import-outcomes: stopped (") and "database or disk is full" in err
    assert err.endswith(
        f"1000 of 1500 outcomes of {f} committed (lines 1-1000); import the file again to complete it "
        "(those come back as duplicates)\n"
    )
    db.execute("DROP TRIGGER full")
    db.commit()
    db.close()
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(": duplicate 1000, stored 500")
