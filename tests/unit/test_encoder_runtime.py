"""OnnxEncoder / TokenBatch / embed cache on a tiny real ONNX encoder (`write_toy_encoder`) and the real
all-MiniLM-L6-v2 tokenizer: padding, truncation, ordering, batching, signature checks, caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lmroute.bundle.encoder import EncoderModelError, OnnxEncoder, TokenBatch
from lmroute.export.embed_cache import EmbedCacheError, embed_texts, encoder_id_for
from lmroute.export.encoder_export import default_model_dir, write_toy_encoder

DIM = 16
FIVE_TOKENS = "cat dog red blue tree"  # five word pieces in the MiniLM vocabulary

TEXTS = [
    "a fairly long prompt about the history of the roman empire and its roads",
    "",
    "hi",
    FIVE_TOKENS,
    "¿Qué tal? 日本語 🚀",
    "def f(x):\n    return x * 2",
    "one two three four five six seven eight nine ten eleven twelve",
    "short one",
]


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    return default_model_dir() / "tokenizer.json"


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_encoder(tmp_path_factory.mktemp("toy") / "model.onnx", dim=DIM, seed=1)


@pytest.fixture(scope="module")
def encoder(toy_model: Path, tokenizer_path: Path) -> OnnxEncoder:
    return OnnxEncoder(toy_model, tokenizer_path, max_tokens=32, intra_op_threads=1)


def _numpy_reference(model_path: Path, tokens: TokenBatch) -> np.ndarray:
    """What the toy graph must compute: masked mean of word + type embeddings, L2-normalised."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer}
    hidden = inits["toy_word"][tokens.input_ids] + inits["toy_type"][tokens.token_type_ids]
    mask = tokens.attention_mask[..., None].astype(np.float64)
    mean = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------- tokenize
def test_dynamic_padding_not_128(encoder: OnnxEncoder) -> None:
    tb = encoder.tokenize([FIVE_TOKENS])
    assert tb.seq_len == 7
    assert tb.n_tokens.tolist() == [7]
    assert tb.input_ids[0, 0] == 101 and tb.input_ids[0, -1] == 102
    assert tb.input_ids.dtype == tb.attention_mask.dtype == tb.token_type_ids.dtype == np.int64


def test_batch_pads_to_longest_with_mask(encoder: OnnxEncoder) -> None:
    tb = encoder.tokenize(["hi", FIVE_TOKENS])
    assert tb.seq_len == 7
    assert tb.n_tokens.tolist() == [3, 7]
    assert tb.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert tb.input_ids[0, 3:].tolist() == [0, 0, 0, 0]
    assert not tb.truncated.any()


def test_empty_string_is_cls_sep(encoder: OnnxEncoder) -> None:
    tb = encoder.tokenize([""])
    assert tb.input_ids.tolist() == [[101, 102]]
    emb = encoder.embed(tb)
    assert emb.shape == (1, DIM) and np.isfinite(emb).all()


def test_truncation_flag_and_length(encoder: OnnxEncoder) -> None:
    long_text = "word " * 100
    exact = " ".join(["cat"] * 30)  # 30 + 2 = exactly max_tokens: not truncated
    tb = encoder.tokenize([long_text, exact, "hi"])
    assert tb.seq_len == 32
    assert tb.n_tokens.tolist() == [32, 32, 3]
    assert tb.truncated.tolist() == [True, False, False]
    assert tb.input_ids[0, -1] == 102  # [SEP] survives truncation


def test_select_reorders_and_trims_padding(encoder: OnnxEncoder) -> None:
    tb = encoder.tokenize(["hi", "word " * 100, FIVE_TOKENS])
    sub = tb.select([2, 0])
    assert sub.seq_len == 7
    assert sub.n_tokens.tolist() == [7, 3]
    assert sub.input_ids[1].tolist() == tb.input_ids[0, :7].tolist()
    assert sub.truncated.tolist() == [False, False]
    assert len(tb.select([])) == 0
    with pytest.raises(IndexError):
        tb.select([3])


@pytest.mark.parametrize("seed", range(5))
def test_stack_of_separately_tokenised_parts_equals_one_tokenize(encoder: OnnxEncoder, seed: int) -> None:
    """What the service does: prompts tokenised at admission (in their own requests) and stacked into
    one batch later give exactly the arrays of tokenising that batch at once."""
    rng = np.random.default_rng(seed)
    texts = [TEXTS[i] for i in rng.integers(0, len(TEXTS), size=int(rng.integers(1, 12)))]
    texts.append("word " * 60)  # longer than max_tokens 32: truncated
    cuts = sorted(set(rng.integers(1, len(texts), size=3).tolist()))
    parts, start = [], 0
    for cut in [*cuts, len(texts)]:
        part = encoder.tokenize(texts[start:cut])
        parts += [part.select([i]) for i in range(len(part))] if seed % 2 else [part]
        start = cut
    stacked = TokenBatch.stack(parts, encoder.pad_id)
    whole = encoder.tokenize(texts)
    for field in ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated"):
        got, want = getattr(stacked, field), getattr(whole, field)
        assert got.dtype == want.dtype and got.shape == want.shape, field
        np.testing.assert_array_equal(got, want, err_msg=field)
    assert len(TokenBatch.stack([], encoder.pad_id)) == 0


def test_tokenize_rejects_bad_input(encoder: OnnxEncoder) -> None:
    with pytest.raises(TypeError, match="single str"):
        encoder.tokenize("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        encoder.tokenize(["ok", 3])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------- embed
def test_embed_matches_numpy_reference(encoder: OnnxEncoder, toy_model: Path) -> None:
    tb = encoder.tokenize(TEXTS)
    emb = encoder.embed(tb)
    assert emb.dtype == np.float32 and emb.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(emb, _numpy_reference(toy_model, tb), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_encode_restores_order_and_equals_single(encoder: OnnxEncoder) -> None:
    singles = np.stack([encoder.embed(encoder.tokenize([t]))[0] for t in TEXTS])
    for batch_size in (1, 2, 3, 32):
        got = encoder.encode(TEXTS, batch_size=batch_size)
        assert np.abs(got - singles).max() <= 1e-6, batch_size
    # A permutation of the input permutes the output the same way.
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    got = encoder.encode([TEXTS[i] for i in perm], batch_size=3)
    assert np.abs(got - singles[perm]).max() <= 1e-6


def test_batched_equals_single_random_batches(encoder: OnnxEncoder) -> None:
    rng = np.random.default_rng(7)
    words = "the cat sat on a mat while router models argue about llm quality".split()
    pool = [" ".join(rng.choice(words, size=int(rng.integers(0, 40)))) for _ in range(40)]
    singles = {t: encoder.embed(encoder.tokenize([t]))[0] for t in pool}
    for _ in range(10):
        n = int(rng.integers(1, 40))
        texts = [pool[i] for i in rng.integers(0, len(pool), size=n)]
        got = encoder.encode(texts, batch_size=int(rng.integers(1, 17)))
        want = np.stack([singles[t] for t in texts])
        assert np.abs(got - want).max() <= 1e-6


def test_empty_inputs(encoder: OnnxEncoder) -> None:
    assert encoder.encode([]).shape == (0, DIM)
    assert encoder.embed(encoder.tokenize([])).shape == (0, DIM)
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["x"], batch_size=0)


# --------------------------------------------------------------------------------- signature checks
def _save_variant(path: Path, toy_model: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    model = onnx.load(str(toy_model))
    edit(model)
    onnx.save(model, str(path))
    return path


def test_rejects_missing_and_garbage_files(tmp_path: Path, toy_model: Path, tokenizer_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(EncoderModelError, match=f"{missing}: encoder model file missing"):
        OnnxEncoder(missing, tokenizer_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(EncoderModelError, match=f"{garbage}: ONNX Runtime cannot load the encoder model"):
        OnnxEncoder(garbage, tokenizer_path)
    with pytest.raises(EncoderModelError, match=f"{tmp_path / 'tok.json'}: missing"):
        OnnxEncoder(toy_model, tmp_path / "tok.json")
    bad_tok = tmp_path / "bad_tok.json"
    bad_tok.write_text("{not json")
    with pytest.raises(EncoderModelError, match="not a valid HF tokenizers file"):
        OnnxEncoder(toy_model, bad_tok)


def test_rejects_wrong_output_name(tmp_path: Path, toy_model: Path, tokenizer_path: Path) -> None:
    def rename(model: onnx.ModelProto) -> None:
        for node in model.graph.node:
            node.output[:] = ["pooled" if o == "sentence_embedding" else o for o in node.output]
        model.graph.output[0].name = "pooled"

    path = _save_variant(tmp_path / "renamed.onnx", toy_model, rename)
    with pytest.raises(EncoderModelError, match=r"has no output 'sentence_embedding' \(outputs: \['pooled'\]\)"):
        OnnxEncoder(path, tokenizer_path)


def test_rejects_wrong_inputs(tmp_path: Path, tokenizer_path: Path) -> None:
    # A graph with int32 input_ids.
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["b", "s"])
    others = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("attention_mask", "token_type_ids")
    ]
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["b", 4])
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Tile", ["f", "reps"], ["sentence_embedding"]),
    ]
    reps = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "reps")
    graph = helper.make_graph(nodes, "bad", [ids, *others], [out], initializer=[reps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "int32.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EncoderModelError, match=r"input 'input_ids' is tensor\(int32\)"):
        OnnxEncoder(path, tokenizer_path)

    # A graph without token_type_ids.
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["sentence_embedding"], to=TensorProto.FLOAT)],
        "bad2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["b", "s"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "two_inputs.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EncoderModelError, match=r"encoder inputs are \['attention_mask', 'input_ids'\], expected"):
        OnnxEncoder(path, tokenizer_path)


def test_rejects_bad_settings(toy_model: Path, tokenizer_path: Path) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        OnnxEncoder(toy_model, tokenizer_path, max_tokens=1)
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxEncoder(toy_model, tokenizer_path, intra_op_threads=0)


# ------------------------------------------------------------------------------------------- caching
class CountingEncoder(OnnxEncoder):
    """The real encoder, counting how many texts reach `embed`."""

    embedded: int = 0

    def embed(self, tokens: TokenBatch) -> np.ndarray:
        self.embedded += len(tokens)
        return super().embed(tokens)


def test_cache_hits_skip_the_model(tmp_path: Path, toy_model: Path, tokenizer_path: Path) -> None:
    enc = CountingEncoder(toy_model, tokenizer_path, max_tokens=32)
    eid = encoder_id_for(toy_model)
    texts = TEXTS + [TEXTS[0], TEXTS[2]]  # duplicates are embedded once
    first = embed_texts(enc, texts, tmp_path, encoder_id=eid, progress=False)
    assert enc.embedded == len(TEXTS)
    np.testing.assert_allclose(first, enc.encode(texts), atol=1e-6)
    enc.embedded = 0
    second = embed_texts(enc, texts, tmp_path, encoder_id=eid, progress=False)
    assert enc.embedded == 0
    assert np.array_equal(first, second)
    # Only new texts are embedded; old ones come from the cache, in the caller's order.
    third = embed_texts(enc, ["brand new", TEXTS[3]], tmp_path, encoder_id=eid, progress=False)
    assert enc.embedded == 1
    assert np.array_equal(third[1], first[3])
    # A different encoder id is a different cache.
    enc.embedded = 0
    embed_texts(enc, TEXTS[:2], tmp_path, encoder_id=eid + "-other", progress=False)
    assert enc.embedded == 2
    assert all(p.suffix == ".npy" for p in (tmp_path / eid).iterdir())


def test_cache_none_and_validation(tmp_path: Path, encoder: OnnxEncoder) -> None:
    got = embed_texts(encoder, TEXTS, None, encoder_id="x", progress=False)
    np.testing.assert_allclose(got, encoder.encode(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="encoder_id"):
        embed_texts(encoder, TEXTS, tmp_path, encoder_id="../escape", progress=False)
    with pytest.raises(TypeError, match="single str"):
        embed_texts(encoder, "abc", tmp_path, encoder_id="x", progress=False)


def test_cache_rejects_wrong_dim_shard(tmp_path: Path, encoder: OnnxEncoder) -> None:
    embed_texts(encoder, TEXTS, tmp_path, encoder_id="e", progress=False)
    (shard,) = (tmp_path / "e").glob("shard-*.emb.npy")
    np.save(shard, np.zeros((len(TEXTS), DIM + 1), dtype=np.float32))
    with pytest.raises(EmbedCacheError, match=rf"{shard.name}: shape \({len(TEXTS)}, {DIM + 1}\)"):
        embed_texts(encoder, TEXTS, tmp_path, encoder_id="e", progress=False)
