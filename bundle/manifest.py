"""The manifest.json schema (version 3, see docs/BUNDLE.md): frozen dataclasses and a strict parser.

Version 2 added the optional difficulty prior (`difficulty_prior`, and a `blend` per router); version 3
drops sw_ranking's FAISS index file. Versions 1 and 2 are still read (a version-2 sw_ranking `index` is
checksummed and ignored). Each router's `kind`, `files` and `params` are read by its kind
(`lmroute.bundle.kinds`).

`Manifest.from_json` rejects anything the schema does not describe: a missing key, an unknown key,
a wrong type, an unknown router kind, and every inconsistency that can be seen from the manifest alone
(default pair not in models, sw_ranking tiers that disagree with `tiers`, a calibration table that is not
monotone, a file role with no checksum entry, a path that leaves the bundle). Errors are `BundleError`s
naming "manifest.json" and the key path, e.g. "manifest.json: routers.mf.files.pair_vector: missing".
Checks that need the files themselves (checksums, array shapes, ONNX signatures) live in the loader.

`content_version_of` is the hash of the manifest's content that its `bundle_version` must equal; the
loader recomputes it from manifest.json as read and refuses a mismatch (docs/BUNDLE.md, "Integrity and
signing").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lmroute.bundle import kinds
from lmroute.bundle.jsonread import MANIFEST_NAME, Node, as_float, as_str, fail, type_name, unique_keys
from lmroute.bundle.truncation import HEAD, TRUNCATION_RULES, Truncation
from lmroute.outcomes.records import TENANT_RE

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "ENCODER_FILES",
    "encoder_identity",
    "READABLE_SCHEMA_VERSIONS",
    "Blend",
    "Calibration",
    "DefaultPair",
    "DifficultyPriorSpec",
    "ENCODER_FILES_BY_KIND",
    "ENCODER_KINDS",
    "EncoderSpec",
    "FileEntry",
    "StaticDistillation",
    "Lineage",
    "lineage_time",
    "Manifest",
    "RouterSpec",
    "TrainingData",
    "UNVERSIONED_KEYS",
    "content_version_of",
    "decode_json",
]

SCHEMA_VERSION = 3
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3)
PRIOR_FILES: dict[str, str] = {"weights": "difficulty_prior/weights.npy"}
ENCODER_FILES: dict[str, str] = {"model": "encoder/model.onnx", "tokenizer": "encoder/tokenizer.json"}
ENCODER_KINDS: tuple[str, ...] = ("onnx", "static", "remote")
ENCODER_FILES_BY_KIND: dict[str, dict[str, str]] = {
    "onnx": ENCODER_FILES,
    "static": {"table": "encoder/table.npy", "tokenizer": "encoder/tokenizer.json"},
    "remote": {"spec": "encoder/remote.json"},
}
UNVERSIONED_KEYS: tuple[str, ...] = ("bundle_version", "created_at", "library_versions")
"""The manifest keys the content version leaves out: the version itself, and two that change no score
(created_at counts only through the date that prefixes the version)."""

_ROUTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


MAX_PATH_CHARS = 512
"""The longest file path a manifest may name (each part at most 255 characters, as on common file systems)."""
MAX_MANIFEST_BYTES = 16 << 20
"""The largest manifest.json read (a bundle's is tens of kilobytes)."""
MIN_SCALE = 1e-6
"""The smallest blend or prior scale (a logit divided by less saturates every score to 0 or 1)."""
MAX_TOKENS_LIMIT = 1 << 16
"""The largest encoder.max_tokens a manifest may state."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_rel_path(path: str, where: str) -> None:
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or path == MANIFEST_NAME
    ):
        raise fail(f"{where}: invalid bundle path {path[:80]!r}")
    if _CONTROL.search(path):
        raise fail(f"{where[:100]}: invalid bundle path {path[:80]!r} (a control character)")
    if len(path) > MAX_PATH_CHARS or any(len(p.encode()) > 255 for p in parts):
        raise fail(
            f"{where[:100]}...: invalid bundle path of {len(path)} characters (at most {MAX_PATH_CHARS}, 255 "
            "bytes a part)"
        )


@dataclass(frozen=True)
class FileEntry:
    """Checksum entry of one bundle file."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class StaticDistillation:
    """How a static encoder's token table was made from a transformer encoder
    (`lmroute.export.static_distill`): every tokenizer id run through `source` (the transformer's name and
    the sha256 of its model.onnx) as [CLS] token [SEP]; the embeddings centred and projected on their
    first `dim` principal components; row t scaled by the SIF weight sif_a / (sif_a + p(t)), p the
    token's frequency in `token_counts_from` (`n_texts` texts, `n_tokens` tokens, add-one smoothed)."""

    source: str
    source_sha256: str
    dim: int
    sif_a: float
    token_counts_from: str
    n_texts: int
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "dim": self.dim,
            "sif_a": self.sif_a,
            "token_counts_from": self.token_counts_from,
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
        }

    @classmethod
    def _parse(cls, node: Node) -> StaticDistillation:
        out = cls(
            source=node.str_("source"),
            source_sha256=node.str_("source_sha256"),
            dim=node.int_("dim"),
            sif_a=node.float_("sif_a"),
            token_counts_from=node.str_("token_counts_from"),
            n_texts=node.int_("n_texts"),
            n_tokens=node.int_("n_tokens"),
        )
        node.close()
        if not _SHA256.match(out.source_sha256):
            raise fail(f"{node.key('source_sha256')}: not a lowercase hex sha256")
        if out.sif_a <= 0:
            raise fail(f"{node.key('sif_a')}: must be positive, got {out.sif_a}")
        if out.n_texts < 0 or out.n_tokens < 0:
            raise fail(f"{node.key('n_texts')}, {node.key('n_tokens')}: must be >= 0")
        return out


@dataclass(frozen=True)
class EncoderSpec:
    """The sentence encoder and its HF tokenizer. `kind` "onnx": an ONNX graph that pools and
    L2-normalises (files model + tokenizer); "static": a token table distilled from one
    (`lmroute.bundle.static_encoder`; files table + tokenizer; `distillation` says how); "remote": an
    OpenAI-compatible embeddings endpoint (`lmroute.bundle.remote_encoder`; file spec, which names the
    embedding model; max_tokens is the endpoint's limit, nothing is cut here).

    truncation: what the encoder keeps of a prompt longer than max_tokens (`lmroute.bundle.truncation`);
    the manifest key `truncation` is optional, a manifest without it means `head` (and `head` is written
    without it, so a bundle from before the key keeps its content version). Likewise `kind`: absent
    means "onnx", which is written without it."""

    name: str
    source: str
    dim: int
    max_tokens: int
    pooling: str = "mean"
    normalized: bool = True
    quantized: bool = False
    files: Mapping[str, str] = field(default_factory=lambda: dict(ENCODER_FILES))
    truncation: Truncation = HEAD
    kind: str = "onnx"
    distillation: StaticDistillation | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "pooling": self.pooling,
            "normalized": self.normalized,
            "quantized": self.quantized,
            "files": dict(self.files),
        }
        if self.truncation != HEAD:
            out["truncation"] = self.truncation.to_dict()
        if self.kind != "onnx":
            out["kind"] = self.kind
        if self.distillation is not None:
            out["distillation"] = self.distillation.to_dict()
        return out

    @classmethod
    def _parse(cls, node: Node) -> EncoderSpec:
        kind = node.str_("kind") if node.has("kind") else "onnx"
        if kind not in ENCODER_KINDS:
            raise fail(f"encoder.kind: unknown kind {kind!r} (known: {', '.join(ENCODER_KINDS)})")
        files_node = node.node("files")
        files = {role: files_node.str_(role) for role in ENCODER_FILES_BY_KIND[kind]}
        files_node.close()
        truncation_node = node.node("truncation") if node.has("truncation") else None
        distillation = StaticDistillation._parse(node.node("distillation")) if node.has("distillation") else None
        spec = cls(
            name=node.str_("name"),
            source=node.str_("source"),
            dim=node.int_("dim"),
            max_tokens=node.int_("max_tokens"),
            pooling=node.str_("pooling"),
            normalized=node.bool_("normalized"),
            quantized=node.bool_("quantized"),
            files=files,
            kind=kind,
            distillation=distillation,
        )
        node.close()
        if spec.dim <= 0:
            raise fail(f"encoder.dim: must be positive, got {spec.dim}")
        if not 2 <= spec.max_tokens <= MAX_TOKENS_LIMIT:
            raise fail(
                f"encoder.max_tokens: must be in [2, {MAX_TOKENS_LIMIT}] (room for [CLS] and [SEP]), got "
                f"{spec.max_tokens}"
            )
        pooling = "endpoint" if kind == "remote" else "mean"  # a remote model pools as it does
        if spec.pooling != pooling:
            raise fail(f"encoder.pooling: unsupported pooling {spec.pooling!r} (a {kind} encoder reads {pooling!r})")
        if not spec.normalized:
            raise fail("encoder.normalized: must be true (routers assume L2-normalised embeddings)")
        if (kind == "static") != (distillation is not None):
            raise fail("encoder.distillation: a static encoder says how it was distilled, another kind has none")
        if distillation is not None and distillation.dim != spec.dim:
            raise fail(f"encoder.distillation.dim: {distillation.dim} differs from encoder.dim {spec.dim}")
        if kind == "static" and spec.quantized:
            raise fail("encoder.quantized: a static encoder is a float32 table, not a quantised graph")
        if truncation_node is not None:
            spec = replace(spec, truncation=_parse_truncation(truncation_node, spec.max_tokens))
        return spec


def _parse_truncation(node: Node, max_tokens: int) -> Truncation:
    """encoder.truncation: {"rule": "head" | "tail" | "head_tail", "head_tokens": int}; head_tail keeps
    1..max_tokens-3 head tokens (room for [CLS], [SEP] and one tail token), the other rules 0."""
    rule, head_tokens = node.str_("rule"), node.int_("head_tokens")
    node.close()
    if rule not in TRUNCATION_RULES:
        raise fail(f"{node.key('rule')}: unknown rule {rule!r} (known: {', '.join(TRUNCATION_RULES)})")
    if rule == "head_tail" and not 1 <= head_tokens <= max_tokens - 3:
        raise fail(
            f"{node.key('head_tokens')}: must be in [1, {max_tokens - 3}] for rule head_tail "
            f"(max_tokens {max_tokens}), got {head_tokens}"
        )
    if rule != "head_tail" and head_tokens != 0:
        raise fail(f"{node.key('head_tokens')}: must be 0 for rule {rule}, got {head_tokens}")
    return Truncation(rule=rule, head_tokens=head_tokens)


@dataclass(frozen=True)
class DefaultPair:
    """The (strong, weak) model pair the routers decide between."""

    strong: str
    weak: str


@dataclass(frozen=True)
class Blend:
    """How a router's score is blended with the bundle's difficulty prior (docs/BUNDLE.md):
    score = sigmoid((logit(p) - center) / scale + prior_weight * z_difficulty)."""

    prior_weight: float
    center: float
    scale: float

    def to_dict(self) -> dict[str, float]:
        return {"prior_weight": self.prior_weight, "center": self.center, "scale": self.scale}

    @classmethod
    def _parse(cls, node: Node) -> Blend:
        blend = cls(prior_weight=node.float_("prior_weight"), center=node.float_("center"), scale=node.float_("scale"))
        if blend.prior_weight < 0:
            raise fail(f"{node.key('prior_weight')}: must be >= 0, got {blend.prior_weight}")
        if not blend.scale >= MIN_SCALE:
            raise fail(f"{node.key('scale')}: must be at least {MIN_SCALE:g}, got {blend.scale}")
        node.close()
        return blend


@dataclass(frozen=True)
class DifficultyPriorSpec:
    """A linear model of question difficulty on the encoder's embedding: difficulty(e) =
    -(e . weights + bias), standardised as (difficulty - center) / scale. `weights` is float32 [dim]."""

    source: str
    n_questions: int
    ridge: float
    bias: float
    center: float
    scale: float
    files: Mapping[str, str] = field(default_factory=lambda: dict(PRIOR_FILES))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_questions": self.n_questions,
            "ridge": self.ridge,
            "bias": self.bias,
            "center": self.center,
            "scale": self.scale,
            "files": dict(self.files),
        }

    @classmethod
    def _parse(cls, node: Node) -> DifficultyPriorSpec:
        files_node = node.node("files")
        files = {role: files_node.str_(role) for role in PRIOR_FILES}
        files_node.close()
        spec = cls(
            source=node.str_("source"),
            n_questions=node.int_("n_questions"),
            ridge=node.float_("ridge"),
            bias=node.float_("bias"),
            center=node.float_("center"),
            scale=node.float_("scale"),
            files=files,
        )
        for name in ("n_questions", "ridge", "scale"):
            if getattr(spec, name) <= 0:
                raise fail(f"{node.key(name)}: must be positive, got {getattr(spec, name)}")
        if spec.scale < MIN_SCALE:
            raise fail(f"{node.key('scale')}: must be at least {MIN_SCALE:g}, got {spec.scale}")
        node.close()
        return spec


@dataclass(frozen=True)
class RouterSpec:
    """One router: its kind, its files (role -> bundle-relative path), its params (the kind's typed
    Params, `lmroute.bundle.kinds`) and, from schema version 2, an optional blend with the difficulty
    prior."""

    kind: str
    files: Mapping[str, str]
    params: Any
    uses_encoder: bool
    blend: Blend | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "uses_encoder": self.uses_encoder,
            "files": dict(self.files),
            "params": kinds.get(self.kind).params_to_dict(self.params),
        }
        if self.blend is not None:
            out["blend"] = self.blend.to_dict()
        return out

    @classmethod
    def _parse(cls, node: Node, schema_version: int = SCHEMA_VERSION) -> RouterSpec:
        name = node.str_("kind")
        try:
            kind = kinds.get(name)
        except KeyError:
            known = ", ".join(kinds.names())
            raise fail(f"{node.key('kind')}: unknown router kind {name!r} (known: {known})") from None
        got_uses = node.bool_("uses_encoder")
        if got_uses != kind.uses_encoder:
            raise fail(f"{node.key('uses_encoder')}: must be {str(kind.uses_encoder).lower()} for kind {name}")
        files_node = node.node("files")
        files = {role.name: files_node.str_(role.name) for role in kind.roles}
        for role, last_version in kind.retired_roles.items():
            if schema_version <= last_version and files_node.has(role):
                files[role] = files_node.str_(role)
        files_node.close()
        params = kind.read_params(node.raw("params"), node.key("params"))
        blend = None
        if schema_version >= 2 and node.has("blend"):
            blend = Blend._parse(node.node("blend"))
        node.close()
        kind.check_params(params, node.key("params"))
        return cls(kind=name, files=files, params=params, uses_encoder=got_uses, blend=blend)


@dataclass(frozen=True)
class Calibration:
    """Thresholds per router for a grid of target strong-call shares (threshold_i = quantile_{1-p_i})."""

    source: str
    n_prompts: int
    strong_share: tuple[float, ...]
    thresholds: Mapping[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_prompts": self.n_prompts,
            "strong_share": list(self.strong_share),
            "thresholds": {name: list(values) for name, values in self.thresholds.items()},
        }

    @classmethod
    def _parse(cls, node: Node) -> Calibration:
        source = node.str_("source")
        n_prompts = node.int_("n_prompts")
        share_key = node.key("strong_share")
        share = tuple(as_float(v, f"{share_key}[{i}]") for i, v in enumerate(node.list_("strong_share")))
        th_node = node.node("thresholds")
        thresholds: dict[str, tuple[float, ...]] = {}
        for name in th_node.keys():
            key = th_node.key(name)
            values = th_node.raw(name)
            if not isinstance(values, list):
                raise fail(f"{key}: expected list, got {type_name(values)}")
            thresholds[name] = tuple(as_float(v, f"{key}[{i}]") for i, v in enumerate(values))
        th_node.close()
        node.close()
        calib = cls(source=source, n_prompts=n_prompts, strong_share=share, thresholds=thresholds)
        calib.check()
        return calib

    def check(self) -> None:
        """Raise BundleError unless the table is usable: shares strictly increasing from 0 to 1,
        thresholds in [0, 1] and non-increasing, one threshold per share."""
        share = self.strong_share
        if self.n_prompts <= 0:
            raise fail(f"calibration.n_prompts: must be positive, got {self.n_prompts}")
        if len(share) < 2:
            raise fail(f"calibration.strong_share: needs at least 2 points, got {len(share)}")
        if share[0] != 0.0 or share[-1] != 1.0:
            raise fail(f"calibration.strong_share: must run from 0.0 to 1.0, got {share[0]} .. {share[-1]}")
        for i in range(1, len(share)):
            if not share[i] > share[i - 1]:
                raise fail(f"calibration.strong_share: not increasing at index {i} ({share[i - 1]} -> {share[i]})")
        for name, values in self.thresholds.items():
            key = f"calibration.thresholds.{name}"
            if len(values) != len(share):
                raise fail(f"{key}: has {len(values)} points, strong_share has {len(share)}")
            for i, v in enumerate(values):
                if not 0.0 <= v <= 1.0:
                    raise fail(f"{key}[{i}]: {v} outside [0, 1]")
            for i in range(1, len(values)):
                if values[i] > values[i - 1]:
                    raise fail(f"{key}: not non-increasing at index {i} ({values[i - 1]} -> {values[i]})")


@dataclass(frozen=True)
class TrainingData:
    """What the routers were trained on (fingerprint = sha256 of the comparison table)."""

    fingerprint: str
    n_comparisons: int
    n_prompts: int
    by_label_kind: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "n_comparisons": self.n_comparisons,
            "n_prompts": self.n_prompts,
            "by_label_kind": dict(self.by_label_kind),
        }

    @classmethod
    def _parse(cls, node: Node) -> TrainingData:
        by_node = node.node("by_label_kind")
        by_kind = {name: by_node.int_(name) for name in by_node.keys()}
        by_node.close()
        data = cls(
            fingerprint=node.str_("fingerprint"),
            n_comparisons=node.int_("n_comparisons"),
            n_prompts=node.int_("n_prompts"),
            by_label_kind=by_kind,
        )
        node.close()
        for name, count in (("n_comparisons", data.n_comparisons), ("n_prompts", data.n_prompts)):
            if count < 0:
                raise fail(f"training_data.{name}: negative ({count})")
        for kind, count in by_kind.items():
            if count < 0:
                raise fail(f"training_data.by_label_kind.{kind}: negative ({count})")
        return data


@dataclass(frozen=True)
class Lineage:
    """Where an adapted bundle comes from (the optional `lineage` key, written by `lmroute.adapt`): the
    parent bundle's version, the router the adaptation added, the outcomes it learnt from (kind "paired"
    "single" or "qualities", how many, the time range as ISO-8601 UTC strings), the learner and its numeric settings,
    and how many recent prompts calibrated the router's thresholds. A manifest without it has no key."""

    parent_version: str
    router: str
    outcome_kind: str
    n_outcomes: int
    first_outcome_at: str
    last_outcome_at: str
    learner: str
    settings: Mapping[str, float]
    calibration_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent_version": self.parent_version,
            "router": self.router,
            "outcome_kind": self.outcome_kind,
            "n_outcomes": self.n_outcomes,
            "first_outcome_at": self.first_outcome_at,
            "last_outcome_at": self.last_outcome_at,
            "learner": self.learner,
            "settings": dict(self.settings),
            "calibration_prompts": self.calibration_prompts,
        }

    @classmethod
    def _parse(cls, node: Node) -> Lineage:
        settings_node = node.node("settings")
        settings = {name: settings_node.float_(name) for name in settings_node.keys()}
        settings_node.close()
        lineage = cls(
            parent_version=node.str_("parent_version"),
            router=node.str_("router"),
            outcome_kind=node.str_("outcome_kind"),
            n_outcomes=node.int_("n_outcomes"),
            first_outcome_at=node.str_("first_outcome_at"),
            last_outcome_at=node.str_("last_outcome_at"),
            learner=node.str_("learner"),
            settings=settings,
            calibration_prompts=node.int_("calibration_prompts"),
        )
        node.close()
        if lineage.outcome_kind not in ("paired", "single", "qualities"):
            raise fail(
                f"{node.key('outcome_kind')}: must be 'paired', 'single' or 'qualities', got {lineage.outcome_kind!r}"
            )
        for name in ("n_outcomes", "calibration_prompts"):
            if getattr(lineage, name) < 0:
                raise fail(f"{node.key(name)}: must be >= 0, got {getattr(lineage, name)}")
        for name in ("first_outcome_at", "last_outcome_at"):
            try:
                _utc_ms(getattr(lineage, name))
            except ValueError:
                why = f"must be an ISO-8601 UTC second like 2026-11-30T23:59:59Z, got {getattr(lineage, name)!r}"
                raise fail(f"{node.key(name)}: {why}") from None
        return lineage

    @property
    def last_outcome_ms(self) -> int:
        """`last_outcome_at` in Unix milliseconds (the start of that second)."""
        return _utc_ms(self.last_outcome_at)


LINEAGE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _utc_ms(text: str) -> int:
    """Unix milliseconds of a LINEAGE_TIME_FORMAT time; ValueError for anything else."""
    return int(dt.datetime.strptime(text, LINEAGE_TIME_FORMAT).replace(tzinfo=dt.UTC).timestamp() * 1000)


def lineage_time(ms: int) -> str:
    """A Unix millisecond time as a lineage records it (LINEAGE_TIME_FORMAT, the second it falls in)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime(LINEAGE_TIME_FORMAT)


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json. Mappings keep the file's order (routers in manifest order).

    `bundle_version` is the content version (`content_version_of`); `label` is optional free text (the
    manifest key `label`, written only when set) that the content version covers. `default_router`
    (optional, written only when set) names the router a Route call without a router name uses: the
    build's `mf`, or an adaptation's own router, so clients that leave the name out follow each
    accepted adaptation. `default_quality_router` (the same, for a Route among candidates) names the
    router of such a call when it names none: the build's `quality`, or an N-model adaptation's
    `adapted_quality`. `tenant_routers` (optional, written only when set) names, per tenant, the router a
    Route call of that tenant uses when it names none, in place of `default_router`: a router adapted to
    that tenant's traffic (`lmroute-export adapt --for-tenant`); `tenant_quality_routers` the same for its
    Route calls among candidates, in place of `default_quality_router`. `lineage` is the latest adaptation's;
    `earlier_lineages` (written only when set) those of the other adapted routers the bundle still holds
    (`lineage_of`)."""

    bundle_version: str
    created_at: str
    encoder: EncoderSpec
    models: tuple[str, ...]
    default_pair: DefaultPair
    elo: Mapping[str, float]
    tiers: Mapping[str, int]
    routers: Mapping[str, RouterSpec]
    calibration: Calibration | None
    training_data: TrainingData
    library_versions: Mapping[str, str]
    files: Mapping[str, FileEntry]
    difficulty_prior: DifficultyPriorSpec | None = None
    schema_version: int = SCHEMA_VERSION
    label: str = ""
    lineage: Lineage | None = None
    default_router: str = ""
    default_quality_router: str = ""
    tenant_routers: Mapping[str, str] = field(default_factory=dict)
    tenant_quality_routers: Mapping[str, str] = field(default_factory=dict)
    earlier_lineages: tuple[Lineage, ...] = ()

    def lineage_of(self, router: str) -> Lineage | None:
        """The lineage of `router` (the adaptation that added it), None for a router not learnt here."""
        return next(
            (ln for ln in (self.lineage, *self.earlier_lineages) if ln is not None and ln.router == router), None
        )

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "bundle_version": self.bundle_version,
            **({"label": self.label} if self.label else {}),
            "created_at": self.created_at,
            "encoder": self.encoder.to_dict(),
            "models": list(self.models),
            "default_pair": {"strong": self.default_pair.strong, "weak": self.default_pair.weak},
            "elo": dict(self.elo),
            "tiers": dict(self.tiers),
            "routers": {name: spec.to_dict() for name, spec in self.routers.items()},
            **({"default_router": self.default_router} if self.default_router else {}),
            **({"default_quality_router": self.default_quality_router} if self.default_quality_router else {}),
            **({"tenant_routers": dict(self.tenant_routers)} if self.tenant_routers else {}),
            **({"tenant_quality_routers": dict(self.tenant_quality_routers)} if self.tenant_quality_routers else {}),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "training_data": self.training_data.to_dict(),
            "library_versions": dict(self.library_versions),
            "files": {p: {"sha256": e.sha256, "bytes": e.bytes} for p, e in self.files.items()},
        }
        if self.schema_version >= 2:
            prior = self.difficulty_prior
            out["difficulty_prior"] = None if prior is None else prior.to_dict()
        if self.lineage is not None:
            out["lineage"] = self.lineage.to_dict()
        if self.earlier_lineages:
            out["earlier_lineages"] = [ln.to_dict() for ln in self.earlier_lineages]
        return out

    def content_version(self) -> str:
        """The bundle_version this manifest must carry: `content_version_of(self.to_dict())`, the content
        version of the manifest.json that `to_json()` writes."""
        return content_version_of(self.to_dict())

    def to_json(self) -> str:
        """The manifest as JSON text (2-space indent, trailing newline); from_json(to_json()) == self."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check manifest.json text; raise BundleError naming manifest.json on any problem."""
        return cls.from_dict(decode_json(text))

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check an already-decoded manifest object."""
        root = Node(data, "")
        version = root.raw("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_SCHEMA_VERSIONS:
            readable = ", ".join(map(str, READABLE_SCHEMA_VERSIONS))
            raise fail(f"unknown schema_version {version!r} (this build reads {readable})")
        encoder = EncoderSpec._parse(root.node("encoder"))
        models_key = "models"
        models = tuple(as_str(v, f"{models_key}[{i}]") for i, v in enumerate(root.list_("models")))
        pair_node = root.node("default_pair")
        pair = DefaultPair(strong=pair_node.str_("strong"), weak=pair_node.str_("weak"))
        pair_node.close()
        elo_node = root.node("elo")
        elo = {name: elo_node.float_(name) for name in elo_node.keys()}
        tiers_node = root.node("tiers")
        tiers = {name: tiers_node.int_(name) for name in tiers_node.keys()}
        routers_node = root.node("routers")
        routers: dict[str, RouterSpec] = {}
        for name in routers_node.keys():
            if not _ROUTER_NAME.match(name):
                raise fail(f"routers: invalid router name {name!r}")
            routers[name] = RouterSpec._parse(routers_node.node(name), version)
        calibration = None
        if root.raw("calibration") is not None:
            calibration = Calibration._parse(root.node("calibration"))
        training = TrainingData._parse(root.node("training_data"))
        prior = None
        if version >= 2 and root.raw("difficulty_prior") is not None:
            prior = DifficultyPriorSpec._parse(root.node("difficulty_prior"))
        lib_node = root.node("library_versions")
        libs = {name: lib_node.str_(name) for name in lib_node.keys()}
        files_node = root.node("files")
        files: dict[str, FileEntry] = {}
        for path in files_node.keys():
            entry_node = files_node.node(path)
            entry = FileEntry(sha256=entry_node.str_("sha256"), bytes=entry_node.int_("bytes"))
            entry_node.close()
            files[path] = entry
        manifest = cls(
            bundle_version=root.str_("bundle_version"),
            created_at=root.str_("created_at"),
            encoder=encoder,
            models=models,
            default_pair=pair,
            elo=elo,
            tiers=tiers,
            routers=routers,
            calibration=calibration,
            training_data=training,
            library_versions=libs,
            files=files,
            difficulty_prior=prior,
            schema_version=version,
            label=_optional_str(root, "label", "a label"),
            lineage=Lineage._parse(root.node("lineage")) if root.has("lineage") else None,
            default_router=_optional_str(root, "default_router", "a default router"),
            default_quality_router=_optional_str(root, "default_quality_router", "a default quality router"),
            tenant_routers=_tenant_routers(root, "tenant_routers"),
            tenant_quality_routers=_tenant_routers(root, "tenant_quality_routers"),
            earlier_lineages=tuple(
                Lineage._parse(Node(item, f"earlier_lineages[{i}]"))
                for i, item in enumerate(root.list_("earlier_lineages") if root.has("earlier_lineages") else [])
            ),
        )
        root.close()
        manifest.check()
        return manifest

    # ---- consistency -----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise BundleError on any inconsistency visible from the manifest alone."""
        if not self.bundle_version:
            raise fail("bundle_version: empty")
        try:
            dt.datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
        except ValueError:
            raise fail(f"created_at: not an ISO 8601 time ({self.created_at[:40]!r})") from None
        if not self.models:
            raise fail("models: empty")
        if list(self.models) != sorted(set(self.models)):
            dupes = sorted(m for m, n in Counter(self.models).items() if n > 1)  # linear: a list may be long
            if dupes:
                raise fail(f"models: duplicate model {dupes[0]!r}")
            raise fail("models: not sorted")
        known = set(self.models)
        for role in ("strong", "weak"):
            name = getattr(self.default_pair, role)
            if name not in known:
                raise fail(f"default_pair.{role}: {name!r} is not in models")
        if self.default_pair.strong == self.default_pair.weak:
            raise fail(f"default_pair: strong and weak are the same model {self.default_pair.strong!r}")
        for table_name, table in (("elo", self.elo), ("tiers", self.tiers)):
            for name in table:
                if name not in known:
                    raise fail(f"{table_name}.{name}: not in models")
            for name in self.models:
                if name not in table:
                    raise fail(f"{table_name}: no entry for model {name!r}")
        for name, tier in self.tiers.items():
            if tier < 0:
                raise fail(f"tiers.{name}: negative tier {tier}")
        if not self.routers:
            raise fail("routers: empty")
        for key in ("default_router", "default_quality_router"):
            name = getattr(self, key)
            if name and name not in self.routers:
                raise fail(f"{key}: {name!r} is not a router of this bundle (routers: {', '.join(self.routers)})")
        if self.default_quality_router:
            self._check_predicts_qualities("default_quality_router", self.default_quality_router)
        for path, entry in self.files.items():
            _check_rel_path(path, f"files.{path}")
            if not _SHA256.match(entry.sha256):
                raise fail(f"files.{path}.sha256: not a lowercase hex sha256")
            if entry.bytes < 0:
                raise fail(f"files.{path}.bytes: negative")
        self._check_file_refs()
        self._check_kinds()
        if self.schema_version < 2 and (
            self.difficulty_prior is not None or any(spec.blend for spec in self.routers.values())
        ):
            raise fail(f"schema_version {self.schema_version}: has no difficulty_prior or blend (needs 2)")
        for name, spec in self.routers.items():
            if spec.blend is not None and self.difficulty_prior is None:
                raise fail(f"routers.{name}.blend: needs a difficulty_prior, the bundle has none")
        if self.calibration is not None:
            self._check_calibration_routers(self.calibration)
        if self.lineage is not None and self.lineage.router not in self.routers:
            raise fail(f"lineage.router: {self.lineage.router!r} is not a router of this bundle")
        self._check_tenant_routers()
        seen = {self.lineage.router} if self.lineage is not None else set()
        for i, ln in enumerate(self.earlier_lineages):
            if ln.router not in self.routers:
                raise fail(f"earlier_lineages[{i}].router: {ln.router!r} is not a router of this bundle")
            if ln.router in seen:
                raise fail(f"earlier_lineages[{i}].router: {ln.router!r} has a lineage already")
            seen.add(ln.router)

    def _check_tenant_routers(self) -> None:
        for key in ("tenant_routers", "tenant_quality_routers"):
            for tenant, name in getattr(self, key).items():
                if not TENANT_RE.match(tenant):
                    raise fail(f"{key}: invalid tenant name {tenant!r} (1-64 of A-Z a-z 0-9 . _ -)")
                if name not in self.routers:
                    raise fail(f"{key}.{tenant}: {name!r} is not a router of this bundle")
                if key == "tenant_quality_routers":
                    self._check_predicts_qualities(f"{key}.{tenant}", name)

    def _check_predicts_qualities(self, where: str, name: str) -> None:
        """`name`, named at `where` to route among candidates, must predict per-model quality."""
        kind = self.routers[name].kind
        if not kinds.get(kind).predicts_qualities:
            able = " or ".join(k for k in kinds.names() if kinds.get(k).predicts_qualities)
            raise fail(
                f"{where}: {name!r} is a router of kind {kind}, which predicts no per-model quality "
                f"(routing among candidates needs one of kind {able})"
            )

    def _check_file_refs(self) -> None:
        refs = [(f"encoder.files.{role}", p) for role, p in self.encoder.files.items()]
        for name, spec in self.routers.items():
            refs += [(f"routers.{name}.files.{role}", p) for role, p in spec.files.items()]
        if self.difficulty_prior is not None:
            refs += [(f"difficulty_prior.files.{role}", p) for role, p in self.difficulty_prior.files.items()]
        owners: dict[str, str] = {}
        for where, path in refs:
            _check_rel_path(path, where)
            if path not in self.files:
                raise fail(f"{where}: {path} has no entry in files")
            if path in owners:
                raise fail(f"{where}: {path} is also {owners[path]}")
            owners[path] = where

    def _check_kinds(self) -> None:
        for name, spec in self.routers.items():
            kinds.get(spec.kind).check_manifest(name, spec, self)

    def _check_calibration_routers(self, calibration: Calibration) -> None:
        for name in self.routers:
            if name not in calibration.thresholds:
                raise fail(f"calibration.thresholds: no entry for router {name!r}")
        for name in calibration.thresholds:
            if name not in self.routers:
                raise fail(f"calibration.thresholds.{name}: not a router of this bundle")


def _tenant_routers(root: Node, key: str) -> dict[str, str]:
    """The optional {tenant: router} `key` ({} when absent, never empty when present)."""
    if not root.has(key):
        return {}
    node = root.node(key)
    out = {tenant: node.str_(tenant) for tenant in node.keys()}
    if not out:
        raise fail(f"{key}: empty (a bundle without tenant routers has no {key} key)")
    return out


def _optional_str(root: Node, key: str, what: str) -> str:
    """The optional string `key` (`what` it holds, for the message): "" when absent, never empty when
    present (a manifest without one has no key)."""
    if not root.has(key):
        return ""
    value = root.str_(key)
    if not value:
        raise fail(f"{key}: empty (a bundle without {what} has no {key} key)")
    return value


def decode_json(text: str | bytes) -> Any:
    """manifest.json text decoded strictly (NaN and Infinity refused, and a key given twice in one object:
    readers that keep the first and readers that keep the last would see two bundles); BundleError naming
    manifest.json."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except RecursionError:
        raise fail("not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise fail(f"not valid JSON ({exc})") from exc


def content_version_of(data: Mapping[str, Any]) -> str:
    """The content version of a decoded manifest object (manifest.json as read, or `Manifest.to_dict()`):
    "<YYYYMMDD of created_at>-<first 8 hex of the sha256 of the canonical JSON (sorted keys) of every key
    but those of UNVERSIONED_KEYS>". It covers every file's checksum, the routers with their parameters
    and blends, the default routers, the prior, calibration, tiers, elo, models, default pair, encoder,
    training data, schema version and label, so an edit of any of them changes it; two bundles that
    score differently never share it. A bundle's `bundle_version` is its content version (the loader
    refuses a mismatch)."""
    content = {k: v for k, v in data.items() if k not in UNVERSIONED_KEYS}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    created = data.get("created_at")
    day = created[:10].replace("-", "") if isinstance(created, str) else ""
    return f"{day}-{digest[:8]}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in manifest.json")


def encoder_identity(manifest: Manifest) -> str:
    """16 hex characters naming the encoder's embedding space: a hash of its manifest entry (name,
    dimension, token limit, pooling, truncation) and its files' checksums. Two bundles with the same
    encoder give the same id, whatever their routers."""
    enc = manifest.encoder
    sums = sorted(manifest.files[path].sha256 for path in enc.files.values() if path in manifest.files)
    blob = json.dumps({"encoder": enc.to_dict(), "sha256": sums}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
