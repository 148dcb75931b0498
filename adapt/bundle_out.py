"""Writing an adapted bundle: the parent bundle copied, a router learnt from outcomes added (`adapted` or
`adapted_kernel`: `write_adapted_bundle`; `adapted_quality`: `write_quality_bundle`), its thresholds
calibrated on recent prompts, its lineage in the manifest.

The new bundle is the parent's files (manifest.json.sig left behind: the new manifest is not signed),
plus routers/<router>/<role>.npy; the manifest is the parent's with the router, its file's checksum,
the calibration table extended by the router's thresholds (threshold_i = quantile_{1 - p_i} of its
scores on recent prompts, on the parent's strong-share grid, or thresholds given: the parent's own when
too few distinct recent prompts remain; the other routers keep theirs), the new
router as the default router (`adapted`), one tenant's router (`tenant_routers`) or default quality
router (`adapted_quality`), which clients that name no router follow, and `lineage` (parent version,
outcome kind, count and time range, learner and settings, calibration prompts (0: thresholds given,
not calibrated); the parent's lineages
of the routers kept move to `earlier_lineages`). It is stamped with its content version, loaded through the
validating loader in a temporary sibling directory, then renamed into place: a failure leaves no
half-written bundle, and without `overwrite` a bundle at out_dir (one another writer put there meanwhile
included) is never replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lmroute.adapt.head import BaseStandardisation, Head
from lmroute.adapt.quality_heads import QualityHeads
from lmroute.bundle import kinds
from lmroute.bundle.files import sha256_file
from lmroute.bundle.loader import load_bundle, read_manifest
from lmroute.bundle.manifest import MANIFEST_NAME, Calibration, FileEntry, Lineage, Manifest, RouterSpec
from lmroute.bundle.writer import bundle_exists, library_versions, move_into_place

__all__ = [
    "CandidateNotWritten",
    "OutcomeSpan",
    "calibrated_thresholds",
    "write_adapted_bundle",
    "write_quality_bundle",
    "write_router_bundle",
    "writing_candidate",
]


class CandidateNotWritten(OSError):
    """The gate accepted a candidate that could not be written (the run is recorded as not adapted)."""


@contextlib.contextmanager
def writing_candidate(out_dir: str | Path, report: dict[str, Any], record: Callable[[], None]) -> Iterator[None]:
    """Around writing an accepted candidate: an OSError (a full or read-only disk) is said in `report`
    ("error", naming `out_dir`), `record()` records the run as not adapted, and CandidateNotWritten
    names the step and the directory."""
    try:
        yield
    except OSError as exc:
        # numpy's short write (a disk that filled mid-file) is a bare OSError with no errno nor strerror;
        # a subclass says what it is (the writer's FileExistsError for an out directory another run wrote)
        short = type(exc) is OSError and not exc.strerror
        why = f"{exc} (a short write: is the disk full?)" if short else (exc.strerror or str(exc))
        report["error"] = f"the accepted candidate could not be written to {out_dir}: {why}"
        record()
        args = (exc.errno, report["error"]) if exc.errno is not None else (report["error"],)
        raise CandidateNotWritten(*args) from exc


@dataclass(frozen=True)
class OutcomeSpan:
    """The outcomes a head learnt from: kind ("paired", "single" or "qualities"), count, first and last time
    (ISO-8601 UTC)."""

    kind: str
    n_outcomes: int
    first_at: str
    last_at: str


def calibrated_thresholds(scores: npt.ArrayLike, strong_share: tuple[float, ...]) -> tuple[float, ...]:
    """threshold_i = quantile_{1 - p_i}(scores), clipped to [0, 1] and made non-increasing."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
        raise ValueError(f"calibration_scores: expected a finite non-empty 1-D array, got shape {s.shape}")
    th = np.clip(np.quantile(s, 1.0 - np.asarray(strong_share, dtype=np.float64)), 0.0, 1.0)
    return tuple(float(v) for v in np.minimum.accumulate(th))


def _without_router(manifest: Manifest, router: str) -> Manifest:
    """`manifest` without `router`: its spec, its files and its calibration thresholds."""
    own = set(manifest.routers[router].files.values())
    cal = manifest.calibration
    return dataclasses.replace(
        manifest,
        routers={k: v for k, v in manifest.routers.items() if k != router},
        files={k: v for k, v in manifest.files.items() if k not in own},
        calibration=None
        if cal is None
        else dataclasses.replace(cal, thresholds={k: v for k, v in cal.thresholds.items() if k != router}),
    )


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_adapted_bundle(
    parent_dir: str | Path,
    out_dir: str | Path,
    head: Head,
    base_router: str,
    weight: float,
    base: BaseStandardisation,
    outcomes: OutcomeSpan,
    calibration_scores: npt.ArrayLike | None,
    *,
    router: str = "adapted",
    label: str = "",
    overwrite: bool = False,
    replace: bool = False,
    make_default: bool = True,
    tenant: str = "",
    thresholds: Sequence[float] | None = None,
) -> Manifest:
    """Write parent_dir + an adapted router named `router` (head blended with `base_router` at `weight`,
    of kind `head.router_kind`) to out_dir and return the manifest written (module docstring).
    `calibration_scores`: the adapted router's scores on recent prompts, or None and `thresholds`: its
    thresholds as they are (one per strong share of the parent's table). With `replace`, an adapted router
    of that name in the parent (an earlier adaptation) is replaced by the new one. With `make_default`,
    the new router is the bundle's default router (Route calls that name no router use it), or with
    `tenant` that tenant's (`tenant_routers`: its calls that name no router use it; the bundle's default
    stays); else the parent's defaults stay."""
    manifest = read_manifest(Path(parent_dir))
    if head.dim != manifest.encoder.dim:
        raise ValueError(f"head: dimension {head.dim} does not match the parent's encoder.dim {manifest.encoder.dim}")
    return write_router_bundle(
        parent_dir,
        out_dir,
        router=router,
        kind=head.router_kind,
        base_router=base_router,
        params=head.router_params(base_router, weight, base),
        arrays=head.router_arrays(),
        outcomes=outcomes,
        learner=head.learner,
        settings=head.settings,
        calibration_scores=calibration_scores,
        label=label,
        overwrite=overwrite,
        replace=replace,
        default_key="default_router" if make_default else "",
        tenant=tenant,
        thresholds=thresholds,
    )


def write_quality_bundle(
    parent_dir: str | Path,
    out_dir: str | Path,
    heads: QualityHeads,
    base_router: str,
    outcomes: OutcomeSpan,
    calibration_scores: npt.ArrayLike,
    *,
    router: str = "adapted_quality",
    label: str = "",
    overwrite: bool = False,
    replace: bool = False,
    make_default: bool = True,
    tenant: str = "",
) -> Manifest:
    """Write parent_dir + an `adapted_quality` router named `router` (the heads over `base_router`, a
    router of kind quality) to out_dir and return the manifest written (module docstring).
    `calibration_scores`: its pair scores on recent prompts. With `make_default` it becomes the bundle's
    default quality router (Route calls among candidates that name no router use it), or with `tenant`
    that tenant's (`tenant_quality_routers`)."""
    manifest = read_manifest(Path(parent_dir))
    if heads.dim != manifest.encoder.dim:
        raise ValueError(f"heads: dimension {heads.dim} does not match the parent's encoder.dim {manifest.encoder.dim}")
    settings = {f"penalty.{m}": p for m, p in zip(heads.models, heads.penalties, strict=True) if p is not None}
    return write_router_bundle(
        parent_dir,
        out_dir,
        router=router,
        kind="adapted_quality",
        base_router=base_router,
        params={"base_router": base_router, "models": list(heads.models)},
        arrays={"weights": heads.weights, "length_weights": heads.length_weights, "bias": heads.bias},
        outcomes=outcomes,
        learner="per-model ridge on the base router's residual (lmroute.adapt.quality_heads)",
        settings=settings,
        calibration_scores=calibration_scores,
        label=label,
        overwrite=overwrite,
        replace=replace,
        default_key="default_quality_router" if make_default else "",
        tenant=tenant,
    )


def write_router_bundle(
    parent_dir: str | Path,
    out_dir: str | Path,
    *,
    router: str,
    kind: str,
    base_router: str,
    params: object,
    arrays: Mapping[str, npt.ArrayLike],
    outcomes: OutcomeSpan,
    learner: str,
    settings: Mapping[str, float],
    calibration_scores: npt.ArrayLike | None,
    label: str = "",
    overwrite: bool = False,
    replace: bool = False,
    default_key: str = "",
    tenant: str = "",
    thresholds: Sequence[float] | None = None,
) -> Manifest:
    """The common part of both writers: parent_dir + a router `router` of a kind learnt from outcomes
    (`params`, one .npy per role in `arrays`) to out_dir, atomically (module docstring). With `replace`, a
    router of that name learnt from outcomes in the parent (an earlier adaptation) is replaced.
    `default_key` ("default_router" or "default_quality_router"): the manifest key that names the new
    router; "" keeps the parent's defaults. With `tenant`, the new router becomes that tenant's default
    instead (`tenant_routers` or `tenant_quality_routers`, by `default_key`) and the bundle's defaults stay.
    The parent's lineages of the routers kept move to `earlier_lineages`. Exactly one of `calibration_scores`
    (the router's thresholds calibrated on them) and `thresholds` (taken as they are; the lineage's
    calibration_prompts is then 0)."""
    if (calibration_scores is None) == (thresholds is None):
        raise ValueError("calibration_scores, thresholds: give exactly one")
    if default_key not in ("", "default_router", "default_quality_router"):
        raise ValueError(f"default_key: {default_key!r} is not a default of the manifest")
    parent, out = Path(parent_dir), Path(out_dir)
    manifest = read_manifest(parent)
    if manifest.calibration is None:
        raise ValueError(f"{parent}: the parent bundle is not calibrated")
    if router in manifest.routers:
        if not (replace and kinds.get(manifest.routers[router].kind).from_outcomes):
            raise ValueError(f"{parent}: already has a router named {router!r} (replace=True replaces an adapted one)")
        manifest = _without_router(manifest, router)
    if tenant and not default_key:
        raise ValueError(f"tenant: {tenant!r} given without a default_key (which of its defaults the router becomes)")
    if base_router not in manifest.routers:
        raise ValueError(
            f"base_router: {base_router!r} is not a router of {parent} (has: {', '.join(manifest.routers)})"
        )
    if out.exists() and not overwrite:
        raise bundle_exists(out)
    router_kind = kinds.get(kind)
    roles = sorted(r.name for r in router_kind.roles)
    if sorted(arrays) != roles:
        raise ValueError(f"arrays: {sorted(arrays)} do not match the files of kind {kind} ({roles})")
    params = router_kind.coerce_params(params, f"routers.{router}.params")
    calibration = manifest.calibration
    assert calibration is not None  # checked above; _without_router keeps it
    table = dict(calibration.thresholds)
    if calibration_scores is not None:
        table[router] = calibrated_thresholds(calibration_scores, calibration.strong_share)
    else:
        assert thresholds is not None
        if len(thresholds) != len(calibration.strong_share):
            raise ValueError(
                f"thresholds: {len(thresholds)} given, the parent's table has {len(calibration.strong_share)} shares"
            )
        table[router] = tuple(float(t) for t in thresholds)
    lineage = Lineage(
        parent_version=manifest.bundle_version,
        router=router,
        outcome_kind=outcomes.kind,
        n_outcomes=outcomes.n_outcomes,
        first_outcome_at=outcomes.first_at,
        last_outcome_at=outcomes.last_at,
        learner=learner,
        settings={name: float(value) for name, value in settings.items()},
        calibration_prompts=0 if calibration_scores is None else int(np.asarray(calibration_scores).size),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        for rel in manifest.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(parent / rel, tmp / rel)
        files = dict(manifest.files)
        own: dict[str, str] = {}
        for role, array in arrays.items():
            rel = f"routers/{router}/{role}.npy"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp / rel, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
            files[rel] = FileEntry(sha256=sha256_file(tmp / rel), bytes=(tmp / rel).stat().st_size)
            own[role] = rel
        routers = dict(manifest.routers)
        routers[router] = RouterSpec(kind=kind, files=own, params=params, uses_encoder=router_kind.uses_encoder)
        new = dataclasses.replace(
            manifest,
            label=label,
            created_at=_utc_now(),
            routers=routers,
            files=files,
            calibration=Calibration(
                source=calibration.source,
                n_prompts=calibration.n_prompts,
                strong_share=calibration.strong_share,
                thresholds=table,
            ),
            library_versions=library_versions(),
            lineage=lineage,
            earlier_lineages=tuple(
                ln for ln in (manifest.lineage, *manifest.earlier_lineages) if ln is not None and ln.router != router
            ),
            tenant_routers={
                **manifest.tenant_routers,
                **({tenant: router} if tenant and default_key == "default_router" else {}),
            },
            tenant_quality_routers={
                **manifest.tenant_quality_routers,
                **({tenant: router} if tenant and default_key == "default_quality_router" else {}),
            },
            default_router=router if default_key == "default_router" and not tenant else manifest.default_router,
            default_quality_router=(
                router if default_key == "default_quality_router" and not tenant else manifest.default_quality_router
            ),
        )
        new = Manifest.from_json(new.to_json())  # the strict parser is the schema check
        new = dataclasses.replace(new, bundle_version=new.content_version())
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            fh.write(new.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        load_bundle(tmp)  # the validating loader, checksums included
        move_into_place(tmp, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return new
