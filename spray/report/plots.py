"""The report's figures (matplotlib, Agg canvas, no pyplot): eigenvalue spectrum, 2-D map of a class.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so neither the global
backend nor pyplot's figure registry is touched; style settings apply inside ``rc_context`` only.
Figures carry no user-supplied text (class names go in the HTML, where they are escaped).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FLAGGED_COLOUR = "#d62728"
NOISE_COLOUR = "#b8b8b8"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94"]
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": "#333333",
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "svg.fonttype": "none",
}


def cluster_colours(ids: Sequence[int], flagged: int | None) -> dict[int, str]:
    """A colour per cluster id: the flagged cluster red, noise (-1) grey, the others a palette without red."""
    colours, others = {}, iter(_PALETTE * (len(ids) // len(_PALETTE) + 1))
    for cid in ids:
        colours[cid] = FLAGGED_COLOUR if cid == flagged else NOISE_COLOUR if cid < 0 else next(others)
    return colours


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        yield fig


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def spectrum_plot(eigenvalues: np.ndarray, n_clusters: int | None) -> str:
    """Eigenvalues (ascending) of the class's graph, with the largest gap among them marked."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    x = np.arange(1, lam.size + 1)
    with _figure(4.4, 2.8) as fig:
        ax = fig.add_subplot()
        ax.plot(x, lam, color="#1f77b4", marker="o", markersize=4, linewidth=1.2)
        if n_clusters is not None and 1 <= n_clusters < lam.size:
            k = n_clusters
            ax.axvspan(k + 0.15, k + 0.85, color=FLAGGED_COLOUR, alpha=0.12, linewidth=0)
            ax.annotate(
                "", xy=(k + 0.5, lam[k]), xytext=(k + 0.5, lam[k - 1]),
                arrowprops={"arrowstyle": "<->", "color": FLAGGED_COLOUR, "linewidth": 1.2},
            )
            ax.text(k + 0.95, (lam[k - 1] + lam[k]) / 2, f"largest gap:\n{k} group{'s' * (k != 1)}",
                    color=FLAGGED_COLOUR, va="center", fontsize=8)
        ax.set_xlabel("eigenvalue number (smallest first)")
        ax.set_ylabel("eigenvalue")
        ax.set_xticks(x if x.size <= 16 else np.unique(np.linspace(1, x.size, 9).round().astype(int)))
        ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
        return _png(fig)


def map_plot(
    xy: np.ndarray, labels: np.ndarray, colours: dict[int, str], flagged: int | None, axis_name: str
) -> str:
    """Each image of the class as a point (similar explanations close together), coloured by group."""
    xy = np.asarray(xy, dtype=np.float64)
    size = float(np.clip(600 / np.sqrt(max(len(xy), 1)), 3, 40))
    with _figure(4.6, 3.9) as fig:
        ax = fig.add_subplot()
        order = sorted(colours, key=lambda c: (c == flagged, c >= 0))  # noise first, flagged on top
        for cid in order:
            sel = labels == cid
            if not sel.any():
                continue
            ax.scatter(
                xy[sel, 0], xy[sel, 1], s=size * (1.6 if cid == flagged else 1.0), c=colours[cid],
                edgecolors="black" if cid == flagged else "none", linewidths=0.5, alpha=0.9,
                label=("group " + str(cid)) if cid >= 0 else "unassigned",
            )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_ylabel(f"{axis_name} 2")
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
        if len(order) <= 12:
            ax.legend(loc="best", fontsize=7, frameon=True, framealpha=0.85, markerscale=0.8)
        return _png(fig)
