"""StaticEncoder and its distillation, on a tiny real ONNX encoder (`write_toy_encoder`) and the real
all-MiniLM-L6-v2 tokenizer: the distilled table against a NumPy reference, embeddings against the
definition (normalised mean of table rows), batched == single, determinism and refusals."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.encoder import EncoderModelError, OnnxEncoder, PromptTokenizer
from lmroute.bundle.static_encoder import StaticEncoder
from lmroute.bundle.truncation import Truncation
from lmroute.export.encoder_export import default_model_dir, write_toy_encoder
from lmroute.export.static_distill import distill_static_table, ensure_static_encoder

DIM = 16
TEXTS = [
    "a fairly long prompt about the history of the roman empire and its roads",
    "",
    "hi",
    "cat dog red blue tree",
    "¿Qué tal? 日本語 🚀",
    "def f(x):\n    return x * 2",
    "the the the the the the the the the the the the the the the the the the the the the the the the",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
]
COUNT_TEXTS = ["the cat sat on the mat", "the dog ate the bone", "a red tree", "the the the"]


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    return default_model_dir() / "tokenizer.json"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path) -> OnnxEncoder:
    model = write_toy_encoder(tmp_path_factory.mktemp("toy") / "model.onnx", dim=DIM, seed=3)
    return OnnxEncoder(model, tokenizer_path, max_tokens=32, truncation=Truncation.parse("head_tail:8"))


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory, source: OnnxEncoder) -> Path:
    out, _ = ensure_static_encoder(
        source, "toy", tmp_path_factory.mktemp("cache"), lambda: COUNT_TEXTS, "test texts", dim=8, sif_a=1e-2
    )
    return out


@pytest.fixture(scope="module")
def encoder(static_dir: Path, source: OnnxEncoder) -> StaticEncoder:
    return StaticEncoder(
        static_dir / "table.npy", static_dir / "tokenizer.json", max_tokens=32, truncation=source.truncation
    )


def test_table_is_the_sif_weighted_principal_projection(source: OnnxEncoder) -> None:
    made = distill_static_table(source, COUNT_TEXTS, source_name="toy", count_texts_from="t", dim=8, sif_a=1e-2)
    tok = source.tokenizer
    rows = np.array([[*tok.front_ids, t, *tok.back_ids] for t in range(tok.vocab_size)])
    from lmroute.bundle.encoder import TokenBatch

    tb = TokenBatch(
        rows, np.ones_like(rows), np.zeros_like(rows), np.full(len(rows), 3), np.zeros(len(rows), dtype=bool)
    )
    x = source.embed(tb).astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:8].T
    # Components are defined up to sign: compare |cos| per component.
    got = made.table.astype(np.float64)
    counts = np.zeros(tok.vocab_size)
    for ids in tok.token_ids(COUNT_TEXTS):
        np.add.at(counts, ids, 1)
    weight = 1e-2 / (1e-2 + (counts + 1) / (counts.sum() + counts.size))
    unweighted = got / weight[:, None]
    for k in range(8):
        cos = abs(unweighted[:, k] @ proj[:, k]) / (np.linalg.norm(unweighted[:, k]) * np.linalg.norm(proj[:, k]))
        assert cos > 1 - 1e-5, k
    assert made.table.shape == (tok.vocab_size, 8) and made.table.dtype == np.float32
    assert made.distillation.n_texts == len(COUNT_TEXTS) and made.distillation.n_tokens == int(counts.sum())
    # Frequent tokens weigh less: "the" is rarer-weighted than an unseen token.
    the_id = tok.token_ids(["the"])[0][len(tok.front_ids)]
    assert weight[the_id] < weight.max()


def test_distillation_is_deterministic(source: OnnxEncoder) -> None:
    a = distill_static_table(source, COUNT_TEXTS, source_name="toy", count_texts_from="t", dim=8)
    b = distill_static_table(source, COUNT_TEXTS, source_name="toy", count_texts_from="t", dim=8)
    assert np.array_equal(a.table, b.table) and a.distillation == b.distillation


def test_embedding_is_the_normalised_mean_of_table_rows(encoder: StaticEncoder, static_dir: Path) -> None:
    table = np.load(static_dir / "table.npy").astype(np.float64)
    tokens = encoder.tokenize(TEXTS)
    got = encoder.embed(tokens)
    for i in range(len(TEXTS)):
        ids = tokens.input_ids[i, : tokens.n_tokens[i]]
        mean = table[ids].mean(axis=0)
        assert np.allclose(got[i], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_batched_equals_single_exactly(encoder: StaticEncoder) -> None:
    rng = np.random.default_rng(0)
    single = np.stack([encoder.embed(encoder.tokenize([t]))[0] for t in TEXTS])
    for _ in range(20):
        idx = rng.permutation(len(TEXTS))[: rng.integers(1, len(TEXTS) + 1)]
        batch = encoder.embed(encoder.tokenize([TEXTS[i] for i in idx]))
        assert np.array_equal(batch, single[idx])
    assert np.array_equal(encoder.encode(TEXTS, batch_size=3), single)


def test_long_text_is_cut_by_the_rule(encoder: StaticEncoder) -> None:
    long = " ".join(["alpha"] * 100) + " omega"
    tokens = encoder.tokenize([long])
    assert tokens.n_tokens[0] == 32 and bool(tokens.truncated[0])
    assert encoder.embed(tokens).shape == (1, 8)


@pytest.mark.parametrize("rule", ["head", "tail", "head_tail:8", "head_tail:40"])
@pytest.mark.parametrize("max_tokens", [3, 12, 32])
def test_texts_embedded_in_one_call_equal_tokenize_then_embed(static_dir: Path, rule: str, max_tokens: int) -> None:
    enc = StaticEncoder(
        static_dir / "table.npy",
        static_dir / "tokenizer.json",
        max_tokens=max_tokens,
        truncation=Truncation.parse(rule),
    )
    texts = [*TEXTS, " ".join(f"w{i}" for i in range(60)), "x" * 300]
    tokens = enc.tokenize(texts)
    got = enc.embed_texts(texts)
    assert got is not None
    assert got.truncated.any() and not got.truncated.all()
    assert np.array_equal(got.embeddings, enc.embed(tokens))
    assert np.array_equal(got.n_tokens, tokens.n_tokens)
    assert np.array_equal(got.truncated, tokens.truncated)
    for i, text in enumerate(texts):
        one = enc.embed_texts([text])
        assert one is not None and np.array_equal(one.embeddings[0], got.embeddings[i])
    empty = enc.embed_texts([])
    assert empty is not None and empty.embeddings.shape == (0, 8)


@pytest.mark.parametrize("rule", ["head", "tail", "head_tail:8", "head_tail:96"])
@pytest.mark.parametrize("max_tokens", [3, 32, 256])
def test_long_texts_read_in_part_embed_as_read_whole(
    static_dir: Path, rule: str, max_tokens: int, long_texts: Callable[[int, int], list[str]]
) -> None:
    """The one call reads a long text's tail from a word boundary and its head up to the cut only; the kept ids,
    so the embedding, count and cut flag, are those of the whole text tokenised by HF and cut."""
    enc = StaticEncoder(
        static_dir / "table.npy",
        static_dir / "tokenizer.json",
        max_tokens=max_tokens,
        truncation=Truncation.parse(rule),
    )
    whole = PromptTokenizer(static_dir / "tokenizer.json", max_tokens=max_tokens, truncation=enc.truncation, fast=False)
    texts = long_texts(max_tokens, 60)
    tokens = whole.tokenize(texts)
    got = enc.embed_texts(texts)
    assert got is not None
    assert got.truncated.sum() > 40
    assert np.array_equal(got.n_tokens, tokens.n_tokens)
    assert np.array_equal(got.truncated, tokens.truncated)
    assert np.array_equal(got.embeddings, enc.embed(tokens))


def test_a_character_left_to_hf_in_the_part_cut_away_is_not_read(static_dir: Path) -> None:
    enc = StaticEncoder(static_dir / "table.npy", static_dir / "tokenizer.json", max_tokens=32)
    hf = PromptTokenizer(static_dir / "tokenizer.json", max_tokens=32, truncation=enc.truncation, fast=False)
    middle = " ".join(["lorem ipsum dolor"] * 100)
    left = f"{middle} \u0378x {middle}"  # U+0378 is unassigned: the compiled tokenizer leaves it to HF
    got = enc.embed_texts([left])
    assert got is not None and bool(got.truncated[0])  # read in part: the character is never reached
    assert np.array_equal(got.embeddings, enc.embed(hf.tokenize([left])))
    assert enc.embed_texts(["lorem \u0378x ipsum"]) is None  # within what is kept: the general path


def test_texts_the_compiled_tokenizer_leaves_to_hf_take_the_general_path(
    static_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = StaticEncoder(static_dir / "table.npy", static_dir / "tokenizer.json", max_tokens=32)
    left = "Words left to HF: \u0378x and \u08d4"
    assert enc.embed_texts(["hello", left]) is None  # one such text: the whole call tokenises
    assert enc.embed(enc.tokenize(["hello", left])).shape == (2, 8)
    monkeypatch.setenv("LMROUTE_FAST_TOKENIZER", "0")
    slow = StaticEncoder(static_dir / "table.npy", static_dir / "tokenizer.json", max_tokens=32)
    assert not slow.tokenizer.fast_path and slow.embed_texts(["hello"]) is None


def test_one_call_refuses_ids_outside_the_table(encoder: StaticEncoder) -> None:
    small = np.ones((5, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"token id \d+ is outside the table's 5 rows"):
        encoder.tokenizer.embed_static(["hello world"], small)
    with pytest.raises(TypeError):
        encoder.tokenizer.embed_static(["hello"], small.astype(np.float64))


def test_empty_batch(encoder: StaticEncoder) -> None:
    assert encoder.embed(encoder.tokenize([])).shape == (0, 8)


def test_refuses_bad_tables(tmp_path: Path, tokenizer_path: Path, static_dir: Path) -> None:
    table = np.load(static_dir / "table.npy")
    cases = {
        "missing.npy": None,
        "rows.npy": table[:-1],
        "dtype.npy": table.astype(np.float64),
        "nan.npy": np.where(np.arange(table.shape[0])[:, None] == 5, np.nan, table).astype(np.float32),
        "flat.npy": table[:, 0].copy(),
    }
    expected = {
        "missing.npy": "missing.npy: missing",
        "rows.npy": f"{table.shape[0] - 1} rows, the tokenizer has {table.shape[0]} ids",
        "dtype.npy": "expected float32 [vocab, dim]",
        "nan.npy": "NaN or infinite",
        "flat.npy": "expected float32 [vocab, dim]",
    }
    for name, arr in cases.items():
        if arr is not None:
            np.save(tmp_path / name, arr)
        with pytest.raises(EncoderModelError, match=re.escape(expected[name])):
            StaticEncoder(tmp_path / name, tokenizer_path)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    with pytest.raises(EncoderModelError, match="not a .npy array"):
        StaticEncoder(tmp_path / "garbage.npy", tokenizer_path)
    zero = table.copy()
    zero[[101, 102]] = 0.0  # [CLS] and [SEP]: the empty prompt would have no direction
    np.save(tmp_path / "zero.npy", zero)
    with pytest.raises(EncoderModelError, match="empty prompt embeds to zero"):
        StaticEncoder(tmp_path / "zero.npy", tokenizer_path)


def test_distill_refuses_bad_parameters(source: OnnxEncoder) -> None:
    with pytest.raises(ValueError, match=r"dim must be in \[1, 16\]"):
        distill_static_table(source, COUNT_TEXTS, source_name="toy", count_texts_from="t", dim=17)
    with pytest.raises(ValueError, match="sif_a must be positive"):
        distill_static_table(source, COUNT_TEXTS, source_name="toy", count_texts_from="t", dim=8, sif_a=0.0)


def test_ensure_static_encoder_caches(tmp_path: Path, source: OnnxEncoder) -> None:
    a, how_a = ensure_static_encoder(source, "toy", tmp_path, lambda: COUNT_TEXTS, "t", dim=4)
    mtime = (a / "table.npy").stat().st_mtime_ns
    b, how_b = ensure_static_encoder(source, "toy", tmp_path, lambda: COUNT_TEXTS, "t", dim=4)
    assert a == b and how_a == how_b and (b / "table.npy").stat().st_mtime_ns == mtime
    c, _ = ensure_static_encoder(source, "toy", tmp_path, lambda: [*COUNT_TEXTS, "more"], "t", dim=4)
    assert c != a


def test_token_mean_kernel_against_numpy_and_its_refusals() -> None:
    from lmroute.kernels.compiled import token_mean

    rng = np.random.default_rng(7)
    table = rng.standard_normal((50, 6)).astype(np.float32)
    lengths = rng.integers(1, 9, size=20)
    ids = rng.integers(0, 50, size=int(lengths.sum()))
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    got = token_mean(table, ids, offsets)
    for r in range(20):
        s = table[ids[offsets[r] : offsets[r + 1]]].astype(np.float64).sum(axis=0)
        assert np.allclose(got[r], s / np.linalg.norm(s), atol=1e-6)
        alone = token_mean(table, ids[offsets[r] : offsets[r + 1]], np.array([0, lengths[r]]))
        assert np.array_equal(alone[0], got[r])  # a row does not depend on the others
    with pytest.raises(ValueError, match=r"ids\[3\] = 50 is outside the table's 50 rows"):
        token_mean(table, np.array([0, 1, 2, 50]), np.array([0, 4]))
    with pytest.raises(ValueError, match="every row needs at least one id"):
        token_mean(table, np.array([0, 1]), np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="float32"):
        token_mean(table.astype(np.float64), np.array([0]), np.array([0, 1]))
