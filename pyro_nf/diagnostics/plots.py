"""Figures: overlaid marginals, a pair plot of several posteriors, ELBO traces.

Drawn with matplotlib directly, so the same code serves ArviZ 0.x and 1.x (whose plotting
APIs differ). Every function returns the figure and saves it when given ``path``. The backend
is the user's (a notebook's inline one, or Agg where there is no display): importing this
module does not change it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from pyro_nf.diagnostics.compare import flat_draws

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def _select(posteriors: dict[str, Any], var_names: list[str] | None, limit: int):
    flats = {k: flat_draws(v) for k, v in posteriors.items()}
    first = next(iter(flats.values()))
    names = [p for p in first if var_names is None or p in var_names
             or p.split("[")[0] in var_names]
    return flats, names[:limit]


def khat_title(title: str | None, reports: dict[str, Any] | None) -> str | None:
    """``title`` followed by each method's PSIS k-hat and verdict (``DiagnosticReport``s)."""
    if not reports:
        return title
    parts = [f"{k}: k-hat {r.khat:.2f} ({r.verdict.split(':')[0]})" for k, r in reports.items()]
    return "\n".join(([title] if title else []) + ["; ".join(parts)])


def plot_marginals(posteriors: dict[str, Any], var_names: list[str] | None = None, *,
                   title: str | None = None, reports: dict[str, Any] | None = None,
                   path: str | Path | None = None, max_vars: int = 12):
    """Overlaid marginal histograms (densities) of several posteriors, one panel per scalar;
    ``reports`` ({method: DiagnosticReport}) put each k-hat verdict in the title."""
    title = khat_title(title, reports)
    flats, names = _select(posteriors, var_names, max_vars)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, names):
        allv = np.concatenate([f[p] for f in flats.values()])
        lo, hi = np.quantile(allv, [0.005, 0.995])
        bins = np.linspace(lo, hi, 50)
        for (label, flat), color in zip(flats.items(), COLORS):
            ax.hist(flat[p], bins=bins, density=True, histtype="step", color=color,
                    label=label, linewidth=1.4)
        ax.set_title(p, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_pair(posteriors: dict[str, Any], var_names: list[str], *, title: str | None = None,
              reports: dict[str, Any] | None = None, path: str | Path | None = None,
              max_points: int = 1500, seed: int = 0):
    """Pair plot of chosen variables with several posteriors overlaid (scatter below the
    diagonal, marginal histograms on it); ``reports`` as for :func:`plot_marginals`."""
    title = khat_title(title, reports)
    flats, names = _select(posteriors, var_names, 6)
    k = len(names)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(k, k, figsize=(2.3 * k, 2.3 * k), squeeze=False)
    # axis ranges from the pooled central 99% of every posterior: a heavy tail (a funnel's
    # wide end) would otherwise squash the bulk into one bin
    limits = {}
    for name in names:
        pooled = np.concatenate([flat[name] for flat in flats.values()])
        lo, hi = np.quantile(pooled[np.isfinite(pooled)], [0.005, 0.995])
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        limits[name] = (lo - pad, hi + pad)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for (label, flat), color in zip(flats.items(), COLORS):
                x, y = flat[names[j]], flat[names[i]]
                if i == j:
                    ax.hist(x, bins=40, range=limits[names[j]], density=True,
                            histtype="step", color=color, label=label)
                else:
                    idx = rng.choice(len(x), min(max_points, len(x)), replace=False)
                    ax.scatter(x[idx], y[idx], s=2, alpha=0.35, color=color)
            ax.set_xlim(limits[names[j]])
            if i != j:
                ax.set_ylim(limits[names[i]])
            if i == k - 1:
                ax.set_xlabel(names[j], fontsize=8)
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=8)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_elbo(results: dict[str, Any] | Any, *, title: str | None = None,
              path: str | Path | None = None, smooth: int = 50):
    """ELBO traces of one or several fit results (``FitResult`` or lists of losses)."""
    if not isinstance(results, dict):
        results = {"fit": results}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (label, res), color in zip(results.items(), COLORS):
        losses = np.asarray(getattr(res, "losses", res), dtype=np.float64)
        elbo = -losses
        ax.plot(elbo, color=color, alpha=0.25, linewidth=0.6)
        if len(elbo) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(np.arange(smooth - 1, len(elbo)), np.convolve(elbo, kernel, "valid"),
                    color=color, label=label)
        lo = np.quantile(elbo[len(elbo) // 10:], 0.01) if len(elbo) > 10 else elbo.min()
        ax.set_ylim(bottom=min(ax.get_ylim()[0], lo) if ax.lines[:-2] else lo)
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
