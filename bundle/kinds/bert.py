"""The `bert` router kind: the encoder fine-tuned as a 3-label classifier (RouteLLM's BERT router).

File: model, an ONNX graph over the encoder's tokens (`lmroute.bundle.files.ONNX_INPUTS`) with output
`logits` [batch, 3] in the order of params.labels = (strong_wins, tie, weak_wins). Score =
softmax(logits)[strong_wins] in float64. It reads the bundle encoder's tokens, so params.max_tokens must
equal encoder.max_tokens and a long prompt is cut by the encoder's truncation rule (encoder.truncation),
the rule it was trained with. Training: `lmroute.export.train_bert` (PyTorch, offline only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import ONNX_INPUTS, check_onnx_io
from lmroute.bundle.jsonread import MANIFEST_NAME, fail
from lmroute.bundle.kinds.base import FileRole, LoadContext, RouterArtifacts, RouterKind, TrainContext

if TYPE_CHECKING:
    import onnxruntime as ort

    from lmroute.bundle.manifest import RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["BERT_LABELS", "KIND", "BertKind", "BertParams", "BertRouter"]

BERT_LABELS: tuple[str, ...] = ("strong_wins", "tie", "weak_wins")


@dataclass(frozen=True)
class BertParams:
    """max_tokens: truncation (= encoder.max_tokens); labels: the classifier's label order."""

    max_tokens: int
    labels: tuple[str, ...]


class BertRouter:
    """3-label classifier run on the encoder's TokenBatch in its own ONNX Runtime session."""

    kind = "bert"
    uses_encoder = False
    INPUTS: tuple[str, ...] = ONNX_INPUTS

    def __init__(self, name: str, *, session: ort.InferenceSession, labels: Sequence[str]) -> None:
        self.name = name
        self.session = session
        self.labels = tuple(labels)
        self._strong = self.labels.index("strong_wins")

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        tokens: Any = batch.tokens
        n = len(batch.texts)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        feeds = {k: np.ascontiguousarray(getattr(tokens, k), dtype=np.int64) for k in self.INPUTS}
        (logits,) = self.session.run(["logits"], feeds)
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (n, len(self.labels)):
            raise RuntimeError(
                f"router {self.name!r} (bert): logits shape {logits.shape}, expected ({n}, {len(self.labels)})"
            )
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        strong: npt.NDArray[np.float64] = probs[:, self._strong]
        return strong


class BertKind(RouterKind):
    name = "bert"
    uses_encoder = False
    Params = BertParams
    roles = (FileRole("model", "model.onnx"),)

    def check_params(self, params: BertParams, where: str) -> None:
        self.positive(params, where, "max_tokens")
        if tuple(params.labels) != BERT_LABELS:
            raise fail(f"{where}.labels: must be {list(BERT_LABELS)}, got {list(params.labels)}")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> BertRouter:
        params: BertParams = spec.params
        if ctx.manifest.encoder.kind == "remote":
            raise BundleError(
                MANIFEST_NAME, f"routers.{router}: bert reads the encoder's tokens; a remote encoder has none"
            )
        if params.max_tokens != ctx.manifest.encoder.max_tokens:
            raise BundleError(
                MANIFEST_NAME,
                f"routers.{router}.params.max_tokens: {params.max_tokens} differs from "
                f"encoder.max_tokens {ctx.manifest.encoder.max_tokens} (bert reads the encoder's tokens)",
            )
        rel = spec.files["model"]
        session = ctx.session(rel)
        check_onnx_io(session, rel, "logits", len(params.labels), "number of labels")
        return BertRouter(router, session=session, labels=params.labels)

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        from lmroute.export.train_bert import export_bert_onnx, train_bert_recipe

        cfg = ctx.recipe
        budget = 60.0 if cfg.quick else None
        trained = train_bert_recipe(
            ctx.comparisons, dict(ctx.tiers), cfg, strong=ctx.strong, weak=ctx.weak, time_budget_s=budget
        )
        onnx_path = ctx.work_dir / f"model-{cfg.seed}.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        max_diff = export_bert_onnx(
            trained.model, trained.tokenizer_dir, onnx_path, max_tokens=cfg.max_tokens, truncation=cfg.truncation_rule
        )
        stats = asdict(trained.stats)
        stats.pop("val_history", None)
        ctx.notes.update(stats, onnx_max_abs_diff_vs_torch=max_diff)
        params = BertParams(max_tokens=int(cfg.max_tokens), labels=BERT_LABELS)
        return RouterArtifacts(kind=self.name, params=params, files={"model": onnx_path})


KIND = BertKind()
