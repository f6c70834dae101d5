"""AutoFlow's Gaussian anchor: the best Gaussian found before any flow step.

The flow of :class:`~pyro_nf.AutoFlow` acts on whitened coordinates of this Gaussian,
z = mu + L (loc + scale * flow(b)), with loc = 0, scale = 1 and the flow at the identity at
the start, so the guide starts as exactly the anchor N(mu, L L^T). Whitening removes what a
flow of a few layers learns slowly or not at all from a standard normal start: scales that
span orders of magnitude, strong correlations, intercepts far from the prior's center.

Two candidates, and the one with the higher ELBO (Monte Carlo, on common draws) wins:

- Pathfinder (Zhang et al., 2022): the best normal approximation along L-BFGS paths,
  low-rank plus diagonal (:mod:`pyro_nf.approximations.pathfinder`);
- Laplace at the mode those paths found: the inverse of the negative Hessian, when it is
  positive definite and D is at most ``LAPLACE_MAX_DIM`` (a dense D x D factor).

It needs a log density that is the same function at every call. A model that subsamples a
plate is read over all that plate's rows, in chunks (:mod:`pyro_nf.densities.full_data`), so its
anchor is the full data's. A model whose density is random at fixed latent values in another
way (an ``AutoGuideList`` member: the other members' sites are hidden by ``poutine.block`` and
drawn from their priors) is anchored with fixed random numbers where the draws only add a
constant to it; where they change its shape (a hidden assignment that a likelihood reads) the
guide has no anchor, starts from ``init_loc_fn``, and ``guide.anchor_reason`` says why. Both
are the usual cases of composed guides, so neither warns.

This module is the search (:func:`find_anchor`); the start strategy that runs it at the
guide's set-up is :class:`~pyro_nf.guides.start.GaussianAnchor`, AutoFlow's default
``start="auto"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_nf.approximations.gaussian import log_weights, standard_normal
from pyro_nf.approximations.pathfinder import F64, LowRankSqrt, resolution, run_paths
from pyro_nf.densities.logdensity import LogDensity

#: The anchor's methods: Pathfinder, Laplace, or the one of the two with the higher ELBO.
ANCHOR_METHODS = ("auto", "pathfinder", "laplace")
#: Laplace needs a dense Hessian: D autograd passes and a D x D factor.
LAPLACE_MAX_DIM = 1000
#: Monte Carlo draws of each candidate's ELBO, at most; drawn in rounds of ``ELBO_ROUND``, the
#: same standard normal draws for every candidate, until the best is clear (to within
#: ``ELBO_TOLERANCE``) and its ELBO known to ``ELBO_PRECISION`` nats (one standard error).
ELBO_DRAWS = 256
ELBO_ROUND = 64
ELBO_PRECISION = 0.01
#: Candidates whose ELBOs may differ by this much are as good as each other (the fit's last
#: check recommends the anchor over the flow only beyond the same slack).
ELBO_TOLERANCE = 0.05


@dataclass
class Anchor:
    """The chosen Gaussian: its square-root map, which method gave it, and the ELBOs."""

    sqrt: LowRankSqrt
    method: str
    elbos: dict[str, float]
    gradient_evaluations: int


class _Target:
    """log p in the flow's coordinates: with a centering layer C, log p(C(eta)) + log|J_C|."""

    def __init__(self, log_density: LogDensity, centering: Any | None) -> None:
        self.log_density, self.centering = log_density, centering
        self.dim = log_density.dim

    def __call__(self, eta: torch.Tensor) -> torch.Tensor:
        if self.centering is None:
            return self.log_density(eta)
        x = eta.to(self.log_density.dtype)
        with pyro.validation_enabled(False):  # an invalid value: a non-finite density
            theta = self.centering(x)
            ladj = self.centering.log_abs_det_jacobian(x, theta)
        return (self.log_density(theta) + ladj).to(eta.dtype)


def _seeded(target: _Target, point: torch.Tensor, seed: int) -> float:
    """The density at ``point`` with torch's random stream at ``seed``."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return float(target(point.to(F64)))


class _FixedDraws:
    """A density made a fixed function by running it with the same random numbers at every
    call: the draws of sites hidden from the guide are then the same at every point."""

    def __init__(self, target: _Target, seed: int = 1) -> None:
        self.target, self.seed, self.dim = target, seed, target.dim
        self.log_density = target.log_density

    def __call__(self, eta: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.target(eta)


def _density_problem(target: _Target, point: torch.Tensor) -> tuple[str | None, Any]:
    """``(problem, target)``: why the density cannot anchor a guide (None where it can), and
    the density to anchor with.

    A density that is random at fixed latent values (an ``AutoGuideList`` member whose model
    hides the other members' sites, which are then drawn from their priors) can still anchor
    the guide when the randomness only adds a constant: when the difference between two
    points is the same under two seeds (a hidden site read only by an observed one, the
    usual case). Then the density with fixed random numbers (:class:`_FixedDraws`) has the
    same shape and is used. Where the hidden draws move the shape (a hidden discrete
    assignment in a mixture), no Gaussian found at one draw is the guide's start."""
    here = [_seeded(target, point, seed) for seed in (1, 2)]
    if not math.isfinite(here[0]):
        return f"the model's log density at the initial values is {here[0]}", target
    if here[0] == here[1]:
        return None, target
    generator = torch.Generator().manual_seed(0)
    step = torch.randn(point.shape, generator=generator, dtype=F64).to(point.device)
    there = [_seeded(target, point.to(F64) + 0.1 * step, seed) for seed in (1, 2)]
    shift = [a - b for a, b in zip(here, there)]
    if all(math.isfinite(v) for v in shift) and \
            abs(shift[0] - shift[1]) <= 1e-6 * (1.0 + abs(shift[0])):
        return None, _FixedDraws(target)
    return ("the model's log density at fixed latent values changes shape with random "
            "draws it makes itself (sites hidden from this guide, e.g. by poutine.block "
            "inside an AutoGuideList, that other sites read)"), target


def _laplace(target: _Target, mode: torch.Tensor) -> LowRankSqrt | None:
    """N(mode, (-Hessian)^-1), centered by one Newton step: on a subsampled float32 model's
    full data, L-BFGS stops where the density's changes fall below its float resolution,
    which can leave the point a fair fraction of a posterior sd from the mode (the sd shrinks
    as 1/sqrt(N)). The step is kept where it does not lower the density by more than that
    resolution."""
    if target.dim > LAPLACE_MAX_DIM:
        return None
    mode = mode.detach().to(F64).requires_grad_(True)
    value = target(mode).to(F64)
    (grad,) = torch.autograd.grad(value, mode)
    mode = mode.detach()
    hess = torch.autograd.functional.hessian(lambda v: target(v).to(F64), mode)
    precision = -(hess + hess.T) / 2
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None  # not positive definite at the mode (a funnel's neck, a flat direction)
    cov = torch.cholesky_inverse(chol)
    newton = mode + cov @ grad
    with torch.no_grad():
        slack = resolution(target) * abs(float(value))
        if bool(torch.isfinite(newton).all()) and float(target(newton)) >= float(value) - slack:
            mode = newton
    return LowRankSqrt.dense(mode, cov)


def find_anchor(model: Any, args: tuple, kwargs: dict, init: torch.Tensor, method: str,
                centering: Any | None = None, num_paths: int = 2, seed: int = 0
                ) -> Anchor | str | None:
    """The anchor of ``method`` (``"auto"``: Pathfinder or Laplace, the higher ELBO), in
    float64; where the model's density does not allow one, the reason (a string), or None
    where no candidate was usable."""
    log_density = LogDensity(model, *args, **kwargs)
    if log_density.dim != len(init):
        return (f"the model's density packs {log_density.dim} coordinates where the guide "
                f"has {len(init)}")
    problem, target = _density_problem(_Target(log_density, centering), init)
    if problem is not None:
        return problem
    generator = torch.Generator().manual_seed(seed)
    paths = run_paths(target, init, num_paths, generator)
    grads = sum(p.gradient_evaluations for p in paths)
    candidates: dict[str, LowRankSqrt] = {}
    usable = [p for p in paths if p.approximation is not None]
    if usable and method in ("auto", "pathfinder"):
        candidates["pathfinder"] = max(usable, key=lambda p: p.elbo).approximation
    ends = [p for p in paths if p.last is not None and math.isfinite(p.last_log_density)]
    if ends and method in ("auto", "laplace"):
        laplace = _laplace(target, max(ends, key=lambda p: p.last_log_density).last)
        if laplace is not None:
            candidates["laplace"] = laplace
    if not candidates:
        return None
    elbos = candidate_elbos(target, candidates, generator)
    best = max(elbos, key=elbos.get)
    if not math.isfinite(elbos[best]):
        return None
    return Anchor(candidates[best], best, elbos, grads)


def candidate_elbos(target: _Target, candidates: dict[str, LowRankSqrt],
                    generator: torch.Generator) -> dict[str, float]:
    """Each candidate's Monte Carlo ELBO (-inf where a draw's density is not finite), on common
    draws: the same u ~ N(0, I) through every candidate's square root, so that their paired
    difference, not each ELBO's own spread, decides which is higher. Rounds of
    :data:`ELBO_ROUND` draws until that is settled (:func:`_settled`) or :data:`ELBO_DRAWS`
    draws: each draw of a large data set's density reads all its rows, and two Gaussians
    near the mode of such a posterior usually differ by many nats, which the first round
    settles."""
    some = next(iter(candidates.values()))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in candidates}
    lost: set[str] = set()
    while True:
        u = standard_normal(ELBO_ROUND, some, generator)
        for name, sqrt in candidates.items():
            lw = None if name in lost else log_weights(target, sqrt, u)
            if lw is None:
                lost.add(name)
            else:
                parts[name].append(lw)
        lw = {name: torch.cat(parts[name]) for name in candidates if name not in lost}
        if not lw or len(next(iter(lw.values()))) >= ELBO_DRAWS or _settled(lw):
            return {name: float(lw[name].mean()) if name in lw else -math.inf
                    for name in candidates}


def _settled(lw: dict[str, torch.Tensor]) -> bool:
    """Whether the best of the log weights ``lw`` (common draws) is known, its ELBO to
    :data:`ELBO_PRECISION`: no other candidate's ELBO can be higher than the best's by more
    than :data:`ELBO_TOLERANCE` (three standard errors of the paired difference)."""
    best = max(lw, key=lambda name: float(lw[name].mean()))
    n = len(lw[best])
    if float(lw[best].std()) / math.sqrt(n) > ELBO_PRECISION:
        return False
    for other in lw.values():
        diff = lw[best] - other
        if 3 * float(diff.std()) / math.sqrt(n) - float(diff.mean()) > ELBO_TOLERANCE:
            return False
    return True
