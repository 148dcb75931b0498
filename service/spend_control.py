"""Holding a spend per 1,000 requests live when routing among N priced models.

With candidates, the policy "maximise predicted quality - lambda x expected cost" spends less as lambda
grows. `SpendController` holds one target spend for one (tenant, router) by choosing lambda, the same
way `lmroute.service.share_control` holds a share:

    feed-forward   the window's spend curve: what the last `window` prompts, each choosing among its
                   own candidates, would have spent on average at each lambda of a log grid (`GRID`);
                   each prompt's spend at every grid lambda is computed once, when it is decided, and
                   the curve is their running sum
    feedback       at every decision, lambda is the smallest grid value whose spend is within the
                   budget s = target + deficit / repay, the deficit a leaky sum of (target - expected
                   cost) over the decisions made (leak 1 / horizon), but for a gap lambda could not
                   close (under the target at lambda 0, over it at the grid's top: the candidates
                   offered could not spend the target), which is not owed when others come (no wind-up)

The first decision, before the window holds a prompt, takes lambda from that prompt's own spend row.

Spend is counted in expected cost (the router's estimate at decision time: input tokens and the
model's expected answer length at its prices), the only cost known when deciding; what the answers
really cost differs by how long they run. Each decision's candidates, predicted qualities and expected
costs are kept (the decision's `choice`, in the outcome store), so replaying them restores the state.
Not thread-safe: the server calls it from its event loop. Cost per decision: one [grid x candidates]
argmax and an update of a grid-long sum.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.bundle.model_choice import choose_max_utility
from lmroute.service.share_control import ControlSettings

__all__ = ["GRID", "SPEND_REPAY", "SpendController", "SpendState"]

SPEND_REPAY = 10
"""The default repay of a spend controller (`--control-spend-repay`), chosen on a stream of training
prompts (benchmarks/results/drift_spend/tune_grid.txt): spend comes in lumps (one call to a dear model
costs as much as dozens to a cheap one), so the deficit is paid back faster than a share's."""

# lambda in USD^-1 (quality per USD of one request): 0, then log-spaced (10 per decade); 1e9 picks the
# cheapest model
GRID = np.concatenate([[0.0], np.logspace(-1, 9, 101)])


@dataclass(frozen=True)
class SpendState:
    """What a spend controller reports: target and realised spend per 1,000 requests (USD; NaN before
    the first decision), the cost weight the next decision uses (lambda / 1000, ModelPolicy units),
    decisions made, and the deficit (USD per request, summed)."""

    target_per_1k: float
    realised_per_1k: float
    cost_weight: float
    decisions: int
    deficit: float


class SpendController:
    """Chooses among each prompt's candidates at a cost weight that holds a spend target."""

    def __init__(self, target_per_1k: float, settings: ControlSettings | None = None) -> None:
        if not (math.isfinite(target_per_1k) and target_per_1k >= 0):
            raise ValueError(f"target: must be >= 0 USD per 1,000 requests (got {target_per_1k})")
        self.settings = settings or ControlSettings(repay=SPEND_REPAY)
        self.target = target_per_1k / 1000.0  # USD per request
        # each windowed prompt's spend at every GRID lambda, and their sum (the window's spend curve)
        self._rows: deque[np.ndarray] = deque(maxlen=self.settings.window)
        self._sum = np.zeros(len(GRID))
        self._recent: deque[float] = deque(maxlen=self.settings.report_window)
        self._leak = 1.0 - 1.0 / self.settings.horizon
        self.deficit = 0.0
        self.decisions = 0
        self.lam = 0.0

    @staticmethod
    def _row_spend(q: np.ndarray, c: np.ndarray) -> np.ndarray:
        """What one prompt would spend at each GRID lambda: the cost of its best candidate by q - lambda c."""
        picked = (q[None, :] - GRID[:, None] * c[None, :]).argmax(axis=1)
        spend: np.ndarray = c[picked]
        return spend

    def _solve(self, spend: np.ndarray | None = None) -> float:
        """The smallest grid lambda at which the window (or, before it holds any prompt, the one prompt
        whose `spend` row is given) spends at most the adjusted budget."""
        if self._rows:
            spend = self._sum / len(self._rows)
        if spend is None:
            return 0.0
        budget = max(0.0, self.target + self.deficit / self.settings.repay)
        curve = np.minimum.accumulate(spend)
        within = np.flatnonzero(curve <= budget)
        return float(GRID[within[0]] if within.size else GRID[-1])

    @property
    def cost_weight(self) -> float:
        """The current lambda in ModelPolicy.cost_weight units (quality per USD of 1,000 requests)."""
        return self.lam / 1000.0

    def choose(self, qualities: npt.ArrayLike, costs: npt.ArrayLike) -> int:
        """The column the current lambda chooses among one prompt's candidates (not accounted: `record`)."""
        q = np.asarray(qualities, dtype=np.float64)
        c = np.asarray(costs, dtype=np.float64)
        # the first prompt, with no window yet to hold the target over: its own spend row decides
        lam = self.lam if self._rows else self._solve(self._row_spend(q, c))
        [j] = choose_max_utility(q[None, :], c[None, :], lam)
        return int(j)

    def decide(self, qualities: npt.ArrayLike, costs: npt.ArrayLike) -> int:
        """Choose among one prompt's candidates at the current lambda and account it; the column."""
        j = self.choose(qualities, costs)
        self.record(qualities, costs, j)
        return j

    def record(
        self, qualities: npt.ArrayLike, costs: npt.ArrayLike, chosen: int, made_at_per_1k: float | None = None
    ) -> None:
        """Account one decision (made here, or replayed from the store; `made_at_per_1k`: the target it was
        made at when that was another, USD per 1,000 requests)."""
        q = np.asarray(qualities, dtype=np.float64)
        c = np.asarray(costs, dtype=np.float64)
        spent = float(c[chosen])
        if len(self._rows) == self._rows.maxlen:
            self._sum -= self._rows[0]
        row = self._row_spend(q, c)
        self._rows.append(row)
        self._sum += row
        if self.decisions % self.settings.window == 0:  # re-add exactly now and then: no drift from subtraction
            self._sum = np.sum(self._rows, axis=0)
        self._recent.append(spent)
        target = self.target if made_at_per_1k is None else made_at_per_1k / 1000.0
        # no wind-up: a gap the cost weight could not close (under the target at lambda 0, the best predicted
        # chosen; over it at the grid's top, the cheapest) is not owed later, when other candidates come
        gap = target - spent
        pinned = (gap > 0 and self.lam <= GRID[0]) or (gap < 0 and self.lam >= GRID[-1])
        self.deficit = self.deficit * self._leak + (0.0 if pinned else gap)
        self.decisions += 1
        self.lam = self._solve()

    def retarget(self, target_per_1k: float) -> None:
        """Hold a new target from the next decision on (the window is kept; the deficit restarts)."""
        if not (math.isfinite(target_per_1k) and target_per_1k >= 0):
            raise ValueError(f"target: must be >= 0 USD per 1,000 requests (got {target_per_1k})")
        self.target = target_per_1k / 1000.0
        self.deficit = 0.0
        self.lam = self._solve()

    def state(self) -> SpendState:
        realised = 1000.0 * sum(self._recent) / len(self._recent) if self._recent else math.nan
        return SpendState(1000.0 * self.target, realised, self.cost_weight, self.decisions, self.deficit)
