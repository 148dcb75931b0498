"""What the encoder keeps of a long prompt (`lmroute.bundle.truncation`, `PromptTokenizer`, `cut_and_pad`):
exact ids of the cut, short prompts untouched, `head` equal to HF tokenizers' own truncation, batched ==
single, few-shot prompts that share a long preamble, the recipe knob and the embedding cache key."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lmroute.bundle.encoder import OnnxEncoder, PromptTokenizer, TokenBatch, cut_and_pad
from lmroute.bundle.truncation import HEAD, Truncation, cut_positions
from lmroute.export.embed_cache import encoder_id_for, encoder_id_of
from lmroute.export.encoder_export import default_model_dir, write_toy_encoder
from lmroute.export.recipe import SHIPPED, Recipe

RULES = (HEAD, Truncation(rule="tail"), Truncation(rule="head_tail", head_tokens=3))
WORDS = "the cat sat on a mat while code() {x} and 日本 ünïcode [SEP] more words".split()

# A RouterBench-style few-shot prompt: one shared preamble of solved examples, then its own question.
_SHOT = (
    "Question: Which of these is a mammal?\nA. shark\nB. whale\nC. trout\nD. eel\nAnswer: B\n\n"
    "Question: What gas do plants take in?\nA. oxygen\nB. helium\nC. carbon dioxide\nD. neon\nAnswer: C\n\n"
)
PREAMBLE = "The following are multiple choice questions about science.\n\n" + _SHOT * 8
QUESTIONS = (
    "Question: Which planet is closest to the sun?\nA. Mercury\nB. Venus\nC. Earth\nD. Mars\nAnswer:",
    "Question: What is the boiling point of water at sea level?\nA. 50 C\nB. 75 C\nC. 100 C\nD. 150 C\nAnswer:",
    "Question: Which organ pumps blood through the body?\nA. lung\nB. heart\nC. liver\nD. kidney\nAnswer:",
)


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    return default_model_dir() / "tokenizer.json"


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_encoder(tmp_path_factory.mktemp("toy") / "model.onnx", dim=16, seed=3)


def _texts(seed: int, n: int, longest: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, longest))) for _ in range(n)] + ["", " "]


# ------------------------------------------------------------------------------------------- the rule
def test_text_form_round_trips_and_bad_rules_are_named() -> None:
    for text in ("head", "tail", "head_tail:64"):
        assert str(Truncation.parse(text)) == text
    assert Truncation.parse(" head_tail:7 ") == Truncation(rule="head_tail", head_tokens=7)
    assert Truncation.parse("head") == HEAD and HEAD.to_dict() == {"rule": "head", "head_tokens": 0}
    assert Truncation.parse("head_tail:64").cache_key() == "head_tail64"
    cases = {
        "middle": "truncation rule 'middle' is unknown (known: head, tail, head_tail)",
        "head_tail": "truncation 'head_tail': head_tail needs its head tokens, e.g. 'head_tail:64'",
        "head_tail:x": "truncation 'head_tail:x': head_tail needs its head tokens, e.g. 'head_tail:64'",
        "head_tail:0": "truncation head_tail needs head_tokens >= 1, got 0",
        "tail:3": "truncation 'tail:3': only head_tail takes a count ('head', 'tail', 'head_tail:64')",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as err:
            Truncation.parse(text)
        assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        Truncation(rule="tail", head_tokens=2)
    assert str(err.value) == "truncation tail takes no head_tokens, got 2"


# ------------------------------------------------------------------------------------------- the cut
def test_cut_keeps_exact_ids_for_each_rule() -> None:
    """[CLS]=101, content 1..8, [SEP]=102 (10 tokens) cut to 6: 4 content tokens kept by the rule; a
    3-token row fits and is copied, then padded with pad_id (mask 0, type 0)."""
    long_row, short_row = [101, 1, 2, 3, 4, 5, 6, 7, 8, 102], [101, 9, 102]
    types = [[5] * 10, [7] * 3]  # distinct type ids show the types are cut like the ids
    expected = {
        "head": [101, 1, 2, 3, 4, 102],
        "tail": [101, 5, 6, 7, 8, 102],
        "head_tail:1": [101, 1, 6, 7, 8, 102],
        "head_tail:3": [101, 1, 2, 3, 8, 102],
        "head_tail:4": [101, 1, 2, 3, 4, 102],  # all of the budget at the head: the head rule
        "head_tail:50": [101, 1, 2, 3, 4, 102],
    }
    for text, ids in expected.items():
        tb = cut_and_pad(
            [long_row, short_row], types, max_tokens=6, truncation=Truncation.parse(text), front=1, back=1, pad_id=0
        )
        assert tb.input_ids.tolist() == [ids, [101, 9, 102, 0, 0, 0]], text
        assert tb.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
        assert tb.token_type_ids.tolist() == [[5] * 6, [7, 7, 7, 0, 0, 0]]
        assert tb.n_tokens.tolist() == [6, 3] and tb.truncated.tolist() == [True, False]


def test_cut_positions_edges() -> None:
    positions, valid = cut_positions(np.array([0, 2, 7]), max_tokens=5, truncation=HEAD, front=1, back=1)
    assert positions.shape == (3, 5) and valid.sum(axis=1).tolist() == [0, 2, 5]
    assert positions[2].tolist() == [0, 1, 2, 3, 6]  # [CLS], 3 head tokens, [SEP]
    empty = cut_and_pad([], [], max_tokens=5, truncation=HEAD, front=1, back=1, pad_id=0)
    assert len(empty) == 0 and empty.input_ids.shape == (0, 0)
    with pytest.raises(ValueError, match="leaves no room for the 2 special tokens"):
        cut_positions(np.array([3]), max_tokens=1, truncation=HEAD, front=1, back=1)


def test_real_tokenizer_exact_ids(tokenizer_path: Path) -> None:
    text = "one two three four five six seven eight nine ten"  # one word piece each
    vocab = Tokenizer.from_file(str(tokenizer_path))
    kept = {
        "head": "one two three four five six",
        "tail": "five six seven eight nine ten",
        "head_tail:2": "one two seven eight nine ten",
    }
    for rule, words in kept.items():
        tok = PromptTokenizer(tokenizer_path, max_tokens=8, truncation=Truncation.parse(rule))
        assert (tok.front, tok.back, tok.pad_id) == (1, 1, 0)
        tb = tok.tokenize([text])
        assert [vocab.id_to_token(i) for i in tb.input_ids[0]] == ["[CLS]", *words.split(), "[SEP]"], rule
        assert tb.truncated.tolist() == [True] and tb.n_tokens.tolist() == [8]
        assert tok.token_ids([text, "one"]) == [tb.input_ids[0].tolist(), [101, vocab.token_to_id("one"), 102]]


@pytest.mark.parametrize("seed", range(3))
def test_short_prompts_are_untouched_and_head_is_hf_truncation(tokenizer_path: Path, seed: int) -> None:
    """Texts that fit are kept whole under every rule; `head` gives exactly what HF tokenizers' own
    truncation and padding give (the behaviour of bundles that state no rule)."""
    texts = _texts(seed, 60, 120)
    hf = Tokenizer.from_file(str(tokenizer_path))
    hf.enable_truncation(max_length=48)
    hf.enable_padding(pad_id=0, pad_token="[PAD]")
    encs = hf.encode_batch(texts)
    head = PromptTokenizer(tokenizer_path, max_tokens=48).tokenize(texts)
    assert head.input_ids.tolist() == [e.ids for e in encs]
    assert head.attention_mask.tolist() == [e.attention_mask for e in encs]
    assert head.truncated.tolist() == [len(e.overflowing) > 0 for e in encs]
    assert 0 < head.truncated.sum() < len(texts)
    fits = ~head.truncated
    for rule in RULES:
        tb = PromptTokenizer(tokenizer_path, max_tokens=48, truncation=rule).tokenize(texts)
        assert tb.n_tokens.tolist() == head.n_tokens.tolist()
        assert (tb.input_ids[fits] == head.input_ids[fits]).all(), rule
        cut = tb.input_ids[~fits]
        assert (cut[:, 0] == 101).all() and (cut[:, -1] == 102).all()  # [CLS] ... [SEP] kept


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_batched_equals_single(tokenizer_path: Path, rule: Truncation) -> None:
    tok = PromptTokenizer(tokenizer_path, max_tokens=24, truncation=rule)
    texts = _texts(7, 40, 60)
    whole = tok.tokenize(texts)
    for i, text in enumerate(texts):
        one = tok.tokenize([text])
        n = int(one.n_tokens[0])
        assert whole.input_ids[i, :n].tolist() == one.input_ids[0].tolist()
        assert (whole.attention_mask[i, n:] == 0).all() and bool(whole.truncated[i]) == bool(one.truncated[0])
    parts = [tok.tokenize(texts[a:b]) for a, b in ((0, 5), (5, 6), (6, len(texts)))]
    stacked = TokenBatch.stack(parts, pad_id=tok.pad_id)
    assert (stacked.input_ids == whole.input_ids).all() and (stacked.attention_mask == whole.attention_mask).all()


# ------------------------------------------------------------------------- prompts that share a preamble
def test_few_shot_prompts_that_differ_only_at_the_end(tokenizer_path: Path, toy_model: Path) -> None:
    """Prompts longer than the limit that share a preamble and differ only in their last question: the
    shipped rule gives each its own embedding; the head rule gives all the same one (what the served
    routers saw before), so this test fails for a rule that drops the end."""
    prompts = [PREAMBLE + q for q in QUESTIONS]
    shipped = OnnxEncoder(toy_model, tokenizer_path, max_tokens=256, truncation=SHIPPED.truncation_rule)
    head = OnnxEncoder(toy_model, tokenizer_path, max_tokens=256, truncation=HEAD)
    assert shipped.tokenize([PREAMBLE]).truncated.all()  # the preamble alone fills the encoder
    emb = shipped.encode(prompts)
    assert min(np.abs(emb[i] - emb[j]).max() for i in range(3) for j in range(i + 1, 3)) > 1e-3
    same = head.encode(prompts)
    assert np.abs(same - same[0]).max() == 0.0
    # The shipped rule's embedding of the whole prompt is nearer its question's than the head rule's.
    questions = shipped.encode(list(QUESTIONS))
    assert ((emb * questions).sum(1) > (same * questions).sum(1)).all()


def test_encoder_token_ids_and_cache_key_name_the_rule(tokenizer_path: Path, toy_model: Path) -> None:
    enc = OnnxEncoder(toy_model, tokenizer_path, max_tokens=32, truncation=Truncation.parse("head_tail:8"))
    assert enc.truncation == Truncation(rule="head_tail", head_tokens=8) and enc.tokenizer.max_tokens == 32
    digest = encoder_id_for(toy_model)
    assert encoder_id_of(enc) == f"{digest}-t32-head_tail8"
    assert encoder_id_for(toy_model, max_tokens=32, truncation=HEAD) == f"{digest}-t32-head"
    with pytest.raises(TypeError, match="truncation must be a Truncation, got str"):
        PromptTokenizer(tokenizer_path, max_tokens=32, truncation="tail")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the recipe
def test_recipe_knob_is_parsed_and_checked() -> None:
    assert Recipe(truncation=" tail ").truncation == "tail"
    assert Recipe(truncation="head_tail:32").truncation_rule == Truncation(rule="head_tail", head_tokens=32)
    assert SHIPPED.truncation_rule == Truncation.parse(SHIPPED.truncation)
    with pytest.raises(ValueError) as err:
        Recipe(truncation="middle")
    assert str(err.value) == "truncation: truncation rule 'middle' is unknown (known: head, tail, head_tail)"
    with pytest.raises(ValueError) as err:
        Recipe(max_tokens=64, truncation="head_tail:62")
    assert str(err.value) == "truncation: head_tail keeps at most max_tokens - 3 = 61 head tokens (got 62)"


# ------------------------------------------------------------------------------- the validation module
def test_raw_routerbench_prompts_carry_the_preamble_that_training_cuts(tokenizer_path: Path) -> None:
    from itertools import islice

    from lmroute.export.validate_truncation import raw_routerbench_prompts

    data_dir = Path(__file__).resolve().parents[2] / "data"
    tok = PromptTokenizer(tokenizer_path, max_tokens=256)
    for source in ("routerbench_arc", "routerbench_winogrande"):
        pairs = list(islice(raw_routerbench_prompts(data_dir, source), 20))
        assert len(pairs) == 20
        raws, questions = zip(*pairs, strict=True)
        assert all(raw.rstrip().endswith(q) and len(q) < len(raw) for raw, q in pairs)
        assert tok.tokenize(raws).truncated.all() and not tok.tokenize(questions).truncated.any()
        assert len({raw[:1000] for raw in raws}) == 1  # one shared preamble


def test_selection_rule() -> None:
    from lmroute.export.validate_truncation import RuleResult, choose

    def result(rule: str, group: str, cos: float, spearman: float | None) -> RuleResult:
        routers = {} if spearman is None else {"mf": {"spearman": spearman}, "bert": {"spearman": spearman / 2}}
        return RuleResult(rule, group, 10, 10, cos, cos, 1.0, routers)

    rows = [
        result("tail", "routerbench_arc", 0.7, 0.6),
        result("tail", "routerbench_winogrande", 0.7, 0.6),
        result("tail", "pooled", 0.7, 0.6),
        result("head_tail:64", "routerbench_arc", 0.6, 0.8),
        result("head_tail:64", "routerbench_winogrande", 0.6, 0.7),
        result("head_tail:64", "pooled", 0.6, 0.75),
    ]
    assert choose(rows) == "head_tail:64"  # router agreement decides when measured
    assert choose([result(r.rule, r.group, r.cos_mean, None) for r in rows]) == "tail"  # else the cosine
