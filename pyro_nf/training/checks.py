"""Checks of a guide against the model's log density: importance weights and fixed-draw ELBOs.

**Accurate early.** A guide over the packed latent (``AutoContinuous``: AutoFlow, Pyro's
Gaussian and IAF guides) is checked by importance sampling: from :data:`CHECK_DRAWS` of its
draws, the weights w = p(z | x) / q(z) estimate the chi-square divergence
chi^2(p || q) = E_q[w^2] - 1. By the Cauchy-Schwarz inequality
|E_p f - E_q f| = |Cov_q(w, f)| <= sqrt(chi^2) sd_q(f) for every f, so once
``chi^2 + 2 se <= accuracy^2`` (and PSIS k-hat < 0.5, so that the weights' variance is finite
and the estimate means something; Vehtari et al., 2024, "Pareto smoothed importance sampling")
every posterior mean is within ``accuracy`` guide sds of the guide's, and (with f the squared
deviation of a near-Gaussian marginal) every sd within about ``1.4 accuracy``. Like every
importance diagnostic it cannot see regions the guide never visits (a missed mode).

The **last check** of a fit compares the fitted guide's ELBO on fixed draws (common random
numbers) with that of its Gaussian anchor, and recommends the anchor where the flow did worse
than where it began (:func:`recommend`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoContinuous

from pyro_nf.densities.full_data import reads_all_rows
from pyro_nf.densities.logdensity import LogDensity
from pyro_nf.training.compiled import plate_nesting
from pyro_nf.utils.rng import forked_rng

#: Draws of the fixed-draw ELBO estimates (pilot, last check).
SCORE_PARTICLES = 256
#: ``fit``'s default accuracy: stop once every posterior mean is provably this many guide sds
#: from the guide's (module docstring).
ACCURACY = 0.1
#: Draws of each importance check, and their number for a model that runs one draw at a time
#: (it does not broadcast over a batch).
CHECK_DRAWS = 2000
LOOP_CHECK_DRAWS = 500
#: A subsampled model's check reads all its rows for every draw: its draws are cut (to no
#: fewer than LOOP_CHECK_DRAWS) so that draws x rows stays within this.
CHECK_ROWS = 2 * 10 ** 8
#: The importance check's k-hat bound: below it the weights have a finite variance.
CHECK_KHAT = 0.5


@dataclass(frozen=True)
class ImportanceCheck:
    """Importance weights p(z | x) / q(z) of a guide's draws: their PSIS k-hat and the
    chi-square divergence chi^2(p || q) = E_q[w^2] - 1 of the self-normalized weights, with its
    Monte Carlo standard error (``inf`` when a draw's weight is not finite)."""

    khat: float
    chi2: float
    chi2_se: float
    #: the same draws' ELBO, mean(log p(x, z) - log q(z)), and its standard error
    elbo: float = -math.inf
    elbo_se: float = math.inf

    def within(self, accuracy: float) -> bool:
        """Whether every posterior mean is provably within ``accuracy`` guide sds of the
        guide's (module docstring), with two standard errors of margin."""
        return self.khat < CHECK_KHAT and self.chi2 + 2 * self.chi2_se <= accuracy ** 2

    def fails(self, accuracy: float) -> bool:
        """Whether it is clearly not within ``accuracy``, so more draws would not change that:
        chi^2 two standard errors above ``accuracy^2``, or k-hat 0.7 or more (weights too
        heavy-tailed for importance sampling to be reliable at any practical number of draws,
        Vehtari et al. 2024)."""
        return self.khat >= 0.7 or self.chi2 - 2 * self.chi2_se > accuracy ** 2

    def __str__(self) -> str:
        return f"chi^2(p || q) {self.chi2:.4f} +- {self.chi2_se:.4f}, k-hat {self.khat:.2f}"


def fixed_draw_elbo(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                    num: int = SCORE_PARTICLES, seed: int = 0, vectorize: Any = None
                    ) -> tuple[float, float]:
    """The ELBO and its standard error from ``num`` draws under a fixed seed (the caller's
    random stream is left as it was); ``vectorize``: a vectorized ELBO of the fit whose
    ``max_plate_nesting`` the particles may use (the draws then run as batches)."""
    batched = bool(getattr(vectorize, "vectorize_particles", False))
    elbo = Trace_ELBO(num_particles=max(1, num // 8), vectorize_particles=batched,
                      max_plate_nesting=plate_nesting(vectorize) if batched else math.inf)
    values = []
    with forked_rng(seed), torch.no_grad():
        for _ in range(8):  # 8 batches: a standard error from their spread
            values.append(-elbo.loss(model, guide, *args, **kwargs))
    mean = sum(values) / len(values)
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return mean, se


def full_data_elbo(log_density: Any, q: Any, num: int = SCORE_PARTICLES, seed: int = 0
                   ) -> float:
    """The ELBO of ``q`` (over the packed latent) against ``log_density`` from ``num`` draws
    under a fixed seed (the caller's random stream is left as it was); -inf where a draw's
    density is not finite."""
    with forked_rng(seed), torch.no_grad():
        z = q.sample((num,))
        lw = log_density(z.double()).double() - q.log_prob(z).double()
    return float(lw.mean()) if bool(torch.isfinite(lw).all()) else -math.inf


def importance_check(log_density: Any, q: Any, num: int | None = None,
                     accuracy: float | None = None) -> ImportanceCheck:
    """:class:`ImportanceCheck` of ``q`` (a distribution over the packed latent) against the
    model's ``log_density``, from ``num`` draws under a fixed seed (the caller's random stream
    is left as it was; default :data:`CHECK_DRAWS`, :data:`LOOP_CHECK_DRAWS` for a model that
    runs one draw at a time, fewer for a subsampled model with many rows: :data:`CHECK_ROWS`).
    A ``q`` without spread (a point mass) is never within any accuracy.

    With ``accuracy``, a subsampled model (every draw reads all its data) is checked on the
    first :data:`LOOP_CHECK_DRAWS` draws, and on all ``num`` only where those neither pass nor
    clearly fail (:meth:`ImportanceCheck.fails`)."""
    num = num or default_draws(log_density)
    first = num
    if accuracy is not None and reads_all_rows(log_density):
        first = min(num, LOOP_CHECK_DRAWS)
    with forked_rng(1), torch.no_grad():
        z = q.sample((num,))
        log_q = q.log_prob(z).double()
        # in float64: a large data set's log density is too big for float32's resolution
        lw = log_density(z[:first].double()).double() - log_q[:first]
        check = _weights_check(lw, z[:first])
        if first < num and not check.within(accuracy) and not check.fails(accuracy):
            rest = log_density(z[first:].double()).double() - log_q[first:]
            check = _weights_check(torch.cat([lw, rest]), z)
    return check


def default_draws(log_density: Any) -> int:
    """:data:`CHECK_DRAWS`; :data:`LOOP_CHECK_DRAWS` for a model that runs one draw at a time;
    fewer for a subsampled model with many rows (:data:`CHECK_ROWS`)."""
    num = CHECK_DRAWS if log_density.batched else LOOP_CHECK_DRAWS
    rows = getattr(getattr(log_density, "chunks", None), "size", 0)
    if rows:  # a subsampled model read over all its data: bound the rows read
        num = max(LOOP_CHECK_DRAWS, min(num, CHECK_ROWS // rows))
    return num


def check_draws(log_density: Any, q: Any, num: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` draws of ``q`` (default :func:`default_draws`) under the importance check's
    fixed seed, on the CPU, and their log weights log p(x, z) - log q(z) in float64."""
    num = num or default_draws(log_density)
    with forked_rng(1), torch.no_grad():
        z = q.sample((num,))
        lw = log_density(z.double()).double() - q.log_prob(z).double()
    return z.detach().cpu(), lw.cpu()


def _weights_check(lw: torch.Tensor, z: torch.Tensor) -> ImportanceCheck:
    """k-hat, chi^2 and the ELBO of the log weights ``lw`` of the draws ``z``."""
    from pyro_nf.utils import arviz_compat  # ArviZ on first use: ``import pyro_nf`` stays light

    num = len(lw)
    finite = torch.isfinite(lw)
    if int(finite.sum()) < num // 2:
        return ImportanceCheck(math.inf, math.inf, math.inf)
    khat = float(arviz_compat.psis(lw[finite].numpy())[1])
    if not bool(finite.all()) or not bool((z.std(0) > 0).all()):
        return ImportanceCheck(khat, math.inf, math.inf)
    w2 = torch.exp(2 * (lw - torch.logsumexp(lw, 0) + math.log(num)))
    return ImportanceCheck(khat, float(w2.mean() - 1), float(w2.std() / math.sqrt(num)),
                           float(lw.mean()), float(lw.std() / math.sqrt(num)))


class AccuracyCheck:
    """The importance check of a guide over the packed latent as it stands (``reached``);
    inert (never reached) for other guides, ``accuracy=None``, or a model whose log density
    cannot be set up."""

    def __init__(self, model, guide, args, kwargs, accuracy: float | None) -> None:
        self.guide, self.args, self.kwargs, self.accuracy = guide, args, kwargs, accuracy
        self.log_density, self.last = None, None
        if accuracy and isinstance(guide, AutoContinuous):
            try:  # its initial point may draw from the prior: not from the fit's stream
                with forked_rng():
                    self.log_density = LogDensity(model, *args, **kwargs)
            except Exception:  # noqa: BLE001 - no check, the fit runs its whole schedule
                self.log_density = None

    def reached(self) -> bool:
        if self.log_density is None:
            return False
        q = self.guide.get_posterior(*self.args, **self.kwargs)
        self.last = importance_check(self.log_density, q, accuracy=self.accuracy)
        return self.last.within(self.accuracy)

    def reason(self) -> str:
        return (f"the importance check on the guide's draws puts every posterior mean within "
                f"accuracy={self.accuracy:g} guide sds of the guide's ({self.last}), as far "
                "as those draws see (FitResult.verdict: the checks beyond them)")


def recommend(elbo: float, se: float, anchor_elbo: float, khat: float, anchor_khat: float
              ) -> str:
    """"anchor" when the fitted flow is worse than its anchor, else "flow": the anchor's ELBO
    higher by more than three standard errors (plus 0.05 nats), or the flow's k-hat 0.7 or
    more with the anchor's below both and the anchor's ELBO at least as high. k-hat from 2000
    draws is noisy, so alone it does not decide: on garch and hmm_example an anchor with the
    lower k-hat but a lower ELBO had means 0.3 and 0.2 sd off where the flow's were within
    0.04."""
    worse_elbo = elbo < anchor_elbo - 3 * se - 0.05
    worse_khat = khat >= 0.7 and anchor_khat < min(0.7, khat) and anchor_elbo >= elbo
    return "anchor" if worse_elbo or worse_khat else "flow"


def last_check(result: Any, model, guide, args, kwargs, log_density: Any = None,
                loss_fn: Any = None, start: ImportanceCheck | None = None) -> None:
    """The fitted guide's ELBO on fixed draws and, for a guide over the packed latent, its
    importance check; for an AutoFlow, the same for its Gaussian anchor: warn and recommend
    the anchor where it is the better of the two. ``start``: the check of a guide that has
    not moved since (its own and its anchor's: a subsampled model's check reads all the
    data, so it is not run thrice). A subsampled model's ELBO is the full-data check's (its
    draws' mean log weight), not a minibatch estimate: exact in the data, and comparable
    with the anchor's, which reads all the data too."""
    anchor = getattr(guide, "anchor_info", None) or {}
    if log_density is None and anchor:
        with forked_rng():
            log_density = LogDensity(model, *args, **kwargs)
    # a report, not a stopping rule: a subsampled model's draws each read all its data
    full_data = reads_all_rows(log_density)
    num = LOOP_CHECK_DRAWS if full_data else None
    mine = None
    if log_density is not None:
        mine = start or importance_check(log_density, guide.get_posterior(*args, **kwargs),
                                         num)
        result.khat, result.chi2 = mine.khat, mine.chi2
    if mine is not None and full_data and math.isfinite(mine.elbo):
        elbo, se = mine.elbo, mine.elbo_se
    else:
        elbo, se = fixed_draw_elbo(model, guide, args, kwargs, vectorize=loss_fn)
    result.elbo_estimate = elbo
    if not anchor:
        return
    result.anchor_elbo = anchor["elbos"][anchor["method"]]
    result.anchor_khat = (start or importance_check(
        log_density, guide.anchor_posterior(*args, **kwargs), num)).khat
    result.recommendation = recommend(elbo, se, result.anchor_elbo, result.khat,
                                      result.anchor_khat)
    if result.recommendation == "anchor":
        warnings.warn(f"fit: the fitted flow (k-hat {result.khat:.2f}, ELBO {elbo:.3f} +- "
                      f"{se:.3f}) is worse than its Gaussian anchor (k-hat "
                      f"{result.anchor_khat:.2f}, ELBO {result.anchor_elbo:.3f}, "
                      f"{anchor['method']}): use the anchor with guide.reset_to_anchor().",
                      RuntimeWarning, stacklevel=4)
