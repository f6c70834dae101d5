"""Pathfinder: Gaussian approximations along an L-BFGS path (Zhang, Carpenter, Gelman & Vehtari,
2022, "Pathfinder: Parallel quasi-Newton variational inference", JMLR 23(306)).

One path runs L-BFGS on -log p in the packed unconstrained space, in float64. At every iterate
theta_l the L-BFGS curvature pairs give an inverse-Hessian estimate in low-rank-plus-diagonal
form, Sigma_l = diag(alpha) + B G B^T (Byrd, Nocedal & Schnabel's compact form, started from a
diagonal alpha kept by the diagonal of the BFGS update), and with it the normal approximation
N(mu_l, Sigma_l), mu_l = theta_l + Sigma_l grad log p(theta_l), one Newton step ahead. Each is
scored by a Monte Carlo ELBO; the path returns its best. Several paths from Stan's uniform(-2, 2)
starts are pooled by Pareto-smoothed importance resampling, which also drops the paths that
stopped in a minor mode.

Sampling and scoring cost O(D m^2) per draw: with W = diag(alpha)^{-1/2} B = Q R (thin QR),
Sigma = diag(alpha)^{1/2} (I + Q (M - I) Q^T) diag(alpha)^{1/2}, M = I + R G R^T = U Lambda U^T,
so x = mu + alpha^{1/2} (u + Q (U Lambda^{1/2} U^T - I) Q^T u) for u ~ N(0, I), and
log det Sigma = sum log alpha + sum log Lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous

from pyro_nf.approximations.gaussian import (
    F64,
    PROBE_DRAWS,
    LowRankSqrt,
    draw_standardized,
    elbo_unless_below,
    gaussian_elbo,
    inverse_hessian,
    normal_of,
    update_alpha,
)
from pyro_nf.densities.full_data import reads_all_rows
from pyro_nf.densities.initialization import init_to_median_or_uniform
from pyro_nf.densities.logdensity import LogDensity
from pyro_nf.densities.pinning import PinnedPacking

__all__ = ["F64", "PROBE_DRAWS", "AutoPathfinder", "LowRankSqrt", "PathfinderResult",
           "normal_of", "pathfinder", "resolution", "run_paths"]

@dataclass
class PathResult:
    """One path: its best normal approximation and what it cost."""

    approximation: LowRankSqrt | None
    elbo: float
    iterations: int
    gradient_evaluations: int
    best_iteration: int
    elbos: list[float] = field(default_factory=list)
    #: the last iterate (the mode where L-BFGS converged) and its log density
    last: torch.Tensor | None = None
    last_log_density: float = -math.inf
    #: the path ended because its ``stop`` rule said so, not because it converged
    stopped: bool = False


def _two_loop(grad: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
              h0: torch.Tensor) -> torch.Tensor:
    """The L-BFGS direction -H grad (Nocedal & Wright, Algorithm 7.4) from the diagonal H0."""
    q = grad.clone()
    coefs = []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        coefs.append(a)
        q = q - a * y
    r = h0 * q
    for (s, y), a in zip(pairs, reversed(coefs)):
        r = r + s * (a - (y @ r) / (y @ s))
    return -r


def _energy_and_grad(log_density: LogDensity, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """-log p(x) and its gradient in float64; (inf, 0) where the model cannot be evaluated."""
    x = x.detach().requires_grad_(True)
    try:
        f = -log_density(x).to(F64)
        if not bool(torch.isfinite(f)):
            return math.inf, torch.zeros_like(x)
        (g,) = torch.autograd.grad(f, x)
    except (ValueError, RuntimeError):  # the model cannot be evaluated there
        return math.inf, torch.zeros_like(x)
    return float(f.detach()), g.detach()


def resolution(target: Any) -> float:
    """The relative resolution of ``target``'s values (a LogDensity, or a wrapper with a
    ``log_density``): its model's float epsilon. A float32 model's log density moves by
    rounding noise of up to ~1e-7 relative (0.05 nats at 10^6 rows), so an L-BFGS path that
    asks for smaller changes may never converge: it steps and backtracks on noise until its
    iteration cap. A path on a subsampled model's full-data density (:func:`reads_all_rows`)
    stops where a quasi-Newton step's predicted gain, or the gain of ``history`` iterations,
    is below this (relative to -log p)."""
    dtype = getattr(target, "dtype", None) or getattr(getattr(target, "log_density", None),
                                                      "dtype", None)
    return float(torch.finfo(dtype).eps) if isinstance(dtype, torch.dtype) \
        and dtype.is_floating_point else 0.0


def _armijo(value_and_grad: Callable, x: torch.Tensor, f: float, d: torch.Tensor,
            slope: float) -> tuple[torch.Tensor, float, torch.Tensor] | None:
    """Backtracking from a unit step along ``d`` until the Armijo condition holds (at most 40
    halvings): the accepted point, its value and gradient, or None."""
    t = 1.0
    for _ in range(40):
        x_new = x + t * d
        f_new, g_new = value_and_grad(x_new)
        if math.isfinite(f_new) and f_new <= f + 1e-4 * t * slope \
                and bool(torch.isfinite(g_new).all()):
            return x_new, f_new, g_new
        t *= 0.5
    return None


def lbfgs_path(log_density: LogDensity, start: torch.Tensor, *, history: int, max_iters: int,
               tol: float, num_elbo_draws: int, generator: torch.Generator,
               stop: Callable[[torch.Tensor], bool] | None = None, score: bool = True
               ) -> PathResult:
    """Minimize -log p by L-BFGS from ``start`` with a backtracking (Armijo) line search, keep
    every accepted iterate with its gradient, and pick the best normal approximation along
    the path. Each trial point costs one gradient evaluation. ``stop(x)`` ends the path early
    (the mode search stops a path that has reached a known mode); ``score=False`` returns the
    end point only, without the approximations."""
    calls = [0]

    def value_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        calls[0] += 1
        return _energy_and_grad(log_density, x)

    # a subsampled model's full-data density: the many-row sums whose rounding noise a path
    # can chase (elsewhere the paths are as they were: a floor moved the anchors of small
    # float32 models, with flat directions, for no gain)
    floor = resolution(log_density) if reads_all_rows(log_density) else 0.0
    x = start.to(F64).clone()
    f, g = value_and_grad(x)
    if not math.isfinite(f) or not bool(torch.isfinite(g).all()):
        return PathResult(None, -math.inf, 0, calls[0], -1)
    points = [(x, -g, f)]
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    alpha = None  # the diagonal inverse-Hessian estimate, H0 of the two-loop recursion
    for _ in range(max_iters):
        direction = _descent_direction(g, f, pairs, alpha, floor)
        if direction is None:
            break
        d, slope, pairs = direction
        accepted = _armijo(value_and_grad, x, f, d, slope)
        if accepted is None:
            break
        x_new, f_new, g_new = accepted
        pairs, alpha = _update_curvature(pairs, alpha, x_new - x, g_new - g, history)
        converged = abs(f - f_new) <= tol * max(1.0, abs(f_new)) or \
            float(g_new.abs().max()) <= 1e-8
        x, f, g = x_new, f_new, g_new
        points.append((x, -g, f))
        converged |= _stalled(points, history, floor)
        if stop is not None and stop(x):
            return PathResult(None, -math.inf, len(points) - 1, calls[0], -1, last=x,
                              last_log_density=-f, stopped=True)
        if converged:
            break
    if not score:
        return PathResult(None, -math.inf, len(points) - 1, calls[0], -1, last=x,
                          last_log_density=-f)
    return _best_along(log_density, points, history, num_elbo_draws, generator, calls[0])


def _steepest(g: torch.Tensor) -> torch.Tensor:
    """Steepest descent, scaled so that the first trial step is at most of unit L1 norm."""
    return -g / max(1.0, float(g.abs().sum()))


def _descent_direction(g: torch.Tensor, f: float, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                       alpha: torch.Tensor | None, floor: float
                       ) -> tuple[torch.Tensor, float, list] | None:
    """The next search direction, its slope ``g @ d`` and the curvature pairs to keep: the
    L-BFGS direction (steepest descent before the first pair), or steepest descent without the
    pairs where it does not descend. None where the quasi-Newton step's predicted gain is
    below the density's float resolution ``floor`` (the path ends)."""
    d = _two_loop(g, pairs, alpha) if pairs else _steepest(g)
    slope = float(g @ d)
    if slope >= 0:  # not a descent direction: restart from steepest descent
        pairs, d = [], _steepest(g)
        slope = float(g @ d)
    elif -slope <= floor * max(1.0, abs(f)):
        return None
    return d, slope, pairs


def _update_curvature(pairs: list[tuple[torch.Tensor, torch.Tensor]], alpha: torch.Tensor | None,
                      s_vec: torch.Tensor, y_vec: torch.Tensor, history: int
                      ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """Keep the step ``s_vec`` and gradient change ``y_vec`` (the last ``history`` pairs) and
    update the diagonal estimate ``alpha``, where the pair has positive curvature."""
    if float(s_vec @ y_vec) > 1e-10 * float(y_vec @ y_vec):
        pairs = (pairs + [(s_vec, y_vec)])[-history:]
        if alpha is None:
            alpha = torch.full_like(s_vec, float(s_vec @ y_vec) / float(y_vec @ y_vec))
        alpha = update_alpha(alpha, s_vec, y_vec)
    return pairs, alpha


def _stalled(points: list, history: int, floor: float) -> bool:
    """The last ``history`` iterations together moved -log p by less than the density's own
    float resolution (their steps only chase its rounding noise)."""
    f = points[-1][2]
    return len(points) > history and points[-1 - history][2] - f <= floor * max(1.0, abs(f))


def _best_along(log_density: LogDensity, points: list, history: int, num_elbo_draws: int,
                generator: torch.Generator, evals: int) -> PathResult:
    """The path's best normal approximation by ELBO, each scored iterate on
    ``num_elbo_draws`` draws. Where every draw reads all the rows of a subsampled model
    (:func:`reads_all_rows`), the iterates are scored from the last back (the best usually
    sits near the end), each first on :data:`PROBE_DRAWS` draws and on all only when those do
    not put it clearly below the best so far: at 10^6 rows this halves the paths' cost."""
    best = PathResult(None, -math.inf, len(points) - 1, evals, -1, last=points[-1][0],
                      last_log_density=-points[-1][2])
    scored = _approximations_along(points, history)
    probe = reads_all_rows(log_density)
    elbos = {}
    for l, approx in reversed(scored) if probe else scored:
        elbos[l] = elbo_unless_below(log_density, approx, num_elbo_draws, generator,
                                      best.elbo) if probe else \
            gaussian_elbo(log_density, approx, num_elbo_draws, generator)
        if elbos[l] > best.elbo:
            best.approximation, best.elbo, best.best_iteration = approx, elbos[l], l
    best.elbos = [elbos[l] for l in sorted(elbos)]
    return best


def _approximations_along(points: list, history: int) -> list[tuple[int, LowRankSqrt]]:
    """(iterate, its normal approximation) for the scored iterates of an L-BFGS path."""
    dim = len(points[0][0])
    alpha = torch.ones(dim, dtype=F64, device=points[0][0].device)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    out = []
    scored = _scored_iterates(len(points))
    for l in range(1, len(points)):
        (t0, g0, _), (t1, g1, _) = points[l - 1], points[l]
        s, y = t1 - t0, -(g1 - g0)  # y: the change of the gradient of -log p
        if float(s @ y) > 2.2e-16 * float(y @ y):
            pairs = (pairs + [(s, y)])[-history:]
            alpha = update_alpha(alpha, s, y)
        if not pairs or l not in scored:
            continue
        s_mat = torch.stack([p[0] for p in pairs], dim=1)
        y_mat = torch.stack([p[1] for p in pairs], dim=1)
        approx = inverse_hessian(t1, g1, alpha, s_mat, y_mat)
        if approx is not None:
            out.append((l, approx))
    return out


#: At most this many iterates of a path get an ELBO estimate: all of a short path; of a long
#: one the last quarter of them, evenly spaced, with the last ten always included (on long
#: paths the best approximation sits near the end, where the curvature pairs are local).
MAX_SCORED = 100


def _scored_iterates(n: int) -> set[int]:
    if n <= MAX_SCORED:
        return set(range(n))
    spread = torch.linspace(n - n // 4, n - 1, MAX_SCORED - 10).round().long().tolist()
    return set(spread) | set(range(n - 10, n))


@dataclass
class PathfinderResult:
    """What :func:`pathfinder` returns.

    Attributes:
        approximation: the best path's normal approximation (``LowRankSqrt``: ``.loc``,
            ``.covariance()``), in float64 over the packed unconstrained latent.
        guide: a Pyro guide for the model (:class:`AutoPathfinder`) whose posterior is that
            approximation; ``Predictive``, ``to_inference_data`` and ``diagnose`` take it.
        draws: ``num_draws`` packed unconstrained draws, importance-resampled from every
            path's approximation (PSIS; Vehtari et al., 2024) when the pooled weights are
            reliable (k-hat < 0.7); else drawn from the best path's approximation, since
            resampling would repeat a handful of draws.
        samples: the same draws as constrained site values.
        elbo: the best path's ELBO estimate; ``elbos``: each path's best.
        khat: the Pareto k-hat of the pooled importance weights.
        gradient_evaluations: log-density gradient evaluations of every path together.
        density_evaluations: log-density evaluations for the ELBOs and the resampling.
    """

    approximation: LowRankSqrt
    guide: AutoContinuous
    draws: torch.Tensor
    samples: dict[str, torch.Tensor]
    elbo: float
    elbos: list[float]
    khat: float
    gradient_evaluations: int
    density_evaluations: int
    paths: list[PathResult]


def pathfinder(model: Callable, *args: Any, num_paths: int = 4, num_draws: int = 1000,
               history: int = 6, max_iters: int = 1000, tol: float = 1e-10,
               num_elbo_draws: int = 25, init_radius: float = 2.0, seed: int | None = 0,
               **kwargs: Any) -> PathfinderResult:
    """Multi-path Pathfinder for a Pyro model (Zhang et al., 2022).

    Args:
        model: the Pyro model.
        *args: the model's positional arguments.
        num_paths: independent L-BFGS paths, each from Stan's uniform(-init_radius,
            init_radius) start in unconstrained space (the first from the prior median where
            the prior can be sampled).
        num_draws: draws returned, importance-resampled from the paths' approximations.
        history: L-BFGS history size (the rank of the low-rank part is twice this).
        max_iters: the most L-BFGS iterations of each path.
        tol: a path also stops when the objective changes by less than ``tol`` relative.
        num_elbo_draws: Monte Carlo draws per ELBO estimate along the path.
        init_radius: the half-width of the uniform starts (see ``num_paths``).
        seed: seeds the starts and the draws (None: from torch's global generator).
        **kwargs: the model's keyword arguments.

    Returns:
        a :class:`PathfinderResult`.
    """
    if num_paths < 1 or num_draws < 1:
        raise ValueError(f"pathfinder: num_paths and num_draws must be positive, got "
                         f"{num_paths} and {num_draws}")
    seed = seed if seed is not None else int(torch.randint(2 ** 31, ()))
    with torch.random.fork_rng(devices=[]):  # the initial point may draw from the prior
        torch.manual_seed(seed)
        log_density = LogDensity(model, *args, **kwargs)
    generator = torch.Generator()
    generator.manual_seed(seed)
    paths = run_paths(log_density, log_density.init, num_paths, generator, history=history,
                      max_iters=max_iters, tol=tol, num_elbo_draws=num_elbo_draws,
                      init_radius=init_radius)
    usable = [p for p in paths if p.approximation is not None]
    if not usable:
        raise RuntimeError("pathfinder: no path produced a usable normal approximation (the "
                           "log density was not finite, or the L-BFGS curvature was never "
                           "positive); check the model's density at its initial values")
    grads = sum(p.gradient_evaluations for p in paths)
    best = max(usable, key=lambda p: p.elbo)
    draws, khat = _resample_paths(log_density, usable, best, num_draws, generator)
    guide = AutoPathfinder(model, best.approximation, log_density)
    return PathfinderResult(
        approximation=best.approximation, guide=guide, draws=draws,
        samples=log_density.unpack(draws), elbo=best.elbo, elbos=[p.elbo for p in paths],
        khat=float(khat), gradient_evaluations=grads,
        density_evaluations=log_density.evaluations - grads, paths=paths)


def _resample_paths(log_density: LogDensity, usable: list[PathResult], best: PathResult,
                    num_draws: int, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Multi-path Pathfinder's importance resampling: draws from every path's approximation,
    Pareto-smoothed weights p / q, resampled where k-hat < 0.7 (else the best path's own
    draws: a few draws would carry all the weight). Returns the draws and k-hat."""
    from pyro_nf.utils import arviz_compat

    per_path = -(-num_draws // len(usable))
    xs, lws = [], []
    for p in usable:
        x, log_q = draw_standardized(p.approximation, per_path, generator)
        with torch.no_grad():
            log_p = log_density(x).to(F64)
        xs.append(x)
        lws.append(torch.where(torch.isfinite(log_p), log_p - log_q,
                               torch.as_tensor(-math.inf, dtype=F64)))
    x, lw = torch.cat(xs), torch.cat(lws)
    finite = torch.isfinite(lw)
    smoothed, khat = arviz_compat.psis(lw[finite].numpy())
    if khat >= 0.7:
        return draw_standardized(best.approximation, num_draws, generator)[0], float(khat)
    weights = torch.zeros_like(lw)
    weights[finite] = torch.as_tensor(smoothed).exp()
    index = torch.multinomial(weights / weights.sum(), num_draws, replacement=True,
                              generator=generator)
    return x[index], float(khat)


def run_paths(target: Callable, init: torch.Tensor, num_paths: int, generator: torch.Generator,
              *, history: int = 6, max_iters: int = 1000, tol: float = 1e-10,
              num_elbo_draws: int = 25, init_radius: float = 2.0) -> list[PathResult]:
    """``num_paths`` Pathfinder paths on ``target`` (a log density over R^D with attribute
    ``dim``): the first from ``init``, the others from uniform(-init_radius, init_radius)."""
    paths = []
    for k in range(num_paths):
        start = init.to(F64) if k == 0 else \
            ((torch.rand(target.dim, dtype=F64, generator=generator) * 2 - 1)
             * init_radius).to(init.device)
        paths.append(lbfgs_path(target, start, history=history, max_iters=max_iters,
                                 tol=tol, num_elbo_draws=num_elbo_draws, generator=generator))
    return paths


class AutoPathfinder(PinnedPacking, AutoContinuous):
    """A Pyro guide whose posterior over the packed unconstrained latent is a fitted
    Pathfinder normal approximation (fixed: no parameters to learn). It packs as
    :class:`~pyro_nf.densities.logdensity.LogDensity` does, coordinates without density pinned."""

    _quiet_pins = True

    def __init__(self, model: Callable, approximation: LowRankSqrt,
                 log_density: LogDensity | None = None) -> None:
        super().__init__(model, init_loc_fn=_init_at(approximation, log_density))
        self.approximation = approximation

    def get_posterior(self, *args: Any, **kwargs: Any) -> dist.TransformedDistribution:
        dtype = self._init_loc().dtype if self.prototype_trace is not None else F64
        return normal_of(self.approximation.to(dtype))

    def get_base_dist(self) -> dist.TorchDistribution:
        zeros = self.approximation.loc.new_zeros(len(self.approximation.loc))
        return dist.Normal(zeros, 1.0).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> LowRankSqrt:
        return self.approximation


def _init_at(approximation: LowRankSqrt, log_density: LogDensity | None) -> Callable:
    """An init_loc_fn that starts every site at the approximation's mean."""
    values = {} if log_density is None else log_density.unpack(approximation.loc)

    def init(site: dict) -> torch.Tensor:
        if site["name"] in values:
            return values[site["name"]].detach()

        return init_to_median_or_uniform(site)

    return init
