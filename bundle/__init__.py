"""lmroute.bundle: the artifact bundle contract (manifest, writer, validating loader, runtime routers).

See docs/BUNDLE.md. `export` writes bundles with `write_bundle` / `update_calibration`; the service and
evaluation read them with `load_bundle`. Router kinds (one module each, behind a registry):
`lmroute.bundle.kinds`. Test helpers live in `lmroute.bundle.testing` (not imported here).
"""

from lmroute.bundle.errors import BundleError
from lmroute.bundle.kinds.bert import BertRouter
from lmroute.bundle.kinds.mf import MFRouter
from lmroute.bundle.kinds.random import RandomRouter
from lmroute.bundle.kinds.sw_ranking import SWRankingRouter
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
from lmroute.bundle.routers import BlendedRouter, PromptBatch, Router
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
