"""The compiled WordPiece fast path (`lmroute.kernels.compiled.WordPieceTokenizer`, used by
`PromptTokenizer`) against HF `tokenizers` on the shipped tokenizer.json: the same ids on every prompt the
project ships and on random ASCII text biased to the rules' edges; a wrong rule is caught; non-ASCII texts
(ASCII runs fast, the rest HF) still equal HF's; batched == one by one; the same TokenBatch with the fast
path on and off; files of another kind keep HF only."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from lmroute.bundle.encoder import PromptTokenizer
from lmroute.bundle.truncation import HEAD, Truncation
from lmroute.export.data import load_calibration_prompts, load_comparisons
from lmroute.export.encoder_export import default_model_dir
from lmroute.export.evalsets import load_eval
from lmroute.kernels.compiled import UnsupportedTokenizerError, WordPieceTokenizer

DATA = Path(__file__).resolve().parents[2] / "data"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
CONTROL = "".join(map(chr, [*range(0x20), 0x7F]))


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    return default_model_dir() / "tokenizer.json"


@pytest.fixture(scope="module")
def spec(tokenizer_path: Path) -> dict:
    return json.loads(tokenizer_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf(tokenizer_path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def fast(spec: dict) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_tokenizer_json(spec)


def mismatches(fast: WordPieceTokenizer, hf: Tokenizer, texts: Sequence[str]) -> list[tuple[str, list, list]]:
    """(text, fast ids, HF ids) of every text the fast path handles differently from HF (all with the
    template's tokens); fails at once when the fast path claims a non-ASCII text or leaves an ASCII one."""
    ids, lengths, handled, _ = fast.encode(list(texts))
    assert handled.tolist() == [t.isascii() for t in texts]
    rows = np.split(ids, np.cumsum(lengths)[:-1])
    ascii_texts = [t for t in texts if t.isascii()]
    want = [e.ids for e in hf.encode_batch(ascii_texts)]
    got = [row.tolist() for row, h in zip(rows, handled, strict=True) if h]
    return [(t, g, w) for t, g, w in zip(ascii_texts, got, want, strict=True) if g != w]


@functools.cache
def _shipped_prompts() -> tuple[str, ...]:
    prompts = list(load_comparisons(DATA).comparisons.prompts) + load_calibration_prompts(DATA)
    for name, limit in (("mt_bench", None), ("gsm8k", None), ("mmlu", 3000)):
        prompts += load_eval(name, DATA, limit=limit).prompts
    return tuple(prompts)


def shipped_prompts() -> list[str]:
    """The training, calibration and eval prompts (mmlu: 3000 of them, evenly spread)."""
    return list(_shipped_prompts())


def hard_ascii(rng: random.Random, vocab: Sequence[str]) -> str:
    """One ASCII text from fragments at the rules' edges: vocabulary words in random case, "##" pieces,
    control bytes, every whitespace, punctuation runs, words of 99/100/101 characters (some made that
    long only by control bytes inside), added tokens whole, broken and lower-cased, digits."""
    parts: list[str] = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.randrange(12)
        if kind == 0:
            w = rng.choice(vocab)
            parts.append("".join(c.upper() if rng.random() < 0.3 else c for c in w))
        elif kind == 1:
            parts.append(rng.choice(vocab).replace("##", rng.choice(["##", "", "#"])))
        elif kind == 2:
            parts.append("".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 3))))
        elif kind == 3:
            parts.append("".join(rng.choice(" \t\n\r\x0b\x0c") for _ in range(rng.randint(1, 4))))
        elif kind == 4:
            parts.append("".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 6))))
        elif kind == 5:
            n = rng.choice([98, 99, 100, 101, 102, 150])
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789") for _ in range(n))
            if rng.random() < 0.5:  # control bytes inside a word vanish, so it is shorter than it looks
                at = rng.randrange(len(w) + 1)
                w = w[:at] + rng.choice(CONTROL.replace("\t", "").replace("\n", "").replace("\r", "")) + w[at:]
            parts.append(w)
        elif kind == 6:
            s = rng.choice(SPECIALS)
            parts.append(rng.choice([s, s.lower(), s[:-1], s[1:], "[" + s, s + "]", s[:2] + "\x01" + s[2:]]))
        elif kind == 7:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 15))))
        elif kind == 8:
            parts.append("".join(rng.choice("qxzjkvw") for _ in range(rng.randint(1, 20))))
        elif kind == 9:
            parts.append("".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(1, 8))))
        elif kind == 10:
            parts.append("##" + rng.choice(vocab))
        else:
            parts.append(rng.choice(vocab) + rng.choice(vocab).lstrip("#"))
    return rng.choice(["", " ", "\n", "\t"]).join(parts)


# ---------------------------------------------------------------------------------------------
# parity with HF


def test_every_shipped_prompt_matches_hf(fast: WordPieceTokenizer, hf: Tokenizer) -> None:
    prompts = shipped_prompts()
    assert len(prompts) > 9000
    bad = mismatches(fast, hf, prompts)
    assert not bad, f"{len(bad)} of {len(prompts)} prompts differ; first: {bad[0]!r}"
    assert sum(p.isascii() for p in prompts) > 0.8 * len(prompts)


def test_random_ascii_at_the_edges_matches_hf(fast: WordPieceTokenizer, hf: Tokenizer) -> None:
    rng = random.Random(20261203)
    vocab = [t for t in hf.get_vocab() if t.isascii()]
    vocab.sort()
    texts = ["", " ", "\t\n\r ", "\x00\x01\x7f", "a" * 100, "a" * 101, "a" * 99 + "\x01b", "[SEP]" * 3]
    texts += [hard_ascii(rng, vocab) for _ in range(20_000)]
    bad = mismatches(fast, hf, texts)
    assert not bad, f"{len(bad)} of {len(texts)} texts differ; first: {bad[0]!r}"


@pytest.mark.parametrize(
    "text",
    ["", "Hello, World!!", "x[SEP]y", "[cls]", "[C\x01LS]", "a\x0bb", "a\tb", "a##b", "a" * 100, "a" * 101],
)
def test_rules_one_by_one(fast: WordPieceTokenizer, hf: Tokenizer, text: str) -> None:
    assert mismatches(fast, hf, [text]) == []


def test_a_wrong_rule_is_caught(spec: dict, hf: Tokenizer) -> None:
    """The corpus above has teeth: a tokenizer with one rule changed disagrees with HF on it."""
    vocab = sorted(hf.get_vocab(), key=hf.get_vocab().__getitem__)
    rng = random.Random(7)
    texts = [hard_ascii(rng, [t for t in vocab if t.isascii()]) for _ in range(2000)]
    right = WordPieceTokenizer.from_tokenizer_json(spec)
    assert mismatches(right, hf, texts) == []
    wrong = [
        WordPieceTokenizer(
            vocab,
            unk_id=100,
            max_chars=99,
            literals=[(s, vocab.index(s)) for s in SPECIALS],
            front_ids=[101],
            back_ids=[102],
        ),
        WordPieceTokenizer(vocab, unk_id=100, max_chars=100, literals=[], front_ids=[101], back_ids=[102]),
    ]
    for tok in wrong:
        assert mismatches(tok, hf, texts)


def small_tokenizer(tmp_path: Path, *, prefix: str = "##", max_chars: int = 6) -> Path:
    """A tiny WordPiece tokenizer.json made by HF itself: most words have a part that matches nothing."""
    tokens = "[UNK] [CLS] [SEP] ab a b c abc , ! 1".split() + [prefix + t for t in ("b", "c", "bc", "1")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=prefix, max_input_chars_per_word=max_chars)
    )
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]"])
    path = tmp_path / f"small_{max_chars}.json"
    tok.save(str(path))
    return path


@pytest.mark.parametrize("prefix", ["##", "@@"])
def test_words_with_an_unmatched_part_are_unknown_as_hf_says(tmp_path: Path, prefix: str) -> None:
    path = small_tokenizer(tmp_path, prefix=prefix)
    hf = Tokenizer.from_file(str(path))
    fast = WordPieceTokenizer.from_tokenizer_json(json.loads(path.read_text()))
    rng = random.Random(3)
    texts = ["".join(rng.choice("abcABd1,! \t\x01[UNK]") for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    assert mismatches(fast, hf, texts) == []
    assert any(0 in e.ids[1:-1] for e in hf.encode_batch(texts))  # [UNK] (id 0) does occur


# ---------------------------------------------------------------------------------------------
# non-ASCII, batching, PromptTokenizer


UNICODE = (
    "é|e\u0301|\u0301|\u0301\u0327|Å|ß|İ|ΟΔΟΣ|Σ|σς|ﬁ|Ａｂｃ|한국어|日本語|中文。|，|\u00a0|\u2003|\u3000|\u0085|\u2028|"
    "\u1680|’|“|”|—|…|¿|«|»|€|°|©|™|🙂|👩\u200d💻|\u200b|\u200d|\ufeff|\u00ad|\ufffd|मनुष्य|עברית|العربية|x\u0308|ǅ"
).split("|")


def hard_mixed(rng: random.Random, vocab: Sequence[str]) -> str:
    """`hard_ascii` text with non-ASCII characters put between, inside and next to its words."""
    text = hard_ascii(rng, vocab)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 3))) + text[at:]
    return text


@pytest.mark.parametrize("min_ascii_share", [0.0, 0.5])
def test_texts_with_non_ascii_match_hf(
    tokenizer_path: Path, hf: Tokenizer, monkeypatch: pytest.MonkeyPatch, min_ascii_share: float
) -> None:
    """Non-ASCII texts are cut at ASCII whitespace, their ASCII runs go the fast path and the rest to HF
    (every text with share 0, the mostly-ASCII ones with the default): every row still equals HF's on the
    whole text."""
    monkeypatch.setattr(PromptTokenizer, "_MIN_ASCII_SHARE", min_ascii_share)
    tok = PromptTokenizer(tokenizer_path, max_tokens=1 << 30)
    assert tok.fast_path
    rng = random.Random(99)
    vocab = sorted(t for t in hf.get_vocab() if t.isascii())
    shipped = [t for t in shipped_prompts() if not t.isascii()]
    texts = shipped + [hard_mixed(rng, vocab) for _ in range(5000)] + UNICODE + [" ".join(UNICODE)]
    assert len(shipped) > 300
    got = tok.token_ids(texts, chunk=256)
    want = [e.ids for e in hf.encode_batch(texts)]
    bad = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ; first: {bad[0]!r}"


MIXED = [
    "plain ascii",
    "naïve café",
    "日本語のテキスト",
    "",
    "emoji 🙂 here",
    "tab\there",
    "Ünïcode [SEP] x",
    "z" * 300,
]


def test_non_ascii_texts_are_left_to_hf(fast: WordPieceTokenizer) -> None:
    ids, lengths, handled, _ = fast.encode(MIXED)
    assert handled.tolist() == [t.isascii() for t in MIXED]
    assert lengths[~handled].tolist() == [0] * int((~handled).sum())
    assert ids.shape[0] == int(lengths.sum())


def test_batched_equals_one_by_one(fast: WordPieceTokenizer) -> None:
    rng = random.Random(11)
    texts = shipped_prompts()[:500] + MIXED
    rng.shuffle(texts)
    ids, lengths, handled, _ = fast.encode(texts)
    one = [fast.encode([t]) for t in texts]
    assert np.array_equal(ids, np.concatenate([o[0] for o in one]))
    assert lengths.tolist() == [int(o[1][0]) for o in one]
    assert handled.tolist() == [bool(o[2][0]) for o in one]


def test_bad_items_raise_type_error(fast: WordPieceTokenizer) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is not a str"):
        fast.encode(["ok", b"bytes"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "max_tokens,truncation",
    [(256, HEAD), (8, Truncation(rule="tail")), (16, Truncation(rule="head_tail", head_tokens=3))],
)
def test_prompt_tokenizer_gives_the_same_batch_fast_or_not(
    tokenizer_path: Path, max_tokens: int, truncation: Truncation
) -> None:
    on = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation)
    off = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation, fast=False)
    assert on.fast_path and not off.fast_path
    rng = random.Random(5)
    prompts = shipped_prompts()
    for size in (1, 2, 7, 64):
        batch = rng.sample(prompts, size - 1) + [rng.choice(MIXED)]
        a, b = on.tokenize(batch), off.tokenize(batch)
        for field in ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and np.array_equal(x, y), field
    assert on.token_ids(MIXED) == off.token_ids(MIXED)


def test_environment_variable_turns_the_fast_path_off(tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMROUTE_FAST_TOKENIZER", "0")
    assert not PromptTokenizer(tokenizer_path, max_tokens=64).fast_path


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda s: s["normalizer"].update(lowercase=False), "clean\\+lower"),
        (lambda s: s["normalizer"].update(clean_text=False), "clean\\+lower"),
        (lambda s: s.update(normalizer={"type": "Lowercase"}), "BertNormalizer"),
        (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "BertPreTokenizer"),
        (lambda s: s["added_tokens"][2].update(normalized=True), "normalized"),
        (lambda s: s["post_processor"]["single"][0]["SpecialToken"].update(type_id=1), "type id"),
    ],
)
def test_other_kinds_keep_hf_only(spec: dict, tmp_path: Path, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    other = json.loads(json.dumps(spec))
    change(other)
    with pytest.raises(UnsupportedTokenizerError, match=reason):
        WordPieceTokenizer.from_tokenizer_json(other)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(other), encoding="utf-8")
    tok = PromptTokenizer(path, max_tokens=64)
    assert not tok.fast_path and reason.replace("\\", "") in tok.fast_path_note
    ref = Tokenizer.from_file(str(path))
    ref.no_padding()
    assert tok.token_ids(["Hello World [SEP]"]) == [ref.encode("Hello World [SEP]").ids]
