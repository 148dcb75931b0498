"""Readers of bundle files that refuse what the contract does not allow: `.npy` arrays checked for dtype,
shape (axis by axis, named) and finiteness; ONNX sessions checked for the encoder-token signature.

Errors are `BundleError`s naming the file relative to the bundle root. The loader and every router
kind (`lmroute.bundle.kinds`) read files only through these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle.errors import BundleError

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["ONNX_INPUTS", "check_onnx_io", "load_npy", "onnx_session", "sha256_file"]

# The inputs every ONNX graph of a bundle takes (the encoder's TokenBatch fields), int64 [batch, seq].
ONNX_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_npy(root: Path, rel: str, dtype: type[Any], axes: Sequence[tuple[str, int | None]]) -> npt.NDArray[Any]:
    """Read a .npy (no pickles) and check dtype, shape and finiteness. `axes` names each axis and gives
    its expected size (None: any size but 0)."""
    try:
        with open(root / rel, "rb") as fh:
            array: npt.NDArray[Any] = np.lib.format.read_array(fh, allow_pickle=False)
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


def onnx_session(root: Path, rel: str, providers: Sequence[str], intra_op_threads: int) -> ort.InferenceSession:
    """An ONNX Runtime session over a bundle file (full graph optimisation, one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(root / rel), sess_options=options, providers=list(providers))
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
