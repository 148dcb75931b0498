"""`lmroute-export import-routellm`: RouteLLM's released routers (mf, bert, sw_ranking) as bundles.

    lmroute-export import-routellm --router mf --checkpoint DIR --out BUNDLE \\
        [--strong-model gpt-4-1106-preview] [--weak-model mixtral-8x7b-instruct-v0.1] \\
        [--embeddings-base-url URL] [--embeddings-api-key-env NAME] [--calibration-limit N]
    lmroute-export import-routellm --router bert --checkpoint DIR --out BUNDLE
    lmroute-export import-routellm --router sw_ranking --battles FILE... --embeddings FILE... --out BUNDLE

Nothing is downloaded: the user points at the files RouteLLM publishes.

mf: `DIR` as `huggingface-cli download routellm/mf_gpt4_augmented --local-dir DIR` lays it out:
`config.json` (MFModel's arguments: dim, num_models, text_dim, num_classes, use_proj) and
`model.safetensors` (`P.weight` [num_models, dim], `text_proj.0.weight` [dim, text_dim],
`classifier.0.weight` [1, dim]). Which row of P is which model is RouteLLM's `MODEL_IDS`
(data/routellm/mf_model_ids.json; `--model-ids` for another table). The bundle: the `mf` router with
those factors (this project's mf kind is RouteLLM's MF collapsed to the strong/weak pair:
sigmoid(logit_strong - logit_weak), the same number) and a `remote` encoder naming RouteLLM's embedding
model (text-embedding-3-small, 1536; `lmroute.bundle.remote_encoder`). RouteLLM's mf embeds the raw
prompt; this encoder L2-normalises the endpoint's vector, which changes nothing for OpenAI's embeddings
(unit length).

bert: `DIR` is RouteLLM's bert checkpoint (`routellm/bert_gpt4_augmented` as downloaded: a Hugging Face
sequence-classification directory with its tokenizer); `import_bert` says what the bundle holds.

sw_ranking: RouteLLM's battle and embedding tables (its `arena_battle_datasets` and
`arena_embedding_datasets`, as files); `import_sw` says what the bundle holds.

Every bundle gets its calibration table from the vendored Arena prompts (through the endpoint for a
remote encoder; `--calibration-limit` for fewer) and its provenance in the manifest: the label names
the source and the files' sha256, the training-data fingerprint is a sha256 of the weights or tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle.kinds.sw_ranking import FITS
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import DefaultPair, EncoderSpec, TrainingData
from lmroute.bundle.remote_encoder import RemoteSettings, write_remote_spec
from lmroute.bundle.truncation import HEAD
from lmroute.bundle.writer import RouterArtifacts, stage_bundle
from lmroute.kernels import reference

__all__ = ["MF_MODEL_IDS", "add_arguments", "import_bert", "import_mf", "import_sw", "main", "model_tiers"]

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
    doc = _json_doc(path)
    if not isinstance(doc, dict) or not _MF_CONFIG_KEYS <= set(doc):
        missing = sorted(_MF_CONFIG_KEYS - set(doc if isinstance(doc, dict) else {}))
        raise ImportError_(f"{path}: not an MFModel config (missing {', '.join(missing)})")
    for key in ("dim", "num_models", "text_dim"):
        value = doc[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImportError_(f"{path}: {key} must be a positive integer (got {value!r})")
    if not isinstance(doc["use_proj"], bool):
        raise ImportError_(f"{path}: use_proj must be true or false (got {doc['use_proj']!r})")
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


def _read_text(path: Path) -> str:
    """The UTF-8 text of a file the caller named; ImportError_ naming it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImportError_(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ImportError_(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_doc(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ImportError_(f"{path}: not valid JSON ({exc})") from None


def _model_ids(path: Path) -> dict[str, int]:
    doc = _json_doc(path)
    ids = doc["model_ids"] if isinstance(doc, dict) and "model_ids" in doc else doc
    if not isinstance(ids, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in ids.items()
    ):  # type(v) is int: true is no row, nor is -1 (it would read P's last row)
        raise ImportError_(f"{path}: expected {{model name: row}} (or {{'model_ids': ...}}), rows integers >= 0")
    if len(set(ids.values())) != len(ids):
        raise ImportError_(f"{path}: two models share a row of P")
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


def _remote_encoder_spec(what: str) -> EncoderSpec:
    return EncoderSpec(
        name=EMBEDDING_MODEL,
        source=f"OpenAI-compatible embeddings endpoint ({what})",
        dim=EMBEDDING_DIM,
        max_tokens=EMBEDDING_MAX_TOKENS,
        pooling="endpoint",
        files={"spec": "encoder/remote.json"},
        kind="remote",
    )


def _write(
    out: Path,
    imp: Imported,
    *,
    remote: RemoteSettings | None,
    data_dir: Path,
    calibration_limit: int | None,
    calibration_prompts: list[str] | None,
    overwrite: bool,
    tiers: dict[str, int] | None = None,
    elo: dict[str, float] | None = None,
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
        elo=elo if elo is not None else dict.fromkeys(imp.models, 0.0),  # not in a checkpoint: 0 = unknown
        tiers=tiers if tiers is not None else dict.fromkeys(imp.models, 0),
        training_data=TrainingData(
            fingerprint=imp.fingerprint, n_comparisons=0, n_prompts=0, by_label_kind={"routellm_checkpoint": 0}
        ),
        label=imp.label,
        default_router=imp.router_name,  # its only router
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
    if zero := [m for m, row in zip(models, model_emb, strict=True) if not np.any(row)]:
        raise ImportError_(
            f"{weights_path}: P's rows of {', '.join(zero[:5])} are all zeros (an mf router scores a model by its "
            f"row's direction); leave them out with --model-ids"
        )
    s_idx, w_idx = models.index(strong), models.index(weak)
    pair_vector = reference.mf_pair_vector(text_proj, model_emb, classifier, s_idx, w_idx).astype(np.float32)
    cfg_sha, w_sha = _sha256(cfg_path), _sha256(weights_path)
    label = (
        f"RouteLLM mf imported from {checkpoint.name}: config.json sha256 {cfg_sha[:16]}, "
        f"model.safetensors {w_sha[:16]}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_remote_spec(Path(tmp), EMBEDDING_MODEL, EMBEDDING_DIM)
        encoder = _remote_encoder_spec("RouteLLM's mf embedding model")
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
    try:
        config = AutoConfig.from_pretrained(str(checkpoint))
    except (OSError, ValueError) as exc:
        raise _not_a_model(checkpoint, exc) from None
    if getattr(config, "num_labels", None) != 3:
        raise ImportError_(f"{cfg_path}: {config.num_labels} labels; RouteLLM's bert router has 3")
    weights = sorted(p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise ImportError_(f"{checkpoint}: no model.safetensors or pytorch_model.bin")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    except (OSError, ValueError) as exc:
        raise _not_a_model(checkpoint, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ImportError_(f"{checkpoint}: its tokenizer has no fast (tokenizers) form to serve with")
    positions = int(getattr(config, "max_position_embeddings", 512))
    max_tokens = min(int(tokenizer.model_max_length), positions)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"  # the checkpoint with a tokenizer.json beside it (what the export reads)
        shutil.copytree(checkpoint, model_dir)
        tokenizer.backend_tokenizer.save(str(model_dir / "tokenizer.json"))
        enc_dir = Path(tmp) / "encoder"
        try:  # each step loads the weights: a pickle torch will not load, wrong shapes, NaN
            export_encoder(model_dir, enc_dir, max_tokens=max_tokens, quantize=None)
            classifier = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise _not_a_model(checkpoint, exc, str(model_dir)) from None
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


# ---- sw_ranking ------------------------------------------------------------------------------------
SW_MIN_FIRST_TURN = 16  # RouteLLM's preprocess_battles keeps battles whose first turn has >= 16 characters
_BATTLE_COLUMNS = ("prompt", "model_a", "model_b", "winner_model_a", "winner_model_b")


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a table file: JSON Lines, a JSON list, or Parquet (needs pyarrow)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError_(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or give JSON Lines"
            ) from None
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    if path.suffix == ".json":
        doc = _json_doc(path)
        if not isinstance(doc, list):
            raise ImportError_(f"{path}: expected a JSON list of rows")
        return list(enumerate(doc, 1))
    text = _read_text(path)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ImportError_(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ImportError_(f"{path}:{n}: not valid JSON (nested too deeply)") from None
    return out


def read_battles(paths: list[Path]) -> list[tuple[str, str, str]]:
    """(model_a, model_b, winner) of the battles RouteLLM's SW router keeps, in file order: rows of the
    released schema (prompt: a JSON list of turns; winner_model_a / winner_model_b 0 or 1, neither = a tie)
    whose first turn, stripped, has >= 16 characters. A bad row is an error naming its file and line."""
    kept: list[tuple[str, str, str]] = []
    for path in paths:
        for n, row in _rows(path):
            where = f"{path}:{n}"
            if not isinstance(row, dict) or any(c not in row for c in _BATTLE_COLUMNS):
                raise ImportError_(f"{where}: a battle needs the columns {', '.join(_BATTLE_COLUMNS)}")
            try:
                turns = json.loads(row["prompt"])
                first = turns[0].strip()
            except (TypeError, ValueError, IndexError, AttributeError):
                raise ImportError_(f"{where}: prompt must be a JSON list of turns (strings)") from None
            if len(first) < SW_MIN_FIRST_TURN:
                continue
            winner = "model_a" if row["winner_model_a"] == 1 else "model_b" if row["winner_model_b"] == 1 else "tie"
            kept.append((str(row["model_a"]), str(row["model_b"]), winner))
    return kept


def read_battle_embeddings(paths: list[Path]) -> np.ndarray:
    """float64 [n, dim] of the embeddings tables (rows with an `embeddings` list, or a .npy), in order."""
    parts = []
    for path in paths:
        if path.suffix == ".npy":
            try:
                table = np.load(path, allow_pickle=False)
                parts.append(np.asarray(table, dtype=np.float64))
            except ValueError as exc:  # an object array (pickled), strings, a bad header
                raise ImportError_(f"{path}: not a table of numbers ({exc})") from None
            if parts[-1].ndim != 2:
                raise ImportError_(f"{path}: expected a 2-d table of embeddings, got shape {parts[-1].shape}")
            continue
        rows = []
        for n, row in _rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("embeddings"), list):
                raise ImportError_(f"{path}:{n}: a row needs an 'embeddings' list")
            vector = row["embeddings"]
            if not all(type(v) in (int, float) for v in vector) or (rows and len(vector) != len(rows[0])):
                want = f" of {len(rows[0])}" if rows else ""
                raise ImportError_(f"{path}:{n}: 'embeddings' must be a list{want} numbers")
            rows.append(vector)
        parts.append(np.asarray(rows, dtype=np.float64))
    if len({p.shape[1] for p in parts if p.size}) > 1:
        raise ImportError_(f"the embeddings tables differ in width: {[p.shape[1] for p in parts]}")
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _battle_cells(pairs: list[tuple[int, int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """cells [c, 3] (a < b, outcome 0 = a wins, 1 = b wins, 2 = tie) and each battle's cell index."""
    keys = []
    for a, b, winner in pairs:
        outcome = 2 if winner == "tie" else 0 if winner == "model_a" else 1
        if a > b:
            a, b = b, a
            outcome = {0: 1, 1: 0, 2: 2}[outcome]
        keys.append((a, b, outcome))
    cells, index = np.unique(np.array(keys, dtype=np.int64).reshape(-1, 3), axis=0, return_inverse=True)
    return cells.astype(np.int32), index.reshape(-1)


def model_tiers(battles: list[tuple[str, str, str]], num_tiers: int) -> tuple[dict[str, int], dict[str, float]]:
    """RouteLLM's tiers: the models' Bradley-Terry-with-ties ratings on every kept battle (unweighted),
    sorted from the best, cut into `num_tiers` contiguous groups of least total within-group variance
    (its `compute_tiers` dynamic programme; tier 0 = the best). Also the ratings as Elo (400 x log10 odds
    + 1000)."""
    models = list(dict.fromkeys([a for a, _, _ in battles] + [b for _, b, _ in battles]))
    ids = {m: i for i, m in enumerate(models)}
    cells, index = _battle_cells([(ids[a], ids[b], w) for a, b, w in battles])
    counts = np.bincount(index, minlength=len(cells)).astype(np.float64)
    ratings = reference.bt_ratings_from_cells(cells, counts, len(models)) / np.log(10.0)
    elo = {m: float(400.0 * ratings[ids[m]] + 1000.0) for m in models}
    order = sorted(models, key=lambda m: -elo[m])
    r = [elo[m] for m in order]
    n, k = len(r), num_tiers
    dp = np.zeros((n, n, k))
    split = np.zeros((n, n, k), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            dp[i, j, 0] = np.var(r[i : j + 1])
    for t in range(1, k):
        for i in range(n):
            for j in range(i + 1, n):
                best, at = 1e9, 0
                for cut in range(i, j):
                    v = dp[i, cut, t - 1] + dp[cut + 1, j, 0]
                    if best > v:
                        best, at = v, cut
                dp[i, j, t], split[i, j, t] = best, at
    cuts, end = [], n
    for t in range(k - 1, 0, -1):
        cut = int(split[0, end - 1, t])
        cuts.append(cut)
        end = cut + 1
    bounds = cuts[::-1] + [n - 1]
    tiers, start = {}, 0
    for t, last in enumerate(bounds):
        for j in range(start, last + 1):
            tiers[order[j]] = t
        start = last + 1
    return tiers, elo


def import_sw(
    battles: list[Path],
    embeddings: list[Path],
    out: Path,
    *,
    strong: str = "gpt-4-1106-preview",
    weak: str = "mixtral-8x7b-instruct-v0.1",
    num_tiers: int = 10,
    fit: str = "routellm",
    remote: RemoteSettings | None = None,
    data_dir: Path = REPO_ROOT / "data",
    calibration_limit: int | None = None,
    calibration_prompts: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of RouteLLM's sw_ranking data (its battles and their embeddings tables, in the
    released schema) to `out`: this project's sw_ranking kind over RouteLLM's tiers, reproducing its fit.

    RouteLLM fits each request's weighted Bradley-Terry model with a design matrix whose two entries of a
    same-tier battle fall in one column, the second overwriting the first: such a battle is a game
    between the tier and a virtual opponent of rating 0 (the row's model_a side). The bundle keeps that:
    tier `num_tiers` is that virtual opponent, and a same-tier battle is a cell against it. Ratings are
    only defined up to a shift, and the score depends on the strong and weak tiers' difference only, so
    this is RouteLLM's model. `fit` says how each request's ratings are found: "routellm" (default) runs
    RouteLLM's own scikit-learn fit, which stops at its tolerance 1e-4 short of the optimum, so the
    bundle scores as RouteLLM as released does; "exact" solves the same model to its optimum in the
    compiled core (faster, no scikit-learn; scores differ from RouteLLM's by up to ~1e-4)."""
    if fit not in FITS:
        raise ImportError_(f"--sw-fit must be one of {', '.join(FITS)}, got {fit!r}")
    kept = read_battles(battles)
    emb = read_battle_embeddings(embeddings)
    if len(kept) != len(emb):
        raise ImportError_(
            f"{len(kept)} battles kept (first turn >= {SW_MIN_FIRST_TURN} characters) but {len(emb)} embeddings"
        )
    if emb.shape[1] != EMBEDDING_DIM:
        raise ImportError_(f"embeddings have dimension {emb.shape[1]}, {EMBEDDING_MODEL} gives {EMBEDDING_DIM}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if not np.isfinite(emb).all() or (norms == 0).any():
        raise ImportError_("embeddings hold a zero or non-finite row")
    tiers, elo = model_tiers(kept, num_tiers)
    for role, name in (("strong", strong), ("weak", weak)):
        if name not in tiers:
            raise ImportError_(f"--{role}-model {name!r} is in no battle ({len(tiers)} models)")
    virtual = num_tiers
    pairs = [(tiers[a], tiers[b], w) if tiers[a] != tiers[b] else (virtual, tiers[a], w) for a, b, w in kept]
    cells, index = _battle_cells(pairs)
    counts = np.zeros((len(kept), len(cells)), dtype=np.float32)
    counts[np.arange(len(kept)), index] = 1.0
    models = tuple(sorted(tiers))
    fingerprint = hashlib.sha256(b"".join(_sha256(p).encode() for p in [*battles, *embeddings])).hexdigest()
    label = (
        f"RouteLLM sw_ranking imported from {len(battles)} battle and {len(embeddings)} embedding tables "
        f"(sha256 of their sha256s {fingerprint[:16]})"
    )
    params = {
        "gamma": 10.0,
        "n_tiers": num_tiers + 1,
        "strong_tier": tiers[strong],
        "weak_tier": tiers[weak],
        "scale": 400.0,
        "base": 10.0,
        "fit": fit,
    }
    arrays = {"prompt_embeddings": (emb / norms).astype(np.float32), "cells": cells, "cell_counts": counts}
    router = RouterArtifacts(kind="sw_ranking", params=params, arrays=arrays)
    with tempfile.TemporaryDirectory() as tmp:
        write_remote_spec(Path(tmp), EMBEDDING_MODEL, EMBEDDING_DIM)
        imp = Imported(
            Path(tmp),
            _remote_encoder_spec("RouteLLM's sw_ranking embedding model"),
            "sw_ranking",
            router,
            models,
            DefaultPair(strong=strong, weak=weak),
            fingerprint,
            label,
        )
        return _write(
            out,
            imp,
            remote=remote,
            data_dir=data_dir,
            calibration_limit=calibration_limit,
            calibration_prompts=calibration_prompts,
            overwrite=overwrite,
            tiers=tiers,
            elo=elo,
        )


def _not_a_model(checkpoint: Path, exc: BaseException, copy: str = "") -> ImportError_:
    """A checkpoint transformers cannot load, named as given (not its temporary copy), in one line (not
    torch's advice to unpickle an untrusted file with weights_only=False)."""
    said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if copy:
        said = said.replace(copy, str(checkpoint))
    return ImportError_(f"{checkpoint}: not a model transformers can load ({said[:300]})")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", choices=["mf", "bert", "sw_ranking"], required=True, help="which RouteLLM router")
    p.add_argument("--checkpoint", type=Path, help="mf, bert: the checkpoint directory (config.json, ...)")
    p.add_argument("--battles", type=Path, nargs="+", help="sw_ranking: battle tables (.jsonl, .json, .parquet)")
    p.add_argument("--embeddings", type=Path, nargs="+", help="sw_ranking: their embeddings tables, same order")
    p.add_argument("--num-tiers", type=_at_least_one, default=10, help="sw_ranking: RouteLLM's num_tiers")
    p.add_argument(
        "--sw-fit",
        choices=FITS,
        default="routellm",
        help="sw_ranking: each request's fit: RouteLLM's own (scikit-learn, stopped at its tol 1e-4; scores as "
        "RouteLLM does) or the exact optimum (compiled, faster; differs by up to ~1e-4)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--strong-model", default="gpt-4-1106-preview")
    p.add_argument("--weak-model", default="mixtral-8x7b-instruct-v0.1")
    p.add_argument("--model-ids", type=Path, default=MF_MODEL_IDS, help="{model: row of P} (default RouteLLM's)")
    p.add_argument("--embeddings-base-url", default="", help="default OPENAI_BASE_URL, else OpenAI's API")
    p.add_argument("--embeddings-api-key-env", default="OPENAI_API_KEY", metavar="NAME")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    p.add_argument(
        "--calibration-limit", type=_at_least_one, default=None, help="embed only the first N calibration prompts"
    )
    p.add_argument("--overwrite", action="store_true")


def main(args: argparse.Namespace) -> int:
    remote = RemoteSettings(base_url=args.embeddings_base_url, api_key=os.environ.get(args.embeddings_api_key_env, ""))
    common = dict(  # what every router's import takes from the flags
        strong=args.strong_model,
        weak=args.weak_model,
        data_dir=args.data_dir,
        calibration_limit=args.calibration_limit,
        overwrite=args.overwrite,
    )
    try:
        if args.router == "sw_ranking":
            if not args.battles or not args.embeddings:
                raise ImportError_("--router sw_ranking needs --battles and --embeddings")
            out = import_sw(
                args.battles,
                args.embeddings,
                args.out,
                num_tiers=args.num_tiers,
                fit=args.sw_fit,
                remote=remote,
                **common,
            )
        elif args.checkpoint is None:
            raise ImportError_(f"--router {args.router} needs --checkpoint")
        elif args.router == "bert":
            out = import_bert(args.checkpoint, args.out, **common)
        else:
            out = import_mf(args.checkpoint, args.out, model_ids=args.model_ids, remote=remote, **common)
    except ImportError_ as exc:
        print(f"import-routellm: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # BundleError is a ValueError: an --out that exists, an endpoint down
        print(f"import-routellm: {exc}", file=sys.stderr)
        return 1
    print(f"import-routellm: wrote {out}")
    return 0
