"""Verdicts that claim only what was checked: the checks behind ``FitResult.verdict``.

Importance sampling from the guide q sees only where q puts draws: PSIS k-hat cannot see a
mode q never visits, a neck it does not enter, or a posterior it has missed altogether
(Yao et al., 2018, "Yes, but did it work?"). So a fitted guide over the packed latent gets
four checks, each named in the verdict:

1. **importance**: PSIS k-hat of ``CHECK_DRAWS`` guide draws' weights p / q (Vehtari et al.,
   2024): below 0.5 passes, below 0.7 is "with care", above fails.
2. **moments**: the PSIS-reweighted means and sds of the same draws against the guide's own:
   where the weights are usable they estimate the posterior's, so a guide whose sd has
   collapsed or inflated (or whose mean is off) shows a disagreement even while k-hat is
   under 0.7. Differences within the reweighting's own noise (``1 / sqrt(ESS)``) pass.
3. **modes**: a mode screen (:func:`~pyro_nf.approximations.modes.find_modes`, multi-start
   L-BFGS, Newton and Laplace, ``SCREEN_STARTS`` starts) independent of the guide; a mode
   that holds a material share of the mass and almost none of the guide's draws fails.
4. **mass**: evidence estimates Z-hat = mean(p / r) from proposals r other than q:
   a defensive mixture of q and q widened by ``WIDEN`` in its base coordinates (Hesterberg,
   1995, "Weighted average importance sampling and defensive mixture distributions"; Owen &
   Zhou, 2000), and the mixture of the screen's mode Gaussians. Each is (in expectation) at
   most the true evidence Z; so where one exceeds the guide's own estimate by more than the
   noise, the guide's draws miss at least ``1 - Z_q / Z_r`` of the posterior mass (a wrong
   basin of an unscaled regression, an ODE fit far from its posterior, a second mode). Where
   that share is over ``MAX_MISSING`` the check fails.

"reliable" needs every check to pass; a check that could not run makes the verdict "usable
with care" at best. No finite set of checks proves a posterior right: a neck too narrow for
every proposal to enter (a high-dimensional funnel) is invisible to all four.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous

from pyro_nf.approximations.modes import ModeSearch, find_modes, missed_by
from pyro_nf.approximations.pathfinder import normal_of
from pyro_nf.densities.full_data import reads_all_rows
from pyro_nf.densities.logdensity import LogDensity
from pyro_nf.training.checks import CHECK_KHAT, check_draws, default_draws
from pyro_nf.utils.rng import forked_rng

#: starts of the mode screen (``find_modes``'s ``num_starts``); above ``SCREEN_DIM``
#: coordinates, ``LARGE_SCREEN_STARTS``.
SCREEN_STARTS = 8
SCREEN_DIM = 100
LARGE_SCREEN_STARTS = 3
#: the widened guide's scale factor in its base coordinates, and the draws of each proposal
#: of the mass check
WIDEN = 1.5
MASS_DRAWS = 1000
#: the share of the posterior mass the guide may miss before the mass check fails
MAX_MISSING = 0.05
#: the moments check: a PSIS-reweighted mean this many guide sds from the guide's, or an sd
#: ratio beyond this, counts only beyond four of the reweighting's standard errors
MEAN_SHIFT = 0.1
SD_RATIO = 1.1
#: a mode holding at least this share of the mass, and less than GUIDE_SHARE of the guide's
#: draws, is missed
MODE_MASS = 0.05
GUIDE_SHARE = 0.02


@dataclass(frozen=True)
class Check:
    """One check: ``status`` "pass", "care" (passed with a caveat), "fail" or "skip" (not
    run), and what it found."""

    name: str
    status: str
    detail: str

    @property
    def passed(self) -> bool | None:
        return None if self.status == "skip" else self.status != "fail"

    def __str__(self) -> str:
        return f"{self.name}: {self.status} ({self.detail})"


@dataclass
class Certificate:
    """The checks of one guide and the verdict they allow (module docstring)."""

    checks: list[Check] = field(default_factory=list)
    search: ModeSearch | None = None

    @property
    def verdict(self) -> str:
        """"reliable", "usable with care" or "unreliable", then what decided it."""
        if not self.checks:
            return "not checked"
        by = {status: [c for c in self.checks if c.status == status]
              for status in ("fail", "care", "skip", "pass")}
        if by["fail"]:
            return "unreliable: " + "; ".join(_failure(c) for c in by["fail"])
        passed = ", ".join(c.name for c in by["pass"]) or "none"
        if by["care"] or by["skip"]:
            caveats = [f"{c.name}: {c.detail}" for c in by["care"]]
            caveats += [f"{c.name} not run ({c.detail})" for c in by["skip"]]
            return f"usable with care: {'; '.join(caveats)} (passed: {passed})"
        return f"reliable: passed {passed}"

    def __str__(self) -> str:
        return "\n".join([self.verdict] + [f"  {c}" for c in self.checks])


def _failure(check: Check) -> str:
    return "missed mode(s)" if check.name == "modes" else f"{check.name} ({check.detail})"


def screen_starts(log_density: LogDensity) -> int:
    """The mode screen's starts: fewer for a large latent or a model read in chunks."""
    large = log_density.dim > SCREEN_DIM or reads_all_rows(log_density)
    return LARGE_SCREEN_STARTS if large else SCREEN_STARTS


def certify(model: Callable, q: Any, args: tuple, kwargs: dict, log_density: LogDensity,
            search: ModeSearch | None = None, screen: bool = True) -> Certificate:
    """The four checks (module docstring) of ``q``, a distribution over the packed latent of
    ``model``'s ``log_density``. ``search``: a mode search already run (else one is run
    where ``screen``). The caller's random stream is left as it was."""
    z, lw = check_draws(log_density, q)
    return certify_draws(model, args, kwargs, log_density, z, lw, q, search, screen)


def certify_values(model: Callable, args: tuple, kwargs: dict,
                   values: dict[str, torch.Tensor], lw: torch.Tensor, q: Any = None,
                   search: ModeSearch | None = None, screen: bool = True) -> Certificate:
    """The checks of draws given as constrained site values (N, *shape) with their log
    weights ``lw`` (any guide's, as ``to_inference_data`` writes them); ``q``: the guide's
    distribution over the packed latent where it has one (the widened proposal)."""
    with forked_rng():
        log_density = LogDensity(model, *args, **kwargs)
    n = len(lw)
    try:
        z = log_density.pack({k: torch.as_tensor(v) for k, v in values.items()}, n)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"diagnose: the draws do not fit the model's latent sites ({err}); "
                         "pass draws of the same model") from None
    lw = torch.as_tensor(lw, dtype=torch.float64).reshape(-1)
    return certify_draws(model, args, kwargs, log_density, z.detach().cpu(), lw, q, search,
                         screen)


def certify_draws(model: Callable, args: tuple, kwargs: dict, log_density: LogDensity,
                  z: torch.Tensor, lw: torch.Tensor, q: Any = None,
                  search: ModeSearch | None = None, screen: bool = True) -> Certificate:
    """The four checks of the guide draws ``z`` (packed, N x D) with log weights ``lw``."""
    certificate = Certificate()
    importance, finite = importance_status(lw)
    certificate.checks.append(importance)
    certificate.checks.append(moments_check(z, lw) if finite else
                              Check("moments", "skip", "non-finite weights"))
    if search is None and screen:
        search = _screen(model, args, kwargs, log_density)
    certificate.search = search if isinstance(search, ModeSearch) else None
    certificate.checks.append(modes_check(search, z))
    certificate.checks.append(mass_check(log_density, q, lw, search))
    return certificate


def _screen(model: Callable, args: tuple, kwargs: dict, log_density: LogDensity
            ) -> ModeSearch | str:
    """The mode screen, or why it could not run."""
    try:
        with forked_rng():
            return find_modes(model, *args, num_starts=screen_starts(log_density),
                              num_draws=mass_draws(log_density), **kwargs)
    except Exception as error:  # noqa: BLE001 - a screen that fails is reported, not raised
        return f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}"


def importance_status(lw: torch.Tensor) -> tuple[Check, bool]:
    """The importance check of log weights ``lw``; whether they are all finite."""
    from pyro_nf.utils import arviz_compat

    finite = torch.isfinite(lw)
    n = len(lw)
    if int(finite.sum()) < n // 2:
        return Check("importance", "fail", f"{n - int(finite.sum())} of {n} draws have no "
                     "finite density"), False
    khat = float(arviz_compat.psis(lw[finite].numpy())[1])
    where = f"k-hat {khat:.2f} on {n} guide draws"
    if not bool(finite.all()):
        return Check("importance", "fail", f"{where}; some draws have no finite density"), False
    spread = float(lw.max() - lw.min())
    if khat < CHECK_KHAT or spread < 0.1:  # bounded weights: as good as exact
        return Check("importance", "pass", where), True
    return Check("importance", "care" if khat < 0.7 else "fail", where), True


def moments_check(z: torch.Tensor, lw: torch.Tensor) -> Check:
    """The guide's summaries of its draws ``z`` (mean, sd, median, interquartile range of each
    coordinate) against the same summaries PSIS-reweighted by the weights ``lw``, which
    estimate the posterior's. Each difference has the self-normalized importance sampling
    standard error se (Owen, 2013, "Monte Carlo theory, methods and examples", 9.2; for a
    quantile, sqrt(p (1 - p) / ESS) over a density from the quantiles beside it): "fail"
    where a difference is beyond its tolerance by more than 2 se, "care" where it cannot be
    shown within it (beyond it less 2 se), else "pass"."""
    from pyro_nf.utils import arviz_compat

    smoothed, khat = arviz_compat.psis(lw.numpy())
    if not khat < 0.7:
        return Check("moments", "skip", "weights too heavy-tailed to reweight")
    w = torch.from_numpy(smoothed).to(torch.float64).softmax(0)
    z = z.to(torch.float64)
    gaps = _moment_gaps(z, w) + _quantile_gaps(z, w)
    status = "pass"
    for _name, gap, se, tolerance in gaps:
        if gap - 2 * se > tolerance:
            status = "fail"
        elif gap + 2 * se > tolerance and status == "pass":
            status = "care"
    name, gap, se, tolerance = max(gaps, key=lambda g: (g[1] - g[3]) / max(g[2], 1e-12))
    detail = (f"reweighted {name} {gap:.3f} +- {se:.3f} from the guide's (tolerance "
              f"{tolerance:.3f}) in the worst coordinate")
    if status == "care":
        detail = "cannot be shown within tolerance: " + detail
    return Check("moments", status, detail)


def _moment_gaps(z: torch.Tensor, w: torch.Tensor) -> list[tuple]:
    """Per coordinate: (what, |difference|, its se, tolerance) of the mean in guide sds and of
    log(sd)."""
    mean, sd = z.mean(0), z.std(0).clamp_min(1e-300)
    w_mean = (w[:, None] * z).sum(0)
    d2 = (z - w_mean) ** 2
    w_var = (w[:, None] * d2).sum(0).clamp_min(1e-300)
    w2 = (w ** 2)[:, None]
    mean_se = ((w2 * d2).sum(0)).sqrt() / sd
    var_se = ((w2 * (d2 - w_var) ** 2).sum(0)).sqrt() / w_var  # of log var, delta method
    shift = (w_mean - mean).abs() / sd
    log_ratio = (0.5 * w_var.log() - sd.log()).abs()
    gaps = []
    for k in range(z.shape[1]):
        gaps.append(("mean (guide sds)", float(shift[k]), float(mean_se[k]), MEAN_SHIFT))
        gaps.append(("log sd ratio", float(log_ratio[k]), 0.5 * float(var_se[k]),
                     math.log(SD_RATIO)))
    return gaps


def _quantile_gaps(z: torch.Tensor, w: torch.Tensor) -> list[tuple]:
    """Per coordinate: the median's difference in guide IQRs / 1.349 and log(IQR ratio), with
    their standard errors."""
    ess = float(1.0 / (w ** 2).sum())
    n = len(w)
    gaps = []
    for k in range(z.shape[1]):
        raw = _quantiles(z[:, k], torch.full_like(w, 1.0 / n))
        rew = _quantiles(z[:, k], w)
        scale = max(float(raw[0.75] - raw[0.25]), 1e-300)
        se = {p: math.sqrt(p * (1 - p) / ess)
              * float(rew[round(p + 0.05, 2)] - rew[round(p - 0.05, 2)]) / 0.1
              for p in (0.25, 0.5, 0.75)}
        median = abs(float(rew[0.5] - raw[0.5])) / (scale / 1.349)
        gaps.append(("median (guide IQR/1.349)", median, se[0.5] / (scale / 1.349),
                     MEAN_SHIFT))
        iqr = max(float(rew[0.75] - rew[0.25]), 1e-300)
        gaps.append(("log IQR ratio", abs(math.log(iqr / scale)),
                     math.hypot(se[0.25], se[0.75]) / iqr, math.log(SD_RATIO)))
    return gaps


QUANTILES = (0.2, 0.25, 0.3, 0.45, 0.5, 0.55, 0.7, 0.75, 0.8)


def _quantiles(x: torch.Tensor, w: torch.Tensor) -> dict[float, torch.Tensor]:
    """Weighted quantiles of ``x`` at :data:`QUANTILES` (the inverse of the weighted empirical
    distribution function)."""
    order = torch.argsort(x)
    cdf = torch.cumsum(w[order], 0)
    cdf = cdf / cdf[-1]
    at = torch.searchsorted(cdf, torch.tensor(QUANTILES, dtype=cdf.dtype)).clamp_max(len(x) - 1)
    values = x[order][at]
    return {round(p, 2): v for p, v in zip(QUANTILES, values)}


def modes_check(search: ModeSearch | str | None, z: torch.Tensor) -> Check:
    """Whether the guide's draws ``z`` hold every material mode of the screen."""
    if search is None:
        return Check("modes", "skip", "no mode screen")
    if isinstance(search, str):
        return Check("modes", "skip", f"the screen failed: {search}")
    found = len(search.modes)
    if found:  # the draws where the search's Gaussians are (the model's device)
        z = z.to(search.modes[0].location.device)
    missed = [m for m in missed_by(search, z, MODE_MASS, GUIDE_SHARE) if not m.relabelling]
    starts = f"screen of {search.gradient_evaluations} gradients found {found} mode(s)"
    if missed:
        return Check("modes", "fail", f"{starts}; " + "; ".join(map(str, missed)))
    return Check("modes", "pass", f"{starts}, the guide holds every material one")


def mass_check(log_density: LogDensity, q: Any, lw: torch.Tensor,
               search: ModeSearch | str | None) -> Check:
    """Whether a proposal other than the guide finds evidence the guide's draws miss."""
    own, own_se = log_evidence(lw)
    if not math.isfinite(own):
        return Check("mass", "skip", "the guide's evidence estimate is not finite")
    others = {}
    with forked_rng(2), torch.no_grad():
        widened = widened_log_weights(log_density, q)
        if widened is not None:
            others["widened guide"] = widened
        if isinstance(search, ModeSearch) and search.modes:
            others["mode Gaussians"] = mode_log_weights(log_density, search)
    if not others:
        return Check("mass", "skip", "no other proposal for this guide")
    gaps = {}
    for name, weights in others.items():
        value, se = log_evidence(weights)
        if math.isfinite(value) and _khat(weights) < 0.7:
            gaps[name] = (value - own, math.hypot(se, own_se))
    if not gaps:
        return Check("mass", "skip", "the other proposals' weights are too heavy-tailed")
    name, (gap, se) = max(gaps.items(), key=lambda item: item[1][0] - 2 * item[1][1])
    missing = 1.0 - math.exp(-max(gap, 0.0))
    detail = (f"{', '.join(gaps)}: the guide's draws miss {missing:.0%} of the mass "
              f"({name}: log Z {gap:+.3f} +- {se:.3f} nats from the guide's)")
    failed = gap - 3 * se > -math.log1p(-MAX_MISSING)
    return Check("mass", "fail" if failed else "pass", detail)


def log_evidence(lw: torch.Tensor) -> tuple[float, float]:
    """log mean exp(lw) and its delta-method standard error."""
    lw = lw.to(torch.float64)
    if not bool(torch.isfinite(lw).any()):
        return -math.inf, math.inf
    lw = torch.where(torch.isnan(lw), -math.inf, lw)
    value = float(torch.logsumexp(lw, 0) - math.log(len(lw)))
    w = torch.exp(lw - lw.max())
    se = float(w.std() / (w.mean() * math.sqrt(len(lw))))
    return value, se


def _khat(lw: torch.Tensor) -> float:
    from pyro_nf.utils import arviz_compat

    lw = lw.detach().cpu()
    finite = lw[torch.isfinite(lw)]
    if len(finite) < 10:
        return math.inf
    return float(arviz_compat.psis(finite.numpy())[1])


def widened_log_weights(log_density: LogDensity, q: Any) -> torch.Tensor | None:
    """Log weights p / r of draws from the defensive mixture r = (q + q_c) / 2, q_c the
    guide with its base draws b widened to m + c (b - m) (c = ``WIDEN``, m the base's mean):
    both densities at a draw follow from its base point, without the flow's inverse. None
    for a guide that is not a base distribution pushed through transforms."""
    if not isinstance(q, dist.TransformedDistribution):
        return None
    base, half = q.base_dist, mass_draws(log_density) // 2
    m = base.mean
    b = base.sample((half,))
    b = torch.cat([b, m + WIDEN * (base.sample((half,)) - m)])
    x, ladj = b, torch.zeros(len(b), dtype=b.dtype, device=b.device)
    for t in q.transforms:
        y = t(x)
        ladj = ladj + _summed(t.log_abs_det_jacobian(x, y), len(b))
        x = y
    dim = b.shape[-1]
    log_q = base.log_prob(b) - ladj
    log_qc = base.log_prob(m + (b - m) / WIDEN) - dim * math.log(WIDEN) - ladj
    log_r = torch.logaddexp(log_q, log_qc) - math.log(2.0)
    return (log_density(x.double()).double() - log_r.double()).cpu()


def mass_draws(log_density: LogDensity) -> int:
    """Draws of each proposal of the mass check: fewer where the model runs one draw at a
    time or reads all its rows for each."""
    return min(MASS_DRAWS, default_draws(log_density) // 2)


def _summed(ladj: torch.Tensor, n: int) -> torch.Tensor:
    """A transform's log |det J| per draw (element-wise transforms give one per coordinate)."""
    return ladj.reshape(n, -1).sum(-1) if ladj.dim() > 1 else ladj


def mode_log_weights(log_density: LogDensity, search: ModeSearch) -> torch.Tensor:
    """Log weights p / r of draws from r, the equal-weight mixture of the modes' Gaussians."""
    modes = search.modes
    per = max(1, mass_draws(log_density) // len(modes))
    dim = len(modes[0].location)
    device = modes[0].location.device
    draws = torch.cat([m.gaussian(torch.randn(per, dim, dtype=torch.float64, device=device))
                       for m in modes])
    log_r = torch.stack([normal_of(m.gaussian).log_prob(draws) for m in modes], -1)
    log_r = log_r.logsumexp(-1) - math.log(len(modes))
    return log_density(draws.to(log_density.init.device)).double().cpu() - log_r.cpu()


def attach(result: Any, model: Callable, guide: Any, args: tuple, kwargs: dict,
           log_density: LogDensity | None, search: ModeSearch | None = None,
           stacklevel: int = 6, warn: bool = True) -> Certificate | None:
    """Certify a fitted guide over the packed latent and put the verdict, the checks and the
    mode screen on ``result``; warn where the verdict is "unreliable" (the fit is kept) unless
    ``warn`` is False (the caller says more). Returns the certificate (None: not checked)."""
    if log_density is None:
        log_density = model_density(model, guide, args, kwargs)
    if log_density is None:
        result.verdict = ("not checked: the guide is not over the model's packed latent; "
                          "diagnose(model, guide) checks any guide's draws")
        return None
    started = time.perf_counter()
    try:
        q = guide.get_posterior(*args, **kwargs)
        certificate = certify(model, q, args, kwargs, log_density, search=search)
    except Exception as error:  # noqa: BLE001 - a finished fit is not thrown away for it
        result.verdict = (f"not checked: the checks failed ({type(error).__name__}: "
                          f"{next(iter(str(error).splitlines()), '')})")
        return None
    result.verdict, result.checks = certificate.verdict, certificate.checks
    result.mode_search = certificate.search
    result.check_seconds = time.perf_counter() - started
    if warn and result.verdict.startswith("unreliable"):
        warnings.warn(f"fit: {result.verdict}. {advice(certificate)}", RuntimeWarning,
                      stacklevel=stacklevel)
    return certificate


def model_density(model: Callable, guide: Any, args: tuple, kwargs: dict
                  ) -> LogDensity | None:
    """The model's log density over the packed latent, for a guide over that latent (None
    for another guide, or a model it cannot be built for)."""
    if not isinstance(guide, AutoContinuous):
        return None
    try:
        with forked_rng():
            return LogDensity(model, *args, **kwargs)
    except Exception:  # noqa: BLE001 - reported by the caller as not checked
        return None


def advice(certificate: Certificate) -> str:
    """What to do about a failed certificate."""
    failed = {c.name for c in certificate.checks if c.status == "fail"}
    if "modes" in failed:
        return ("One flow keeps one mode: fit AutoFlowMixture(model, search=result.mode_search) "
                "to hold them all")
    return ("Do not use these draws as the posterior: see result.checks; standardize the "
            "model's scales or draw exact samples with MCMC")
