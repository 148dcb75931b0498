"""The compiled WordPiece fast path (`lmroute.kernels.compiled.WordPieceTokenizer`, used by
`PromptTokenizer`) against HF `tokenizers` on the shipped tokenizer.json: the same ids on every prompt the
project ships, on random ASCII text biased to the rules' edges and on random Unicode text; every code point
the character table (`lmroute.kernels.wordpiece_chars`) does not leave to HF becomes what HF makes of it;
a wrong rule is caught; texts with a character left to HF (its words to HF, the rest fast) still equal
HF's; batched == one by one; the same TokenBatch with the fast path on and off; files of another kind keep
HF only, files that keep accents keep HF for non-ASCII text."""

from __future__ import annotations

import functools
import json
import random
import unicodedata
from collections.abc import Callable, Sequence
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
from lmroute.kernels.wordpiece_chars import ALONE, SPACE, char_outcome

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


@functools.cache
def left_to_hf(c: str) -> bool:
    return char_outcome(c) is None


def fast_takes(fast: WordPieceTokenizer, text: str) -> bool:
    """Whether the fast path should take the text: pure ASCII, or without a character the table leaves to
    HF when the tokenizer reads non-ASCII text."""
    return text.isascii() or (fast.non_ascii and not any(left_to_hf(c) for c in set(text) if not c.isascii()))


def mismatches(fast: WordPieceTokenizer, hf: Tokenizer, texts: Sequence[str]) -> list[tuple[str, list, list]]:
    """(text, fast ids, HF ids) of every text the fast path handles differently from HF (all with the
    template's tokens); fails at once when the fast path claims a text it should leave or leaves one it
    should take (`fast_takes`)."""
    ids, lengths, handled, n_handled = fast.encode(list(texts))
    assert handled.tolist() == [fast_takes(fast, t) for t in texts]
    assert n_handled == int(handled.sum())
    rows = np.split(ids, np.cumsum(lengths)[:-1])
    taken = [t for t, h in zip(texts, handled, strict=True) if h]
    want = [e.ids for e in hf.encode_batch(taken)]
    got = [row.tolist() for row, h in zip(rows, handled, strict=True) if h]
    return [(t, g, w) for t, g, w in zip(taken, got, want, strict=True) if g != w]


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
    assert fast.encode(prompts).n_handled == len(prompts)  # the non-ASCII ones (> 1,000) too


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
    ["", "Hello, World!!", "x[SEP]y", "[cls]", "[C\x01LS]", "a\x0bb", "a\tb", "a##b", "a" * 100, "a" * 101]
    + ["Naïve Café", "ΟΔΟΣ σς", "İı Istanbul", "Straße", "日本語。", "a\u00a0b\u3000c", "a\u0085b", "x\ufffdy\x00z"]
    + ["«quoted» — dash", "Ａｂｃ！", "한국어", "🙂x", "a\u200bb\u200dc", "x\u0301\u0327y", "[SEP]é[CLS]", "é[SEP]"],
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


def small_with_added_tokens(tmp_path: Path, tokens: list[str]) -> tuple[Tokenizer, WordPieceTokenizer]:
    """`small_tokenizer` with `tokens` added as special tokens (by HF): HF's tokenizer and the compiled one."""
    path = small_tokenizer(tmp_path)
    hf = Tokenizer.from_file(str(path))
    hf.add_special_tokens(tokens)
    hf.save(str(path))
    return hf, WordPieceTokenizer.from_tokenizer_json(json.loads(path.read_text()))


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
# Unicode


UNICODE = (
    "é|e\u0301|\u0301|\u0301\u0327|Å|ß|İ|ΟΔΟΣ|Σ|σς|ﬁ|Ａｂｃ|한국어|日本語|中文。|，|\u00a0|\u2003|\u3000|\u0085|\u2028|"
    "\u1680|’|“|”|—|…|¿|«|»|€|°|©|™|🙂|👩\u200d💻|\u200b|\u200d|\ufeff|\u00ad|\ufffd|मनुष्य|עברית|العربية|x\u0308|ǅ|"
    "ı|I\u0307|İstanbul|ǈ|Ǆ|ẞ|ſ|ǰ|ΐ|Ω|K|Å|ﬀ|Ⅻ|ﾊﾝｶｸ|。|、|「」|‹›|–|‐|·|•|¶|§|⌊x⌋|\u0345|\u0f73|ᄀ|\u3131|가나다|µ|"
    "Привет|Ёлка|Ελληνικά|Ա|Ⴀ|Ა|Ꭰ|\U00010400|\U0001e900|\U0001f970|\U0001fae0|\U0001f3f4\U000e0067\U000e0062\U000e007f|"
    "\x00|\x7f|\x9f|\x0b|\x1c|\u200e|\u202e|\ue000|\U000f0000|\uf900|\ufa6e|\U0002f800|\U00020000|\u2e80|\u3400|\u4dc0"
).split("|")
#: Characters the table leaves to HF: unassigned (U+0378, U+FA6E in a CJK range), a mark since Unicode 9.0
#: (U+08D4), changed group since Unicode 8.0 (U+166D, U+1734), decomposed only since Unicode 13.0
#: (U+11938), a format character since Unicode 6.3 (U+2066).
LEFT_TO_HF = ["\u0378", "\ufa6e", "\u08d4", "\u166d", "\u1734", "\U00011938", "\u2066"]
#: Script and class ranges random words are drawn from: Latin-1 and Latin Extended, combining marks,
#: Greek, Cyrillic, Arabic, Devanagari, general punctuation, CJK symbols, kana, CJK, Hangul, fullwidth
#: forms, emoji.
SCRIPTS = [
    (0x80, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0x2000, 0x206F),
    (0x3000, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0xFF00, 0xFFEF),
    (0x1F300, 0x1FAFF),
]


def random_code_point(rng: random.Random) -> str:
    """Any code point but a surrogate (HF cannot take one), most of them in the BMP."""
    while True:
        cp = rng.randrange(0x10000) if rng.random() < 0.8 else rng.randrange(0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def hard_unicode(rng: random.Random, vocab: Sequence[str], wide: Sequence[str]) -> str:
    """Unicode text at the rules' edges: half the time `hard_ascii` text, with fragments put between,
    inside and next to its words: `UNICODE` pieces, random code points, random words from `SCRIPTS`,
    non-ASCII vocabulary tokens (`wide`) in random case, and words of 98-102 characters after normalisation made of
    non-ASCII letters (NFD and marks make a word longer or shorter in code points than in characters)."""
    text = hard_ascii(rng, vocab) if rng.random() < 0.5 else ""
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        if kind == 0:
            frag = "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 3)))
        elif kind == 1:
            frag = "".join(random_code_point(rng) for _ in range(rng.randint(1, 4)))
        elif kind == 2:
            lo, hi = rng.choice(SCRIPTS)
            frag = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))
        elif kind == 3:
            w = rng.choice(wide)
            frag = "".join(c.upper() if rng.random() < 0.5 else c for c in w)
        elif kind == 4:  # unit, characters it becomes
            unit, width = rng.choice([("é", 1), ("Ж", 1), ("e\u0301", 1), ("ß", 1), ("İ", 1), ("ǅ", 1), ("가", 2)])
            frag = unit * (rng.randint(98, 102) // width)
        else:
            frag = rng.choice(LEFT_TO_HF) if rng.random() < 0.3 else rng.choice(["\u00a0", "\u3000", "。", "—"])
        at = rng.randrange(len(text) + 1)
        text = text[:at] + frag + text[at:]
    return text


def hf_words(hf: Tokenizer, text: str) -> list[str]:
    """The words HF's normaliser and pre-tokeniser make of a text."""
    assert hf.normalizer is not None and hf.pre_tokenizer is not None
    return [w for w, _ in hf.pre_tokenizer.pre_tokenize_str(hf.normalizer.normalize_str(text))]


def table_words(c: str) -> list[str]:
    """The words the table makes of "a" + c + "b"."""
    words, word = [], "a"
    for ch, kind in char_outcome(c) or []:
        if kind in (SPACE, ALONE) and word:
            words.append(word)
            word = ""
        if kind == ALONE:
            words.append(ch)
        elif kind != SPACE:
            word += ch
    return [*words, word + "b"]


@pytest.fixture(scope="module")
def code_points(fast: WordPieceTokenizer) -> tuple[list[str], list[str]]:
    """Every code point but the surrogates, as (the ones the fast path takes, the ones it leaves to HF)."""
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    handled = fast.encode(chars).handled
    taken = [c for c, h in zip(chars, handled.tolist(), strict=True) if h]
    left = [c for c, h in zip(chars, handled.tolist(), strict=True) if not h]
    return taken, left


def test_every_code_point_the_table_takes_is_what_hf_makes_of_it(
    hf: Tokenizer, code_points: tuple[list[str], list[str]]
) -> None:
    """Between two letters (so that a word's character, one alone, a space and nothing differ), every code
    point the fast path takes becomes the words HF makes of it; the ones it leaves are unassigned in
    Python's `unicodedata` or about 2,100 others (the rules in lmroute/kernels/wordpiece_chars.py)."""
    taken, left = code_points
    assert len(taken) > 280_000
    bad = [(hex(ord(c)), w, table_words(c)) for c in taken if (w := hf_words(hf, f"a{c}b")) != table_words(c)]
    assert not bad, f"{len(bad)} code points differ; first: {bad[:5]!r}"
    assert all(char_outcome(c) is None for c in left)
    assigned = [c for c in left if unicodedata.category(c) != "Cn"]
    assert len(assigned) < 2500
    assert set(LEFT_TO_HF) <= set(left)


def test_every_code_point_the_table_takes_gives_hf_ids(
    fast: WordPieceTokenizer, hf: Tokenizer, code_points: tuple[list[str], list[str]]
) -> None:
    taken, left = code_points
    texts = [f"a{c}b" for c in taken]
    got = fast.encode(texts)
    assert got.n_handled == len(texts)
    want = hf.encode_batch(texts)
    assert got.lengths.tolist() == [len(e.ids) for e in want]
    assert np.array_equal(got.ids, np.concatenate([e.ids for e in want]))
    assert fast.encode([f"a{c}b" for c in left]).n_handled == 0


def test_random_unicode_matches_hf(fast: WordPieceTokenizer, hf: Tokenizer, tokenizer_path: Path) -> None:
    """Random Unicode text: the fast path gives HF's ids on every text it takes (about half of them), and
    `PromptTokenizer` on every text (the words of the others with a character left to HF go to HF)."""
    rng = random.Random(20261204)
    vocab = sorted(hf.get_vocab())
    ascii_vocab, wide = [t for t in vocab if t.isascii()], [t for t in vocab if not t.isascii()]
    texts = [hard_unicode(rng, ascii_vocab, wide) for _ in range(20_000)]
    bad = mismatches(fast, hf, texts)
    assert not bad, f"{len(bad)} of {len(texts)} texts differ; first: {bad[0]!r}"
    taken = fast.encode(texts).n_handled
    assert 0.4 * len(texts) < taken < len(texts)
    tok = PromptTokenizer(tokenizer_path, max_tokens=1 << 30)
    got = tok.token_ids(texts, chunk=256)
    want = [e.ids for e in hf.encode_batch(texts)]
    bad_rows = [(t, g, w) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not bad_rows, f"{len(bad_rows)} of {len(texts)} texts differ; first: {bad_rows[0]!r}"


@pytest.mark.parametrize(
    "text",
    [
        "é" * 100,
        "é" * 101,
        "e\u0301" * 100,  # 200 code points, 100 characters once the marks are dropped
        "e\u0301" * 101,
        "ß" * 100 + "\u200b",  # a dropped character does not count
        "ß" * 101,
        "가" * 50,  # 100 jamo
        "가" * 51,
        "İ" * 100,
        "ǅ" * 101,
        "Ж" * 99 + "\u00a0" + "Ж" * 99,
        "日" * 150,
        "x" + "\u0301" * 300,
    ],
)
def test_words_are_counted_in_characters(fast: WordPieceTokenizer, hf: Tokenizer, text: str) -> None:
    assert mismatches(fast, hf, [text]) == []
    assert fast.encode([text]).n_handled == 1


def test_added_tokens_are_matched_in_every_text_layout(tmp_path: Path) -> None:
    """Added tokens with non-ASCII characters are matched on the raw text whatever Python's layout of it
    (1, 2 or 4 bytes per character), longest first, before normalisation."""
    hf, fast = small_with_added_tokens(tmp_path, ["<é>", "é", "日本", "🙂x", "[Ü]"])
    rng = random.Random(8)
    alphabet = ["a", "b", "<", ">", "é", "É", "e\u0301", "日", "本", "🙂", "x", "[", "]", "Ü", "ü", " ", ",", "\u3000"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(5000)]
    assert mismatches(fast, hf, texts) == []
    assert fast.encode(texts).n_handled == len(texts)


@pytest.mark.parametrize("max_tokens,head_end", [(16, 5), (40, 1), (40, 40)])
def test_cut_as_read_never_starts_a_tail_inside_an_added_token(tmp_path: Path, max_tokens: int, head_end: int) -> None:
    """`encode_cut` starts a long text's tail after a space, a punctuation mark or an ideograph, but never
    after a character an added token holds (here a comma, a full stop, an ideograph, brackets): its kept ids
    are HF's ids of the whole text, cut, for long random texts dense in those characters."""
    hf, fast = small_with_added_tokens(tmp_path, ["a,b", "x.y", "日本", "[Ü]", "!!"])
    rng = random.Random(11)
    alphabet = ["a", "b", "c", "abc", " ", " ", ",", ".", "!", "x", "y", "日", "本", "語", "[", "]", "Ü"]
    alphabet += ["\n", "\u3000"]  # a line break; an ideographic space (a space outside ASCII)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(50, 1500))) for _ in range(400)]
    # at (16, 5) the first try starts 60 characters from the end: here right after the first character
    # of an added token, a boundary were it not the token's, which would give the kept tail "!" (or
    # "本") in place of "!!" (or "日本")
    texts += ["c " * 300 + " " + token + "b" * 51 + "," * 8 for token in ("!!", "日本", "a,b", "x.y")]
    got = fast.encode_cut(texts, max_tokens=max_tokens, head_end=head_end)
    assert got.n_handled == len(texts)
    rows = np.split(got.ids, np.cumsum(got.lengths)[:-1])
    cut = 0
    for text, row, truncated in zip(texts, rows, got.truncated.tolist(), strict=True):
        ids = hf.encode(text).ids
        assert truncated == (len(ids) > max_tokens)
        if len(ids) > max_tokens:
            ids = ids[:head_end] + ids[len(ids) - (max_tokens - head_end) :]
            cut += 1
        assert row.tolist() == ids, text
    assert cut > 300


def test_non_ascii_prompts_are_taken_by_the_fast_path(fast: WordPieceTokenizer) -> None:
    """The shipped and ghz prompts that hold non-ASCII text, and texts in other scripts, all go through the
    fast path (`PromptTokenizer._fast_rows` then makes no HF call)."""
    ghz = json.loads((Path(__file__).resolve().parents[2] / "benchmarks/ghz/prompts.json").read_text("utf-8"))
    texts = [t for t in shipped_prompts() + [p["text"] for p in ghz] if not t.isascii()]
    texts += ["日本語のテキストです。", "한국어 텍스트입니다", "Привет, мир! Ёлка", "Ελληνικά κείμενα", "中文。，"]
    assert len(texts) > 1000
    assert fast.encode(texts).n_handled == len(texts)


@pytest.mark.parametrize("change", [{"strip_accents": False}, {"handle_chinese_chars": False}])
def test_files_that_keep_accents_or_cjk_keep_hf_for_non_ascii_text(
    spec: dict, tmp_path: Path, change: dict[str, bool]
) -> None:
    other = json.loads(json.dumps(spec))
    other["normalizer"].update(change)
    fast = WordPieceTokenizer.from_tokenizer_json(other)
    assert not fast.non_ascii
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(other), encoding="utf-8")
    hf = Tokenizer.from_file(str(path))
    hf.no_padding()
    hf.no_truncation()
    texts = MIXED + UNICODE + [" ".join(UNICODE)]
    assert mismatches(fast, hf, texts) == []
    tok = PromptTokenizer(path, max_tokens=1 << 30)
    assert tok.fast_path
    assert tok.token_ids(texts) == [e.ids for e in hf.encode_batch(texts)]


def hard_mixed(rng: random.Random, vocab: Sequence[str]) -> str:
    """`hard_ascii` text with non-ASCII characters (some left to HF) put between, inside and next to its
    words."""
    text = hard_ascii(rng, vocab)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + "".join(rng.choice(UNICODE + LEFT_TO_HF) for _ in range(rng.randint(1, 3))) + text[at:]
    return text


@pytest.mark.parametrize("min_fast_share", [0.0, 0.5])
def test_texts_with_characters_left_to_hf_match_hf(
    tokenizer_path: Path, hf: Tokenizer, monkeypatch: pytest.MonkeyPatch, min_fast_share: float
) -> None:
    """A text with a character the fast path leaves to HF is cut at ASCII whitespace, its words with such
    a character go to HF and the others the fast path (every text with share 0, those mostly fast with the
    default): every row still equals HF's on the whole text."""
    monkeypatch.setattr(PromptTokenizer, "_MIN_FAST_SHARE", min_fast_share)
    tok = PromptTokenizer(tokenizer_path, max_tokens=1 << 30)
    assert tok.fast_path
    rng = random.Random(99)
    vocab = sorted(t for t in hf.get_vocab() if t.isascii())
    shipped = [t for t in shipped_prompts() if not t.isascii()]
    texts = shipped + [hard_mixed(rng, vocab) for _ in range(5000)] + UNICODE + LEFT_TO_HF + [" ".join(UNICODE)]
    texts += [" ".join(rng.sample(UNICODE + LEFT_TO_HF, 12)) for _ in range(500)]
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
    "unassigned \u0378 here",
    "a mark of Unicode 9 \u08d4 x",
]


def test_texts_with_a_character_left_to_hf_are_unhandled(fast: WordPieceTokenizer) -> None:
    ids, lengths, handled, _ = fast.encode(MIXED)
    assert handled.tolist() == [True] * 8 + [False] * 2
    assert lengths[~handled].tolist() == [0, 0]
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


@pytest.mark.parametrize("max_tokens,truncation", [(256, Truncation(rule="head_tail", head_tokens=96)), (16, HEAD)])
def test_long_texts_are_cut_as_read_and_as_hf_cuts_them(
    tokenizer_path: Path, max_tokens: int, truncation: Truncation, long_texts: Callable[[int, int], list[str]]
) -> None:
    """The compiled path reads a long text's tail and head only (`encode_cut`); the batch is HF's whole
    text cut by the rule."""
    on = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation)
    off = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation, fast=False)
    texts = long_texts(7, 40)
    a, b = on.tokenize(texts), off.tokenize(texts)
    assert a.truncated.sum() > 20
    for field in ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field


class CountingHF:
    """HF's tokenizer, counting the characters of the texts it is given."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.chars = tok, 0

    def encode(self, text: str, **kw: object):  # type: ignore[no-untyped-def]
        self.chars += len(text)
        return self.tok.encode(text, **kw)

    def encode_batch(self, texts: list[str], **kw: object):  # type: ignore[no-untyped-def]
        self.chars += sum(map(len, texts))
        return self.tok.encode_batch(texts, **kw)


def long_left_to_hf(rng: random.Random, vocab: Sequence[str]) -> str:
    """A text of 300-30,000 characters from a random mix of pieces: vocabulary words, words holding a
    character left to HF, CJK runs, combining marks, words of 99-150 characters, whitespace runs, control
    characters, other scripts, runs of 300-3,000 characters without whitespace. The mixes give anywhere
    from ~1 to ~150 characters per id, so a window falls short, just holds its ids, grows or meets the other."""
    pieces = [
        lambda: rng.choice(vocab),
        lambda: rng.choice(vocab) + rng.choice(LEFT_TO_HF) + rng.choice(vocab).lstrip("#"),
        lambda: rng.choice(LEFT_TO_HF) * rng.randint(1, 3),
        lambda: "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 12))),
        lambda: rng.choice("eao") + "\u0301" * rng.randint(1, 5) + rng.choice(["", "\u0378"]),
        lambda: "".join(rng.choice("abcxyz") for _ in range(rng.randint(99, 150))) + rng.choice(["", "\u0378"]),
        lambda: "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(2, 30))),
        lambda: "".join(rng.choice(CONTROL) for _ in range(rng.randint(1, 4))),
        lambda: rng.choice(UNICODE),
        lambda: "".join(rng.choice("ab\u0378-日") for _ in range(rng.randint(300, 3000))),
    ]
    weights = [rng.random() ** 3 for _ in pieces]
    target = int(10 ** rng.uniform(2.5, 4.5))
    parts, size = [], 0
    while size < target:
        parts.append(rng.choices(pieces, weights)[0]())
        parts.append(rng.choice([" ", " ", " ", "", "\n", "\t"]))
        size += len(parts[-2]) + 1
    return "".join(parts)


def at_the_window_edge(rng: random.Random) -> str:
    """Words of one id each ([UNK]: a character left to HF in them) of 2-40 characters with a space, most of
    6-9 (the first windows' 8 characters per id): a window ends a word or two off the ids it needs."""
    width = rng.randint(6, 9) if rng.random() < 0.75 else rng.randint(2, 40)
    words = ["\u0378" + "x" * (width - 1 + rng.choice([0, 0, 0, 1, -1])) for _ in range(rng.randint(20, 900))]
    return rng.choice(["", "lead ", "\u0378 "]) + " ".join(words) + rng.choice(["", " ", " end"])


@pytest.mark.parametrize(
    "max_tokens,truncation",
    [
        (256, Truncation(rule="head_tail", head_tokens=96)),
        (16, HEAD),
        (24, Truncation(rule="tail")),
        (40, Truncation(rule="head_tail", head_tokens=3)),
        (64, Truncation(rule="head_tail", head_tokens=70)),  # more than the budget: the head only
    ],
)
def test_long_texts_left_to_hf_are_read_from_windows_as_hf_reads_them_whole(
    tokenizer_path: Path, hf: Tokenizer, max_tokens: int, truncation: Truncation
) -> None:
    """A long text the compiled path leaves to HF is read from a head and a tail window cut at ASCII
    whitespace (`PromptTokenizer._windowed_rows`): every field of the batch equals HF's on the whole text,
    cut by the rule, for hostile long texts, texts at a window's edge and short ones in the same batches,
    and most rows are read from windows (shorter than the whole text's)."""
    on = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation)
    off = PromptTokenizer(tokenizer_path, max_tokens=max_tokens, truncation=truncation, fast=False)
    assert on.fast_path
    rng = random.Random(max_tokens)
    vocab = sorted(t for t in hf.get_vocab() if t.isascii())
    texts = [long_left_to_hf(rng, vocab) for _ in range(90)] + [at_the_window_edge(rng) for _ in range(60)]
    texts += [hard_mixed(rng, vocab) for _ in range(60)] + shipped_prompts()[:20]
    texts += [("a" * 99 + "\u0378 ") * 198, "\u0378" + "x" * 5000 + " " + "wor\u0378d and " * 2000]
    rng.shuffle(texts)
    left = ~on._fast.encode_cut(texts, max_tokens=max_tokens, head_end=on._head_end).handled  # type: ignore[union-attr]
    assert left.sum() > 120
    at = 0
    while at < len(texts):
        batch = texts[at : at + rng.choice([1, 2, 5, 16])]
        at += len(batch)
        a, b = on.tokenize(batch), off.tokenize(batch)
        for field in ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and np.array_equal(x, y), (field, batch)
    cut = int(off.tokenize(texts).truncated[left].sum())
    windowed = sum(
        int(on._windowed_rows([t])[1][0]) < len(hf.encode(t).ids)
        for t, lt in zip(texts, left.tolist(), strict=True)
        if lt
    )
    assert cut > 100 and windowed > 60, (cut, windowed)


@pytest.mark.parametrize(
    "text,share",
    [
        ("wor\u0378d and " * 2000, 0.2),  # a word for HF in each 3
        ("\u0378x\u0378 " * 5000, 0.2),  # every word for HF: the text went to HF whole
        (("a" * 99 + "\u0378 ") * 800, 0.75),  # 100 characters an id: the windows grow once
    ],
)
def test_hf_reads_only_the_windows_of_a_long_text(tokenizer_path: Path, text: str, share: float) -> None:
    """A 20,000-80,000 character text left to HF: HF reads under `share` of it, and the batch is HF's whole
    text cut (head_tail:96 of 256, the shipped bundles' rule)."""
    rule = Truncation(rule="head_tail", head_tokens=96)
    on = PromptTokenizer(tokenizer_path, max_tokens=256, truncation=rule)
    off = PromptTokenizer(tokenizer_path, max_tokens=256, truncation=rule, fast=False)
    counter = CountingHF(on._tok)
    on._tok = counter  # type: ignore[assignment]
    a, b = on.tokenize([text, "short"]), off.tokenize([text, "short"])
    assert a.truncated.tolist() == [True, False]
    for field in ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert counter.chars < share * len(text), f"HF read {counter.chars:,} characters of {len(text):,}"


@pytest.mark.parametrize("fast_path", [True, False])
def test_a_surrogate_is_refused_naming_the_text_and_the_character(tokenizer_path: Path, fast_path: bool) -> None:
    """A lone surrogate is not Unicode text: HF raised "TextInputSequence must be str"; tokenize says which
    text and which character."""
    tok = PromptTokenizer(tokenizer_path, max_tokens=64, fast=fast_path)
    assert tok.fast_path == fast_path
    with pytest.raises(ValueError, match=r"texts\[1\] holds the surrogate code point U\+D800 at character 4"):
        tok.tokenize(["fine", "abc \ud800 def"])
    with pytest.raises(ValueError, match=r"texts\[0\] holds the surrogate code point U\+DFFF at character 0"):
        tok.tokenize(["\udfff" + "word " * 3000])


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
