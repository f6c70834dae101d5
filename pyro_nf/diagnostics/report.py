"""``diagnose``: did the variational fit work? (Yao, Vehtari, Simpson & Gelman, 2018,
"Yes, but did it work?: Evaluating variational inference").

With draws z_s ~ q and log importance ratios log w_s = log p(x, z_s) - log q(z_s):

* the Pareto k-hat of the ratios' upper tail: k < 0.5 reliable, 0.5 <= k < 0.7 usable with
  importance reweighting (with care), k >= 0.7 unreliable. It cannot see a missed mode;
* ELBO = mean(log w) (a lower bound on log p(x)), with Monte Carlo standard error sd/sqrt(S);
* the importance-weighted bound log mean exp(log w) (tighter; Burda et al., 2016) with a
  delta-method standard error;
* importance-sampling ESS = 1 / sum(w_norm^2) of the PSIS-smoothed weights, and per draw;
* PSIS-reweighted posterior means next to the raw means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyro_nf.diagnostics import _arviz


def verdict(khat: float) -> str:
    """Yao et al.'s reading of k-hat (``-inf``: constant weights, an exact guide)."""
    if math.isnan(khat) or khat >= 0.7:
        return "unreliable"
    if khat >= 0.5:
        return "usable with care"
    return "reliable"


def _logmeanexp(x: np.ndarray) -> float:
    m = np.max(x)
    return float(m + np.log(np.mean(np.exp(x - m))))


@dataclass
class DiagnosticReport:
    """The numbers :func:`diagnose` computes; ``print(report)`` shows them as a table."""

    khat: float
    verdict: str
    ess: float
    num_draws: int
    elbo: float
    elbo_se: float
    iw_bound: float
    iw_bound_se: float
    means: dict[str, tuple[float, float]] = field(default_factory=dict)
    label: str = ""

    @property
    def ess_per_draw(self) -> float:
        return self.ess / self.num_draws

    def as_dict(self) -> dict[str, Any]:
        return {"khat": self.khat, "verdict": self.verdict, "ess": self.ess,
                "ess_per_draw": self.ess_per_draw, "num_draws": self.num_draws,
                "elbo": self.elbo, "elbo_se": self.elbo_se, "iw_bound": self.iw_bound,
                "iw_bound_se": self.iw_bound_se}

    def __str__(self) -> str:
        title = f"Variational fit diagnostics{' - ' + self.label if self.label else ''}"
        rows = [
            ("PSIS k-hat", f"{self.khat:.3f}", self.verdict),
            ("importance-sampling ESS", f"{self.ess:.0f} of {self.num_draws}",
             f"{self.ess_per_draw:.3f} per draw"),
            ("ELBO", f"{self.elbo:.3f} +- {self.elbo_se:.3f}", "lower bound on log p(x)"),
            ("IW bound", f"{self.iw_bound:.3f} +- {self.iw_bound_se:.3f}",
             "log mean exp(log w): tighter bound"),
        ]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [title, "-" * len(title)]
        lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c}" for a, b, c in rows]
        if self.means:
            name_w = max(len(k) for k in self.means)
            lines += ["", f"{'parameter':<{name_w}}  {'raw mean':>12}  {'PSIS mean':>12}"]
            lines += [f"{k:<{name_w}}  {raw:>12.4g}  {psis:>12.4g}"
                      for k, (raw, psis) in self.means.items()]
        return "\n".join(lines)

    __repr__ = __str__


def flatten(dataset: Any, var_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{"theta[0]": draws, ...}``: every scalar of every variable, draws over chains and
    draws flattened (0-based indices)."""
    out = {}
    for name in var_names or list(dataset.data_vars):
        arr = np.asarray(dataset[name].values)
        arr = arr.reshape((-1,) + arr.shape[2:])
        if arr.ndim == 1:
            out[name] = arr
            continue
        for index in np.ndindex(*arr.shape[1:]):
            out[f"{name}[{','.join(map(str, index))}]"] = arr[(slice(None),) + index]
    return out


def diagnose_weights(log_weight: np.ndarray, draws: dict[str, np.ndarray] | None = None,
                     label: str = "") -> DiagnosticReport:
    """The report from log importance ratios (and optionally the matching draws)."""
    lw = np.asarray(log_weight, dtype=np.float64).reshape(-1)
    lw = np.where(np.isnan(lw), -np.inf, lw)
    n = lw.size
    finite = lw[np.isfinite(lw)]
    if finite.size < 2:
        raise ValueError("diagnose: fewer than two draws have a finite log importance ratio")
    smoothed, khat = _arviz.psis(np.where(np.isfinite(lw), lw, finite.min() - 50.0))
    w = np.exp(smoothed - np.max(smoothed))
    w /= w.sum()
    ess = float(1.0 / np.sum(w ** 2))
    elbo = float(np.mean(lw)) if np.isfinite(lw).all() else -math.inf
    elbo_se = float(np.std(finite, ddof=1) / math.sqrt(n))
    iw = _logmeanexp(lw)
    raw_w = np.exp(lw - np.max(lw))
    iw_se = float(np.std(raw_w, ddof=1) / (np.mean(raw_w) * math.sqrt(n)))
    means = {}
    for key, values in (draws or {}).items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        means[key] = (float(values.mean()), float(np.sum(w * values)))
    return DiagnosticReport(khat=float(khat), verdict=verdict(khat), ess=ess, num_draws=n,
                            elbo=elbo, elbo_se=elbo_se, iw_bound=iw, iw_bound_se=iw_se,
                            means=means, label=label)


def diagnose(model_or_idata, guide=None, *args: Any, num_samples: int = 4000,
             label: str = "", **kwargs: Any) -> DiagnosticReport:
    """Diagnose a fitted guide (``diagnose(model, guide, *args)``) or saved InferenceData from
    :func:`~pyro_nf.to_inference_data` (``diagnose(idata)``)."""
    if guide is None:
        idata = model_or_idata
    else:
        from pyro_nf.diagnostics.inference_data import to_inference_data

        idata = to_inference_data(model_or_idata, guide, *args, num_samples=num_samples,
                                  **kwargs)
    if "sample_stats" not in _arviz.groups(idata) or \
            "log_weight" not in _arviz.group(idata, "sample_stats"):
        raise ValueError("diagnose needs sample_stats.log_weight, which "
                         "pyro_nf.to_inference_data writes (MCMC and reference draws have none)")
    lw = np.asarray(_arviz.group(idata, "sample_stats")["log_weight"].values)
    draws = flatten(_arviz.group(idata, "posterior"))
    if not label:
        label = str(_arviz.attrs(idata).get("guide", ""))
    return diagnose_weights(lw, draws, label=label)
