"""Readers of bundle files that refuse what the contract does not allow: `.npy` arrays checked for dtype,
shape (axis by axis, named) and finiteness; ONNX sessions checked for the encoder-token signature.

A bundle's files are read once (`BundleFiles.read`): each listed file's bytes, checked against its size
and sha256 in the manifest, are what every reader parses, so a file replaced between the check and its
use is never served (the check and the parse see the same bytes). A file is read only when it is a
regular file (a FIFO, a device or a directory in its place is refused, never waited on).

Errors are `BundleError`s naming the file relative to the bundle root. The loader and every router
kind (`lmroute.bundle.kinds`) read files only through these functions.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle.errors import BundleError

if TYPE_CHECKING:
    import onnxruntime as ort

    from lmroute.bundle.manifest import FileEntry

__all__ = [
    "ONNX_INPUTS",
    "BundleFiles",
    "check_onnx_io",
    "load_npy",
    "npy_array",
    "onnx_session",
    "read_regular_file",
    "sha256_file",
]

# The inputs every ONNX graph of a bundle takes (the encoder's TokenBatch fields), int64 [batch, seq].
ONNX_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 1 << 20


def read_regular_file(path: Path, rel: str, *, limit: int | None = None, size: int | None = None) -> bytes:
    """The bytes of the regular file at `path` (`rel`: its name in errors); BundleError when it is missing,
    not a regular file (opened without blocking, so a FIFO is refused, not waited on), larger than `limit`
    bytes, not of exactly `size` bytes (checked before reading: a file grown huge is not read), or
    unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BundleError(rel, "missing") from None
    except OSError as exc:
        raise BundleError(rel, f"cannot be opened ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, pipe or socket"
            raise BundleError(rel, f"not a regular file ({what})")
        if size is not None and info.st_size != size:
            raise BundleError(rel, f"size {info.st_size} bytes does not match manifest {size}")
        if limit is not None and info.st_size > limit:
            raise BundleError(rel, f"{info.st_size} bytes, over the limit of {limit}")
        cap = limit if size is None else size if limit is None else min(size, limit)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read() if cap is None else fh.read(cap + 1)
    except OSError as exc:
        raise BundleError(rel, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise BundleError(rel, f"over the limit of {limit} bytes")
    return data


class BundleFiles:
    """The bytes of a bundle's listed files, each read once and checked against its manifest entry
    (size; sha256 unless told not to). Readers take a file's bytes from here, never from its path again."""

    def __init__(self, root: Path, blobs: Mapping[str, bytes]) -> None:
        self.root = root
        self._blobs = dict(blobs)

    @classmethod
    def read(cls, root: Path, files: Mapping[str, FileEntry], *, verify_checksums: bool = True) -> BundleFiles:
        blobs: dict[str, bytes] = {}
        for rel, entry in files.items():
            data = read_regular_file(root / rel, rel, size=entry.bytes)
            if len(data) != entry.bytes:  # it changed size while read
                raise BundleError(rel, f"size {len(data)} bytes does not match manifest {entry.bytes}")
            if verify_checksums:
                actual = hashlib.sha256(data).hexdigest()
                if actual != entry.sha256:
                    raise BundleError(rel, f"sha256 mismatch (manifest {entry.sha256[:12]}..., file {actual[:12]}...)")
            blobs[rel] = data
        return cls(root, blobs)

    def blob(self, rel: str) -> bytes:
        """The checked bytes of the listed file `rel`; BundleError when the manifest lists no such file."""
        try:
            return self._blobs[rel]
        except KeyError:
            raise BundleError(rel, "not listed in the manifest's files: it cannot be checked") from None

    def reader(self) -> Callable[[Path], bytes]:
        """`blob` by path under the root: what the encoders read their files with."""

        def read(path: Path) -> bytes:
            try:
                rel = Path(path).relative_to(self.root).as_posix()
            except ValueError:
                raise BundleError(str(path), "outside the bundle") from None
            return self.blob(rel)

        return read


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def npy_array(data: bytes) -> npt.NDArray[Any]:
    """The array of a .npy file's bytes, no pickles; ValueError saying what is wrong. The header's shape
    and dtype must account for exactly the bytes after it, checked before anything is allocated (a small
    file claiming a huge shape is refused, not allocated)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError) as exc:
        raise ValueError(f"not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise ValueError("holds Python objects (a pickle): refused")
    body = len(data) - buf.tell()
    need = math.prod(shape) * dtype.itemsize
    if need != body:
        raise ValueError(f"its header says shape {tuple(shape)} of {dtype} ({need} bytes), the file holds {body}")
    buf.seek(0)
    array: npt.NDArray[Any] = np.lib.format.read_array(buf, allow_pickle=False)
    return array


def load_npy(
    files: BundleFiles, rel: str, dtype: type[Any], axes: Sequence[tuple[str, int | None]]
) -> npt.NDArray[Any]:
    """The listed .npy file `rel` of `files` (no pickles), its dtype, shape and finiteness checked. `axes`
    names each axis and gives its expected size (None: any size but 0)."""
    data = files.blob(rel)
    try:
        array = npy_array(data)
    except ValueError as exc:
        raise BundleError(rel, f"unreadable .npy file: {exc}") from None
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


def onnx_session(files: BundleFiles, rel: str, providers: Sequence[str], intra_op_threads: int) -> ort.InferenceSession:
    """An ONNX Runtime session over the listed file `rel` of `files` (full graph optimisation, one
    inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(files.blob(rel), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own untyped Fail/InvalidGraph errors
        raise BundleError(rel, f"not a loadable ONNX model ({type(exc).__name__})") from exc


def check_onnx_io(session: ort.InferenceSession, rel: str, output: str, last_dim: int, last_dim_label: str) -> None:
    """Refuse a graph whose inputs are not exactly ONNX_INPUTS (int64, rank 2) or whose `output` is not
    float [batch, last_dim]."""
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
