"""`lmroute-export import-routellm`: RouteLLM's released routers (mf, bert) as bundles of this project.

    lmroute-export import-routellm --router bert --checkpoint DIR --out BUNDLE

`DIR` is RouteLLM's bert checkpoint (`routellm/bert_gpt4_augmented` as downloaded: a Hugging Face
sequence-classification directory with its tokenizer); `import_bert` says what the bundle holds.

    lmroute-export import-routellm --router mf --checkpoint DIR --out BUNDLE \\
        [--strong-model gpt-4-1106-preview] [--weak-model mixtral-8x7b-instruct-v0.1] \\
        [--embeddings-base-url URL] [--embeddings-api-key-env NAME] [--calibration-limit N]

`DIR` is RouteLLM's mf checkpoint as `huggingface-cli download routellm/mf_gpt4_augmented --local-dir DIR`
lays it out: `config.json` (MFModel's arguments: dim, num_models, text_dim, num_classes, use_proj) and
`model.safetensors` (`P.weight` [num_models, dim], `text_proj.0.weight` [dim, text_dim],
`classifier.0.weight` [1, dim]). Which row of P is which model is RouteLLM's `MODEL_IDS`
(data/routellm/mf_model_ids.json; `--model-ids` for another table). Nothing is downloaded: the user
points at files.

The bundle: the `mf` router with those factors (this project's mf kind is RouteLLM's MF collapsed to
the strong/weak pair: sigmoid(logit_strong - logit_weak), the same number), a `remote` encoder naming
RouteLLM's embedding model (text-embedding-3-small, 1536; `lmroute.bundle.remote_encoder`), the
calibration table from the vendored Arena prompts embedded through the endpoint (`--calibration-limit`
for fewer), and the provenance in the manifest: the label names the source and the checkpoint files'
sha256, the training-data fingerprint is the weights' sha256. RouteLLM's mf embeds the raw prompt; this
encoder L2-normalises the endpoint's vector, which changes nothing for OpenAI's embeddings (unit length).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import DefaultPair, EncoderSpec, TrainingData
from lmroute.bundle.remote_encoder import RemoteSettings, write_remote_spec
from lmroute.bundle.truncation import HEAD
from lmroute.bundle.writer import RouterArtifacts, stage_bundle
from lmroute.kernels import reference

__all__ = ["MF_MODEL_IDS", "add_arguments", "import_bert", "import_mf", "main"]

REPO_ROOT = Path(__file__).resolve().parent.parent
MF_MODEL_IDS = REPO_ROOT / "data" / "routellm" / "mf_model_ids.json"
EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDING_DIM = 1536
EMBEDDING_MAX_TOKENS = 8191  # the endpoint's own input limit (text-embedding-3-small)
_MF_CONFIG_KEYS = {"dim", "num_models", "text_dim", "num_classes", "use_proj"}


class ImportError_(ValueError):
    """A checkpoint that is not what RouteLLM writes; the message names the file and what is wrong."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mf_config(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportError_(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict) or not _MF_CONFIG_KEYS <= set(doc):
        missing = sorted(_MF_CONFIG_KEYS - set(doc if isinstance(doc, dict) else {}))
        raise ImportError_(f"{path}: not an MFModel config (missing {', '.join(missing)})")
    if doc["num_classes"] != 1:
        raise ImportError_(f"{path}: num_classes {doc['num_classes']}: RouteLLM's mf router uses 1")
    return doc


def _mf_weights(path: Path, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P [num_models, dim], text_proj [dim, text_dim], classifier [dim]) as float32, shapes checked."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise ImportError_(f"{path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    dim, n_models, text_dim = int(cfg["dim"]), int(cfg["num_models"]), int(cfg["text_dim"])
    want = {"P.weight": (n_models, dim), "classifier.0.weight": (1, dim)}
    if cfg["use_proj"]:
        want["text_proj.0.weight"] = (dim, text_dim)
    elif dim != text_dim:
        raise ImportError_(f"{path}: use_proj false needs dim == text_dim (got {dim}, {text_dim})")
    for key, shape in want.items():
        if key not in tensors:
            raise ImportError_(f"{path}: no tensor {key!r} (has {', '.join(sorted(tensors))})")
        if tuple(tensors[key].shape) != shape:
            raise ImportError_(f"{path}: {key} has shape {tuple(tensors[key].shape)}, config says {shape}")
        if not np.isfinite(tensors[key]).all():
            raise ImportError_(f"{path}: {key} holds non-finite values")
    proj = tensors["text_proj.0.weight"] if cfg["use_proj"] else np.eye(dim, dtype=np.float32)
    return (
        np.asarray(tensors["P.weight"], dtype=np.float32),
        np.asarray(proj, dtype=np.float32),
        np.asarray(tensors["classifier.0.weight"][0], dtype=np.float32),
    )


def _model_ids(path: Path) -> dict[str, int]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    ids = doc["model_ids"] if isinstance(doc, dict) and "model_ids" in doc else doc
    if not isinstance(ids, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in ids.items()):
        raise ImportError_(f"{path}: expected {{model name: row}} (or {{'model_ids': ...}})")
    return dict(ids)


@dataclass(frozen=True)
class Imported:
    """What an import writes: the encoder (its files in encoder_dir), one router, the models and the pair,
    and the provenance (the weights' sha256 as the training-data fingerprint, the label)."""

    encoder_dir: Path
    encoder: EncoderSpec
    router_name: str
    router: RouterArtifacts
    models: tuple[str, ...]
    pair: DefaultPair
    fingerprint: str
    label: str


def _write(
    out: Path,
    imp: Imported,
    *,
    remote: RemoteSettings | None,
    data_dir: Path,
    calibration_limit: int | None,
    calibration_prompts: list[str] | None,
    overwrite: bool,
) -> Path:
    """Stage the bundle, load it through the validating loader (a remote encoder through its endpoint),
    calibrate it on the calibration prompts, commit it, and load the result once more."""
    from lmroute.export.pipeline import calibration_table

    with stage_bundle(
        out,
        encoder_dir=imp.encoder_dir,
        encoder=imp.encoder,
        routers={imp.router_name: imp.router},
        models=imp.models,
        default_pair=imp.pair,
        elo=dict.fromkeys(imp.models, 0.0),  # not in the checkpoints: 0 = unknown
        tiers=dict.fromkeys(imp.models, 0),
        training_data=TrainingData(
            fingerprint=imp.fingerprint, n_comparisons=0, n_prompts=0, by_label_kind={"routellm_checkpoint": 0}
        ),
        label=imp.label,
        overwrite=overwrite,
    ) as staged:
        bundle = load_bundle(staged.tmp, require_calibration=False, manifest=staged.manifest, remote=remote)
        calibration = calibration_table(bundle, data_dir, limit=calibration_limit, prompts=calibration_prompts)
        staged.manifest = dataclasses.replace(staged.manifest, calibration=calibration)
        staged.commit(validate=False)  # validated above; the commit's own check would not know the endpoint
    load_bundle(out, remote=remote)  # the bundle as written, calibration required
    return out


def import_mf(
    checkpoint: Path,
    out: Path,
    *,
    strong: str = "gpt-4-1106-preview",
    weak: str = "mixtral-8x7b-instruct-v0.1",
    model_ids: Path = MF_MODEL_IDS,
    remote: RemoteSettings | None = None,
    data_dir: Path = REPO_ROOT / "data",
    calibration_limit: int | None = None,
    calibration_prompts: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of RouteLLM's mf checkpoint in `checkpoint` to `out` (module docstring)."""

    cfg_path, weights_path = checkpoint / "config.json", checkpoint / "model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise ImportError_(f"{p}: missing (expected RouteLLM's mf checkpoint: config.json, model.safetensors)")
    cfg = _mf_config(cfg_path)
    p_table, text_proj, classifier = _mf_weights(weights_path, cfg)
    if int(cfg["text_dim"]) != EMBEDDING_DIM:
        raise ImportError_(f"{cfg_path}: text_dim {cfg['text_dim']}, but {EMBEDDING_MODEL} gives {EMBEDDING_DIM}")
    ids = _model_ids(model_ids)
    for role, name in (("strong", strong), ("weak", weak)):
        if name not in ids:
            raise ImportError_(f"--{role}-model {name!r} is not in {model_ids} ({len(ids)} models)")
    if max(ids.values()) >= p_table.shape[0]:
        raise ImportError_(f"{model_ids}: row {max(ids.values())} beyond the checkpoint's {p_table.shape[0]} models")
    models = tuple(sorted(ids))
    model_emb = p_table[[ids[m] for m in models]]
    s_idx, w_idx = models.index(strong), models.index(weak)
    pair_vector = reference.mf_pair_vector(text_proj, model_emb, classifier, s_idx, w_idx).astype(np.float32)
    cfg_sha, w_sha = _sha256(cfg_path), _sha256(weights_path)
    label = (
        f"RouteLLM mf imported from {checkpoint.name}: config.json sha256 {cfg_sha[:16]}, "
        f"model.safetensors {w_sha[:16]}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_remote_spec(Path(tmp), EMBEDDING_MODEL, EMBEDDING_DIM)
        encoder = EncoderSpec(
            name=EMBEDDING_MODEL,
            source="OpenAI-compatible embeddings endpoint (RouteLLM's mf embedding model)",
            dim=EMBEDDING_DIM,
            max_tokens=EMBEDDING_MAX_TOKENS,
            pooling="endpoint",
            files={"spec": "encoder/remote.json"},
            kind="remote",
        )
        arrays = {"text_proj": text_proj, "model_emb": model_emb, "classifier": classifier, "pair_vector": pair_vector}
        router = RouterArtifacts(kind="mf", params={"d_model": int(cfg["dim"])}, arrays=arrays)
        return _write(
            out,
            Imported(Path(tmp), encoder, "mf", router, models, DefaultPair(strong=strong, weak=weak), w_sha, label),
            remote=remote,
            data_dir=data_dir,
            calibration_limit=calibration_limit,
            calibration_prompts=calibration_prompts,
            overwrite=overwrite,
        )


def import_bert(
    checkpoint: Path,
    out: Path,
    *,
    strong: str = "gpt-4-1106-preview",
    weak: str = "mixtral-8x7b-instruct-v0.1",
    data_dir: Path = REPO_ROOT / "data",
    calibration_limit: int | None = None,
    calibration_prompts: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of RouteLLM's bert checkpoint (a Hugging Face sequence-classification directory:
    config.json, the weights, the tokenizer files) to `out`.

    RouteLLM's BERTRouter scores softmax(logits)[0] (1 - P(labels 1, 2)) of the prompt tokenised by the
    checkpoint's own tokenizer, cut at its model_max_length. The bundle holds the same thing as this
    project's bert kind over an encoder made from the checkpoint's own body: the encoder is the
    checkpoint's transformer, mean-pooled and L2-normalised (its tokenizer and token limit), and the bert
    router is the whole classifier as ONNX over those tokens (labels strong_wins, tie, weak_wins in
    RouteLLM's order). Both graphs are checked against PyTorch at export. Needs torch and transformers
    (the train extra)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from lmroute.export.encoder_export import export_encoder
    from lmroute.export.train_bert import bert_router_params, export_bert_onnx

    cfg_path = checkpoint / "config.json"
    if not cfg_path.is_file():
        raise ImportError_(f"{cfg_path}: missing (expected RouteLLM's bert checkpoint: a Hugging Face model directory)")
    config = AutoConfig.from_pretrained(str(checkpoint))
    if getattr(config, "num_labels", None) != 3:
        raise ImportError_(f"{cfg_path}: {config.num_labels} labels; RouteLLM's bert router has 3")
    weights = sorted(p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise ImportError_(f"{checkpoint}: no model.safetensors or pytorch_model.bin")
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    if not getattr(tokenizer, "is_fast", False):
        raise ImportError_(f"{checkpoint}: its tokenizer has no fast (tokenizers) form to serve with")
    positions = int(getattr(config, "max_position_embeddings", 512))
    max_tokens = min(int(tokenizer.model_max_length), positions)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"  # the checkpoint with a tokenizer.json beside it (what the export reads)
        shutil.copytree(checkpoint, model_dir)
        tokenizer.backend_tokenizer.save(str(model_dir / "tokenizer.json"))
        enc_dir = Path(tmp) / "encoder"
        export_encoder(model_dir, enc_dir, max_tokens=max_tokens, quantize=None)
        classifier = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        onnx_path = Path(tmp) / "bert.onnx"
        diff = export_bert_onnx(classifier, enc_dir, onnx_path, max_tokens=max_tokens, truncation=HEAD)
        if diff > 1e-4:
            raise ImportError_(f"{checkpoint}: the ONNX classifier differs from PyTorch by {diff:.3g} in a logit")
        w_sha = _sha256(weights[0])
        label = f"RouteLLM bert imported from {checkpoint.name}: {weights[0].name} sha256 {w_sha[:16]}"
        encoder = EncoderSpec(
            name=f"{checkpoint.name} (mean-pooled body)",
            source=f"RouteLLM bert checkpoint {checkpoint.name} ({type(classifier).__name__})",
            dim=int(config.hidden_size),
            max_tokens=max_tokens,
        )
        router = RouterArtifacts(kind="bert", params=bert_router_params(max_tokens), files={"model": onnx_path})
        pair = DefaultPair(strong=strong, weak=weak)
        return _write(
            out,
            Imported(enc_dir, encoder, "bert", router, tuple(sorted({strong, weak})), pair, w_sha, label),
            remote=None,
            data_dir=data_dir,
            calibration_limit=calibration_limit,
            calibration_prompts=calibration_prompts,
            overwrite=overwrite,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", choices=["mf", "bert"], required=True, help="which RouteLLM router the checkpoint is")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint directory (config.json, ...)")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--strong-model", default="gpt-4-1106-preview")
    p.add_argument("--weak-model", default="mixtral-8x7b-instruct-v0.1")
    p.add_argument("--model-ids", type=Path, default=MF_MODEL_IDS, help="{model: row of P} (default RouteLLM's)")
    p.add_argument("--embeddings-base-url", default="", help="default OPENAI_BASE_URL, else OpenAI's API")
    p.add_argument("--embeddings-api-key-env", default="OPENAI_API_KEY", metavar="NAME")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    p.add_argument("--calibration-limit", type=int, default=None, help="embed only the first N calibration prompts")
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    remote = RemoteSettings(base_url=args.embeddings_base_url, api_key=os.environ.get(args.embeddings_api_key_env, ""))
    try:
        if args.router == "bert":
            out = import_bert(
                args.checkpoint,
                args.out,
                strong=args.strong_model,
                weak=args.weak_model,
                data_dir=args.data_dir,
                calibration_limit=args.calibration_limit,
                overwrite=args.overwrite,
            )
        else:
            out = import_mf(
                args.checkpoint,
                args.out,
                strong=args.strong_model,
                weak=args.weak_model,
                model_ids=args.model_ids,
                remote=remote,
                data_dir=args.data_dir,
                calibration_limit=args.calibration_limit,
                overwrite=args.overwrite,
            )
    except ImportError_ as exc:
        print(f"import-routellm: {exc}")
        return 2
    print(f"import-routellm: wrote {out}")
    return 0
