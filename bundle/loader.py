"""The validating bundle loader: `load_bundle(path) -> Bundle`.

A bundle is accepted whole or refused with one `BundleError` naming the file and the problem (the
message forms are those of docs/BUNDLE.md). The loader checks, in order:
  1. manifest.json: JSON, schema version, strict schema, cross-field consistency (lmroute.bundle.manifest);
  2. every file in `files`: present, size, sha256 (the sha256 pass can be skipped for fast reloads);
  3. the encoder: tokenizer loads, ONNX inputs/outputs, one probe embedding of shape (1, dim), L2-normalised;
  4. every router's arrays: dtype, shape against encoder.dim / models / d_model / cells, NaN/inf, value
     ranges, the FAISS index against its rows, the mf pair vector against its factors, the bert ONNX
     signature.
"""

from __future__ import annotations

import hashlib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmroute.bundle.errors import BundleError
from lmroute.bundle.manifest import MANIFEST_NAME, Manifest, RouterSpec
from lmroute.bundle.routers import (
    BertRouter,
    BlendedRouter,
    MFRouter,
    PromptBatch,
    RandomRouter,
    Router,
    SWRankingRouter,
)
from lmroute.kernels import reference

if TYPE_CHECKING:
    import onnxruntime as ort

    from lmroute.bundle.encoder import OnnxEncoder

__all__ = ["Bundle", "load_bundle", "read_manifest", "sha256_file"]

ONNX_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
_NORM_TOL = 1e-3  # |1 - ||x|| | allowed for float32 rows that claim to be L2-normalised
_PAIR_VECTOR_TOL = 1e-4  # relative, between pair_vector and the one recomputed from the mf factors
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse and check `<bundle_dir>/manifest.json` alone (no file checks)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(MANIFEST_NAME, "missing")
    return Manifest.from_json(path.read_bytes())


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded, validated bundle: the manifest, the encoder and the routers (in manifest order)."""

    path: Path
    manifest: Manifest
    encoder: OnnxEncoder
    routers: Mapping[str, Router]

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    @property
    def needs_embeddings(self) -> bool:
        """True when some router scores from the encoder's embeddings."""
        return any(r.uses_encoder for r in self.routers.values())

    def prompt_batch(self, texts: Sequence[str]) -> PromptBatch:
        """Tokenise `texts` with the bundle's encoder and embed them when some router needs it."""
        texts = tuple(texts)
        tokens = self.encoder.tokenize(texts)
        embeddings = self.encoder.embed(tokens) if self.needs_embeddings else None
        return PromptBatch(texts=texts, tokens=tokens, embeddings=embeddings)

    def threshold_for_share(self, router: str, p: float) -> float:
        """Score threshold that sends a share `p` of calibration prompts to the strong model
        (linear interpolation in the calibration table)."""
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise ValueError(f"strong share p={p!r} is not a number")
        if not (math.isfinite(float(p)) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"strong share p={p!r} outside [0, 1]")
        if router not in self.routers:
            raise KeyError(f"unknown router {router!r} (bundle has: {', '.join(self.routers)})")
        calibration = self.manifest.calibration
        if calibration is None:
            raise BundleError(MANIFEST_NAME, "calibration: missing (the bundle is not calibrated)")
        share = np.asarray(calibration.strong_share, dtype=np.float64)
        thresholds = np.asarray(calibration.thresholds[router], dtype=np.float64)
        return float(np.interp(float(p), share, thresholds))


def load_bundle(
    path: str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 1,
    verify_checksums: bool = True,
    require_calibration: bool = True,
) -> Bundle:
    """Load and validate a bundle; raise BundleError (naming the file) on the first problem.

    `require_calibration=False` accepts a bundle whose calibration is still null (export scores the
    fresh bundle, then writes the table with `update_calibration`)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(str(root), "bundle directory does not exist")
    manifest = read_manifest(root)
    if require_calibration and manifest.calibration is None:
        raise BundleError(MANIFEST_NAME, "calibration: missing (the bundle is not calibrated)")
    _check_files(root, manifest, verify_checksums)
    encoder = _load_encoder(root, manifest, providers, intra_op_threads)
    routers: dict[str, Router] = {}
    prior_weights = _load_prior(root, manifest)
    for name, spec in manifest.routers.items():
        router = _load_router(root, manifest, name, spec, providers, intra_op_threads)
        if spec.blend is not None and manifest.difficulty_prior is not None:
            prior = manifest.difficulty_prior
            router = BlendedRouter(
                router,
                prior_weights=prior_weights,
                prior_bias=prior.bias,
                prior_center=prior.center,
                prior_scale=prior.scale,
                weight=spec.blend.prior_weight,
                center=spec.blend.center,
                scale=spec.blend.scale,
            )
        routers[name] = router
    return Bundle(path=root, manifest=manifest, encoder=encoder, routers=types.MappingProxyType(routers))


# ---- files ---------------------------------------------------------------------------------------
def _check_files(root: Path, manifest: Manifest, verify_checksums: bool) -> None:
    for rel, entry in manifest.files.items():
        file = root / rel
        if not file.is_file():
            raise BundleError(rel, "missing")
        size = file.stat().st_size
        if size != entry.bytes:
            raise BundleError(rel, f"size {size} bytes does not match manifest {entry.bytes}")
        if verify_checksums:
            actual = sha256_file(file)
            if actual != entry.sha256:
                raise BundleError(rel, f"sha256 mismatch (manifest {entry.sha256[:12]}..., file {actual[:12]}...)")


def _load_npy(root: Path, rel: str, dtype: type, axes: Sequence[tuple[str, int | None]]) -> np.ndarray:
    """Read a .npy (no pickles) and check dtype, shape (axis by axis, named) and finiteness."""
    try:
        with open(root / rel, "rb") as fh:
            array = np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise BundleError(rel, "unreadable .npy file (truncated, corrupt or pickled)") from exc
    if array.dtype != np.dtype(dtype):
        raise BundleError(rel, f"dtype {array.dtype}, expected {np.dtype(dtype)}")
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != len(axes):
        raise BundleError(rel, f"shape {shape} has {len(shape)} dimensions, expected {len(axes)}")
    for size, (label, expected) in zip(shape, axes):
        if expected is None:
            if size == 0:
                raise BundleError(rel, f"shape {shape} is empty")
        elif size != expected:
            raise BundleError(rel, f"shape {shape} does not match {label} {expected}")
    if array.dtype.kind == "f":
        if np.isnan(array).any():
            raise BundleError(rel, "contains NaN")
        if np.isinf(array).any():
            raise BundleError(rel, "contains inf")
    return np.ascontiguousarray(array)


# ---- ONNX ----------------------------------------------------------------------------------------
def _session(root: Path, rel: str, providers: Sequence[str], intra_op_threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(root / rel), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
        raise BundleError(rel, f"not a loadable ONNX model ({type(exc).__name__})") from exc


def _check_onnx_io(session: ort.InferenceSession, rel: str, output: str, last_dim: int, last_dim_label: str) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    for name in ONNX_INPUTS:
        if name not in inputs:
            raise BundleError(rel, f"missing input {name!r} (inputs: {sorted(inputs)})")
    for name, arg in inputs.items():
        if name not in ONNX_INPUTS:
            raise BundleError(rel, f"unexpected input {name!r}")
        if arg.type != "tensor(int64)":
            raise BundleError(rel, f"input {name!r} has type {arg.type}, expected tensor(int64)")
        if len(arg.shape) != 2:
            raise BundleError(rel, f"input {name!r} has rank {len(arg.shape)}, expected 2")
    outputs = {o.name: o for o in session.get_outputs()}
    if output not in outputs:
        raise BundleError(rel, f"no output {output!r} (outputs: {sorted(outputs)})")
    arg = outputs[output]
    if arg.type != "tensor(float)":
        raise BundleError(rel, f"output {output!r} has type {arg.type}, expected tensor(float)")
    if len(arg.shape) != 2:
        raise BundleError(rel, f"output {output!r} has rank {len(arg.shape)}, expected 2")
    last = arg.shape[1]
    if isinstance(last, int) and last != last_dim:
        raise BundleError(rel, f"output {output!r} has last dimension {last}, expected {last_dim_label} {last_dim}")


def _load_encoder(root: Path, manifest: Manifest, providers: Sequence[str], intra_op_threads: int) -> OnnxEncoder:
    from lmroute.bundle.encoder import EncoderModelError, OnnxEncoder

    spec = manifest.encoder
    model_rel, tok_rel = spec.files["model"], spec.files["tokenizer"]
    model_path, tok_path = root / model_rel, root / tok_rel
    try:
        encoder = OnnxEncoder(
            model_path,
            tok_path,
            max_tokens=spec.max_tokens,
            providers=tuple(providers),
            intra_op_threads=intra_op_threads,
        )
    except EncoderModelError as exc:
        # The encoder names the absolute file first ("<path>: <problem>"); re-root it in the bundle.
        text = str(exc)
        for rel, file in ((tok_rel, tok_path), (model_rel, model_path)):
            if text.startswith(f"{file}: "):
                raise BundleError(rel, text[len(f"{file}: ") :]) from exc
        raise BundleError(model_rel, text) from exc
    if encoder.dim != spec.dim:
        raise BundleError(
            model_rel,
            f"output 'sentence_embedding' has dimension {encoder.dim}, expected encoder.dim {spec.dim}",
        )
    try:
        emb = np.asarray(encoder.embed(encoder.tokenize(["bundle self-check"])))
    except Exception as exc:
        raise BundleError(model_rel, f"encoder failed its probe ({type(exc).__name__}: {exc})") from exc
    if emb.shape != (1, spec.dim):
        raise BundleError(model_rel, f"produced shape {emb.shape}, expected (1, {spec.dim})")
    if not np.isfinite(emb).all():
        raise BundleError(model_rel, "produced a non-finite embedding")
    norm = float(np.linalg.norm(emb.astype(np.float64)))
    if abs(norm - 1.0) > _NORM_TOL:
        raise BundleError(model_rel, f"output is not L2-normalised (norm {norm:.4g})")
    return encoder


# ---- routers -------------------------------------------------------------------------------------
def _load_prior(root: Path, manifest: Manifest) -> np.ndarray:
    """The difficulty prior's weights [encoder.dim] (float32, finite), or an empty array without one."""
    if manifest.difficulty_prior is None:
        return np.zeros(0, dtype=np.float32)
    rel = manifest.difficulty_prior.files["weights"]
    return _load_npy(root, rel, np.float32, [("encoder.dim", manifest.encoder.dim)])


def _load_router(
    root: Path,
    manifest: Manifest,
    name: str,
    spec: RouterSpec,
    providers: Sequence[str],
    intra_op_threads: int,
) -> Router:
    if spec.kind == "random":
        return RandomRouter(name, seed=spec.params["seed"])
    if spec.kind == "mf":
        return _load_mf(root, manifest, name, spec)
    if spec.kind == "sw_ranking":
        router = _load_sw(root, manifest, name, spec)
        if "CUDAExecutionProvider" in providers:
            from lmroute.kernels.gpu import cuda_available

            if cuda_available():  # the scan goes to the GPU with the encoder; Newton stays on the CPU
                router.use_device_scan()
        return router
    if spec.kind == "bert":
        return _load_bert(root, manifest, name, spec, providers, intra_op_threads)
    raise BundleError(MANIFEST_NAME, f"routers.{name}.kind: unknown router kind {spec.kind!r}")


def _load_mf(root: Path, manifest: Manifest, name: str, spec: RouterSpec) -> MFRouter:
    dim = ("encoder.dim", manifest.encoder.dim)
    d_model = ("params.d_model", spec.params["d_model"])
    files = spec.files
    text_proj = _load_npy(root, files["text_proj"], np.float32, [d_model, dim])
    model_emb = _load_npy(root, files["model_emb"], np.float32, [("number of models", len(manifest.models)), d_model])
    classifier = _load_npy(root, files["classifier"], np.float32, [d_model])
    pair_vector = _load_npy(root, files["pair_vector"], np.float32, [dim])
    norms = np.linalg.norm(model_emb.astype(np.float64), axis=1)
    if (norms == 0).any():
        row = int(np.argmin(norms))
        raise BundleError(files["model_emb"], f"row {row} ({manifest.models[row]}) is all zeros")
    strong = manifest.models.index(manifest.default_pair.strong)
    weak = manifest.models.index(manifest.default_pair.weak)
    expected = reference.mf_pair_vector(text_proj, model_emb, classifier, strong, weak)
    diff = float(np.max(np.abs(expected - pair_vector.astype(np.float64))))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if diff > _PAIR_VECTOR_TOL * scale:
        raise BundleError(
            files["pair_vector"],
            f"does not match text_proj/model_emb/classifier for the default pair (max |diff| {diff:.3g})",
        )
    return MFRouter(name, pair_vector=pair_vector)


def _load_sw(root: Path, manifest: Manifest, name: str, spec: RouterSpec) -> SWRankingRouter:
    files, params = spec.files, spec.params
    n_tiers = params["n_tiers"]
    prompts_rel, cells_rel, counts_rel = files["prompt_embeddings"], files["cells"], files["cell_counts"]
    prompts = _load_npy(root, prompts_rel, np.float32, [("n_prompts", None), ("encoder.dim", manifest.encoder.dim)])
    norms = np.linalg.norm(prompts.astype(np.float64), axis=1)
    worst = float(np.max(np.abs(norms - 1.0)))
    if worst > _NORM_TOL:
        raise BundleError(prompts_rel, f"rows are not L2-normalised (max |norm - 1| {worst:.3g})")
    cells = _load_npy(root, cells_rel, np.int32, [("n_cells", None), ("columns (tier_a, tier_b, outcome)", 3)])
    for row, (a, b, outcome) in enumerate(cells.tolist()):
        if not (0 <= a < n_tiers and 0 <= b < n_tiers):
            raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: tier out of range [0, {n_tiers})")
        if a >= b:
            raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: tier_a must be < tier_b")
        if outcome not in (0, 1, 2):
            raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: outcome must be 0, 1 or 2")
    if len({tuple(r) for r in cells.tolist()}) != cells.shape[0]:
        raise BundleError(cells_rel, "duplicate cells")
    present = set(cells[:, 0].tolist()) | set(cells[:, 1].tolist())
    for role in ("strong_tier", "weak_tier"):  # other tiers may be absent (their rating is then 0)
        if params[role] not in present:
            raise BundleError(cells_rel, f"params.{role} {params[role]} appears in no cell")
    counts = _load_npy(
        root,
        counts_rel,
        np.float32,
        [("prompt_embeddings rows", prompts.shape[0]), ("cells rows", cells.shape[0])],
    )
    if (counts < 0).any():
        raise BundleError(counts_rel, "contains negative counts")
    index = _load_faiss(root, files["index"], prompts, manifest.encoder.dim)
    return SWRankingRouter(
        name,
        prompt_embeddings=prompts,
        cell_counts=counts,
        cells=cells,
        index=index,
        n_tiers=n_tiers,
        strong_tier=params["strong_tier"],
        weak_tier=params["weak_tier"],
        gamma=params["gamma"],
        base=params["base"],
        scale=params["scale"],
    )


def _load_faiss(root: Path, rel: str, prompts: np.ndarray, dim: int) -> Any:
    import faiss

    try:
        index = faiss.read_index(str(root / rel))
    except Exception as exc:  # faiss raises RuntimeError with a C++ trace
        raise BundleError(rel, "not a readable FAISS index") from exc
    if index.d != dim:
        raise BundleError(rel, f"index dimension {index.d} does not match encoder.dim {dim}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise BundleError(rel, "index metric is not inner product (expected IndexFlatIP)")
    if index.ntotal != prompts.shape[0]:
        raise BundleError(rel, f"index holds {index.ntotal} vectors, prompt_embeddings has {prompts.shape[0]}")
    try:
        rows = index.reconstruct_n(0, index.ntotal)
    except Exception as exc:
        raise BundleError(rel, "index cannot return its rows (expected IndexFlatIP)") from exc
    diff = float(np.max(np.abs(rows - prompts)))
    if diff > 1e-6:
        raise BundleError(rel, f"index rows differ from prompt_embeddings (max |diff| {diff:.3g})")
    return index


def _load_bert(
    root: Path,
    manifest: Manifest,
    name: str,
    spec: RouterSpec,
    providers: Sequence[str],
    intra_op_threads: int,
) -> BertRouter:
    if spec.params["max_tokens"] != manifest.encoder.max_tokens:
        raise BundleError(
            MANIFEST_NAME,
            f"routers.{name}.params.max_tokens: {spec.params['max_tokens']} differs from "
            f"encoder.max_tokens {manifest.encoder.max_tokens} (bert reads the encoder's tokens)",
        )
    rel = spec.files["model"]
    session = _session(root, rel, providers, intra_op_threads)
    labels = spec.params["labels"]
    _check_onnx_io(session, rel, "logits", len(labels), "number of labels")
    return BertRouter(name, session=session, labels=labels)
