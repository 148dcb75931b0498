"""RouteLLM's own per-request fit of the sw_ranking model, for `params.fit = "routellm"` bundles.

RouteLLM 0.2.0 (`routellm.routers.similarity_weighted.utils.compute_elo_mle_with_tie`) fits each
request's similarity-weighted Bradley-Terry model with scikit-learn's `LogisticRegression(fit_intercept=
False, penalty=None)` at its other defaults: lbfgs from zero ratings, stopped at tol 1e-4. It has not
converged there, so its scores differ from the exact optimum (the kind's default, solved by Newton in
the compiled core) by up to ~1e-4. This module runs the same scikit-learn fit on the same rows, so an
imported router scores as RouteLLM as released does.

RouteLLM's rows, built from its battles: every battle twice; a battle model_a won is label 1 both
times, one model_b won label 0 both times, a tie label 1 once and 0 once; one column per rated tier,
+log(base) for model_a's tier and -log(base) for model_b's (a same-tier battle keeps only the second:
the tier against an opponent of rating 0). Rows of one cell are alike, so each cell gives at most two
rows carrying the summed weight of its battles (twice a battle's weight for a win, once each way for a
tie): the same loss and gradient at every step, hence the same lbfgs path, up to floating-point order.
A cell's tier that no model of the bundle belongs to (the import's virtual opponent of same-tier
battles) has no column: its rating is fixed at 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RouteLLMFit", "sklearn_missing"]

#: outcome -> its rows' (label, weight per unit of battle weight): a battle is duplicated, a tie is one
#: win each way
_ROWS_OF_OUTCOME: dict[int, tuple[tuple[float, float], ...]] = {
    0: ((1.0, 2.0),),
    1: ((0.0, 2.0),),
    2: ((1.0, 1.0), (0.0, 1.0)),
}


def sklearn_missing() -> str | None:
    """None when scikit-learn imports, else why not (the fit needs it; install the `routellm` extra)."""
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError as exc:
        return f"scikit-learn is not installed ({exc}); pip install 'lmroute[routellm]'"
    return None


class RouteLLMFit:
    """RouteLLM's fit over one bundle's cells: `scores(cell_weights, strong, weak)`.

    cells int [c, 3] (tier_a < tier_b, outcome 0 = a wins, 1 = b wins, 2 = tie); rated_tiers: the tiers
    with a column (those the bundle's models belong to); base: the rating base (RouteLLM's 10).
    """

    def __init__(self, cells: npt.NDArray[np.integer], rated_tiers: Collection[int], base: float) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        self._model = LogisticRegression
        self._convergence_warning = ConvergenceWarning
        self.columns = {t: j for j, t in enumerate(sorted(rated_tiers))}
        rows: list[npt.NDArray[np.float64]] = []
        labels: list[float] = []
        cell_of_row: list[int] = []
        per_weight: list[float] = []  # each row's weight per unit of its cell's weight
        log_base = math.log(base)
        for c, (a, b, outcome) in enumerate(np.asarray(cells).tolist()):
            x = np.zeros(len(self.columns))
            if a in self.columns:
                x[self.columns[a]] = log_base
            if b in self.columns:
                x[self.columns[b]] = -log_base
            for label, share in _ROWS_OF_OUTCOME[outcome]:
                rows.append(x)
                labels.append(label)
                cell_of_row.append(c)
                per_weight.append(share)
        self._x = np.array(rows).reshape(len(rows), len(self.columns))
        self._y = np.array(labels)
        self._cell_of_row = np.array(cell_of_row, dtype=np.int64)
        self._per_weight = np.array(per_weight)
        self.base = base

    def ratings(self, cell_weights: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """One request's fitted ratings [columns] (in units of log_base odds), from its cell weights [c]."""
        weight = np.asarray(cell_weights, dtype=np.float64)[self._cell_of_row] * self._per_weight
        # RouteLLM writes penalty=None, deprecated from scikit-learn 1.8; C=inf is the same unpenalised fit
        # (a penalty of 1 / C = 0) without the warning (tests/integration/test_import_routellm.py runs RouteLLM)
        model: Any = self._model(fit_intercept=False, C=math.inf)
        with warnings.catch_warnings():  # lbfgs stopping at max_iter warns; RouteLLM's fit goes on as well
            warnings.simplefilter("ignore", category=self._convergence_warning)
            model.fit(self._x, self._y, sample_weight=weight)
        coef: npt.NDArray[np.float64] = np.asarray(model.coef_[0], dtype=np.float64)
        return coef

    def scores(
        self, cell_weights: npt.NDArray[np.floating], strong_tier: int, weak_tier: int
    ) -> npt.NDArray[np.float64]:
        """P(strong tier beats weak tier) [b] from per-request cell weights [b, c], as RouteLLM computes
        it from the fitted ratings: 1 - 1 / (1 + base ** (R_strong - R_weak))."""
        w = np.asarray(cell_weights, dtype=np.float64)
        out = np.empty(w.shape[0], dtype=np.float64)
        for i in range(w.shape[0]):
            r = self.ratings(w[i])
            strong = r[self.columns[strong_tier]] if strong_tier in self.columns else 0.0
            weak = r[self.columns[weak_tier]] if weak_tier in self.columns else 0.0
            out[i] = 1.0 - 1.0 / (1.0 + self.base ** (strong - weak))
        return out
