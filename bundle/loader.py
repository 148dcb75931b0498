"""The validating bundle loader: `load_bundle(path) -> Bundle`.

A bundle is accepted whole or refused with one `BundleError` naming the file and the problem (the
message forms are those of docs/BUNDLE.md). The loader checks, in order:
  0. with a public key: the Ed25519 signature manifest.json.sig over the exact bytes read
     (lmroute.bundle.signing);
  1. manifest.json: JSON, schema version, strict schema, cross-field consistency (lmroute.bundle.manifest),
     then its integrity: bundle_version equals the content version recomputed from the manifest as read
     (`content_version_of`), so a manifest edited after it was written is refused;
  2. every file in `files`: present, size, sha256 (the sha256 pass can be skipped for fast reloads);
  3. the encoder: tokenizer loads, ONNX inputs/outputs (kind onnx) or the token table's dtype, shape and
     values (kind static), one probe embedding of shape (1, dim), L2-normalised;
  4. the difficulty prior's weights, then every router through its kind (`lmroute.bundle.kinds`): dtype,
     shape, NaN/inf and value ranges of its arrays, and what else the kind checks (the mf pair vector
     against its factors, the sw_ranking cells against its tiers, the bert ONNX signature).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lmroute.bundle import kinds
from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import BundleFiles, load_npy, read_regular_file
from lmroute.bundle.kinds import LoadContext
from lmroute.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, content_version_of, decode_json
from lmroute.bundle.routers import BlendedRouter, ModelQualities, PromptBatch, Router

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from lmroute.bundle.encoder import SentenceEncoder
    from lmroute.bundle.remote_encoder import RemoteSettings

__all__ = ["Bundle", "load_bundle", "read_manifest"]

_NORM_TOL = 1e-3  # |1 - ||x|| | allowed for the encoder's probe embedding


def read_manifest(bundle_dir: str | Path, *, public_key: Ed25519PublicKey | None = None) -> Manifest:
    """Parse and check `<bundle_dir>/manifest.json` alone (no file checks): the strict schema, its
    integrity (bundle_version is its content version) and, given a public key, its signature."""
    root = Path(bundle_dir)
    # read once: the signature, the parser and the hash see the same bytes
    blob = read_regular_file(root / MANIFEST_NAME, MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
    if public_key is not None:
        from lmroute.bundle.signing import verify_manifest_signature

        verify_manifest_signature(root, blob, public_key)
    data = decode_json(blob)
    manifest = Manifest.from_dict(data)
    recomputed = content_version_of(data)
    if manifest.bundle_version != recomputed:
        raise BundleError(
            MANIFEST_NAME,
            f"bundle_version {manifest.bundle_version!r} does not match the content version recomputed from "
            f"the manifest, {recomputed!r}: the manifest of {root} was edited after the bundle was written "
            f"(re-stamp a deliberate edit with `lmroute-export restamp --bundle {root}`)",
        )
    return manifest


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded, validated bundle: the manifest, the encoder and the routers (in manifest order)."""

    path: Path
    manifest: Manifest
    encoder: SentenceEncoder
    routers: Mapping[str, Router]
    prior_weights: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

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

    def with_manifest(self, manifest: Manifest) -> Bundle:
        """The same bundle under `manifest`, which may differ from this one's only in the routers' blends
        and the calibration table (what the build fixes after training): the routers are re-wrapped in
        their new blends without reloading any file. Anything else that differs is a ValueError."""
        unblended = {name: dataclasses.replace(spec, blend=None) for name, spec in manifest.routers.items()}
        ours = {name: dataclasses.replace(spec, blend=None) for name, spec in self.manifest.routers.items()}
        same = dataclasses.replace(manifest, routers=ours, calibration=None, bundle_version="", created_at="")
        if unblended != ours or same != dataclasses.replace(
            self.manifest, routers=ours, calibration=None, bundle_version="", created_at=""
        ):
            raise ValueError("with_manifest: the manifests differ in more than blends and calibration")
        routers = {
            name: _blended(_unblended(router), manifest, name, self.prior_weights)
            for name, router in self.routers.items()
        }
        return dataclasses.replace(self, manifest=manifest, routers=types.MappingProxyType(routers))

    def threshold_for_share(self, router: str, p: float) -> float:
        """Score threshold that sends a share `p` of calibration prompts to the strong model (linear
        interpolation in the calibration table); 0 and 1 are never and always: just above 1.0 and 0.0
        (scores lie in [0, 1]; finite, so any JSON takes it), not the table's end points, which a prompt
        scoring beyond them crossed."""
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise ValueError(f"strong share p={p!r} is not a number")
        if not (math.isfinite(float(p)) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"strong share p={p!r} outside [0, 1]")
        if router not in self.routers:
            raise KeyError(f"unknown router {router!r} (bundle has: {', '.join(self.routers)})")
        calibration = self.manifest.calibration
        if calibration is None:
            raise BundleError(MANIFEST_NAME, "calibration: missing (the bundle is not calibrated)")
        if float(p) == 0.0:
            return NEVER_STRONG
        if float(p) == 1.0:
            return 0.0
        share = np.asarray(calibration.strong_share, dtype=np.float64)
        thresholds = np.asarray(calibration.thresholds[router], dtype=np.float64)
        return float(np.interp(float(p), share, thresholds))


NEVER_STRONG = math.nextafter(1.0, math.inf)
"""The threshold no score reaches (scores lie in [0, 1]): strong share 0."""


def load_bundle(
    path: str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 1,
    verify_checksums: bool = True,
    require_calibration: bool = True,
    manifest: Manifest | None = None,
    public_key: Ed25519PublicKey | None = None,
    remote: RemoteSettings | None = None,
) -> Bundle:
    """Load and validate a bundle; raise BundleError (naming the file) on the first problem.

    `require_calibration=False` accepts a bundle whose calibration is still null. `manifest` loads the
    files under an in-memory manifest instead of the directory's manifest.json (the writer's staged
    bundle, whose manifest is written last; its version and signature are not checked). `public_key`
    requires manifest.json.sig to be a valid signature of manifest.json by that key. `remote`: where a
    remote encoder's embeddings endpoint is (`lmroute.bundle.remote_encoder`; default from the
    environment)."""
    root = Path(path)
    if not root.is_dir():
        what = "is not a directory (a bundle is one)" if root.exists() else "bundle directory does not exist"
        raise BundleError(str(root), what)
    if manifest is None:
        manifest = read_manifest(root, public_key=public_key)
    elif public_key is not None:
        raise ValueError("load_bundle: public_key checks manifest.json, which manifest= replaces")
    if require_calibration and manifest.calibration is None:
        raise BundleError(MANIFEST_NAME, "calibration: missing (the bundle is not calibrated)")
    # every listed file read once and checked: what is parsed below is what was checked
    files = BundleFiles.read(root, manifest.files, verify_checksums=verify_checksums)
    encoder = _load_encoder(root, manifest, providers, intra_op_threads, remote, files)
    routers: dict[str, Router] = {}
    prior_weights = _load_prior(files, manifest)
    ctx = LoadContext(
        root=root, manifest=manifest, providers=tuple(providers), intra_op_threads=intra_op_threads, files=files
    )
    for name, spec in manifest.routers.items():
        kind = kinds.get(spec.kind)
        router = kind.load(ctx, name, spec)
        if kind.predicts_qualities and not isinstance(router, ModelQualities):  # a plug-in's kind, say
            raise BundleError(
                MANIFEST_NAME,
                f"routers.{name}: kind {spec.kind!r} says it predicts each model's quality (predicts_qualities),"
                f" but the router it loaded has no models and qualities() (lmroute.bundle.routers.ModelQualities)",
            )
        routers[name] = _blended(router, manifest, name, prior_weights)
    return Bundle(
        path=root,
        manifest=manifest,
        encoder=encoder,
        routers=types.MappingProxyType(routers),
        prior_weights=prior_weights,
    )


def _blended(router: Router, manifest: Manifest, name: str, prior_weights: npt.NDArray[np.float32]) -> Router:
    """`router` wrapped in the difficulty-prior blend that manifest.routers[name] asks for (or as it is)."""
    blend, prior = manifest.routers[name].blend, manifest.difficulty_prior
    if blend is None or prior is None:
        return router
    return BlendedRouter(router, prior=prior, prior_weights=prior_weights, blend=blend)


def _unblended(router: Router) -> Router:
    return router.inner if isinstance(router, BlendedRouter) else router


def _load_encoder(
    root: Path,
    manifest: Manifest,
    providers: Sequence[str],
    intra_op_threads: int,
    remote: RemoteSettings | None,
    files: BundleFiles,
) -> SentenceEncoder:
    from lmroute.bundle.encoder import EncoderModelError, OnnxEncoder
    from lmroute.bundle.remote_encoder import RemoteEncoder, RemoteEncoderError
    from lmroute.bundle.static_encoder import StaticEncoder

    spec = manifest.encoder
    model_role = {"static": "table", "remote": "spec"}.get(spec.kind, "model")
    model_rel = spec.files[model_role]
    tok_rel = spec.files.get("tokenizer", model_rel)
    model_path, tok_path = root / model_rel, root / tok_rel
    read = files.reader()
    encoder: SentenceEncoder
    try:
        if spec.kind == "remote":
            encoder = RemoteEncoder(model_path, max_tokens=spec.max_tokens, settings=remote, read=read)
        elif spec.kind == "static":
            encoder = StaticEncoder(
                model_path, tok_path, max_tokens=spec.max_tokens, truncation=spec.truncation, read=read
            )
        else:
            encoder = OnnxEncoder(
                model_path,
                tok_path,
                max_tokens=spec.max_tokens,
                truncation=spec.truncation,
                providers=tuple(providers),
                intra_op_threads=intra_op_threads,
                read=read,
            )
    except EncoderModelError as exc:
        # The encoder names the absolute file first ("<path>: <problem>"); re-root it in the bundle.
        text = str(exc)
        for rel, file in ((tok_rel, tok_path), (model_rel, model_path)):
            if text.startswith(f"{file}: "):
                raise BundleError(rel, text[len(f"{file}: ") :]) from exc
        raise BundleError(model_rel, text) from exc
    if encoder.dim != spec.dim:
        what = {"static": "the table's rows have", "remote": "the endpoint's model has"}.get(
            spec.kind, "output 'sentence_embedding' has"
        )
        raise BundleError(model_rel, f"{what} dimension {encoder.dim}, expected encoder.dim {spec.dim}")
    try:
        emb = np.asarray(encoder.embed(encoder.tokenize(["bundle self-check"])))
    except RemoteEncoderError as exc:
        raise BundleError(model_rel, f"the embeddings endpoint failed the probe: {exc}") from exc
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
def _load_prior(files: BundleFiles, manifest: Manifest) -> npt.NDArray[np.float32]:
    """The difficulty prior's weights [encoder.dim] (float32, finite), or an empty array without one."""
    if manifest.difficulty_prior is None:
        return np.zeros(0, dtype=np.float32)
    rel = manifest.difficulty_prior.files["weights"]
    return load_npy(files, rel, np.float32, [("encoder.dim", manifest.encoder.dim)])
