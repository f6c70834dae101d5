"""``diagnose``: did the variational fit work? (Yao, Vehtari, Simpson & Gelman, 2018,
"Yes, but did it work?: Evaluating variational inference").

With draws z_s ~ q and log importance ratios log w_s = log p(x, z_s) - log q(z_s):

* the Pareto k-hat of the ratios' upper tail: k < 0.5 reliable, 0.5 <= k < 0.7 usable with
  importance reweighting (with care), k >= 0.7 unreliable; where every log ratio lies within
  ``BOUNDED_RANGE`` of the others the weights are bounded and the verdict is reliable whatever
  k-hat's fit to round-off says. It cannot see a missed mode;
* ELBO = mean(log w) (a lower bound on log p(x)), with Monte Carlo standard error sd/sqrt(S);
* the importance-weighted bound log mean exp(log w) (tighter; Burda et al., 2016) with a
  delta-method standard error;
* importance-sampling ESS = 1 / sum(w_norm^2) of the PSIS-smoothed weights, and per draw;
* PSIS-reweighted posterior means next to the raw means;
* with ``modes=`` (a :func:`~pyro_nf.approximations.modes.find_modes` result, or ``True`` to run the
  search on the model): every mode that holds a noticeable share of the posterior but almost
  none of the guide's draws. k-hat cannot see such a mode, so the verdict is then
  "unreliable: missed mode(s)" whatever k-hat says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pyro_nf.approximations.modes import ModeSearch, find_modes, missed_modes
from pyro_nf.diagnostics.inference_data import to_inference_data
from pyro_nf.utils import arviz_compat

#: Log weights all within this range of one another (weights within about 10% of each other)
#: make importance sampling as good as exact whatever the Pareto fit says: k-hat describes an
#: unbounded upper tail, and with a near-exact guide it is fitted to float round-off.
BOUNDED_RANGE = 0.1


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
    #: the modes the guide misses (:func:`~pyro_nf.approximations.modes.missed_modes`);
    #: None: not checked
    missed_modes: list | None = None

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
        if self.missed_modes is not None:
            lines += [""] + ([f"missed: {m}" for m in self.missed_modes] if self.missed_modes
                             else ["modes: the guide holds every mode the search found"])
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
    smoothed, khat = arviz_compat.psis(np.where(np.isfinite(lw), lw, finite.min() - 50.0))
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
    judged = verdict(khat)
    if judged != "reliable" and finite.size == n and \
            float(finite.max() - finite.min()) < BOUNDED_RANGE:
        judged = "reliable (bounded weights)"
    return DiagnosticReport(khat=float(khat), verdict=judged, ess=ess, num_draws=n,
                            elbo=elbo, elbo_se=elbo_se, iw_bound=iw, iw_bound_se=iw_se,
                            means=means, label=label)


def diagnose(model_or_idata, guide=None, *args: Any, num_samples: int = 4000,
             label: str = "", modes: Any = None, **kwargs: Any) -> DiagnosticReport:
    """Diagnose a fitted guide (``diagnose(model, guide, *args)``) or saved InferenceData from
    :func:`~pyro_nf.to_inference_data` (``diagnose(idata)``). ``modes``: a mode search's
    result to check the draws against, or ``True`` to run :func:`~pyro_nf.find_modes` on the
    model first (module docstring)."""
    if guide is None:
        idata = model_or_idata
    else:

        idata = to_inference_data(model_or_idata, guide, *args, num_samples=num_samples,
                                  **kwargs)
    if "sample_stats" not in arviz_compat.groups(idata) or \
            "log_weight" not in arviz_compat.group(idata, "sample_stats"):
        raise ValueError("diagnose needs sample_stats.log_weight, which "
                         "pyro_nf.to_inference_data writes (MCMC and reference draws have none)")
    lw = np.asarray(arviz_compat.group(idata, "sample_stats")["log_weight"].values)
    draws = flatten(arviz_compat.group(idata, "posterior"))
    if not label:
        label = str(arviz_compat.attrs(idata).get("guide", ""))
    report = diagnose_weights(lw, draws, label=label)
    if modes is not None and modes is not False:
        _check_modes(report, idata, modes, model_or_idata if guide is not None else None,
                     args, kwargs)
    return report


def _check_modes(report: DiagnosticReport, idata: Any, modes: Any, model: Any, args: tuple,
                 kwargs: dict) -> None:
    """Fill in ``report.missed_modes`` and mark the verdict when a real mode is missed (a
    relabelled copy under label switching is reported but does not change the verdict)."""

    if modes is True:
        if model is None:
            raise ValueError("diagnose(idata, modes=True): InferenceData carries no model to "
                             "search; pass modes=find_modes(model, ...) or diagnose(model, "
                             "guide, ..., modes=True)")
        modes = find_modes(model, *args, **kwargs)
    if not isinstance(modes, ModeSearch):
        raise TypeError("diagnose: modes must be True or the result of pyro_nf.find_modes, "
                        f"got {type(modes).__name__}")
    report.missed_modes = missed_modes(modes, idata)
    if any(not m.relabelling for m in report.missed_modes):
        report.verdict = "unreliable: missed mode(s)"
