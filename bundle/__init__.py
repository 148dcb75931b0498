"""lmroute.bundle: the artifact bundle contract (manifest, writer, validating loader, runtime routers).

See docs/BUNDLE.md. `export` writes bundles with `write_bundle` / `update_calibration`; the service and
evaluation read them with `load_bundle`. Test helpers live in `lmroute.bundle.testing` (not imported here).
"""

from lmroute.bundle.errors import BundleError
from lmroute.bundle.loader import Bundle, load_bundle, read_manifest
from lmroute.bundle.manifest import (
    SCHEMA_VERSION,
    Blend,
    Calibration,
    DefaultPair,
    DifficultyPriorSpec,
    EncoderSpec,
    FileEntry,
    Manifest,
    RouterSpec,
    TrainingData,
)
from lmroute.bundle.routers import (
    BertRouter,
    BlendedRouter,
    MFRouter,
    PromptBatch,
    RandomRouter,
    Router,
    SWRankingRouter,
)
from lmroute.bundle.writer import RouterArtifacts, update_calibration, write_bundle

__all__ = [
    "SCHEMA_VERSION",
    "BertRouter",
    "Blend",
    "BlendedRouter",
    "Bundle",
    "BundleError",
    "Calibration",
    "DefaultPair",
    "DifficultyPriorSpec",
    "EncoderSpec",
    "FileEntry",
    "MFRouter",
    "Manifest",
    "PromptBatch",
    "RandomRouter",
    "Router",
    "RouterArtifacts",
    "RouterSpec",
    "SWRankingRouter",
    "TrainingData",
    "load_bundle",
    "read_manifest",
    "update_calibration",
    "write_bundle",
]
