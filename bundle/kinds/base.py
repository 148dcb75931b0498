"""What a router kind is: `RouterKind`, the roles of its files, and what loading and training hand it.

A kind owns everything about one sort of router (docs/ARCHITECTURE.md "Adding a router kind"):

    name, uses_encoder    the manifest's `kind` and whether its score reads the encoder's embeddings
    reads_text            whether its score reads a prompt's text or tokens beyond its character count
                          (False: a prompt stored as its embedding and length can be scored again)
    reads_tokens          whether its score reads the encoder's tokens (False: a batch embedded straight
                          from its texts, with no token batch, can be scored)
    from_outcomes         learnt from a deployment's outcomes (`lmroute.adapt`), never by a build
    Params                a frozen dataclass of its manifest `params` (int, float, str, bool, tuple[str, ...]
                          fields; read strictly, so an int stays an int and a float a float)
    roles                 its files: `ArrayRole` (a .npy of a fixed dtype) or `FileRole` (a copied file)
    check_params          range checks of its params; check_manifest: checks against the rest of the manifest
    load                  LoadContext + its manifest entry -> a runtime `Router` (arrays checked on the way)
    train                 TrainContext (the build's training split, embeddings, tiers, knobs) ->
                          `RouterArtifacts` for the writer; only the offline pipeline calls it

The manifest parser, the writer, the loader and the build pipeline iterate the registry
(`lmroute.bundle.kinds`, which also exports this module's names) and know no kind by name.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from lmroute.bundle.files import BundleFiles, load_npy, onnx_session
from lmroute.bundle.jsonread import Node, as_str, fail

if TYPE_CHECKING:
    import onnxruntime as ort

    from lmroute.bundle.manifest import Blend, Manifest, RouterSpec
    from lmroute.bundle.routers import Router


@dataclass(frozen=True)
class ArrayRole:
    """An array the kind stores as `routers/<router>/<name>.npy`, cast to `dtype` by the writer."""

    name: str
    dtype: type[Any]


@dataclass(frozen=True)
class FileRole:
    """A file the kind stores as `routers/<router>/<filename>`, copied by the writer from the path the
    trainer gives."""

    name: str
    filename: str


@dataclass(frozen=True)
class RouterArtifacts:
    """What a trainer hands to the writer for one router.

    kind:   the registered kind's name
    params: the kind's params (its Params dataclass, or a mapping of the same fields)
    arrays: role -> array of each ArrayRole
    files:  role -> existing file of each FileRole
    blend:  how the score is blended with the bundle's difficulty prior (None: not blended)
    """

    kind: str
    params: Any
    arrays: Mapping[str, npt.ArrayLike] = field(default_factory=dict)
    files: Mapping[str, str | Path] = field(default_factory=dict)
    blend: Blend | None = None


@dataclass(frozen=True)
class LoadContext:
    """A bundle being loaded: its root, its parsed manifest, its files' checked bytes
    (`lmroute.bundle.files.BundleFiles`: a kind reads its files through `npy`, `session` or `blob`, never by
    path, so it parses the bytes whose checksums were checked) and the ONNX Runtime settings."""

    root: Path
    manifest: Manifest
    providers: tuple[str, ...]
    intra_op_threads: int
    files: BundleFiles

    def npy(self, rel: str, dtype: type[Any], axes: Sequence[tuple[str, int | None]]) -> npt.NDArray[Any]:
        """A checked array of the bundle (`lmroute.bundle.files.load_npy`)."""
        return load_npy(self.files, rel, dtype, axes)

    def session(self, rel: str) -> ort.InferenceSession:
        """An ONNX Runtime session over a file of the bundle."""
        return onnx_session(self.files, rel, self.providers, self.intra_op_threads)

    def blob(self, rel: str) -> bytes:
        """The checked bytes of a listed file of the bundle."""
        return self.files.blob(rel)


@dataclass(frozen=True)
class TrainContext:
    """What the build pipeline hands a kind's `train`.

    recipe:      the build's knobs (`lmroute.export.recipe.BuildRecipe`: the Recipe and quick mode)
    comparisons: the training split (`lmroute.export.data.Comparisons`)
    embeddings:  float32 [n_prompts, dim], aligned with comparisons.prompts
    tiers:       model -> tier of the rated models; models: the bundle's models (sorted)
    strong, weak: the default pair
    work_dir:    a directory for files the trainer writes (e.g. an exported ONNX graph)
    notes:       what the trainer wants in the build report (it may add keys)
    data_dir:    the build's data directory, for a kind that reads labels of its own (None: not given)
    """

    recipe: Any
    comparisons: Any
    embeddings: npt.NDArray[np.float32]
    tiers: Mapping[str, int]
    models: tuple[str, ...]
    strong: str
    weak: str
    work_dir: Path
    notes: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None


_TUPLE_OF_STR = tuple[str, ...]


class RouterKind(ABC):
    """One router kind; subclass, set the class attributes, implement `load` and `train`, and
    `lmroute.bundle.kinds.register` an instance."""

    name: ClassVar[str]
    uses_encoder: ClassVar[bool]
    # its score reads the text or tokens beyond the character count (the safe default for a plug-in);
    # False: the embedding and `PromptBatch.char_counts` suffice (`PromptBatch.from_features`)
    reads_text: ClassVar[bool] = True
    # its score reads the encoder's tokens (`PromptBatch.tokens`; the safe default for a plug-in); False: a
    # batch whose embeddings came straight from the texts, with no token batch, suffices
    reads_tokens: ClassVar[bool] = True
    Params: ClassVar[type[Any]]
    roles: ClassVar[tuple[ArrayRole | FileRole, ...]] = ()
    # made from a deployment's outcomes (lmroute.adapt), never by a build
    from_outcomes: ClassVar[bool] = False
    # its routers predict each of several models' quality (lmroute.bundle.routers.ModelQualities): a
    # bundle may name them to route among candidates (default_quality_router, tenant_quality_routers)
    predicts_qualities: ClassVar[bool] = False
    # file roles that bundles up to a schema version carried and this build no longer uses:
    # role -> last schema version that had it (accepted there, checksummed, never read)
    retired_roles: ClassVar[Mapping[str, int]] = {}

    # ---- params ---------------------------------------------------------------------------------
    def read_params(self, data: Any, where: str) -> Any:
        """The Params of a decoded JSON object (or a mapping), every field read strictly; no range
        checks (`check_params`). A field with a default may be absent (it was added after bundles were
        written without it; `params_to_dict` leaves it out while it holds its default). Errors name
        `where` and the field."""
        node = Node(data, where)
        hints = typing.get_type_hints(self.Params)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self.Params):
            if f.default is not dataclasses.MISSING and not node.has(f.name):
                continue
            hint = hints[f.name]
            if hint is int:
                values[f.name] = node.int_(f.name)
            elif hint is float:
                values[f.name] = node.float_(f.name)
            elif hint is str:
                values[f.name] = node.str_(f.name)
            elif hint is bool:
                values[f.name] = node.bool_(f.name)
            elif hint == _TUPLE_OF_STR:
                key = node.key(f.name)
                values[f.name] = tuple(as_str(v, f"{key}[{i}]") for i, v in enumerate(node.list_(f.name)))
            else:
                raise TypeError(f"router kind {self.name}: params field {f.name} has unsupported type {hint}")
        node.close()
        return self.Params(**values)

    def params_to_dict(self, params: Any) -> dict[str, Any]:
        """The params as manifest JSON (tuples become lists); a field with a default is left out while it
        holds it, so that adding such a field changes no bundle written before."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.Params):
            value = getattr(params, f.name)
            if f.default is dataclasses.MISSING or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def coerce_params(self, params: Any, where: str) -> Any:
        """Params from a trainer (a Params instance or a mapping) exactly as they will read back."""
        data = self.params_to_dict(params) if isinstance(params, self.Params) else dict(params)
        parsed = self.read_params(data, where)
        self.check_params(parsed, where)
        return parsed

    def check_params(self, params: Any, where: str) -> None:  # noqa: B027 (optional hook)
        """Raise `fail(...)` when a value is out of range (`where` is "routers.<name>.params")."""

    @staticmethod
    def positive(params: Any, where: str, *names: str) -> None:
        """Refuse any of `names` that is not > 0."""
        for name in names:
            value = getattr(params, name)
            if value <= 0:
                raise fail(f"{where}.{name}: must be positive, got {value}")

    def check_manifest(self, router: str, spec: RouterSpec, manifest: Manifest) -> None:  # noqa: B027
        """Checks against the rest of the manifest (tiers, models, encoder); raise `fail(...)`."""

    # ---- runtime and training ---------------------------------------------------------------------
    @abstractmethod
    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> Router:
        """The runtime router of manifest entry `spec`, its files checked."""

    @abstractmethod
    def train(self, ctx: TrainContext) -> RouterArtifacts:
        """Train on the build's training split; only the offline pipeline calls this."""
