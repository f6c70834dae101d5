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
* the **verdict** of :mod:`~pyro_nf.training.certify`'s checks (importance, reweighted
  moments and quantiles, a mode screen, the mass other proposals find; ``modes="auto"`` by
  default, a :func:`~pyro_nf.approximations.modes.find_modes` result, or False): every mode
  that holds a noticeable share of the posterior but almost none of the guide's draws is
  listed, and k-hat cannot see such a mode, so the verdict is then "unreliable: ... missed
  mode(s)" whatever k-hat says. From InferenceData alone only the first two checks run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyro_nf.approximations.modes import ModeSearch, missed_by
from pyro_nf.diagnostics.inference_data import to_inference_data
from pyro_nf.training.certify import (
    Certificate,
    Check,
    certify_values,
    importance_status,
    modes_check,
    moments_check,
)
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
    #: every check behind the verdict (:mod:`~pyro_nf.training.certify`)
    checks: list = field(default_factory=list)

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
            ("PSIS k-hat", f"{self.khat:.3f}", verdict(self.khat)),
            ("importance-sampling ESS", f"{self.ess:.0f} of {self.num_draws}",
             f"{self.ess_per_draw:.3f} per draw"),
            ("ELBO", f"{self.elbo:.3f} +- {self.elbo_se:.3f}", "lower bound on log p(x)"),
            ("IW bound", f"{self.iw_bound:.3f} +- {self.iw_bound_se:.3f}",
             "log mean exp(log w): tighter bound"),
        ]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [title, "-" * len(title)]
        lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c}" for a, b, c in rows]
        lines += ["", f"verdict: {self.verdict}"] + [f"  {c}" for c in self.checks]
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
             label: str = "", modes: Any = "auto", **kwargs: Any) -> DiagnosticReport:
    """Diagnose a fitted guide (``diagnose(model, guide, *args)``) or saved InferenceData from
    :func:`~pyro_nf.to_inference_data` (``diagnose(idata)``).

    With the model, the verdict is that of every check of :mod:`~pyro_nf.training.certify`
    (importance, reweighted moments, a mode screen, mass other proposals find), for any guide:
    "reliable" only where all passed. ``modes``: ``"auto"`` (or ``True``) runs the mode screen
    (an :class:`~pyro_nf.AutoFlowMixture` is checked against its own search); a
    :func:`~pyro_nf.find_modes` result is used as it is; ``False`` skips it (the verdict is
    then "usable with care" at best). From InferenceData alone only the importance and
    moments checks can run (and the modes, given a search), so the verdict says what was
    not checked."""
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
    if guide is not None:
        _certify(report, idata, model_or_idata, guide, modes, args, kwargs)
    else:
        _from_draws(report, idata, lw, draws, modes)
    return report


def _search(modes: Any, guide: Any) -> tuple[Any, bool]:
    """``(search, screen)``: a search to use, and whether to run one."""
    if modes is None or modes is False:
        return None, False
    if isinstance(modes, ModeSearch):
        return modes, False
    if modes is True or modes == "auto":
        own = getattr(guide, "search", None)
        return (own, False) if isinstance(own, ModeSearch) else (None, True)
    raise TypeError("diagnose: modes must be 'auto', True, False or the result of "
                    f"pyro_nf.find_modes, got {type(modes).__name__}")


def _certify(report: DiagnosticReport, idata: Any, model: Any, guide: Any, modes: Any,
             args: tuple, kwargs: dict) -> None:
    """Every check of the guide's draws against the model (:mod:`pyro_nf.training.certify`)."""
    from pyro.infer.autoguide import AutoContinuous

    search, screen = _search(modes, guide)
    values = _site_values(idata)
    lw = np.asarray(arviz_compat.group(idata, "sample_stats")["log_weight"].values)
    q = guide.get_posterior(*args, **kwargs) if isinstance(guide, AutoContinuous) else None
    certificate = certify_values(model, args, kwargs, values, lw.reshape(-1), q, search,
                                 screen)
    _record(report, certificate, values)


def _from_draws(report: DiagnosticReport, idata: Any, lw: np.ndarray, draws: dict,
                modes: Any) -> None:
    """What draws alone allow: the importance and moments checks, the modes given a search."""
    z = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in draws.values()], -1)
    weights = torch.as_tensor(lw, dtype=torch.float64).reshape(-1)
    importance, finite = importance_status(weights)
    checks = [importance, moments_check(torch.as_tensor(z), weights) if finite
              else Check("moments", "skip", "non-finite weights")]
    search = modes if isinstance(modes, ModeSearch) else None
    values = _site_values(idata) if search is not None else None
    if modes is True:
        raise ValueError("diagnose(idata, modes=True): InferenceData carries no model to "
                         "search; pass modes=find_modes(model, ...) or diagnose(model, "
                         "guide, ..., modes=True)")
    if search is not None:
        n = len(next(iter(values.values())))
        checks.append(modes_check(search, search.log_density.pack(values, n).to(torch.float64)))
    else:
        checks.append(Check("modes", "skip", "no model in InferenceData: "
                            "diagnose(model, guide) or modes=find_modes(model)"))
    checks.append(Check("mass", "skip", "no model in InferenceData: diagnose(model, guide)"))
    _record(report, Certificate(checks, search), values)


def _site_values(idata: Any) -> dict[str, torch.Tensor]:
    posterior = arviz_compat.group(idata, "posterior")
    return {name: torch.as_tensor(np.asarray(arr.values)).reshape(
        (-1,) + np.asarray(arr.values).shape[2:]) for name, arr in posterior.data_vars.items()}


def _record(report: DiagnosticReport, certificate: Certificate, values: Any) -> None:
    """The certificate's verdict and checks on the report, and the modes the draws miss."""
    report.verdict, report.checks = certificate.verdict, certificate.checks
    search = certificate.search
    if search is not None and values is not None:
        n = len(next(iter(values.values())))
        z = search.log_density.pack(values, n).to(torch.float64)
        report.missed_modes = missed_by(search, z)
    elif search is not None:
        report.missed_modes = []
