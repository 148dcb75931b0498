"""Bad input that `lmroute-export` used to take silently or die on with a traceback: each is now a bad
row, or an error naming the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmroute.export.data import SOURCES, load_comparisons


def _battle(prompt: str, turns: list[str] | None = None) -> str:
    row = {"model_a": "vicuna-13b", "model_b": "alpaca-13b", "winner": "model_a", "prompt": prompt}
    return json.dumps({**row, "turns": turns or [prompt]})


def test_an_escaped_lone_surrogate_is_a_bad_row_at_its_line(tmp_path: Path) -> None:
    """json.loads takes "\\ud800" and the build died much later, writing the prompt as UTF-8, naming no file."""
    lines = [
        _battle("hi"),
        _battle("\ud800 broken"),  # json.dumps escapes it: the line is ASCII
        _battle("ok", turns=["ok", "\udfff"]),  # deeper in the row
        _battle("smile \U0001f600"),  # an escaped surrogate pair is one character, good
        '{"model_a": "vicuna-13b", "model_b": "alpaca-13b", "winner": "model_b", "prompt": "caf\\u00e9"}',
    ]
    path = tmp_path / "train/arena_human/battles.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = load_comparisons(tmp_path, sources=["arena_human"])
    reason = "not valid Unicode (an escaped lone surrogate, e.g. \\ud800)"
    assert [str(i) for i in result.issues] == [f"{path}:2: {reason}", f"{path}:3: {reason}"]
    assert result.comparisons.prompts == ("hi", "smile \U0001f600", "café")


def test_build_refuses_flags_it_used_to_fail_on_late(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --report or --cache-dir inside --out, an unknown --elo-source-weights source, a --static-dim above
    the encoder's hidden size: exit 2 and one line naming the flag, before any work (nothing made)."""
    from lmroute.export.cli import main
    from lmroute.export.encoder_export import default_model_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    b = tmp_path / "b"
    config = default_model_dir() / "config.json"
    hidden = json.loads(config.read_text(encoding="utf-8"))["hidden_size"]
    base = ["build", "--data-dir", str(empty), "--routers", "random", "--out", str(b)]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    inside = "(the bundle replaces that folder whole)"
    cases = [
        ([*cache, "--report", str(b / "r.json")], f"--report: {b / 'r.json'} is inside --out {b} {inside}"),
        ([*cache, "--report", str(b)], f"--report: {b} is inside --out {b} {inside}"),
        (["--cache-dir", str(b / "cache")], f"--cache-dir: {b / 'cache'} is inside --out {b} {inside}"),
        (
            ["--cache-dir", str(tmp_path / "x" / ".." / "b")],
            f"--cache-dir: {tmp_path}/x/../b is inside --out {b} {inside}",
        ),
        (
            [*cache, "--elo-source-weights", "alpaca=0"],
            f"--elo-source-weights: unknown sources ['alpaca']; know {SOURCES}",
        ),
        (
            [*cache, "--encoder", "static", "--static-dim", str(hidden + 1)],
            f"--static-dim: {hidden + 1} is more than the encoder model's {hidden} dimensions "
            f"(hidden_size in {config})",
        ),
    ]
    for extra, says in cases:
        assert main([*base, *extra]) == 2, extra
        assert capsys.readouterr().err == f"lmroute-export build: {says}\n", extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"threshold": 0.95,\n "training_prompts_to_drop": [}\n', ":2: invalid JSON (Expecting value)"),
        ('{"threshold": 0.95}\n', ": 'training_prompts_to_drop' must be a list of prompts (missing)"),
        ('{"training_prompts_to_drop": "p"}\n', ": 'training_prompts_to_drop' must be a list of prompts (not a list"),
        ('["p"]\n', ": not a JSON object"),
    ],
)
def test_a_damaged_decontamination_file_is_a_data_error_naming_it(tmp_path: Path, content: str, says: str) -> None:
    """Malformed JSON was a message naming no file; a missing key, a KeyError traceback."""
    from lmroute.export.data import DataError
    from lmroute.export.pipeline import _decontamination_set

    path = tmp_path / "train_decontamination.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        _decontamination_set(path)
    assert str(err.value).startswith(f"{path}{says}")
    assert str(err.value).endswith("(rewrite it with `lmroute-export contamination`)")
    path.write_text('{"training_prompts_to_drop": ["a", "b"]}', encoding="utf-8")
    assert _decontamination_set(path) == {"a", "b"}


class _Encoder:
    dim = 4

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return np.ones((len(texts), self.dim), dtype=np.float32)


@pytest.mark.parametrize("damage", ["truncate_emb", "empty_emb", "truncate_keys", "float64_emb"])
def test_a_damaged_cache_shard_is_named_with_what_to_do(tmp_path: Path, damage: str) -> None:
    """A truncated shard was a numpy traceback (ValueError, EOFError) out of `lmroute-export build`."""
    from lmroute.export.embed_cache import EmbedCacheError, embed_texts

    encoder: Any = _Encoder()
    texts = [f"text {i}" for i in range(50)]
    embed_texts(encoder, texts, tmp_path, encoder_id="e", progress=False)
    (emb,) = (tmp_path / "e").glob("shard-*.emb.npy")
    keys = emb.with_name(emb.name.replace(".emb.npy", ".keys.npy"))
    bad = keys if damage == "truncate_keys" else emb
    if damage == "float64_emb":
        np.save(emb, np.ones((len(texts), 4), dtype=np.float64))
    else:
        bad.write_bytes(b"" if damage == "empty_emb" else bad.read_bytes()[:200])
    with pytest.raises(EmbedCacheError) as err:
        embed_texts(encoder, texts, tmp_path, encoder_id="e", progress=False)
    assert str(err.value).startswith(f"{bad}: ")
    assert str(err.value).endswith(
        "delete it and the shard's other file (the next run computes those embeddings again)"
    )
    emb.unlink()
    keys.unlink()
    assert embed_texts(encoder, texts, tmp_path, encoder_id="e", progress=False).shape == (50, 4)


def test_build_says_a_damaged_cache_shard_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EmbedCacheError is no ValueError: the build's CLI let it out as a traceback."""
    from lmroute.export import cli, pipeline
    from lmroute.export.embed_cache import EmbedCacheError

    def damaged(cfg: object) -> None:
        raise EmbedCacheError("/c/e/shard-0.emb.npy: unreadable (EOFError: No data left in file); delete it")

    monkeypatch.setattr(pipeline, "build_bundle", damaged)
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["build", "--data-dir", str(empty), "--routers", "random", "--out", str(tmp_path / "b")]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 1
    assert capsys.readouterr().err == (
        "lmroute-export build: /c/e/shard-0.emb.npy: unreadable (EOFError: No data left in file); delete it\n"
    )


def test_signing_leaves_no_temporary_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rename left `.manifest.json.sig.tmp` in the bundle (a file its manifest does not list)."""
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from lmroute.bundle.signing import sign_bundle

    (tmp_path / "manifest.json").write_text("{}\n", encoding="utf-8")

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        sign_bundle(tmp_path, Ed25519PrivateKey.generate())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    monkeypatch.undo()
    assert sign_bundle(tmp_path, Ed25519PrivateKey.generate()).name == "manifest.json.sig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "manifest.json.sig"]
