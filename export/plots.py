"""Cost-quality plots for the evaluation report (matplotlib, Agg canvas, no pyplot state).

One figure per benchmark: quality vs. % of calls sent to the strong model for every router, the
random baseline (mean over seeds with a +-1 std band), the oracle, and horizontal lines at the
all-strong and all-weak quality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PlotCurve", "plot_cost_quality"]


@dataclass(frozen=True, kw_only=True)
class PlotCurve:
    """One line of a cost-quality plot.

    Attributes:
        strong_share: fractions of calls to the strong model (x, plotted as %).
        quality: mean quality at each share (y).
        band: optional +- half-width of a shaded band around ``quality`` (e.g. a std).
    """

    strong_share: Sequence[float]
    quality: Sequence[float]
    band: Sequence[float] | None = None


def plot_cost_quality(
    path: Path,
    *,
    title: str,
    ylabel: str,
    routers: Mapping[str, PlotCurve],
    random: PlotCurve | None,
    oracle: PlotCurve | None,
    strong_mean: float,
    weak_mean: float,
    strong_label: str = "strong model",
    weak_label: str = "weak model",
) -> Path:
    """Draw one benchmark's cost-quality curves and save them as a PNG at ``path``."""
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axhline(strong_mean, color="tab:red", linestyle="--", linewidth=1.0, label=f"{strong_label} ({strong_mean:.3g})")
    ax.axhline(weak_mean, color="tab:blue", linestyle="--", linewidth=1.0, label=f"{weak_label} ({weak_mean:.3g})")
    if random is not None:
        x = 100.0 * np.asarray(random.strong_share, dtype=float)
        y = np.asarray(random.quality, dtype=float)
        ax.plot(x, y, color="grey", linewidth=1.2, label="random (mean)")
        if random.band is not None:
            b = np.asarray(random.band, dtype=float)
            ax.fill_between(x, y - b, y + b, color="grey", alpha=0.2, linewidth=0, label="random (+-1 std)")
    if oracle is not None:
        ax.plot(
            100.0 * np.asarray(oracle.strong_share, dtype=float),
            oracle.quality,
            color="black",
            linestyle=":",
            marker=".",
            label="oracle",
        )
    for name, curve in routers.items():
        ax.plot(
            100.0 * np.asarray(curve.strong_share, dtype=float),
            curve.quality,
            marker="o",
            markersize=3.5,
            linewidth=1.4,
            label=name,
        )
    ax.set_xlim(0.0, 100.0)
    ax.set_xlabel("% of calls to the strong model")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
