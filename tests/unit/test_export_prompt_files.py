"""The prompt files `lmroute-export calibrate --prompts` and `erase --prompts-file` read: one prompt a
line, or JSONL objects with a string 'prompt'; a bad file is named (and its bad line), never a
traceback or a prompt made up of another type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmroute.export.cli import _read_prompts


def test_a_file_is_jsonl_or_lines_as_its_first_line_says(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    lines = ["plain prompt", json.dumps({"prompt": "x"}), "{ a code block, not JSON }", "", "  "]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _read_prompts(f) == lines[:3]  # lines: each as it is, JSON-looking ones too
    lines = [json.dumps({"prompt": "two\nlines"}), "", json.dumps({"prompt": "{ code }", "id": 7})]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _read_prompts(f) == ["two\nlines", "{ code }"]
    f.write_text(json.dumps({"prompt": "my secret"}) + "\n" + '{"prompt": "typo"},\n', encoding="utf-8")
    with pytest.raises(SystemExit) as err:  # a JSONL line that does not parse is not taken as a prompt
        _read_prompts(f)
    assert str(err.value) == (
        f"{f}:2: invalid JSON (Extra data at column 19); "
        "the file's first non-blank line starts with '{', so it is JSONL"
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (  # a broken first line is not a prompt of a text file: it is a JSONL file's bad line
            b'{"prompt": "a",\n{"prompt": "b"}\n',
            "p.txt:1: invalid JSON (Expecting property name enclosed in double quotes at column 16)",
        ),
        (b'\n  {"prompt": "a"\n', "p.txt:2: invalid JSON (Expecting ',' delimiter at column 17)"),
        (b'{"prompt": "a"}\n["b"]\n', "p.txt:2: not a JSON object (a JSON list)"),
        (b'{"prompt": "a"}\n"b"\n', "p.txt:2: not a JSON object (a JSON str)"),
    ],
)
def test_a_jsonl_line_that_does_not_parse_is_named(tmp_path: Path, content: bytes, says: str) -> None:
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    with pytest.raises(SystemExit) as err:
        _read_prompts(f)
    assert str(err.value) == f"{tmp_path}/{says}; the file's first non-blank line starts with '{{', so it is JSONL"


def test_blank_jsonl_prompts_are_skipped_as_blank_lines_are(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": ""}\n{"prompt": "  "}\n{"prompt": "x"}\n', encoding="utf-8")
    assert _read_prompts(f) == ["x"]
    f.write_text('{"prompt": ""}\n\n{"prompt": "\\n"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as err:
        _read_prompts(f)
    assert str(err.value) == f"{f}: no prompts"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            b'{"prompt": "ok"}\n{"prompt": 5}\n',
            "p.txt:2: a JSON object whose 'prompt' is not a string ('prompt' is int)",
        ),
        (b'{"text": "no prompt field"}\n', "p.txt:1: a JSON object whose 'prompt' is not a string (no 'prompt' field)"),
        (b"hello\nabc \xff\xfe def\n", "p.txt:2: not UTF-8 text (invalid start byte at byte 5 of the line)"),
        (b"\n\n", "p.txt: no prompts"),
        (b'\xef\xbb\xbf{"prompt": "a"}\n', "p.txt:1: starts with a UTF-8 byte order mark (save the file without one)"),
        (b"\xef\xbb\xbfplain prompt\n", "p.txt:1: starts with a UTF-8 byte order mark (save the file without one)"),
        (b'{"prompt": "a"}\n{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "p.txt:2: nested too deeply"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "p.txt:1: nested too deeply"),
    ],
)
def test_bad_prompt_files_are_named(tmp_path: Path, content: bytes, says: str) -> None:
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    with pytest.raises(SystemExit) as err:
        _read_prompts(f)
    assert str(err.value) == f"{tmp_path}/{says}"


def test_a_missing_prompt_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        _read_prompts(tmp_path / "missing.txt")
    assert str(err.value) == f"{tmp_path / 'missing.txt'}: cannot be read (No such file or directory)"
