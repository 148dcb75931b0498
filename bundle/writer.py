"""The bundle writer: `stage_bundle` / `write_bundle` (atomic, checksummed) and the `update_*` functions.

`stage_bundle` lays the bundle out in a temporary sibling directory (every array a .npy, no pickles;
the encoder and the kinds' files copied; every file checksummed) with its manifest in memory, so that
the build can load it, fix the blends and the calibration from its scores, and write manifest.json once
(`StagedBundle.commit`: content version, validating load, rename into place). `write_bundle` stages and
commits at once. A crash leaves either no bundle or the old one, never a half-written one.
`update_calibration` / `update_blends` rewrite the manifest of an existing bundle (recalibration).
Every manifest written carries its content version as `bundle_version` (the loader refuses one that
does not); `restamp_bundle` re-stamps a manifest edited on purpose by any other tool.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle import kinds
from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import read_regular_file, sha256_file
from lmroute.bundle.kinds.base import ArrayRole, FileRole, RouterArtifacts
from lmroute.bundle.loader import Bundle, load_bundle, read_manifest
from lmroute.bundle.manifest import (
    _ROUTER_NAME,
    ENCODER_FILES_BY_KIND,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PRIOR_FILES,
    Blend,
    Calibration,
    DefaultPair,
    DifficultyPriorSpec,
    EncoderSpec,
    FileEntry,
    Manifest,
    RouterSpec,
    TrainingData,
    decode_json,
)

__all__ = [
    "PriorArtifacts",
    "RouterArtifacts",
    "StagedBundle",
    "bundle_exists",
    "stage_bundle",
    "library_versions",
    "move_into_place",
    "not_replaceable",
    "restamp_bundle",
    "update_blends",
    "update_calibration",
    "write_bundle",
    "write_text_atomic",
]


@dataclass(frozen=True)
class PriorArtifacts:
    """The difficulty prior for the writer: weights [dim] (saved as float32 difficulty_prior/weights.npy)
    and the manifest fields of `DifficultyPriorSpec` (docs/BUNDLE.md)."""

    weights: np.ndarray
    bias: float
    center: float
    scale: float
    ridge: float
    n_questions: int
    source: str


def bundle_exists(out: Path) -> FileExistsError:
    """The error of a write to a bundle directory that exists and may not be overwritten."""
    return FileExistsError(
        f"bundle directory {out} already exists (pass overwrite=True; on the command line, --overwrite)"
    )


def out_dir_problem(out: Path) -> str:
    """Why `out` cannot become a directory written beside it and renamed into place ("" when it can): it
    names no directory of its own (".", "..", "/"), it is something other than a directory, or a folder
    above it is a file. Said before a run's work, not after it."""
    if out.name in ("", ".", ".."):
        return f"{out} names no directory of its own (it is written beside its siblings and renamed into place)"
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a directory"
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        return f"{above} is not a directory"
    return ""


def not_replaceable(out: Path) -> str:
    """Why `out` may not be replaced by a bundle ("" when it may: nothing there, an empty directory or a
    bundle directory): it is a file, or a directory holding files that are not a bundle's (no
    manifest.json, one that is not a bundle's, or files its manifest does not list: a directory of the
    user's that happens to hold a manifest.json is not removed)."""
    if not out.exists():
        return ""
    if not out.is_dir():
        return f"{out} exists and is not a directory (not a bundle, so it is not replaced)"
    held = _files_under(out)
    if not held:
        return ""
    if MANIFEST_NAME not in held:
        return f"{out} holds files but no {MANIFEST_NAME} (not a bundle, so it is not replaced)"
    listed = _listed_files(out / MANIFEST_NAME)
    if listed is None:
        return f"{out}/{MANIFEST_NAME} is not a bundle's manifest (not a bundle, so it is not replaced)"
    extra = sorted(held - listed - {MANIFEST_NAME, MANIFEST_NAME + ".sig"})
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        return (
            f"{out} holds files its {MANIFEST_NAME} does not list ({extra[0]}{more}): not a bundle as written, so "
            "it is not replaced"
        )
    return ""


def _files_under(root: Path) -> set[str]:
    """The paths, relative to `root`, of everything under it that is not a directory (links not followed)."""
    out: set[str] = set()
    for folder, _, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        out.update((rel / name).as_posix() for name in names)
    return out


def _listed_files(manifest: Path) -> set[str] | None:
    """The files a bundle's manifest lists, or None when `manifest` is not one (unreadable, not JSON, no
    bundle_version or files); its integrity is not checked: an edited bundle may be replaced."""
    try:
        doc = decode_json(read_regular_file(manifest, MANIFEST_NAME, limit=MAX_MANIFEST_BYTES))
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or "bundle_version" not in doc or not isinstance(files, dict):
        return None
    return {str(path) for path in files}


def replace_directory(tmp: Path, out: Path) -> None:
    """Put the directory `tmp` at `out` in place of the directory there, which is removed after, so `out`
    is always the old directory or the new one, whole: on Linux in one step (renameat2 exchanging the
    two); elsewhere, or on a file system that cannot exchange, by moving the old one aside first, with
    SIGINT and SIGTERM held off between the two renames (an interrupt there left neither at `out`)."""
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the old directory, now at tmp's name
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    with _signals_held():
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)  # the old one back: never neither
            raise
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is
    not available (another system, an old kernel or C library, a file system that does not support it),
    OSError for another failure."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held pending (delivered when the block ends) in the main thread; elsewhere, or
    where the platform cannot, nothing."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def move_into_place(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Rename the finished bundle directory `tmp` to `out`. With `overwrite` an existing `out` is moved
    aside first and removed after the rename; one that is not a bundle (`not_replaceable`) is refused
    with FileExistsError. Without it an existing `out` is never moved: the rename itself refuses a
    bundle there (one another writer put in place since `out` was last checked), and that refusal is
    `bundle_exists`."""
    if overwrite and out.exists():
        if problem := not_replaceable(out):
            raise FileExistsError(problem)
        replace_directory(tmp, out)
        return
    try:
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise bundle_exists(out) from exc
        raise


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose numerics a bundle depends on (absent ones skipped)."""
    out: dict[str, str] = {}
    dists = (("numpy", "numpy"), ("onnxruntime", "onnxruntime"), ("torch", "torch"))
    for key, dist in dists:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_router(tmp: Path, name: str, art: RouterArtifacts) -> dict[str, str]:
    """Save one router's arrays and files under routers/<name>/ by its kind's roles; return role -> path."""
    if not _ROUTER_NAME.match(name):
        raise ValueError(f"invalid router name {name!r} (letters, digits, '_', '.', '-'; at most 64)")
    try:
        kind = kinds.get(art.kind)
    except KeyError:
        raise ValueError(f"router {name!r}: unknown kind {art.kind!r} (known: {', '.join(kinds.names())})") from None
    array_roles = {r.name: r for r in kind.roles if isinstance(r, ArrayRole)}
    file_roles = {r.name: r for r in kind.roles if isinstance(r, FileRole)}
    unknown = (set(art.arrays) - set(array_roles)) | (set(art.files) - set(file_roles))
    if unknown:
        raise ValueError(f"router {name!r} ({art.kind}): unexpected artifacts {sorted(unknown)}")
    directory = tmp / "routers" / name
    rel_dir = f"routers/{name}"
    out: dict[str, str] = {}
    for role in array_roles.values():
        if role.name not in art.arrays:
            raise ValueError(f"router {name!r} ({art.kind}): missing array {role.name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        array = np.ascontiguousarray(np.asarray(art.arrays[role.name]).astype(role.dtype, copy=False))
        np.save(directory / f"{role.name}.npy", array, allow_pickle=False)
        out[role.name] = f"{rel_dir}/{role.name}.npy"
    for file_role in file_roles.values():
        if file_role.name not in art.files:
            raise ValueError(f"router {name!r} ({art.kind}): missing file {file_role.name!r}")
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(art.files[file_role.name], directory / file_role.filename)
        out[file_role.name] = f"{rel_dir}/{file_role.filename}"
    return {role.name: out[role.name] for role in kind.roles}


def _checksums(tmp: Path) -> dict[str, FileEntry]:
    entries: dict[str, FileEntry] = {}
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = file.relative_to(tmp).as_posix()
        if rel == MANIFEST_NAME:
            continue
        entries[rel] = FileEntry(sha256=sha256_file(file), bytes=file.stat().st_size)
    return entries


def write_text_atomic(path: Path, text: str) -> None:
    """`text` written to `path` so that a reader sees the old file or the whole new one (a hidden file
    beside it, flushed to disk, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left beside the old one
        raise


def write_bundle(out_dir: str | Path, *, validate: bool = True, **contents: Any) -> Manifest:
    """Write a bundle to `out_dir` atomically and return its manifest: `stage_bundle(out_dir, **contents)`
    committed at once (`contents`: stage_bundle's keyword arguments; validate: see StagedBundle.commit)."""
    with stage_bundle(out_dir, **contents) as staged:
        return staged.commit(validate=validate)


class StagedBundle:
    """A bundle whose files lie in a temporary directory beside its destination while its manifest is
    still in memory (`manifest`, no manifest.json yet). `load()` reads the files under that manifest;
    assign a changed manifest (blends, calibration) as often as needed; `commit()` writes manifest.json
    once and moves the directory into place."""

    def __init__(self, tmp: Path, out: Path, manifest: Manifest, *, overwrite: bool) -> None:
        self.tmp, self.out, self.manifest = tmp, out, manifest
        self._overwrite = overwrite
        self.committed = False

    def load(self, *, intra_op_threads: int = 1) -> Bundle:
        """The staged files under the in-memory manifest, through the validating loader."""
        return load_bundle(
            self.tmp, intra_op_threads=intra_op_threads, require_calibration=False, manifest=self.manifest
        )

    def commit(self, *, validate: bool = True) -> Manifest:
        """Check the manifest with the strict parser, stamp it with its content version, write
        manifest.json, load the result with the validating loader (validate=True) and rename the
        directory into place (an existing one is replaced, the old one removed after the rename).
        Returns the manifest written."""
        manifest = _stamped(self.manifest)
        write_text_atomic(self.tmp / MANIFEST_NAME, manifest.to_json())
        if validate:
            load_bundle(self.tmp, require_calibration=False)
        move_into_place(self.tmp, self.out, overwrite=self._overwrite)
        self.committed = True
        self.manifest = manifest
        return manifest


@contextmanager
def stage_bundle(
    out_dir: str | Path,
    *,
    encoder_dir: str | Path,
    encoder: EncoderSpec,
    routers: Mapping[str, RouterArtifacts],
    models: list[str] | tuple[str, ...],
    default_pair: DefaultPair,
    elo: Mapping[str, float],
    tiers: Mapping[str, int],
    training_data: TrainingData,
    calibration: Calibration | None = None,
    difficulty_prior: PriorArtifacts | None = None,
    label: str = "",
    default_router: str = "",
    default_quality_router: str = "",
    created_at: str | None = None,
    overwrite: bool = False,
) -> Iterator[StagedBundle]:
    """Lay a bundle out in a temporary sibling directory of `out_dir`: every array as a .npy (no pickles)
    in its kind's dtype, the encoder (the files of its kind from encoder_dir: model.onnx or table.npy, and
    tokenizer.json) and the kinds' files
    copied, every file checksummed, and the manifest assembled in memory. Yields a `StagedBundle`;
    leaving the block without `commit()` (or by an exception) removes the directory, so a crash leaves
    either no bundle or the old one, never a half-written one.

    bundle_version is always the content version (`Manifest.content_version()`, "<YYYYMMDD of
    created_at>-<8 hex of a hash of the content>", derived at commit); `label` is optional free text
    stored beside it (and covered by it); `default_router` names the router of a Route call that names
    none ("": no default), `default_quality_router` that of a Route among candidates that names none.
    An existing out_dir is an error unless overwrite=True, and even then when it is not a bundle
    (`not_replaceable`)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise bundle_exists(out)
    if problem := not_replaceable(out):
        raise FileExistsError(problem)
    src = Path(encoder_dir)
    encoder_files = ENCODER_FILES_BY_KIND[encoder.kind]
    for role, rel in encoder_files.items():
        if not (src / Path(rel).name).is_file():
            raise FileNotFoundError(f"encoder_dir {src} has no {Path(rel).name} (encoder {role})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staged: StagedBundle | None = None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        (tmp / "encoder").mkdir()
        for rel in encoder_files.values():
            shutil.copyfile(src / Path(rel).name, tmp / rel)
        specs: dict[str, RouterSpec] = {}
        for name, art in routers.items():
            files = _write_router(tmp, name, art)
            kind = kinds.get(art.kind)
            specs[name] = RouterSpec(
                kind=art.kind,
                files=files,
                params=kind.coerce_params(art.params, f"routers.{name}.params"),
                uses_encoder=kind.uses_encoder,
                blend=art.blend,
            )
        prior_spec = None
        if difficulty_prior is not None:
            rel = PRIOR_FILES["weights"]
            (tmp / rel).parent.mkdir(parents=True)
            weights = np.ascontiguousarray(np.asarray(difficulty_prior.weights, dtype=np.float32))
            np.save(tmp / rel, weights, allow_pickle=False)
            prior_spec = DifficultyPriorSpec(
                source=difficulty_prior.source,
                n_questions=int(difficulty_prior.n_questions),
                ridge=float(difficulty_prior.ridge),
                bias=float(difficulty_prior.bias),
                center=float(difficulty_prior.center),
                scale=float(difficulty_prior.scale),
            )
        manifest = Manifest(
            bundle_version="unversioned",  # the content version, derived at commit
            label=label,
            created_at=created_at or _utc_now(),
            encoder=dataclasses.replace(encoder, files=dict(encoder_files)),
            models=tuple(models),
            default_pair=default_pair,
            elo={k: float(v) for k, v in elo.items()},
            tiers={k: int(v) for k, v in tiers.items()},
            routers=specs,
            calibration=calibration,
            training_data=training_data,
            library_versions=library_versions(),
            files=_checksums(tmp),
            difficulty_prior=prior_spec,
            default_router=default_router,
            default_quality_router=default_quality_router,
        )
        manifest = Manifest.from_json(manifest.to_json())  # the strict parser is the schema check
        staged = StagedBundle(tmp, out, manifest, overwrite=overwrite)
        yield staged
    finally:
        if staged is None or not staged.committed:
            shutil.rmtree(tmp, ignore_errors=True)


def _stamped(manifest: Manifest) -> Manifest:
    """`manifest` as it reads back from its JSON (the strict parser is the schema check), stamped with
    its content version: the manifest.json of a bundle the loader accepts."""
    as_read = Manifest.from_json(manifest.to_json())
    return dataclasses.replace(as_read, bundle_version=as_read.content_version())


def _merged(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """Tenant -> router with `changes` applied ("" removes the tenant)."""
    return {t: r for t, r in {**current, **changes}.items() if r}


def restamp_bundle(
    bundle_dir: str | Path,
    *,
    label: str | None = None,
    default_router: str | None = None,
    default_quality_router: str | None = None,
    tenant_routers: Mapping[str, str] | None = None,
    tenant_quality_routers: Mapping[str, str] | None = None,
) -> Manifest:
    """Stamp a bundle whose manifest.json was edited on purpose with the content version of what it now
    says (manifest.json rewritten atomically in the writer's format) and return the manifest; `label`
    replaces the label, `default_router` and `default_quality_router` the default routers ("" removes
    one, None keeps it), `tenant_routers` and `tenant_quality_routers` set each named tenant's own router
    (tenant -> router; "" removes the tenant's: its calls then get the bundle's default). The manifest
    must pass the strict parser (a tenant's router must be one of the bundle's); the files are not
    re-checksummed (the loader still checks them against the manifest). A signature (manifest.json.sig)
    no longer matches the rewritten manifest: sign the bundle again."""
    root = Path(bundle_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(MANIFEST_NAME, "missing")
    manifest = Manifest.from_json(path.read_bytes())
    if label is not None:
        manifest = dataclasses.replace(manifest, label=label)
    if default_router is not None:
        manifest = dataclasses.replace(manifest, default_router=default_router)
    if default_quality_router is not None:
        manifest = dataclasses.replace(manifest, default_quality_router=default_quality_router)
    if tenant_routers:
        manifest = dataclasses.replace(manifest, tenant_routers=_merged(manifest.tenant_routers, tenant_routers))
    if tenant_quality_routers:
        own = _merged(manifest.tenant_quality_routers, tenant_quality_routers)
        manifest = dataclasses.replace(manifest, tenant_quality_routers=own)
    updated = _stamped(manifest)
    write_text_atomic(path, updated.to_json())
    return updated


def update_calibration(bundle_dir: str | Path, calibration: Calibration) -> Manifest:
    """Replace the calibration table of an existing bundle (manifest.json rewritten atomically and
    re-stamped). The table must cover exactly the bundle's routers; raises BundleError otherwise, and
    for a manifest that does not carry its content version (an edit is never stamped in passing)."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    calibration.check()
    updated = _stamped(dataclasses.replace(manifest, calibration=calibration))
    write_text_atomic(root / MANIFEST_NAME, updated.to_json())
    return updated


def update_blends(bundle_dir: str | Path, blends: Mapping[str, Blend | None]) -> Manifest:
    """Set (or with None clear) the difficulty-prior blend of the named routers of an existing bundle
    (manifest.json rewritten atomically). The bundle must carry a difficulty prior to blend with; an
    unknown router name is a ValueError. A calibration table no longer matches blended scores: export
    recalibrates after this (`lmroute.export.calibrate`)."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    unknown = sorted(set(blends) - set(manifest.routers))
    if unknown:
        raise ValueError(f"update_blends: unknown router(s) {unknown} (bundle has: {', '.join(manifest.routers)})")
    routers = {
        name: dataclasses.replace(spec, blend=blends[name]) if name in blends else spec
        for name, spec in manifest.routers.items()
    }
    updated = _stamped(dataclasses.replace(manifest, routers=routers))
    write_text_atomic(root / MANIFEST_NAME, updated.to_json())
    return updated
